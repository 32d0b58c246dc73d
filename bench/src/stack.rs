//! The processes a benchmark step runs against (Redis, the dev mail API, the app under
//! the runner or `spin up`), and the figures only they can give: Redis's own floor,
//! memory, startup time, and the end-to-end flow from order to email.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::load::{Figures, Load};
use crate::{wait_until, Settings};

/// What runs the app.
pub enum Host {
    /// This project's runner: the binary named by `BENCH_RUNNER` (`scripts/bench.sh`
    /// passes the optimised build `make up` runs), else `target/debug/spin-runner`.
    Runner(PathBuf),
    /// Fermyon Spin's `spin` CLI.
    Spin(PathBuf),
}

impl Host {
    /// The runner the benchmark measures (see [`Host::Runner`]).
    pub fn runner_from_env() -> Host {
        Host::Runner(
            std::env::var_os("BENCH_RUNNER")
                .map(PathBuf::from)
                .unwrap_or_else(e2e::runner_binary),
        )
    }

    pub fn name(&self) -> String {
        match self {
            Host::Runner(_) => "runner".to_owned(),
            Host::Spin(_) => "spin".to_owned(),
        }
    }

    pub fn program(&self) -> PathBuf {
        match self {
            Host::Runner(program) | Host::Spin(program) => program.clone(),
        }
    }

    /// The program measured, relative to the workspace where it is inside it, so that
    /// the results say which build of the runner (debug, host-release) they are of.
    pub fn program_label(&self) -> String {
        let program = self.program();
        let program = std::fs::canonicalize(&program).unwrap_or(program);
        program
            .strip_prefix(e2e::workspace_root())
            .unwrap_or(&program)
            .display()
            .to_string()
    }
}

/// The SKU the benchmark orders, and the ones the multi-line orders add.
const SKUS: [&str; 10] = [
    "STICKER-PACK",
    "SPIN-MUG",
    "WASM-TEE-M",
    "WASM-TEE-L",
    "SPIN-HOODIE",
    "WASI-CAP",
    "FERRIS-PLUSH",
    "COMPONENT-POSTER",
    "PUBSUB-SOCKS",
    "TRACE-NOTEBOOK",
];

/// A valid order of `lines` lines, one unit each.
pub fn order_body(lines: usize) -> String {
    let items: Vec<Value> = SKUS[..lines]
        .iter()
        .map(|sku| json!({ "sku": sku, "quantity": 1 }))
        .collect();
    json!({
        "email": "bench@example.com",
        "items": items,
        "card": { "number": e2e::APPROVED_CARD, "expiry": "12/39", "cvc": "123" }
    })
    .to_string()
}

/// `redis-benchmark`'s figures for one command.
#[derive(Debug, Serialize)]
pub struct RedisFigures {
    pub command: String,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Where the CPU went while it ran (Redis, redis-benchmark in "everything else",
    /// steal, idle): this step waits and wakes the most, so steal hits it hardest.
    pub cpu_percent: BTreeMap<String, f64>,
}

/// Redis's own floor for the commands one order costs, at 32 connections as the HTTP
/// figures are compared at. redis-benchmark reports p50, p95 and p99 (no p90).
pub fn redis_benchmark(redis: &e2e::Redis, settings: &Settings) -> Result<Vec<RedisFigures>> {
    let commands: [&[&str]; 3] = [
        &["SET", "bench:key", "value"],
        &["INCRBY", "bench:counter", "1"],
        &["PUBLISH", "bench:channel", "message"],
    ];
    let mut figures = Vec::new();
    for command in commands {
        let meter = crate::cpu::Meter::start(&[("redis", redis.pid())]);
        let output = Command::new("redis-benchmark")
            .args(["-p", &redis.port.to_string(), "-c", "32", "--csv"])
            .arg("-n")
            .arg(settings.redis_benchmark_requests.to_string())
            .args(command)
            .output()
            .context("running redis-benchmark (Debian's redis-tools)")?;
        let cpu_percent = meter.stop();
        let text = String::from_utf8_lossy(&output.stdout);
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        let row = text
            .lines()
            .nth(1)
            .with_context(|| format!("redis-benchmark printed no figures: {text}"))?;
        let cells: Vec<f64> = row
            .split("\",\"")
            .skip(1)
            .map(|cell| cell.trim_matches('"').parse().unwrap_or(f64::NAN))
            .collect();
        if cells.len() < 7 {
            bail!("unexpected redis-benchmark output: {row}");
        }
        figures.push(RedisFigures {
            command: command[0].to_owned(),
            requests_per_second: cells[0],
            p50_ms: cells[3],
            p95_ms: cells[4],
            p99_ms: cells[5],
            max_ms: cells[6],
            cpu_percent,
        });
    }
    Ok(figures)
}

/// The empty component, served by the host.
pub struct EmptyApp {
    pub url: String,
    _process: e2e::Process,
}

impl EmptyApp {
    pub fn pid(&self) -> u32 {
        self._process.child_id()
    }

