//! `fulfilment`: handles order-placed events from the Redis channel, as
//! `shop_domain::fulfilment` describes: claim the order for the event's epoch, settle the
//! payment, send the email under the order's mail lease.
//!
//! Spin hands a subscriber its messages one at a time, so a handler also takes on the
//! orders of its shard already waiting behind its own (up to `fulfilment_batch`) and
//! fulfils them together with it: their mail requests are in flight at once, and their
//! own events, when they come, are no-ops.
//!
//! Each message is one `CONSUMER` span, `process order.placed`, in the trace the event
//! carries (the checkout request's, or the order's for a redrive), with a span per step
//! and per mail attempt. A message that changes nothing is still traced, as a no-op. An
//! order taken on ahead of its event gets a span `fulfil order (ahead of its event)` in
//! its own trace, linked to the message that took it on.
//!
//! The handler returns an error only when the key-value store fails; Spin merely logs it
//! (there is no redelivery), and `POST /api/admin/redrive` picks the order up later.

// Log lines go through `shop_adapters::log_line!`: one write each, whole on Spin.
#![deny(clippy::print_stderr, clippy::print_stdout)]

mod mailer;

use bytes::Bytes;
use opentelemetry::trace::{FutureExt, Link, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue as Attribute};
use shop_adapters::telemetry::{self, Steps};
use shop_adapters::{seconds_variable, variable, ShopStore, SpinEnv};
use shop_domain::durable::Budget;
use shop_domain::event;
use shop_domain::fulfilment::{self, Outcome, Settings};
use shop_domain::mail::{MailConfig, RetryPolicy};
use spin_sdk::redis_component;

const SPAN_NAME: &str = "process order.placed";
/// The span of an order this handler took on ahead of its event.
const AHEAD_SPAN_NAME: &str = "fulfil order (ahead of its event)";
/// At most this many orders waiting behind its own a handler takes on.
const MAX_BATCH: usize = 64;

#[redis_component]
async fn on_message(message: Bytes) -> anyhow::Result<()> {
    let _tracing = telemetry::start();
    let settings = settings();
    // The event's own context when it has one; otherwise a new trace.
    let decoded = event::decode(&message).ok();
    let parent = match &decoded {
        Some(event) => {
            telemetry::remote_parent(event.traceparent.as_deref(), event.tracestate.as_deref())
        }
        None => Context::new(),
    };
    // Spin hands over the payload, not the channel: the order's shard names it.
    let base_channel = variable("orders_channel").unwrap_or_default();
    let channel = match &decoded {
        Some(event) => event::order_channel(&base_channel, event.sequence, settings.shards),
        None => base_channel,
    };
    let tracer = telemetry::tracer("fulfilment");
    let mut span = tracer
        .span_builder(SPAN_NAME)
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            Attribute::new("messaging.system", "redis"),
            Attribute::new("messaging.destination.name", channel),
            Attribute::new("messaging.operation.type", "process"),
            Attribute::new("messaging.operation.name", "process"),
            Attribute::new("messaging.message.body.size", message.len() as i64),
        ]);
    // The host's `... receive` span is in a trace of its own (pub/sub carries no
    // context): link it, so one can go from either trace to the other.
    if let Some(host) = telemetry::host_span() {
        span = span.with_links(vec![Link::with_context(host)]);
    }
    let cx = parent.with_span(span.start_with_context(&tracer, &parent));
    if let Some(event) = &decoded {
        cx.span().set_attributes([
            Attribute::new("messaging.message.id", event.event_id.clone()),
            Attribute::new("shop.order.id", event.order_id.clone()),
            Attribute::new("shop.fulfilment.epoch", event.epoch as i64),
        ]);
    }

    let kv = match ShopStore::open() {
        Ok(kv) => kv,
        Err(e) => {
            telemetry::fail(&cx, e.to_string());
            return Err(e.into());
        }
    };
    // This message's order, and those already waiting behind it on its shard, at once:
    // their mail requests are in flight together.
    let steps = Steps::new("fulfilment");
    let own = fulfilment::process(
        &kv,
        &SpinEnv,
        &steps,
        &mailer::HttpMailer,
        &message,
        &settings,
    )
    .with_context(cx.clone());
    let ahead = take_on_waiting(&kv, decoded.as_ref(), &settings, &cx);
    let (result, ()) = futures::join!(own, ahead);
    report(&cx, &result);
    result.map(drop).map_err(Into::into)
}

