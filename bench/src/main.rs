//! `make bench`: the shop's speed beside the platform's floor, in one run on one machine.
//!
//! 1. Floors: an empty HTTP component on the same runner; `redis-benchmark` for `SET`,
//!    `INCRBY` and `PUBLISH` on the same Redis.
//! 2. Checkout alone (fulfilment not running): `GET /api/products` and `POST
//!    /api/orders` at each concurrency.
//! 3. End to end, with fulfilment and the dev mail API (answering at once, then after
//!    150 ms): orders offered at a fixed rate for a fixed time; accepted and emailed
//!    orders/s, the time from an order's acceptance to its email, and the backlog. Then
//!    the highest rate the whole app keeps up with (mail at once), by bisection.
//! 4. Cost: `POST` latency for 1, 5 and 10 lines; the runner's memory idle and under
//!    load; time to the first answer with and without the compiled-component cache.
//! 5. With `spin` on PATH, the same under `spin up`; then, every host up at once on one
//!    Redis, the requests at one connection (where the hosts come closest) in rounds
//!    that take the hosts in turn, with the host and Redis pinned to one core and then
//!    to two: at one connection, where the scheduler puts them sets the latency.
//!
//! Prints a table, writes `target/bench/results.json` and `target/bench/latency.svg`.
//! `--smoke` runs every step for a moment (what `make test` runs, so none can rot).
//! Figures are printed, never asserted: they depend on the machine.

mod cpu;
mod load;
mod plot;
mod report;
mod stack;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use load::{Figures, Load};
use stack::{EndToEnd, Host, Shop};

/// How long and how hard each step runs.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub seconds: f64,
    pub concurrencies: Vec<u32>,
    /// Orders per second offered end to end with the mail API answering at once, as
    /// fractions of what checkout alone accepted at 32 connections.
    pub instant_mail_load: Vec<f64>,
    /// Bisection steps searching for the highest rate end to end keeps up with (mail at
    /// once), between the fixed rates above that kept up and did not.
    pub keep_up_search_steps: u32,
    /// Orders per second offered end to end with the mail API answering in 150 ms.
    pub slow_mail_rates: Vec<u32>,
    pub slow_mail_delay_ms: u64,
    /// Fulfilment by shard count (mail API in `slow_mail_delay_ms`): checkout spreads
    /// orders over the first `n` of `spin.toml`'s channels, and each shard is offered
    /// `orders_per_shard` a second, more than it can take.
    pub shard_counts: Vec<u32>,
    pub orders_per_shard: u32,
    /// Pairs of runs at 32 connections, the empty component then `POST /api/orders`,
    /// one after the other: one pair's ratio moves with the machine (25% and 33% in
    /// two runs of the same code an hour apart), the median of several less.
    pub ratio_pairs: u32,
    /// Rounds of the head-to-head step (every host in turn, at one connection), in each
    /// placement.
    pub head_to_head_rounds: u32,
    /// How long to wait after the load for the backlog to drain.
    pub drain_seconds: f64,
    pub redis_benchmark_requests: u32,
    pub smoke: bool,
}

impl Settings {
    fn from_env(smoke: bool) -> Settings {
        let number = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        if smoke {
            return Settings {
                seconds: 1.0,
                concurrencies: vec![1, 8],
                instant_mail_load: vec![0.2],
                keep_up_search_steps: 1,
                slow_mail_rates: vec![20],
                slow_mail_delay_ms: 150,
                shard_counts: vec![1, 2],
                orders_per_shard: 60,
                ratio_pairs: 2,
                head_to_head_rounds: 1,
                drain_seconds: 30.0,
                redis_benchmark_requests: 2_000,
                smoke,
            };
        }
        Settings {
            seconds: number("BENCH_SECONDS", 10.0),
            concurrencies: vec![1, 8, 32, 128],
            instant_mail_load: vec![0.25, 0.5],
            keep_up_search_steps: number("BENCH_KEEP_UP_STEPS", 3.0) as u32,
            slow_mail_rates: vec![120, number("BENCH_SLOW_MAIL_RATE", 400.0) as u32],
            slow_mail_delay_ms: 150,
            // 1, 4 and all of spin.toml's (16).
            shard_counts: vec![1, 4, 0],
            // One shard takes at most `fulfilment_batch / 150 ms`, 53/s with the default 8.
            orders_per_shard: 60,
            ratio_pairs: number("BENCH_RATIO_PAIRS", 3.0) as u32,
            // Pinned, a run at one connection moves by a few percent; two rounds in
            // turn show that, and the medians are the figures.
            head_to_head_rounds: number("BENCH_HEAD_TO_HEAD_ROUNDS", 2.0) as u32,
            drain_seconds: number("BENCH_DRAIN_SECONDS", 120.0),
            redis_benchmark_requests: 200_000,
            smoke,
        }
    }
}

