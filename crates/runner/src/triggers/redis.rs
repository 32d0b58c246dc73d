//! Spin's Redis trigger, with Spin's semantics (its `crates/trigger-redis`):
//!
//! - one subscriber (one connection) per distinct address, SUBSCRIBEd to every channel
//!   mapped to a component there;
//! - its messages are handled one at a time, in order: every component of the channel
//!   runs (concurrently) in a fresh instance, and the next message waits until all have
//!   finished;
//! - a failed handler is only logged: no retry, no acknowledgement;
//! - Redis unreachable at startup fails the runner at once, and a subscription that ends
//!   (Redis restarted) ends the trigger with an error, and so the runner: no reconnect.
//!   Something outside (a supervisor, Kubernetes) restarts it, as it must restart Spin.
//!
//! Traced as Spin traces it: each message is a `CONSUMER` span `<channel> receive` in
//! a trace of its own (pub/sub carries no context), the outer span of its instances.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
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

/// How long the message being handled may take to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

/// Subscribes at `address` and handles its messages until `shutdown` turns true.
/// `ready` is told once subscribed. An error ends the trigger: Redis unreachable at
/// startup, or the subscription lost.
pub async fn run(
    address: String,
    channels: BTreeMap<String, Vec<Arc<Handler>>>,
    exporter: Option<Arc<Exporter>>,
    ready: tokio::sync::oneshot::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let shown = redact(&address);
    let names: Vec<&String> = channels.keys().collect();
    let mut pubsub = subscribe(&address, &names)
        .await
        .with_context(|| format!("Redis trigger: cannot subscribe at {shown}"))?;
    println!("Subscribed to channel(s) {names:?} at {shown}");
    let _ = ready.send(());
    let mut messages = pubsub.on_message();
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(message) = message else {
            anyhow::bail!("Redis trigger: disconnected from {shown}");
        };
        let handled = handle_message(&channels, exporter.as_deref(), message);
        tokio::pin!(handled);
        tokio::select! {
            () = &mut handled => {}
            _ = shutdown.changed() => {
                if tokio::time::timeout(DRAIN, handled).await.is_err() {
                    tracing::warn!("redis trigger: a message was still being handled after {DRAIN:?}; stopping anyway");
                }
                return Ok(());
            }
        }
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

/// Runs every component of the message's channel on it, and returns when all are done.
async fn handle_message(
    channels: &BTreeMap<String, Vec<Arc<Handler>>>,
    exporter: Option<&Exporter>,
    message: redis::Msg,
) {
    let channel = message.get_channel_name().to_owned();
    let Some(handlers) = channels.get(&channel) else {
        return;
    };
    let payload = message.get_payload_bytes();
    // One span per message, the outer span of every component's instance.
    let mut receive_span = match exporter {
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
    };
    let outer = receive_span.span_context();
    let runs = handlers.iter().map(|handler| {
        let id = handler.component.id.clone();
        let log_span = tracing::info_span!("redis", component = %id, channel = %channel);
        let outer = outer.clone();
        let channel = &channel;
        async move {
            let started = std::time::Instant::now();
            let result = handle(handler, outer, payload).await;
            match &result {
                Ok(()) => tracing::info!(
                    component = id,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "message on {channel} handled"
                ),
                // As Spin: logged, nothing more.
                Err(e) => tracing::error!(component = id, "message on {channel} failed: {e:#}"),
            }
            result.map_err(|e| format!("{id}: {e:#}"))
        }
        .instrument(log_span)
    });
    for result in futures::future::join_all(runs).await {
        if let Err(e) = result {
            receive_span.fail(e);
        }
    }
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