    pub fn start(host: &Host, scratch: &e2e::Scratch) -> Result<EmptyApp> {
        let port = e2e::free_port();
        let manifest = e2e::workspace_root().join("bench/empty/spin.toml");
        if !e2e::workspace_root()
            .join("target/wasm32-wasip2/release/bench_empty.wasm")
            .exists()
        {
            bail!("bench_empty.wasm is missing: `scripts/build-wasm.sh bench-empty` builds it");
        }
        let mut command = Command::new(host.program());
        command
            .args(["up", "--from"])
            .arg(&manifest)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn");
        let process = e2e::Process::spawn(&format!("empty-{port}"), &mut command, scratch.path());
        let url = format!("http://127.0.0.1:{port}/");
        if !wait_until(Duration::from_secs(300), || answers(&url)) {
            bail!("the empty component did not answer:\n{}", process.log());
        }
        Ok(EmptyApp {
            url,
            _process: process,
        })
    }
}

fn answers(url: &str) -> bool {
    e2e::http()
        .get(url)
        .send()
        .is_ok_and(|r| r.status().is_success())
}

/// The runner's (or Spin's) resident memory.
#[derive(Debug, Serialize)]
pub struct Memory {
    pub idle_mib: f64,
    pub peak_under_load_mib: f64,
    pub after_load_mib: f64,
}

/// Time from starting the app to its first answer.
#[derive(Debug, Serialize)]
pub struct Startup {
    /// Nothing compiled yet (an empty compiled-component cache).
    pub cold_ms: f64,
    /// The cache filled by the cold start.
    pub warm_ms: f64,
}

impl Startup {
    /// Runs the shop's manifest from a directory of its own, so that its cache starts
    /// empty (the runner's and Spin's alike): once cold, once warm.
    pub fn measure(host: &Host, scratch: &e2e::Scratch) -> Result<Startup> {
        let dir = scratch.path().join("startup");
        std::fs::create_dir_all(&dir)?;
        let root = e2e::workspace_root();
        let manifest = std::fs::read_to_string(root.join("spin.toml"))?.replace(
            "source = \"target/",
            &format!("source = \"{}/target/", root.display()),
        );
        std::fs::write(dir.join("spin.toml"), manifest)?;
        let redis = e2e::Redis::start(scratch);
        let time = || -> Result<f64> {
            let port = e2e::free_port();
            let mut command = Command::new(host.program());
            command
                .args(["up", "--experimental-wasi-otel", "--from"])
                .arg(dir.join("spin.toml"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--variable")
                .arg(format!("redis_address={}", redis.url()))
                .arg("--variable")
                .arg(format!("redis_host={}", redis.url()))
                .current_dir(&dir)
                .env("RUST_LOG", "warn")
                // `spin up` keeps Wasmtime's compilation cache under the user's cache
                // directory, not the app's (the runner keeps it in the app's state
                // directory): a cache of this directory's own makes the first start
                // cold for both.
                .env("XDG_CACHE_HOME", dir.join("user-cache"));
            let started = Instant::now();
            let process = e2e::Process::spawn(&format!("startup-{port}"), &mut command, &dir);
            let url = format!("http://127.0.0.1:{port}/api/products");
            if !wait_until(Duration::from_secs(600), || answers(&url)) {
                bail!("the shop did not answer:\n{}", process.log());
            }
            Ok(started.elapsed().as_secs_f64() * 1000.0)
        };
        // The default key-value store (SQLite) lives in the same directory: fine for
        // one GET.
        let cold_ms = time()?;
        let warm_ms = time()?;
        Ok(Startup { cold_ms, warm_ms })
    }
}

/// The shop (all components, or only some) on the host.
pub struct Shop {
    runner: e2e::Runner,
    host: String,
}

impl Shop {
    pub fn start(
        host: &Host,
        scratch: &e2e::Scratch,
        redis: &e2e::Redis,
        mail: &e2e::DevMail,
        components: &[&str],
    ) -> Result<Shop> {
        let shards = spin_toml_shards()?;
        Self::launch(host, scratch, redis, mail, components, shards, None)
    }

    /// The whole app, checkout spreading orders over only the first `shards` of
    /// `spin.toml`'s channels (the other subscribers idle).
    pub fn start_sharded(
        host: &Host,
        scratch: &e2e::Scratch,
        redis: &e2e::Redis,
        mail: &e2e::DevMail,
        shards: u32,
    ) -> Result<Shop> {
        Self::launch(host, scratch, redis, mail, &[], shards, None)
    }

    /// The same, exporting every span to `viewer`.
    pub fn start_exporting(
        host: &Host,
        scratch: &e2e::Scratch,
        redis: &e2e::Redis,
        mail: &e2e::DevMail,
        components: &[&str],
        viewer: &e2e::TraceViewer,
    ) -> Result<Shop> {
        Self::launch(
            host,
            scratch,
            redis,
            mail,
            components,
            spin_toml_shards()?,
            Some(viewer.endpoint()),
        )
    }

    fn launch(
        host: &Host,
        scratch: &e2e::Scratch,
        redis: &e2e::Redis,
        mail: &e2e::DevMail,
        components: &[&str],
        shards: u32,
        otlp_endpoint: Option<String>,
    ) -> Result<Shop> {
        let runner = e2e::Runner::start(
            scratch,
            redis,
            mail,
            e2e::RunnerOptions {
                components,
                order_shards: shards,
                program: Some(host.program()),
                // Logging every request costs as much as some of the work measured.
                process_env: vec![("RUST_LOG".into(), "warn".into())],
                otlp_endpoint,
                ..e2e::RunnerOptions::default()
            },
        );
        let shop = Shop {
            runner,
            host: host.name(),
        };
        if !wait_until(Duration::from_secs(300), || {
            answers(&shop.url("/api/products"))
        }) {
            bail!("the shop did not answer:\n{}", shop.runner.process.log());
        }
        // `spin up` answers HTTP before its Redis trigger has subscribed (about 100 ms
        // on Spin 4.1): an order placed meanwhile finds no subscriber and waits for
        // redrive (docs/spin-semantics.md). The figures are of the app running, so the
        // load starts once every shard's channel has its subscriber.
        if components.is_empty() || components.contains(&"fulfilment") {
            for shard in 0..spin_toml_shards()? {
                redis.wait_for_subscribers(&format!("{}.{shard}", e2e::CHANNEL_BASE), 1);
            }
        }
        Ok(shop)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.runner.base_url)
    }

    /// Enough stock of every SKU the benchmark orders that nothing is refused, through
    /// the admin endpoint, as an operator would.
    pub fn stock_up(&self) -> Result<()> {
        for sku in SKUS {
            let response = e2e::http()
                .post(self.url(&format!("/api/admin/stock/{sku}")))
                .bearer_auth(e2e::ADMIN_TOKEN)
                .json(&json!({ "set": 1_000_000_000 }))
                .send()?;
            if !response.status().is_success() {
                bail!("setting the stock of {sku}: {}", response.text()?);
            }
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.runner.process.child_id()
    }

    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.pid())
    }