/// Everything one host (the runner, or `spin up`) measured.
#[derive(Debug, Serialize)]
pub struct HostResults {
    pub host: String,
    /// The binary that ran the app (which build of the runner: `target/host-release/…`
    /// from `make bench`, `target/debug/…` from the smoke test).
    pub program: String,
    pub empty: Vec<Figures>,
    pub products: Vec<Figures>,
    pub orders: Vec<Figures>,
    /// `POST /api/orders` latency by number of lines (checkout alone).
    pub order_lines: Vec<(usize, Figures)>,
    /// `POST /api/orders` at 32 connections with every span exported over OTLP to the
    /// project's trace viewer (beside `orders`, which exports nothing).
    pub orders_exported: Figures,
    /// The empty component and `POST /api/orders` at 32 connections, run in turn
    /// ([`Settings::ratio_pairs`]).
    pub ratio_pairs: Vec<RatioPair>,
    pub end_to_end: Vec<EndToEnd>,
    /// End to end with the mail API in `slow_mail_delay_ms`, by number of shards used:
    /// what one shard, and several on one machine, can take.
    pub by_shards: Vec<(u32, EndToEnd)>,
    /// The highest offered rate end to end kept up with (mail at once), and the lowest
    /// it did not, after the bisection.
    pub keeps_up: KeepsUp,
    pub memory: stack::Memory,
    pub startup: stack::Startup,
}

impl HostResults {
    pub fn at(figures: &[Figures], connections: u32) -> Option<&Figures> {
        figures.iter().find(|f| f.connections == connections)
    }
}

/// The empty component, then `POST /api/orders`, at 32 connections.
#[derive(Debug, Serialize)]
pub struct RatioPair {
    pub empty: Figures,
    pub orders: Figures,
}

impl RatioPair {
    /// Accepted orders/s as a share of the empty component's answers/s.
    pub fn ratio(&self) -> Option<f64> {
        (self.empty.requests_per_second > 0.0)
            .then(|| self.orders.per_second(202) / self.empty.requests_per_second)
    }
}

/// Where the bisection for end to end's sustainable rate ended.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KeepsUp {
    /// The highest rate measured that kept up (none when even the lowest did not).
    pub highest_kept_up: Option<u32>,
    /// The lowest rate measured that did not (none when all did: checkout alone's rate
    /// is then the bound).
    pub lowest_fell_behind: Option<u32>,
    /// What checkout alone accepted at 32 connections, the ceiling of the search.
    pub checkout_alone: u32,
}

impl KeepsUp {
    fn of(runs: &[EndToEnd], checkout_alone: u32) -> KeepsUp {
        let instant = || runs.iter().filter(|e| e.mail_delay_ms == 0);
        KeepsUp {
            highest_kept_up: instant()
                .filter(|e| e.kept_up)
                .map(|e| e.offered_per_second)
                .max(),
            lowest_fell_behind: instant()
                .filter(|e| !e.kept_up)
                .map(|e| e.offered_per_second)
                .min(),
            checkout_alone,
        }
    }

    /// The next rate to try: halfway between the two bounds.
    fn next(&self) -> u32 {
        let low = self.highest_kept_up.unwrap_or(0);
        let high = self.lowest_fell_behind.unwrap_or(self.checkout_alone);
        low + high.saturating_sub(low) / 2
    }
}

/// One request at one connection on one host, in every round of the head-to-head step.
#[derive(Debug, Serialize)]
pub struct HeadToHead {
    /// Where the host's and Redis's threads ran ([`Placement`]).
    pub placement: String,
    pub request: String,
    pub host: String,
    /// The status the request answers when all is well.
    pub ok_status: u16,
    pub runs: Vec<Figures>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: report::Machine,
    pub settings: Settings,
    pub redis: Vec<stack::RedisFigures>,
    pub hosts: Vec<HostResults>,
    /// Empty when only one host was measured (outside the smoke run).
    pub head_to_head: Vec<HeadToHead>,
}

