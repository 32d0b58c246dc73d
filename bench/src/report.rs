//! The machine the figures come from, and the table `make bench` prints (Markdown, so
//! that it can go into the README as it is).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::load::Figures;
use crate::{HostResults, Results};

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub redis: String,
    pub date: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let command = |program: &str, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: command("uname", &["-r"]),
            redis: command("redis-server", &["--version"]),
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

fn row(out: &mut String, what: &str, f: &Figures, ok_status: u16) {
    let _ = writeln!(
        out,
        "| {what} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
        f.connections,
        f.requests_per_second,
        f.p50_ms,
        f.p90_ms,
        f.p99_ms,
        f.max_ms,
        f.unexpected(ok_status),
        cpu(f)
    );
}

/// Where the CPU went, in % of one core (the machine has `cores` × 100).
fn cpu(f: &Figures) -> String {
    cpu_shares(&f.cpu_percent)
}

fn cpu_shares(shares: &BTreeMap<String, f64>) -> String {
    shares
        .iter()
        .map(|(part, percent)| format!("{part} {percent:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Above this much steal (% of one core) in any run, a host's figures say more about
/// the hypervisor than about the app.
const STEAL_WARNING_PERCENT: f64 = 10.0;

/// How much CPU the hypervisor kept from these runs (`what`: "this host's runs", say;
/// each run with its label), and a warning naming the runs it made incomparable with a
/// quiet run's (virtual machines that have used up their CPU credit, after a long build
/// say, run at a fraction of their speed; a mostly idle run can lose a lot to steal
/// while the busy ones beside it lose little).
fn steal_summary<'a>(
    what: &str,
    runs: impl IntoIterator<Item = (String, &'a BTreeMap<String, f64>)>,
) -> String {
    let steals: Vec<(String, f64)> = runs
        .into_iter()
        .filter_map(|(run, cpu)| Some((run, *cpu.get(crate::cpu::STEAL)?)))
        .collect();
    let Some(most) = steals.iter().map(|(_, steal)| *steal).reduce(f64::max) else {
        return format!("Steal in {what}: not measured.");
    };
    let mean = steals.iter().map(|(_, steal)| steal).sum::<f64>() / steals.len() as f64;
    let mut line = format!(
        "Steal in {what} (CPU the hypervisor gave other guests): {mean:.0}% of a core on \
         average, {most:.0}% at most in one run."
    );
    let stolen: Vec<String> = steals
        .iter()
        .filter(|(_, steal)| *steal > STEAL_WARNING_PERCENT)
        .map(|(run, steal)| format!("{run} ({steal:.0}%)"))
        .collect();
    if !stolen.is_empty() {
        let _ = write!(
            line,
            " WARNING: the hypervisor took more than a tenth of a core from {} of {} runs: \
             {}. Compare neither their req/s nor ratios made from them with a quiet run's, \
             and re-run on a rested machine.",
            stolen.len(),
            steals.len(),
            stolen.join(", ")
        );
    }
    line
}

pub const EMPTY: &str = "empty component `GET /`";
pub const PRODUCTS: &str = "`GET /api/products`";
pub const ORDERS: &str = "`POST /api/orders` (checkout alone)";
const ORDERS_EXPORTED: &str = "`POST /api/orders`, every span exported";

fn order_lines(lines: usize) -> String {
    format!("`POST /api/orders`, {lines} lines")
}

fn mail(delay_ms: u64) -> String {
    if delay_ms == 0 {
        "mail API at once".to_owned()
    } else {
        format!("mail API in {delay_ms} ms")
    }
}

/// Every load run of a host, named as its table names it (end to end: checkout's load).
fn labelled_runs(host: &HostResults) -> Vec<(String, &Figures)> {
    let at = |what: &str, f: &Figures| {
        let plural = if f.connections == 1 { "" } else { "s" };
        format!("{what} at {} connection{plural}", f.connections)
    };
    let mut runs = Vec::new();
    for (what, figures) in [
        (EMPTY, &host.empty),
        (PRODUCTS, &host.products),
        (ORDERS, &host.orders),
    ] {
        runs.extend(figures.iter().map(|f| (at(what, f), f)));
    }
    for (lines, f) in &host.order_lines {
        runs.push((at(&order_lines(*lines), f), f));
    }
    runs.push((
        at(ORDERS_EXPORTED, &host.orders_exported),
        &host.orders_exported,
    ));
    for (i, pair) in host.ratio_pairs.iter().enumerate() {
        runs.push((
            format!("pair {}: {}", i + 1, at(EMPTY, &pair.empty)),
            &pair.empty,
        ));
        runs.push((
            format!("pair {}: {}", i + 1, at(ORDERS, &pair.orders)),
            &pair.orders,
        ));
    }
    for e in &host.end_to_end {
        let what = format!(
            "end to end at {} offered/s, {}",
            e.offered_per_second,
            mail(e.mail_delay_ms)
        );
        runs.push((what, &e.checkout));
    }
    for (shards, e) in &host.by_shards {
        let what = format!(
            "{shards} shard(s) at {} offered/s, {}",
            e.offered_per_second,
            mail(e.mail_delay_ms)
        );
        runs.push((what, &e.checkout));
    }
    runs
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "n/a".to_owned(), |s| format!("{:.0}%", 100.0 * s))
}

/// The median, lowest and highest of `values` (none when there are none).
fn spread(values: impl Iterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let (&low, &high) = (values.first()?, values.last()?);
    let middle = values.len() / 2;
    let median = if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    };
    Some((median, low, high))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    percent(match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    })
}

pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let _ = writeln!(
        out,
        "\nMachine: {} ({} cores, {} GiB), Linux {}, {}; {}; {} s per step.\n",
        m.cpu, m.cores, m.memory_gib, m.kernel, m.redis, m.date, results.settings.seconds
    );
    out.push_str("| Redis floor (redis-benchmark, 32 connections) | req/s | p50 ms | p95 ms | p99 ms | max ms | CPU % of a core |\n|---|---|---|---|---|---|---|\n");
    for r in &results.redis {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.command,
            r.requests_per_second,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.max_ms,
            cpu_shares(&r.cpu_percent)
        );
    }
    let _ = writeln!(
        out,
        "\n{}",
        steal_summary(
            "the Redis floor",
            results
                .redis
                .iter()
                .map(|r| (r.command.clone(), &r.cpu_percent))
        )
    );
    for host in &results.hosts {
        host_tables(&mut out, host);
    }
    head_to_head_table(&mut out, &results.head_to_head);
    out
}

/// The head-to-head step: per placement, request and host, the medians over its
/// rounds, and the lowest and highest p50 of those runs, to show how far one run moves.
fn head_to_head_table(out: &mut String, head_to_head: &[crate::HeadToHead]) {
    let Some(first) = head_to_head.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "\n### Head to head at one connection ({} rounds in turn, every host up at once on one Redis, the load generator on a core of its own)\n",
        first.runs.len()
    );
    out.push_str("| Placement | Request | host | req/s (median) | p50 ms (median; lowest-highest) | p99 ms (median) | errors |\n|---|---|---|---|---|---|---|\n");
    for h in head_to_head {
        let median = |value: fn(&Figures) -> f64| spread(h.runs.iter().map(value));
        let (Some(rps), Some(p50), Some(p99)) = (
            median(|f| f.requests_per_second),
            median(|f| f.p50_ms),
            median(|f| f.p99_ms),
        ) else {
            continue;
        };
        let errors: u64 = h.runs.iter().map(|f| f.unexpected(h.ok_status)).sum();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.2} ({:.2}-{:.2}) | {:.2} | {errors} |",
            h.placement, h.request, h.host, rps.0, p50.0, p50.1, p50.2, p99.0
        );
    }
}

