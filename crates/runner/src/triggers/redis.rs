//! Spin's Redis trigger: SUBSCRIBE to every channel mapped to a component, and run each
//! message in a fresh instance of each of them. Like Spin, a failed handler is only
//! logged (no retry, no acknowledgement). Unlike a bare subscriber, a lost connection
//! (a Redis restart) is retried with capped exponential backoff, and the log says so.
//!
//! Traced as Spin traces it: each message is a `CONSUMER` span `<channel> receive` in
//! a trace of its own (pub/sub carries no context), the outer span of its instances.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;
use wasmtime::Store;

use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};

use crate::capabilities::otel::{Exporter, HostSpan};
use crate::instance::{ComponentRuntime, InstanceState};
use crate::redis_conn::redact;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "spin-shop:worlds/redis-trigger",
        exports: { default: async },
    });
}

pub use bindings::RedisTriggerPre;

/// Links `fermyon:spin/redis-types`, which a Redis component imports for the types of
/// its export.
pub fn add_to_linker(
    linker: &mut wasmtime::component::Linker<InstanceState>,
) -> anyhow::Result<()> {
    bindings::fermyon::spin::redis_types::add_to_linker::<
        _,
        wasmtime::component::HasSelf<InstanceState>,
    >(linker, |state| state)?;
    Ok(())
}

impl bindings::fermyon::spin::redis_types::Host for InstanceState {}

pub struct Handler {
    pub component: Arc<ComponentRuntime>,
    pub pre: RedisTriggerPre<InstanceState>,
}

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Subscribes at `address` and dispatches until `shutdown` turns true. `ready` is told
/// once the first subscription is in place.
pub async fn run(
    address: String,
    channels: BTreeMap<String, Vec<Arc<Handler>>>,
    exporter: Option<Arc<Exporter>>,
    ready: tokio::sync::oneshot::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shown = redact(&address);
    let names: Vec<&String> = channels.keys().collect();
    let mut ready = Some(ready);
    let mut delay = FIRST_RETRY;
    let mut was_connected = false;
    // Handlers still running; on shutdown they get [`DRAIN`] to finish.
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        match subscribe(&address, &names).await {
            Ok(mut pubsub) => {
                if was_connected {
                    tracing::warn!(
                        "redis trigger: reconnected to {shown}, subscribed again to {names:?}"
                    );
                } else {
                    println!("Subscribed to channel(s) {names:?} at {shown}");
                }
                was_connected = true;
                delay = FIRST_RETRY;
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => dispatch(&channels, exporter.as_deref(), message, &mut in_flight),
                            None => break,
                        },
                        Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                        _ = shutdown.changed() => return drain(in_flight).await,
                    }
                }
                tracing::warn!("redis trigger: lost the connection to {shown}; reconnecting");
            }
            Err(e) => tracing::warn!(
                "redis trigger: cannot subscribe at {shown}: {e}; retrying in {} ms",
                delay.as_millis()
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return drain(in_flight).await,
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// How long in-flight messages may take to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

async fn drain(mut in_flight: tokio::task::JoinSet<()>) {
    let all = async { while in_flight.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, all).await.is_err() {
        tracing::warn!("redis trigger: handlers still running after {DRAIN:?}; stopping anyway");
    }
}

async fn subscribe(address: &str, channels: &[&String]) -> redis::RedisResult<redis::aio::PubSub> {
    let client = redis::Client::open(address)?;
    let mut pubsub = client.get_async_pubsub().await?;
    for channel in channels {
        pubsub.subscribe(channel.as_str()).await?;
    }
    Ok(pubsub)
}

fn dispatch(
    channels: &BTreeMap<String, Vec<Arc<Handler>>>,
    exporter: Option<&Exporter>,
    message: redis::Msg,
    in_flight: &mut tokio::task::JoinSet<()>,
) {
    let channel = message.get_channel_name().to_owned();
    let Some(handlers) = channels.get(&channel) else {
        return;
    };
    let payload: Arc<[u8]> = message.get_payload_bytes().into();
    // One span per message, the outer span of every component's instance.
    let receive_span = Arc::new(std::sync::Mutex::new(match exporter {
        Some(exporter) => exporter.start(
            format!("{channel} receive"),
            SpanKind::Consumer,
            &Context::new(),
            vec![
                KeyValue::new("messaging.system", "redis"),
                KeyValue::new("messaging.operation", "receive"),
                KeyValue::new("messaging.destination.name", channel.clone()),
                KeyValue::new("messaging.message.body.size", payload.len() as i64),
            ],
        ),
        None => HostSpan::none(),
    }));
    for handler in handlers {
        let handler = handler.clone();
        let payload = payload.clone();
        let channel = channel.clone();
        let receive_span = receive_span.clone();
        let log_span =
            tracing::info_span!("redis", component = %handler.component.id, channel = %channel);
        in_flight.spawn(
            async move {
                let id = handler.component.id.clone();
                let started = std::time::Instant::now();
                let outer = lock(&receive_span).span_context();
                match handle(&handler, outer, &payload).await {
                    Ok(()) => tracing::info!(
                        component = id,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "message on {channel} handled"
                    ),
                    Err(e) => {
                        tracing::error!(component = id, "message on {channel} failed: {e:#}");
                        lock(&receive_span).fail(format!("{id}: {e:#}"));
                    }
                }
                // The span ends with the last handler of the message.
                drop(receive_span);
            }
            .instrument(log_span),
        );
    }
}

fn lock(span: &std::sync::Mutex<HostSpan>) -> std::sync::MutexGuard<'_, HostSpan> {
    span.lock().unwrap_or_else(|e| e.into_inner())
}

/// One message in a fresh instance.
async fn handle(
    handler: &Handler,
    outer: opentelemetry::trace::SpanContext,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut store = Store::new(handler.pre.engine(), handler.component.instance(outer));
    let instance = handler.pre.instantiate_async(&mut store).await?;
    match instance
        .fermyon_spin_inbound_redis()
        .call_handle_message(&mut store, &payload.to_vec())
        .await?
    {
        Ok(()) => Ok(()),
        Err(e) => anyhow::bail!("handler returned {e:?}"),
    }
}
