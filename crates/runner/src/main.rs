//! `spin-runner up`: runs a Spin application (`spin.toml` + `runtime-config.toml`) on
//! Wasmtime, for machines where Spin's CLI cannot be installed. It implements what this
//! shop uses, with Spin's semantics, and refuses the rest by name.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use spin_runner::app::{AppConfig, Overrides};
use spin_runner::capabilities::key_value::{Backend, ComponentStores};
use spin_runner::capabilities::otel::Exporter;
use spin_runner::capabilities::outbound_http::client::HttpClient;
use spin_runner::engine;
use spin_runner::instance::ComponentRuntime;
use spin_runner::manifest::KeyValueStoreConfig;
use spin_runner::routes::Router;
use spin_runner::triggers::redis::RedisTriggerPre;
use spin_runner::triggers::{http as http_trigger, redis as redis_trigger};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Runs a Spin application on Wasmtime (a local stand-in for `spin up`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the application's triggers, like `spin up`.
    Up(UpArgs),
}

#[derive(Args)]
struct UpArgs {
    /// The manifest, or a directory holding spin.toml.
    #[arg(short = 'f', long = "from", default_value = "spin.toml")]
    from: PathBuf,
    /// Address of the HTTP trigger.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: String,
    /// Runtime configuration (key-value stores).
    #[arg(long)]
    runtime_config_file: Option<PathBuf>,
    /// Environment variable for every component: KEY=VALUE.
    #[arg(short = 'e', long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Application variable value: NAME=VALUE (beats SPIN_VARIABLE_NAME and defaults).
    #[arg(long = "variable", value_parser = key_value)]
    variables: Vec<(String, String)>,
    /// Run only these components and their triggers (repeatable).
    #[arg(long = "component-id")]
    component_ids: Vec<String>,
    /// How long the HTTP trigger waits for a request's headers, and between chunks of
    /// its body, before giving up on the client (a runner setting; Spin has none).
    #[arg(long, default_value_t = 10)]
    http_read_timeout_seconds: u64,
    /// Link `wasi:otel` so components can make spans (as `spin up
    /// --experimental-wasi-otel`); without it a component importing it is refused.
    /// Spans are exported when OTEL_EXPORTER_OTLP_ENDPOINT is set, flag or not.
    #[arg(long)]
    experimental_wasi_otel: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Command::Up(args) = Cli::parse().command;
    // The exporter's HTTP client is a blocking one: made before the async runtime, and
    // flushed after it has stopped.
    let result = Exporter::from_env().and_then(|exporter| {
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let result = runtime.block_on(up(args, exporter.clone()));
        drop(runtime);
        if let Some(exporter) = exporter {
            exporter.shutdown();
        }
        result
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs, exporter: Option<Arc<Exporter>>) -> Result<()> {
    let manifest_path = if args.from.is_dir() {
        args.from.join("spin.toml")
    } else {
        args.from.clone()
    };
    let app = AppConfig::load(
        &manifest_path,
        Overrides {
            variables: &args.variables,
            environment: &args.env,
            component_ids: &args.component_ids,
            runtime_config: args.runtime_config_file.as_deref(),
        },
    )?;
    tracing::info!("running application {:?}", app.name);
    if app.http_routes.is_empty() && app.redis_subscriptions.is_empty() {
        bail!("nothing to run: no trigger for the selected components");
    }

    let mut backends = HashMap::new();
    for (label, config) in &app.key_value_stores {
        let backend = match config {
            KeyValueStoreConfig::Redis { url } => Backend::redis(url)?,
            KeyValueStoreConfig::Sqlite { path } => Backend::sqlite(
                PathBuf::from(path.as_deref().unwrap_or_default()).as_path(),
                label,
            )?,
        };
        tracing::info!("key-value store {label:?}: {}", backend.describe());
        backends.insert(label.clone(), backend);
    }

    let engine = engine::engine()?;
    let linker = engine::linker(&engine, args.experimental_wasi_otel)?;
    let cache_dir = app.state_dir.join("cache");
    let http_client = HttpClient::new(app.connection_pooling);
    let mut runtimes = BTreeMap::new();
    let mut pres = BTreeMap::new();
    for (id, c) in &app.components {
        let stores = c
            .key_value_stores
            .iter()
            .map(|label| (label.clone(), backends[label].clone()))
            .collect();
        runtimes.insert(
            id.clone(),
            Arc::new(ComponentRuntime {
                id: id.clone(),
                environment: c.environment.clone(),
                variables: Arc::new(c.variables.clone()),
                stores: Arc::new(ComponentStores(stores)),
                allowed_hosts: c.allowed_hosts.clone(),
                http_client: http_client.clone(),
                exporter: exporter.clone(),
            }),
        );
        let component = engine::load_component(&engine, id, &c.source, &cache_dir)?;
        pres.insert(id.clone(), engine::instance_pre(&linker, &component, id)?);
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Every trigger runs until shutdown; one that ends with an error ends the runner,
    // as a trigger's error ends `spin up`.
    let mut triggers = tokio::task::JoinSet::new();

    if !app.http_routes.is_empty() {
        let mut handlers = Vec::new();
        for r in &app.http_routes {
            let pre = ProxyPre::new(pres[&r.component].clone())
                .map_err(anyhow::Error::from)
                .with_context(|| format!("component {:?} is not an HTTP component", r.component))?;
            let handler = http_trigger::Handler {
                component: runtimes[&r.component].clone(),
                pre,
            };
            handlers.push((r.route.as_str(), handler, r.component.as_str()));
        }
        let (routes, duplicates) = Router::build(handlers)?;
        if !duplicates.is_empty() {
            tracing::error!(
                "The following component routes are duplicates and will never be used:"
            );
            for dup in &duplicates {
                tracing::error!(
                    "  {}: {} (duplicate of {})",
                    dup.replaced,
                    dup.route,
                    dup.effective
                );
            }
        }
        if routes
            .routes()
            .any(|r| format!("{}/", r.based).starts_with("/.well-known/spin/"))
        {
            tracing::error!(
                "Routes under /.well-known/spin/ are handled by the Spin runtime and will never be reached"
            );
        }
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        println!("Serving http://{addr}");
        println!("Available Routes:");
        // As `spin up` prints them, in precedence order:
        // `  checkout: http://127.0.0.1:3000/api (wildcard)`.
        for route in routes.routes() {
            println!(
                "  {}: http://{addr}{}",
                route.target.component.id,
                route.display()
            );
        }
        let mut rx = shutdown_rx.clone();
        let exporter = exporter.clone();
        let app_info = http_trigger::AppInfo {
            name: app.name.clone(),
            version: app.version.clone(),
        };
        let read_timeout = args.http_read_timeout_seconds.max(1);
        triggers.spawn(async move {
            let stop = async move {
                let _ = rx.changed().await;
            };
            let limits = http_trigger::ReadLimits {
                timeout: std::time::Duration::from_secs(read_timeout),
                ..http_trigger::ReadLimits::default()
            };
            http_trigger::serve(listener, routes, app_info, exporter, limits, stop)
                .await
                .context("HTTP trigger")
        });
    }

    let mut ready = Vec::new();
    for (address, channels) in &app.redis_subscriptions {
        let mut handlers: BTreeMap<String, Vec<Arc<redis_trigger::Handler>>> = BTreeMap::new();
        for (channel, components) in channels {
            for id in components {
                let pre = RedisTriggerPre::new(pres[id].clone())
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("component {id:?} is not a Redis component"))?;
                handlers.entry(channel.clone()).or_default().push(Arc::new(
                    redis_trigger::Handler {
                        component: runtimes[id].clone(),
                        pre,
                    },
                ));
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        triggers.spawn(redis_trigger::run(
            address.clone(),
            handlers,
            exporter.clone(),
            tx,
            shutdown_rx.clone(),
        ));
    }

    let signals = shutdown_signal();
    tokio::pin!(signals);
    let all_ready = futures::future::join_all(ready);
    tokio::pin!(all_ready);
    // Until every trigger is ready, then until a signal, a trigger that fails stops all.
    let mut announced = false;
    let failure = loop {
        tokio::select! {
            _ = &mut all_ready, if !announced => {
                announced = true;
                println!("spin-runner: ready");
            }
            () = &mut signals => break None,
            Some(ended) = triggers.join_next() => match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break Some(e),
                Err(e) => break Some(anyhow::Error::from(e).context("a trigger panicked")),
            },
        }
    };
    println!("spin-runner: shutting down");
    let _ = shutdown_tx.send(true);
    // The HTTP trigger drains in-flight requests (bounded), the Redis triggers finish
    // the message in hand (bounded).
    while let Some(ended) = triggers.join_next().await {
        if let Ok(Err(e)) = ended {
            tracing::warn!("while stopping: {e:#}");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
