//! Spin's Redis trigger: SUBSCRIBE to every channel mapped to a component, and run each
//! message in a fresh instance of each of them. Like Spin, a failed handler is only
//! logged (no retry, no acknowledgement). Unlike a bare subscriber, a lost connection
//! (a Redis restart) is retried with capped exponential backoff, and the log says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;
use wasmtime::Store;

use crate::host::redis_trigger::RedisTriggerPre;
use crate::host::{ComponentRuntime, InstanceState};
use crate::redis_conn::redact;

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
                            Some(message) => dispatch(&channels, message, &mut in_flight),
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
    message: redis::Msg,
    in_flight: &mut tokio::task::JoinSet<()>,
) {
    let channel = message.get_channel_name().to_owned();
    let Some(handlers) = channels.get(&channel) else {
        return;
    };
    let payload: Arc<[u8]> = message.get_payload_bytes().into();
    for handler in handlers {
        let handler = handler.clone();
        let payload = payload.clone();
        let channel = channel.clone();
        // The trigger's span (OpenTelemetry: `<channel> receive`).
        let span =
            tracing::info_span!("redis", component = %handler.component.id, channel = %channel);
        in_flight.spawn(
            async move {
                let id = handler.component.id.clone();
                let started = std::time::Instant::now();
                match handle(&handler, &payload).await {
                    Ok(()) => tracing::info!(
                        component = id,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "message on {channel} handled"
                    ),
                    Err(e) => tracing::error!(component = id, "message on {channel} failed: {e:#}"),
                }
            }
            .instrument(span),
        );
    }
}

/// One message in a fresh instance.
async fn handle(handler: &Handler, payload: &[u8]) -> anyhow::Result<()> {
    let mut store = Store::new(
        handler.pre.engine(),
        InstanceState::new(handler.component.clone()),
    );
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