    /// Samples the resident memory every 100 ms until dropped.
    pub fn rss_sampler(&self) -> RssSampler {
        RssSampler::start(self.pid())
    }

    /// Offers `rate` orders/s for the benchmark's time, the mail API answering after
    /// `delay_ms`; then waits for the backlog to drain.
    pub fn end_to_end(
        &self,
        redis: &e2e::Redis,
        mail: &e2e::DevMail,
        rate: u32,
        delay_ms: u64,
        settings: &Settings,
    ) -> Result<EndToEnd> {
        if delay_ms > 0 {
            mail.set_faults(&json!({ "count": u32::MAX, "delay_ms": delay_ms }));
        }
        let sequence_key = shop_domain::store::keys::order_sequence();
        let numbered = || -> u64 {
            redis
                .command(&["GET", &sequence_key])
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let start_sequence = numbered();
        let mut emails = Emails::default();
        emails.poll(mail);
        let start_emails = emails.received.len();

        let started = Instant::now();
        let load = {
            let url = self.url("/api/orders");
            let body = order_body(1);
            let seconds = settings.seconds;
            let watch = [
                (self.host.clone(), self.pid()),
                ("redis".to_owned(), redis.pid()),
                ("devmail".to_owned(), mail.pid()),
            ];
            std::thread::spawn(move || {
                Load {
                    url: &url,
                    method: "POST",
                    body: Some(&body),
                    connections: 64,
                    seconds,
                    rate: Some(rate),
                    watch: &watch
                        .iter()
                        .map(|(n, p)| (n.as_str(), *p))
                        .collect::<Vec<_>>(),
                    core: None,
                }
                .run()
            })
        };
        let mut samples = Vec::new();
        while !load.is_finished() {
            std::thread::sleep(Duration::from_millis(500));
            emails.poll(mail);
            samples.push(Sample {
                at_s: started.elapsed().as_secs_f64(),
                accepted: numbered() - start_sequence,
                emailed: (emails.received.len() - start_emails) as u64,
            });
        }
        let figures = load.join().expect("the load thread")?;
        let load_seconds = started.elapsed().as_secs_f64();
        emails.poll(mail);
        let accepted = figures.with_status(202);
        let emailed_during_load = (emails.received.len() - start_emails) as u64;
        let backlog_at_end = accepted.saturating_sub(emailed_during_load);
        let drained = wait_until(Duration::from_secs_f64(settings.drain_seconds), || {
            emails.poll(mail);
            (emails.received.len() - start_emails) as u64 >= accepted
        });
        let drain_s = started.elapsed().as_secs_f64() - load_seconds;
        let latency = emails.order_to_email_ms(self, start_emails)?;
        let growth = backlog_slope(&samples);
        let unexpected_answers = figures.unexpected(202);
        Ok(EndToEnd {
            offered_per_second: rate,
            mail_delay_ms: delay_ms,
            accepted_per_second: figures.per_second(202),
            emailed_per_second_during_load: emailed_during_load as f64 / figures.seconds,
            backlog_at_end,
            backlog_growth_per_second: growth,
            kept_up: unexpected_answers == 0
                && emailed_during_load as f64 >= 0.95 * accepted as f64
                && growth < 0.02 * f64::from(rate),
            drained,
            drain_seconds: drain_s,
            order_to_email_p50_ms: latency.0,
            order_to_email_p99_ms: latency.1,
            unexpected_answers,
            checkout: figures,
        })
    }
}

/// The number of shards `spin.toml` declares (its `order_shards` default).
pub fn spin_toml_shards() -> Result<u32> {
    let text = std::fs::read_to_string(e2e::workspace_root().join("spin.toml"))?;
    text.lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("order_shards = { default = \"")?;
            rest.split('"').next()?.parse().ok()
        })
        .context("spin.toml declares no order_shards default")
}