fn main() -> Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let settings = Settings::from_env(smoke);
    let out_dir = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| e2e::workspace_root().join("target/bench"));
    std::fs::create_dir_all(&out_dir)?;
    let scratch = e2e::Scratch::new("bench");

    let mut hosts = vec![Host::runner_from_env()];
    match which("spin") {
        Some(spin) => hosts.push(Host::Spin(spin)),
        None => eprintln!("bench: `spin` is not on PATH: only the runner is measured"),
    }

    let redis = e2e::Redis::start(&scratch);
    let redis_figures = stack::redis_benchmark(&redis, &settings)?;
    let mut results = Results {
        machine: report::Machine::read(),
        settings: settings.clone(),
        redis: redis_figures,
        hosts: Vec::new(),
        head_to_head: Vec::new(),
    };
    for host in &hosts {
        eprintln!("bench: measuring {}", host.name());
        results
            .hosts
            .push(measure(host, &scratch, &settings).with_context(|| host.name())?);
    }
    // With one host there is nothing to compare; the smoke run still runs the step.
    if hosts.len() > 1 || settings.smoke {
        eprintln!("bench: head to head at one connection");
        results.head_to_head = head_to_head(&hosts, &scratch, &settings)?;
    }

    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(out_dir.join("results.json"), &json)?;
    let svg = out_dir.join("latency.svg");
    plot::latency_against_concurrency(&results, &svg)?;
    println!("{}", report::table(&results));
    println!(
        "Written: {} and {}",
        out_dir.join("results.json").display(),
        svg.display()
    );
    Ok(())
}