/// Claims the orders waiting behind `event`'s on its shard and fulfils them together,
/// each in its own trace (the order's, from its record), linked to this message.
async fn take_on_waiting(
    kv: &ShopStore,
    event: Option<&event::OrderPlaced>,
    settings: &Settings,
    consumer: &Context,
) {
    let Some(event) = event else {
        return;
    };
    // Under the consumer span: this future is not polled within its context.
    let claimed = {
        let _consumer = consumer.clone().attach();
        fulfilment::claim_waiting(
            kv,
            &SpinEnv,
            &Steps::new("fulfilment"),
            event.sequence,
            settings,
        )
    };
    if let Some(e) = &claimed.stopped_by {
        // Those behind the ones claimed wait for their own events, or redrive.
        shop_adapters::log_line!("fulfilment: looking for waiting orders: {e}");
    }
    let waiting = claimed.claimed;
    if waiting.is_empty() {
        return;
    }
    consumer.span().set_attribute(Attribute::new(
        "shop.fulfilment.taken_on",
        waiting.len() as i64,
    ));
    let tracer = telemetry::tracer("fulfilment");
    let runs = waiting.into_iter().map(|claimed| {
        let parent = telemetry::remote_parent(claimed.order.traceparent.as_deref(), None);
        let span = tracer
            .span_builder(AHEAD_SPAN_NAME)
            .with_attributes([
                Attribute::new("shop.order.id", claimed.order.id.clone()),
                Attribute::new("shop.fulfilment.epoch", claimed.epoch as i64),
                Attribute::new("shop.fulfilment.ahead", true),
            ])
            .with_links(vec![Link::with_context(
                consumer.span().span_context().clone(),
            )])
            .start_with_context(&tracer, &parent);
        let cx = parent.with_span(span);
        async move {
            let steps = Steps::new("fulfilment");
            let result =
                fulfilment::fulfil(kv, &SpinEnv, &steps, &mailer::HttpMailer, claimed, settings)
                    .with_context(cx.clone())
                    .await;
            report(&cx, &result);
        }
    });
    futures::future::join_all(runs).await;
}

/// Logs what handling came to and marks the span: a no-op by name and attribute, a
/// failure by status.
fn report(cx: &Context, result: &Result<Outcome, shop_domain::store::StoreError>) {
    let span = cx.span();
    match result {
        Ok(Outcome::NoOp { reason }) => {
            shop_adapters::log_line!("fulfilment: {reason}");
            span.update_name(format!("{SPAN_NAME} (no-op)"));
            span.set_attribute(Attribute::new("shop.noop", true));
            span.set_attribute(Attribute::new("shop.noop.reason", reason.clone()));
        }
        Ok(outcome) => {
            if let Outcome::Handled { order } = outcome {
                shop_adapters::log_line!(
                    "fulfilment: {} -> {:?}, email {:?}",
                    order.id,
                    order.status,
                    order.notification
                );
                span.set_attribute(Attribute::new(
                    "shop.order.item_count",
                    order.lines.len() as i64,
                ));
            }
            if let Some(failure) = outcome.failure() {
                shop_adapters::log_line!("fulfilment: {failure}");
                telemetry::fail(cx, failure);
            }
        }
        Err(e) => telemetry::fail(cx, format!("{e:#}")),
    }
}

/// The handler's settings, from the component's variables.
fn settings() -> Settings {
    let shards = variable("order_shards")
        .and_then(|s| event::parse_shards(&s))
        .unwrap_or_else(|e| {
            shop_adapters::log_line!("fulfilment: {e}; taking 1");
            1
        });
    let batch = variable("fulfilment_batch")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BATCH);
    Settings {
        mail: mail_config(),
        retry: RetryPolicy::default(),
        mail_lease_secs: seconds_variable("mail_lease_seconds", 90),
        store_budget: Budget::default(),
        shards,
        batch,
    }
}

fn mail_config() -> Result<MailConfig, String> {
    MailConfig::new(
        &variable("mail_provider")?,
        &variable("mail_api_base_url")?,
        &variable("mail_api_key")?,
        &variable("mail_from")?,
    )
    .map_err(|e| format!("mail configuration: {e}"))
}