/// One end-to-end run.
#[derive(Debug, Serialize)]
pub struct EndToEnd {
    pub offered_per_second: u32,
    pub mail_delay_ms: u64,
    pub accepted_per_second: f64,
    pub emailed_per_second_during_load: f64,
    /// Orders accepted but not yet emailed when the load stopped.
    pub backlog_at_end: u64,
    /// How fast the backlog grew over the second half of the load (orders/s; about 0
    /// when fulfilment keeps up).
    pub backlog_growth_per_second: f64,
    /// Whether fulfilment kept pace with the orders accepted: every answer as expected,
    /// at least 95% of the accepted orders emailed during the load (the rest in flight),
    /// and over the second half of the load a backlog growing by less than 2% of the
    /// offered rate.
    pub kept_up: bool,
    pub drained: bool,
    /// From the end of the load until every accepted order was emailed (or the wait
    /// gave up).
    pub drain_seconds: f64,
    /// From an order's acceptance (its `created_at`) to its email reaching the mail API.
    pub order_to_email_p50_ms: f64,
    pub order_to_email_p99_ms: f64,
    pub unexpected_answers: u64,
    pub checkout: Figures,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    accepted: u64,
    emailed: u64,
}

/// The least-squares slope of the backlog over the second half of the samples.
fn backlog_slope(samples: &[Sample]) -> f64 {
    let half = &samples[samples.len() / 2..];
    if half.len() < 2 {
        return 0.0;
    }
    let points: Vec<(f64, f64)> = half
        .iter()
        .map(|s| (s.at_s, s.accepted as f64 - s.emailed as f64))
        .collect();
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

/// The emails the dev mail API accepted, read once each.
#[derive(Default)]
struct Emails {
    /// (order id, when the mail API received it).
    received: Vec<(String, DateTime<Utc>)>,
}

impl Emails {
    fn poll(&mut self, mail: &e2e::DevMail) {
        for message in mail.messages_since(self.received.len()) {
            let order = message["subject"]
                .as_str()
                .and_then(|s| s.split_whitespace().find(|w| w.starts_with("ord_")))
                .unwrap_or_default()
                .to_owned();
            let at = message["received_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(Utc::now);
            self.received.push((order, at));
        }
    }

    /// p50 and p99 of order acceptance to email, over up to 400 emails spread evenly
    /// from `start` on (each needs a `GET /api/orders/{id}` for its `created_at`).
    fn order_to_email_ms(&self, shop: &Shop, start: usize) -> Result<(f64, f64)> {
        let emails = &self.received[start..];
        if emails.is_empty() {
            return Ok((f64::NAN, f64::NAN));
        }
        let step = emails.len().div_ceil(400);
        let mut latencies = Vec::new();
        for (order, emailed_at) in emails.iter().step_by(step) {
            let order: Value = e2e::http()
                .get(shop.url(&format!("/api/orders/{order}")))
                .send()?
                .json()?;
            if let Some(created) = order["created_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            {
                let ms = (*emailed_at - created.with_timezone(&Utc)).num_milliseconds();
                latencies.push(ms as f64);
            }
        }
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        Ok((at(0.5), at(0.99)))
    }
}

/// Resident memory of `pid` and its descendants (`spin up` runs its trigger as a
/// child process), in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    family(pid)
        .iter()
        .map(|pid| resident_kib(&PathBuf::from(format!("/proc/{pid}"))))
        .sum::<u64>() as f64
        / 1024.0
}

/// `pid` and its descendants.
pub fn family(pid: u32) -> Vec<u32> {
    let mut family = vec![pid];
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(parent) = parent_of(&entry.path()) {
                parents.entry(parent).or_default().push(child);
            }
        }
    }
    let mut i = 0;
    while i < family.len() {
        if let Some(children) = parents.get(&family[i]) {
            family.extend(children);
        }
        i += 1;
    }
    family
}

fn parent_of(proc_dir: &Path) -> Option<u32> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

fn resident_kib(proc_dir: &Path) -> u64 {
    std::fs::read_to_string(proc_dir.join("status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The highest resident memory seen while it lives.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak_kib) = (stop.clone(), peak_kib.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let kib = (rss_mib(pid) * 1024.0) as u64;
                    peak_kib.fetch_max(kib, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        RssSampler {
            stop,
            peak_kib,
            thread: Some(thread),
        }
    }

    pub fn peak(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