fn measure(host: &Host, scratch: &e2e::Scratch, settings: &Settings) -> Result<HostResults> {
    let load = |url: &str, method, body: Option<&str>, connections, watch: &[(&str, u32)]| {
        Load {
            url,
            method,
            body,
            connections,
            seconds: settings.seconds,
            rate: None,
            watch,
            core: None,
        }
        .run()
    };
    let name = host.name();

    // 1. The floor: the empty component on the same host.
    let empty_app = stack::EmptyApp::start(host, scratch)?;
    let mut empty = Vec::new();
    for &c in &settings.concurrencies {
        let watch = [(name.as_str(), empty_app.pid())];
        empty.push(load(&empty_app.url, "GET", None, c, &watch)?);
    }
    drop(empty_app);

    // Startup, cold then warm, before the shop's own runs fill the cache.
    let startup = stack::Startup::measure(host, scratch)?;

    // 2 and 4. Checkout alone.
    let redis = e2e::Redis::start(scratch);
    let mail = e2e::DevMail::start(scratch);
    let checkout = Shop::start(host, scratch, &redis, &mail, &["checkout"])?;
    checkout.stock_up()?;
    let idle_rss = checkout.rss_mib();
    let order = stack::order_body(1);
    let mut products = Vec::new();
    let mut orders = Vec::new();
    let mut peak_rss = idle_rss;
    let watch = [(name.as_str(), checkout.pid()), ("redis", redis.pid())];
    for &c in &settings.concurrencies {
        products.push(load(
            &checkout.url("/api/products"),
            "GET",
            None,
            c,
            &watch,
        )?);
        let sampler = checkout.rss_sampler();
        orders.push(load(
            &checkout.url("/api/orders"),
            "POST",
            Some(&order),
            c,
            &watch,
        )?);
        peak_rss = peak_rss.max(sampler.peak());
    }
    let mut order_lines = Vec::new();
    for lines in [1, 5, 10] {
        let body = stack::order_body(lines);
        let figures = load(&checkout.url("/api/orders"), "POST", Some(&body), 8, &watch)?;
        order_lines.push((lines, figures));
    }
    let memory = stack::Memory {
        idle_mib: idle_rss,
        peak_under_load_mib: peak_rss,
        after_load_mib: checkout.rss_mib(),
    };
    // The ratio of target 1 from pairs run in turn, both apps up at once.
    let empty_app = stack::EmptyApp::start(host, scratch)?;
    let mut ratio_pairs = Vec::new();
    for _ in 0..settings.ratio_pairs {
        let empty_watch = [(name.as_str(), empty_app.pid())];
        let empty = load(&empty_app.url, "GET", None, 32, &empty_watch)?;
        let orders = load(
            &checkout.url("/api/orders"),
            "POST",
            Some(&order),
            32,
            &watch,
        )?;
        ratio_pairs.push(RatioPair { empty, orders });
    }
    drop(empty_app);
    let checkout_rate = HostResults::at(&orders, 32)
        .or(orders.last())
        .map(|f| f.per_second(202))
        .unwrap_or(100.0);
    drop(checkout);

    // What tracing costs: the same, with every span exported to the trace viewer.
    let viewer = e2e::TraceViewer::start(scratch);
    let traced = Shop::start_exporting(host, scratch, &redis, &mail, &["checkout"], &viewer)?;
    traced.stock_up()?;
    let watch = [
        (name.as_str(), traced.pid()),
        ("redis", redis.pid()),
        ("trace-viewer", viewer.pid()),
    ];
    let orders_exported = load(&traced.url("/api/orders"), "POST", Some(&order), 32, &watch)?;
    drop(traced);

    // 3. End to end: the whole app, at fixed offered rates, then the highest rate it
    // keeps up with (mail at once) by bisection between those that did and did not.
    let all_shards = stack::spin_toml_shards()?;
    let run_on = |shards: u32, rate: u32, delay_ms: u64| -> Result<EndToEnd> {
        let redis = e2e::Redis::start(scratch);
        let mail = e2e::DevMail::start(scratch);
        let shop = Shop::start_sharded(host, scratch, &redis, &mail, shards)?;
        shop.stock_up()?;
        shop.end_to_end(&redis, &mail, rate, delay_ms, settings)
    };
    let run = |rate: u32, delay_ms: u64| run_on(all_shards, rate, delay_ms);
    let mut end_to_end = Vec::new();
    for share in &settings.instant_mail_load {
        end_to_end.push(run((checkout_rate * share).round().max(1.0) as u32, 0)?);
    }
    let checkout_alone = checkout_rate.round() as u32;
    for _ in 0..settings.keep_up_search_steps {
        let bounds = KeepsUp::of(&end_to_end, checkout_alone);
        let rate = bounds.next();
        if [bounds.highest_kept_up, bounds.lowest_fell_behind].contains(&Some(rate)) {
            break;
        }
        end_to_end.push(run(rate.max(1), 0)?);
    }
    let keeps_up = KeepsUp::of(&end_to_end, checkout_alone);
    for &rate in &settings.slow_mail_rates {
        end_to_end.push(run(rate, settings.slow_mail_delay_ms)?);
    }
    let mut by_shards = Vec::new();
    for &shards in &settings.shard_counts {
        let shards = if shards == 0 { all_shards } else { shards };
        let rate = shards * settings.orders_per_shard;
        by_shards.push((shards, run_on(shards, rate, settings.slow_mail_delay_ms)?));
    }

    Ok(HostResults {
        host: host.name(),
        program: host.program_label(),
        empty,
        products,
        orders,
        order_lines,
        orders_exported,
        ratio_pairs,
        end_to_end,
        by_shards,
        keeps_up,
        memory,
        startup,
    })
}

/// Where the head-to-head step pins the processes. At one connection a request waits on
/// Redis a dozen times in a row; whether the host's thread and Redis share a core
/// (a wake-up is then a switch on that core) or not (the other core must be woken) sets
/// its latency, and the scheduler chooses anew in every run: unpinned, one run of the
/// runner's `GET /api/products` took 0.6 ms and the next 1.1.
#[derive(Debug)]
struct Placement {
    label: &'static str,
    /// The cores of the host, Redis and the load generator; none: the scheduler's.
    cores: Option<(u32, u32, u32)>,
}

/// With two cores the bench may use, the host and Redis on the first and then on one
/// each, the load generator on the second; with one, unpinned.
fn placements(two_cores: Option<[u32; 2]>) -> Vec<Placement> {
    match two_cores {
        Some([first, second]) => vec![
            Placement {
                label: "host and Redis on one core",
                cores: Some((first, first, second)),
            },
            Placement {
                label: "host and Redis on two cores",
                cores: Some((first, second, second)),
            },
        ],
        None => vec![Placement {
            label: "unpinned",
            cores: None,
        }],
    }
}

/// The cores this process may run on, from a `Cpus_allowed_list` such as `0-1` or
/// `2,5-7` (a container's cpuset need not start at core 0).
fn allowed_cores(list: &str) -> Vec<u32> {
    list.trim()
        .split(',')
        .filter_map(|range| match range.split_once('-') {
            Some((low, high)) => Some(low.trim().parse().ok()?..=high.trim().parse().ok()?),
            None => {
                let core = range.trim().parse().ok()?;
                Some(core..=core)
            }
        })
        .flatten()
        .collect()
}

