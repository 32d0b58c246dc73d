//! `supervisor`: runs the shop's local processes (Redis, the dev mail API, the trace
//! viewer, the app) and keeps them running. Real Spin's Redis trigger exits when Redis
//! goes away, so without this a Redis crash would take the shop down until someone
//! restarted it by hand.
//!
//! Processes start in order, each behind its readiness check; one that exits is
//! restarted with backoff (0.5 s doubling to 30 s) and the reason printed; periodic jobs
//! (e.g. the redrive call) run every N seconds; SIGTERM/SIGINT stops everything in
//! reverse order. See `config.rs` for the file format.

mod backoff;
mod config;
mod output;
mod supervise;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use config::Config;
use supervise::Outcome;

#[derive(Parser)]
#[command(
    version,
    about = "Starts processes in order, restarts them when they exit, runs periodic jobs"
)]
struct Cli {
    /// The TOML file naming the processes ([[process]]) and periodic jobs ([[every]]).
    #[arg(long)]
    config: PathBuf,
    /// A JSON file rewritten on every change: each process's pid, restarts and readiness.
    #[arg(long)]
    status_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("supervisor: {error:#}");
            return ExitCode::from(2);
        }
    };
    // Single-threaded on purpose: PR_SET_PDEATHSIG fires when the *thread* that forked a
    // child exits, so every child must be forked by a thread that lives as long as the
    // supervisor. The supervisor only waits, so one thread is plenty.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("supervisor: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(supervise::run(config, cli.status_file)) {
        Ok(Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(Outcome::StartupFailed) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("supervisor: {error:#}");
            ExitCode::FAILURE
        }
    }
}
