//! `trace-viewer`: see the shop's distributed traces without Docker or Jaeger.
//! `serve` is the OTLP/HTTP receiver that the runner, devmail and `spin up` export to;
//! it keeps recent traces in bounded memory and shows them at `/` as a timeline.
//! `trace <id>` prints one trace (by trace id or `shop.order.id`) as a text waterfall.

mod html;
mod http;
mod model;
mod otlp;
mod store;
mod tree;
mod waterfall;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use model::ORDER_ID_ATTRIBUTE;
use store::{Store, TraceDetail};

#[derive(Parser)]
#[command(
    version,
    about = "Local OpenTelemetry trace viewer: OTLP/HTTP receiver, terminal waterfall, HTML timeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive OTLP/HTTP traces and serve the viewer (until SIGTERM or Ctrl-C).
    Serve {
        /// Address to listen on; 4318 is the OTLP/HTTP default. Port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:4318")]
        listen: String,
        /// Traces kept; the least recently updated one is evicted first.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        max_traces: u32,
        /// Spans kept per trace; later ones are counted as dropped.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
        max_spans_per_trace: u32,
    },
    /// Print a trace as a waterfall, by trace id (32 hex digits) or by shop.order.id.
    Trace {
        /// A trace id, or an order id looked up as the `shop.order.id` span attribute.
        id: String,
        /// The running `trace-viewer serve`.
        #[arg(long, default_value = "http://127.0.0.1:4318")]
        from: String,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve {
            listen,
            max_traces,
            max_spans_per_trace,
        } => serve(&listen, max_traces as usize, max_spans_per_trace as usize),
        Command::Trace { id, from } => print_traces(&id, &from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trace-viewer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(listen: &str, max_traces: usize, max_spans_per_trace: usize) -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries only the address line that scripts wait for.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Built by hand, not with #[tokio::main]: the `trace` command uses blocking reqwest,
    // which refuses to run inside a runtime.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!(
            "trace-viewer listening on http://{}",
            listener.local_addr()?
        );
        let store = Arc::new(Store::new(max_traces, max_spans_per_trace));
        http::serve(listener, store).await
    })
}

fn print_traces(id: &str, from: &str) -> anyhow::Result<()> {
    let base = from.trim_end_matches('/');
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let is_trace_id = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if is_trace_id {
        if let Some(trace) = fetch_trace(&client, base, &id.to_ascii_lowercase())? {
            print!("{}", waterfall::render(&trace));
            return Ok(());
        }
    }

    let response = client
        .get(format!("{base}/api/search"))
        .query(&[("attribute", ORDER_ID_ATTRIBUTE), ("value", id)])
        .send()
        .with_context(|| unreachable(base))?;
    if !response.status().is_success() {
        bail!("{base}/api/search answered {}", response.status());
    }
    let found: serde_json::Value = response.json().context("unexpected search answer")?;
    let trace_ids: Vec<&str> = found["trace_ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(|id| id.as_str()).collect())
        .unwrap_or_default();
    let mut printed = 0;
    for trace_id in trace_ids {
        // A trace can be evicted between the search and this request: skip it.
        if let Some(trace) = fetch_trace(&client, base, trace_id)? {
            if printed > 0 {
                println!();
            }
            print!("{}", waterfall::render(&trace));
            printed += 1;
        }
    }
    if printed == 0 {
        if is_trace_id {
            bail!("no trace {id} at {base}, and no span with {ORDER_ID_ATTRIBUTE} = {id}");
        }
        bail!("no trace at {base} has a span with {ORDER_ID_ATTRIBUTE} = {id}");
    }
    Ok(())
}

/// `None` when the viewer does not have (or no longer has) the trace.
fn fetch_trace(
    client: &reqwest::blocking::Client,
    base: &str,
    trace_id: &str,
) -> anyhow::Result<Option<TraceDetail>> {
    let response = client
        .get(format!("{base}/api/traces/{trace_id}"))
        .send()
        .with_context(|| unreachable(base))?;
    match response.status() {
        reqwest::StatusCode::NOT_FOUND => Ok(None),
        status if status.is_success() => {
            Ok(Some(response.json().context("unexpected trace answer")?))
        }
        status => bail!("{base}/api/traces/{trace_id} answered {status}"),
    }
}

fn unreachable(base: &str) -> String {
    format!("cannot reach the trace viewer at {base}: is `trace-viewer serve` running?")
}