/// The first two cores this process may run on, if it may use two.
fn two_allowed_cores() -> Option<[u32; 2]> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    match allowed_cores(list)[..] {
        [first, second, ..] => Some([first, second]),
        _ => None,
    }
}

/// Pins every thread of `pid` and of its descendants to `core` (`taskset`, util-linux).
fn pin(pid: u32, core: u32) -> Result<()> {
    for member in stack::family(pid) {
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &core.to_string(), &member.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running taskset (util-linux)")?;
        anyhow::ensure!(status.success(), "taskset failed on process {member}");
    }
    Ok(())
}

/// Every host's empty component and checkout up at once on one Redis; then, for each
/// placement and in each round, each request at one connection on every host one after
/// the other, the host that goes first turning round by round.
fn head_to_head(
    hosts: &[Host],
    scratch: &e2e::Scratch,
    settings: &Settings,
) -> Result<Vec<HeadToHead>> {
    let redis = e2e::Redis::start(scratch);
    let mail = e2e::DevMail::start(scratch);
    let mut apps = Vec::new();
    for host in hosts {
        let empty = stack::EmptyApp::start(host, scratch)?;
        let checkout = Shop::start(host, scratch, &redis, &mail, &["checkout"])?;
        checkout.stock_up()?;
        apps.push((host.name(), empty, checkout));
    }
    let order = stack::order_body(1);
    // What is asked of each host, with `None` for its empty component's `GET /` and a
    // path for its checkout.
    let requests = [
        (report::EMPTY, None, "GET", None, 200),
        (report::PRODUCTS, Some("/api/products"), "GET", None, 200),
        (
            report::ORDERS,
            Some("/api/orders"),
            "POST",
            Some(order.as_str()),
            202,
        ),
    ];
    let mut results = Vec::new();
    for placement in placements(two_allowed_cores()) {
        let load_core = match placement.cores {
            Some((host_core, redis_core, load_core)) => {
                for (_, empty, checkout) in &apps {
                    pin(empty.pid(), host_core)?;
                    pin(checkout.pid(), host_core)?;
                }
                pin(redis.pid(), redis_core)?;
                Some(load_core)
            }
            None => None,
        };
        let first = results.len();
        for &(request, _, _, _, ok_status) in &requests {
            for (host, _, _) in &apps {
                results.push(HeadToHead {
                    placement: placement.label.to_owned(),
                    request: request.to_owned(),
                    host: host.clone(),
                    ok_status,
                    runs: Vec::new(),
                });
            }
        }
        for round in 0..settings.head_to_head_rounds as usize {
            for (r, &(_, path, method, body, _)) in requests.iter().enumerate() {
                for turn in 0..apps.len() {
                    let a = (turn + round) % apps.len();
                    let (host, empty, checkout) = &apps[a];
                    let (url, pid) = match path {
                        None => (empty.url.clone(), empty.pid()),
                        Some(path) => (checkout.url(path), checkout.pid()),
                    };
                    let watch = [(host.as_str(), pid), ("redis", redis.pid())];
                    let figures = Load {
                        url: &url,
                        method,
                        body,
                        connections: 1,
                        seconds: settings.seconds,
                        rate: None,
                        watch: &watch,
                        core: load_core,
                    }
                    .run()?;
                    results[first + r * apps.len() + a].runs.push(figures);
                }
            }
        }
    }
    Ok(results)
}

/// The program `name` as found on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Sleeps in small steps until `done` or `limit`; true if `done`.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_cores_read_ranges_and_single_cores() {
        assert_eq!(allowed_cores("0-1\n"), [0, 1]);
        assert_eq!(allowed_cores("2,5-7"), [2, 5, 6, 7]);
        assert_eq!(allowed_cores("3"), [3]);
        assert_eq!(allowed_cores(""), Vec::<u32>::new());
    }

    #[test]
    fn placements_use_the_cores_given() {
        let cores = |two| -> Vec<_> { placements(two).into_iter().map(|p| p.cores).collect() };
        assert_eq!(cores(Some([2, 5])), [Some((2, 2, 5)), Some((2, 5, 5))]);
        assert_eq!(cores(None), [None]);
    }
}
