//! Load from a maintained generator, `oha` (crates.io), and the figures it reports.
//!
//! oha runs for a fixed time at a fixed number of connections, or offers requests at a
//! fixed rate (`-q`) with latency measured from when each request was due
//! (`--latency-correction`), so a slow server cannot hide its queue (coordinated
//! omission). Its JSON report gives the latency distribution and the status codes.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// One run of the load generator.
pub struct Load<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub body: Option<&'a str>,
    pub connections: u32,
    pub seconds: f64,
    /// Offer this many requests per second instead of as many as the connections take.
    pub rate: Option<u32>,
    /// The processes whose CPU the figures show: what bounds the run.
    pub watch: &'a [(&'a str, u32)],
    /// The core the load generator is pinned to, if any.
    pub core: Option<u32>,
}

/// What one run measured. Latencies in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub connections: u32,
    pub offered_per_second: Option<u32>,
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Answers by HTTP status ("202": n); failures to connect or read are in `errors`.
    pub statuses: BTreeMap<String, u64>,
    pub errors: u64,
    /// CPU used during the run, in % of one core: each watched process (with its
    /// children), `everything else` (the load generator, the rest of the machine) and
    /// `steal` (kept by the hypervisor for other guests); `idle` is what the machine's
    /// cores had left.
    pub cpu_percent: BTreeMap<String, f64>,
}

impl Figures {
    /// Answers with this status.
    pub fn with_status(&self, status: u16) -> u64 {
        self.statuses.get(&status.to_string()).copied().unwrap_or(0)
    }

    /// Answers with this status per second of the run.
    pub fn per_second(&self, status: u16) -> f64 {
        self.with_status(status) as f64 / self.seconds
    }

    /// Answers with any other status than `status`, and transport errors.
    pub fn unexpected(&self, status: u16) -> u64 {
        self.requests - self.with_status(status) + self.errors
    }
}

impl Load<'_> {
    pub fn run(&self) -> Result<Figures> {
        let mut command = match self.core {
            Some(core) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", &core.to_string(), "oha"]);
                taskset
            }
            None => Command::new("oha"),
        };
        command
            .args([
                "--no-tui",
                "--output-format",
                "json",
                "--wait-ongoing-requests-after-deadline",
            ])
            .arg("-z")
            .arg(format!("{}ms", (self.seconds * 1000.0).round() as u64))
            .arg("-c")
            .arg(self.connections.to_string())
            .arg("-m")
            .arg(self.method);
        if let Some(rate) = self.rate {
            command
                .arg("-q")
                .arg(rate.to_string())
                .arg("--latency-correction");
        }
        if let Some(body) = self.body {
            command
                .args(["-H", "content-type: application/json", "-d"])
                .arg(body);
        }
        command.arg(self.url);
        let cpu = crate::cpu::Meter::start(self.watch);
        let output = command
            .output()
            .context("running oha (installed by `make setup`: cargo install oha)")?;
        let cpu_percent = cpu.stop();
        if !output.status.success() {
            bail!(
                "oha failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let report: Value =
            serde_json::from_slice(&output.stdout).context("reading oha's JSON report")?;
        let mut figures = self.figures(&report)?;
        figures.cpu_percent = cpu_percent;
        Ok(figures)
    }

    fn figures(&self, report: &Value) -> Result<Figures> {
        let ms = |value: &Value| value.as_f64().map(|s| s * 1000.0).unwrap_or(f64::NAN);
        let percentiles = &report["latencyPercentiles"];
        let statuses: BTreeMap<String, u64> = report["statusCodeDistribution"]
            .as_object()
            .context("oha's report has no statusCodeDistribution")?
            .iter()
            .map(|(status, n)| (status.clone(), n.as_u64().unwrap_or(0)))
            .collect();
        let errors = report["errorDistribution"]
            .as_object()
            .map(|errors| errors.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let requests: u64 = statuses.values().sum();
        let seconds = report["summary"]["total"].as_f64().unwrap_or(self.seconds);
        Ok(Figures {
            connections: self.connections,
            offered_per_second: self.rate,
            seconds,
            requests,
            requests_per_second: requests as f64 / seconds,
            p50_ms: ms(&percentiles["p50"]),
            p90_ms: ms(&percentiles["p90"]),
            p99_ms: ms(&percentiles["p99"]),
            max_ms: ms(&report["summary"]["slowest"]),
            statuses,
            errors,
            cpu_percent: BTreeMap::new(),
        })
    }
}
