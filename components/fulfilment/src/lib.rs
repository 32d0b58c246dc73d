//! `fulfilment`: handles order-placed events from the Redis channel, as
//! `shop_domain::fulfilment` describes: claim the order for the event's epoch, settle the
//! payment, send the email under the order's mail lease.
//!
//! Each message is one `CONSUMER` span, `process order.placed`, in the trace the event
//! carries (the checkout request's, or the order's for a redrive), with a span per step
//! and per mail attempt. A message that changes nothing is still traced, as a no-op.
//!
//! The handler returns an error only when the key-value store fails; Spin merely logs it
//! (there is no redelivery), and `POST /api/admin/redrive` picks the order up later.

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

#[redis_component]
async fn on_message(message: Bytes) -> anyhow::Result<()> {
    let _tracing = telemetry::start();
    // The event's own context when it has one; otherwise a new trace.
    let decoded = event::decode(&message);
    let parent = match &decoded {
        Ok(event) => {
            telemetry::remote_parent(event.traceparent.as_deref(), event.tracestate.as_deref())
        }
        Err(_) => Context::new(),
    };
    // Spin hands over the payload, not the channel: the order's shard names it.
    let base_channel = variable("orders_channel").unwrap_or_default();
    let channel = match (
        &decoded,
        variable("order_shards").map(|s| event::parse_shards(&s)),
    ) {
        (Ok(event), Ok(Ok(shards))) => event::order_channel(&base_channel, &event.order_id, shards),
        _ => base_channel,
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

    let result = handle(&message).with_context(cx.clone()).await;
    let span = cx.span();
    match &result {
        Ok(Outcome::NoOp { reason }) => {
            eprintln!("fulfilment: {reason}");
            span.update_name(format!("{SPAN_NAME} (no-op)"));
            span.set_attribute(Attribute::new("shop.noop", true));
            span.set_attribute(Attribute::new("shop.noop.reason", reason.clone()));
        }
        Ok(outcome) => {
            if let Outcome::Handled { order } = outcome {
                eprintln!(
                    "fulfilment: {} -> {:?}, email {:?}",
                    order.id, order.status, order.notification
                );
                span.set_attribute(Attribute::new(
                    "shop.order.item_count",
                    order.lines.len() as i64,
                ));
            }
            if let Some(failure) = outcome.failure() {
                eprintln!("fulfilment: {failure}");
                telemetry::fail(&cx, failure);
            }
        }
        Err(e) => telemetry::fail(&cx, format!("{e:#}")),
    }
    result.map(drop)
}

async fn handle(message: &[u8]) -> anyhow::Result<Outcome> {
    if let Ok(event) = event::decode(message) {
        Context::current().span().set_attributes([
            Attribute::new("messaging.message.id", event.event_id.clone()),
            Attribute::new("shop.order.id", event.order_id.clone()),
            Attribute::new("shop.fulfilment.epoch", event.epoch as i64),
        ]);
    }
    let kv = ShopStore::open()?;
    let settings = Settings {
        mail: mail_config(),
        retry: RetryPolicy::default(),
        mail_lease_secs: seconds_variable("mail_lease_seconds", 90),
        store_budget: Budget::default(),
    };
    let outcome = fulfilment::process(
        &kv,
        &SpinEnv,
        &Steps::new("fulfilment"),
        &mailer::HttpMailer,
        message,
        &settings,
    )
    .await?;
    Ok(outcome)
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