fn host_tables(out: &mut String, host: &HostResults) {
    let _ = writeln!(out, "\n### {} (`{}`)\n", host.host, host.program);
    out.push_str("| Request | connections | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | CPU % of a core |\n|---|---|---|---|---|---|---|---|---|\n");
    for f in &host.empty {
        row(out, EMPTY, f, 200);
    }
    for f in &host.products {
        row(out, PRODUCTS, f, 200);
    }
    for f in &host.orders {
        row(out, ORDERS, f, 202);
    }
    for (lines, f) in &host.order_lines {
        row(out, &order_lines(*lines), f, 202);
    }
    row(out, ORDERS_EXPORTED, &host.orders_exported, 202);

    if !host.ratio_pairs.is_empty() {
        out.push_str("\n| In turn at 32 connections | empty component req/s | `POST /api/orders` accepted/s | ratio |\n|---|---|---|---|\n");
    }
    for (i, pair) in host.ratio_pairs.iter().enumerate() {
        let _ = writeln!(
            out,
            "| pair {} | {:.0} | {:.0} | {} |",
            i + 1,
            pair.empty.requests_per_second,
            pair.orders.per_second(202),
            percent(pair.ratio())
        );
    }

    out.push_str("\n| End to end | offered/s | accepted/s | emailed/s during load | backlog at end | backlog growth/s | drained after | order to email p50 / p99 ms | errors | CPU % of a core |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for e in &host.end_to_end {
        let mail = mail(e.mail_delay_ms);
        let drained = if e.drained {
            format!("{:.1} s", e.drain_seconds)
        } else {
            format!("not within {:.0} s", e.drain_seconds)
        };
        let _ = writeln!(
            out,
            "| {mail} | {} | {:.0} | {:.0} | {} | {:.1} | {drained} | {:.0} / {:.0} | {} | {} |",
            e.offered_per_second,
            e.accepted_per_second,
            e.emailed_per_second_during_load,
            e.backlog_at_end,
            e.backlog_growth_per_second,
            e.order_to_email_p50_ms,
            e.order_to_email_p99_ms,
            e.unexpected_answers,
            cpu(&e.checkout)
        );
    }

    if let Some((_, first)) = host.by_shards.first() {
        let _ = writeln!(
            out,
            "\n| Fulfilment by shards used ({}) | offered/s | accepted/s | emailed/s during load | per shard | backlog growth/s | errors | CPU % of a core |\n|---|---|---|---|---|---|---|---|",
            mail(first.mail_delay_ms)
        );
    }
    for (shards, e) in &host.by_shards {
        let _ = writeln!(
            out,
            "| {shards} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} |",
            e.offered_per_second,
            e.accepted_per_second,
            e.emailed_per_second_during_load,
            e.emailed_per_second_during_load / f64::from(*shards),
            e.backlog_growth_per_second,
            e.unexpected_answers,
            cpu(&e.checkout)
        );
    }

    let _ = writeln!(
        out,
        "\nMemory (RSS): {:.1} MiB idle, {:.1} MiB peak under load, {:.1} MiB after. \
         First answer after start: {:.0} ms cold (compiling), {:.0} ms with the compiled-component cache.",
        host.memory.idle_mib,
        host.memory.peak_under_load_mib,
        host.memory.after_load_mib,
        host.startup.cold_ms,
        host.startup.warm_ms
    );
    let _ = writeln!(
        out,
        "{}",
        steal_summary(
            "this host's runs",
            labelled_runs(host)
                .into_iter()
                .map(|(run, f)| (run, &f.cpu_percent))
        )
    );
    let rps = |figures: &[Figures], c| HostResults::at(figures, c).map(|f| f.requests_per_second);
    let accepted_rps = HostResults::at(&host.orders, 32).map(|f| f.per_second(202));
    let instant = host.end_to_end.iter().filter(|e| e.mail_delay_ms == 0);
    let _ = writeln!(
        out,
        "Ratios at 32 connections: `POST /api/orders` = {} of the empty component, `GET /api/products` = {}.",
        ratio(accepted_rps, rps(&host.empty, 32)),
        ratio(rps(&host.products, 32), rps(&host.empty, 32)),
    );
    if let Some((median, low, high)) = spread(host.ratio_pairs.iter().filter_map(|p| p.ratio())) {
        let _ = writeln!(
            out,
            "Ratio over {} pairs run in turn: `POST /api/orders` = {} of the empty component (median; {} to {}).",
            host.ratio_pairs.len(),
            percent(Some(median)),
            percent(Some(low)),
            percent(Some(high)),
        );
    }
    for e in instant {
        let _ = writeln!(
            out,
            "End to end at {} offered/s (mail at once): emailed = {} of accepted.",
            e.offered_per_second,
            ratio(
                Some(e.emailed_per_second_during_load),
                Some(e.accepted_per_second)
            )
        );
    }
    let keeps_up = &host.keeps_up;
    let checkout_alone = Some(f64::from(keeps_up.checkout_alone));
    let kept_up = match keeps_up.highest_kept_up {
        Some(rate) => format!(
            "keeps up with {rate} orders/s ({} of checkout alone)",
            ratio(Some(f64::from(rate)), checkout_alone)
        ),
        None => "kept up with none of the rates tried".to_owned(),
    };
    let fell_behind = match keeps_up.lowest_fell_behind {
        Some(rate) => format!(
            "fell behind at {rate} ({})",
            ratio(Some(f64::from(rate)), checkout_alone)
        ),
        None => "kept up with every rate tried".to_owned(),
    };
    let _ = writeln!(out, "End to end (mail at once) {kept_up}; {fell_behind}.");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steal: Option<f64>) -> BTreeMap<String, f64> {
        let mut cpu = BTreeMap::from([("runner".to_owned(), 150.0)]);
        if let Some(steal) = steal {
            cpu.insert(crate::cpu::STEAL.to_owned(), steal);
        }
        cpu
    }

    fn named(runs: &[(&str, Option<f64>)]) -> Vec<(String, BTreeMap<String, f64>)> {
        runs.iter()
            .map(|(name, steal)| (name.to_string(), run(*steal)))
            .collect()
    }

    fn summary(runs: &[(String, BTreeMap<String, f64>)]) -> String {
        steal_summary(
            "the floor",
            runs.iter().map(|(name, cpu)| (name.clone(), cpu)),
        )
    }

    #[test]
    fn steal_above_a_tenth_of_a_core_in_a_run_warns_and_names_that_run() {
        let quiet = named(&[("SET", Some(1.0)), ("INCRBY", Some(3.0))]);
        let line = summary(&quiet);
        assert!(
            line.contains("2% of a core on average, 3% at most"),
            "{line}"
        );
        assert!(!line.contains("WARNING"), "{line}");

        let one_bad = named(&[
            ("SET", Some(1.0)),
            ("INCRBY", Some(40.0)),
            ("PUBLISH", Some(9.0)),
        ]);
        let line = summary(&one_bad);
        assert!(
            line.contains("more than a tenth of a core from 1 of 3 runs: INCRBY (40%)."),
            "{line}"
        );
        assert!(!line.contains("SET ("), "{line}");
        assert!(!line.contains("PUBLISH ("), "{line}");
    }

    #[test]
    fn the_spread_of_ratios_is_their_median_and_extremes() {
        assert_eq!(
            spread([0.33, 0.25, 0.30].into_iter()),
            Some((0.30, 0.25, 0.33))
        );
        assert_eq!(spread([0.20, 0.30].into_iter()), Some((0.25, 0.20, 0.30)));
        assert_eq!(spread(std::iter::empty()), None);
    }

    fn figures(p50_ms: f64, requests_per_second: f64) -> Figures {
        Figures {
            connections: 1,
            offered_per_second: None,
            seconds: 10.0,
            requests: (requests_per_second * 10.0) as u64,
            requests_per_second,
            p50_ms,
            p90_ms: p50_ms * 1.5,
            p99_ms: p50_ms * 2.0,
            max_ms: p50_ms * 3.0,
            statuses: BTreeMap::from([("200".to_owned(), (requests_per_second * 10.0) as u64)]),
            errors: 0,
            cpu_percent: BTreeMap::new(),
        }
    }

    #[test]
    fn head_to_head_shows_each_hosts_medians_over_its_rounds_and_the_spread_of_p50() {
        let host = |host: &str, runs: Vec<Figures>| crate::HeadToHead {
            placement: "host and Redis on two cores".to_owned(),
            request: PRODUCTS.to_owned(),
            host: host.to_owned(),
            ok_status: 200,
            runs,
        };
        let rounds = vec![
            host(
                "runner",
                vec![
                    figures(0.64, 1100.0),
                    figures(1.44, 700.0),
                    figures(0.9, 1000.0),
                ],
            ),
            host(
                "spin",
                vec![
                    figures(1.0, 880.0),
                    figures(1.43, 680.0),
                    figures(0.96, 900.0),
                ],
            ),
        ];
        let mut out = String::new();
        head_to_head_table(&mut out, &rounds);
        assert!(out.contains("(3 rounds in turn"), "{out}");
        assert!(
            out.contains("| host and Redis on two cores | `GET /api/products` | runner | 1000 | 0.90 (0.64-1.44) | 1.80 | 0 |"),
            "{out}"
        );
        assert!(
            out.contains("| host and Redis on two cores | `GET /api/products` | spin | 880 | 1.00 (0.96-1.43) | 2.00 | 0 |"),
            "{out}"
        );

        let mut nothing = String::new();
        head_to_head_table(&mut nothing, &[]);
        assert_eq!(nothing, "");
    }

    #[test]
    fn runs_without_steal_say_it_was_not_measured() {
        let line = summary(&named(&[("SET", None)]));
        assert_eq!(line, "Steal in the floor: not measured.");
    }
}
