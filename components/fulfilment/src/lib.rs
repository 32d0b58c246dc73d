//! `fulfilment`: handles order-placed events from the Redis channel.
//!
//! For each event: decode it (or dead-letter it), claim the order for the event's epoch
//! (so a duplicate message, or the same message seen by several replicas, does nothing),
//! settle the order (capture the payment: confirmed, or failed with its stock given back
//! once), then send the email through the configured provider, retrying transient
//! failures a bounded number of times and recording a permanent refusal with the
//! provider's own message.
//!
//! Each message is one `CONSUMER` span, `process order.placed`, in the trace the event
//! carries (the checkout request's, or the order's for a redrive), with a span per step
//! and per mail attempt. A message that changes nothing is still traced, as a no-op.
//!
//! The handler returns an error only when the key-value store fails; Spin merely logs it
//! (there is no redelivery), and `POST /api/admin/redrive` picks the order up later.

use bytes::Bytes;
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{FutureExt, Link, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue as Attribute};
use shop_adapters::{now, sleep_ms, telemetry, timestamp, variable, SpinKeyValue};
use shop_domain::event::{self, OrderPlaced};
use shop_domain::mail::{self, Delivery, MailConfig, RetryPolicy};
use shop_domain::order::{Order, OrderEvent, OrderStatus};
use shop_domain::records;
use shop_domain::stock;
use shop_domain::store::{keys, KeyValue as _};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::redis_component;

const SPAN_NAME: &str = "process order.placed";

fn tracer() -> BoxedTracer {
    telemetry::tracer("fulfilment")
}

#[redis_component]
async fn on_message(message: Bytes) -> anyhow::Result<()> {
    let _tracing = telemetry::start();
    let decoded = event::decode(&message);
    // The event's own context when it has one; otherwise a new trace.
    let parent = match &decoded {
        Ok(event) => {
            telemetry::remote_parent(event.traceparent.as_deref(), event.tracestate.as_deref())
        }
        Err(_) => Context::new(),
    };
    let tracer = tracer();
    let mut span = tracer
        .span_builder(SPAN_NAME)
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            Attribute::new("messaging.system", "redis"),
            Attribute::new(
                "messaging.destination.name",
                variable("orders_channel").unwrap_or_default(),
            ),
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

    let result = handle(&message, decoded).with_context(cx.clone()).await;
    if let Err(e) = &result {
        telemetry::fail(&cx, format!("{e:#}"));
    }
    result
}

async fn handle(
    message: &[u8],
    decoded: Result<OrderPlaced, event::DecodeError>,
) -> anyhow::Result<()> {
    let kv = SpinKeyValue::open()?;
    let event = match decoded {
        Ok(event) => event,
        Err(reason) => {
            let seq = records::dead_letter(&kv, message, &reason.to_string(), &timestamp(now()))?;
            eprintln!("fulfilment: dead-lettered message #{seq}: {reason}");
            telemetry::fail(
                &Context::current(),
                format!("dead-lettered as #{seq}: {reason}"),
            );
            return Ok(());
        }
    };
    let span = Context::current();
    span.span().set_attributes([
        Attribute::new("messaging.message.id", event.event_id.clone()),
        Attribute::new("shop.order.id", event.order_id.clone()),
        Attribute::new("shop.fulfilment.epoch", event.epoch as i64),
    ]);
    process(&kv, message, &event).await
}

/// Names the message's span as one that changed nothing, and says why.
fn no_op(reason: String) {
    eprintln!("fulfilment: {reason}");
    let cx = Context::current();
    let span = cx.span();
    span.update_name(format!("{SPAN_NAME} (no-op)"));
    span.set_attribute(Attribute::new("shop.noop", true));
    span.set_attribute(Attribute::new("shop.noop.reason", reason));
}

async fn process(kv: &SpinKeyValue, message: &[u8], event: &OrderPlaced) -> anyhow::Result<()> {
    let id = &event.order_id;
    let loaded = tracer().in_span("load order", |_| records::load_order(kv, id))?;
    let Some(mut order) = loaded else {
        let reason = format!("order {id} does not exist");
        let seq = records::dead_letter(kv, message, &reason, &timestamp(now()))?;
        eprintln!(
            "fulfilment: dead-lettered event {}: {reason}",
            event.event_id
        );
        telemetry::fail(
            &Context::current(),
            format!("dead-lettered as #{seq}: {reason}"),
        );
        return Ok(());
    };
    Context::current().span().set_attribute(Attribute::new(
        "shop.order.item_count",
        order.lines.len() as i64,
    ));
    if order.is_finished() {
        no_op(format!(
            "{id} already finished; event {} ignored",
            event.event_id
        ));
        return Ok(());
    }
    let claimed = tracer().in_span("claim order", |cx| {
        cx.span()
            .set_attribute(Attribute::new("shop.fulfilment.epoch", event.epoch as i64));
        kv.claim(&keys::fulfilment_claim(id, event.epoch))
    })?;
    if !claimed {
        no_op(format!(
            "{id} epoch {} already claimed; duplicate ignored",
            event.epoch
        ));
        return Ok(());
    }

    settle(kv, &mut order)?;
    if !order.notification.is_terminal() {
        notify(kv, &mut order).await?;
    }
    // What became of the order is what this message did: a failure shows on its span.
    let outcome = match (&order.status, &order.notification) {
        (OrderStatus::Failed { reason }, _) => Some(format!("order failed: {reason}")),
        (_, shop_domain::order::Notification::Failed { provider, reason }) => {
            Some(format!("email refused by {provider}: {reason}"))
        }
        _ => None,
    };
    if let Some(outcome) = outcome {
        telemetry::fail(&Context::current(), outcome);
    }
    Ok(())
}

/// Captures the (simulated) payment: confirmed, or failed with its stock given back.
/// Deterministic, so a redrive that repeats it reaches the same decision.
fn settle(kv: &SpinKeyValue, order: &mut Order) -> anyhow::Result<()> {
    if order.status.is_terminal() {
        return Ok(());
    }
    let event = tracer().in_span("capture payment", |cx| {
        if order.capture_fails {
            let reason =
                "payment capture declined by the card issuer; stock released, nothing charged";
            telemetry::fail(&cx, reason);
            tracer().in_span("release stock", |_| {
                stock::release(kv, &order.id, &order.lines)
            })?;
            anyhow::Ok(OrderEvent::Failed {
                reason: reason.into(),
            })
        } else {
            Ok(OrderEvent::Confirmed)
        }
    })?;
    order.apply(&event, &timestamp(now()));
    tracer().in_span("record order status", |_| records::save_order(kv, order))?;
    eprintln!("fulfilment: {} -> {:?}", order.id, order.status);
    Ok(())
}

/// Sends the email, retrying transient failures with backoff inside this handler.
async fn notify(kv: &SpinKeyValue, order: &mut Order) -> anyhow::Result<()> {
    let config = match mail_config() {
        Ok(config) => config,
        Err(problem) => {
            // Configuration can be fixed and the order redriven: keep it pending.
            telemetry::fail(&Context::current(), problem.clone());
            record(
                kv,
                order,
                OrderEvent::NotificationDelayed { reason: problem },
            )?;
            return Ok(());
        }
    };
    let provider = config.provider.name().to_owned();
    let email = mail::order_email(order);
    // One key per order and outcome: Resend drops a duplicate send within 24 hours.
    let idempotency_key = format!("{}/{}", order.id, status_word(order));
    let request = mail::build_request(&config, &email, &idempotency_key);
    let policy = RetryPolicy::default();

    let mut attempt = 1;
    loop {
        // One span per attempt; the host's outbound `POST` span hangs under it.
        let tracer = tracer();
        let span = tracer
            .span_builder("send email")
            .with_attributes([
                Attribute::new("shop.mail.provider", provider.clone()),
                Attribute::new("shop.mail.attempt", i64::from(attempt)),
                Attribute::new("shop.order.id", order.id.clone()),
            ])
            .start(&tracer);
        let cx = Context::current_with_span(span);
        let (delivery, retry_after) = send(&request, config.provider)
            .with_context(cx.clone())
            .await;
        let attempt_span = cx.span();
        let outcome = match delivery {
            Delivery::Sent { message_id } => {
                attempt_span.set_attribute(Attribute::new("shop.mail.sent", true));
                eprintln!(
                    "fulfilment: {} email sent via {provider} ({message_id:?})",
                    order.id
                );
                OrderEvent::NotificationSent {
                    provider: provider.clone(),
                    message_id,
                }
            }
            Delivery::Permanent { status, message } => {
                attempt_span.set_attribute(Attribute::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                telemetry::fail(
                    &cx,
                    format!("{provider} refused the email ({status}): {message}"),
                );
                eprintln!(
                    "fulfilment: {} email refused by {provider} ({status}): {message}",
                    order.id
                );
                OrderEvent::NotificationFailed {
                    provider: provider.clone(),
                    reason: message,
                }
            }
            Delivery::Transient { status, message } => {
                let reason = match status {
                    0 => format!("{provider} unreachable: {message}"),
                    _ => format!("{provider} answered {status}: {message}"),
                };
                attempt_span.set_attribute(Attribute::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                telemetry::fail(&cx, reason.clone());
                eprintln!(
                    "fulfilment: {} attempt {attempt} failed: {reason}",
                    order.id
                );
                match policy.delay_after(attempt, retry_after) {
                    Some(delay) => {
                        attempt_span
                            .set_attribute(Attribute::new("shop.mail.backoff_ms", delay as i64));
                        drop(cx);
                        record(kv, order, OrderEvent::NotificationDelayed { reason })?;
                        sleep_ms(delay);
                        attempt += 1;
                        continue;
                    }
                    // Out of attempts: stays pending with the reason; redrive retries later.
                    None => OrderEvent::NotificationDelayed { reason },
                }
            }
        };
        drop(cx);
        return record(kv, order, outcome);
    }
}

fn record(kv: &SpinKeyValue, order: &mut Order, event: OrderEvent) -> anyhow::Result<()> {
    if order.apply(&event, &timestamp(now())) {
        tracer().in_span("record notification", |_| records::save_order(kv, order))?;
    }
    Ok(())
}

fn status_word(order: &Order) -> &'static str {
    match order.status {
        OrderStatus::Failed { .. } => "failed",
        _ => "confirmed",
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

/// One attempt; a transport error counts as transient, except a host that the manifest
/// does not allow, which no retry can fix.
async fn send(request: &mail::MailRequest, provider: mail::Provider) -> (Delivery, Option<u64>) {
    let mut builder = Request::builder();
    builder.method(Method::Post).uri(request.url.as_str());
    for (name, value) in &request.headers {
        builder.header(name.as_str(), value.as_str());
    }
    let outgoing = builder.body(request.body.clone()).build();
    match spin_sdk::http::send::<_, Response>(outgoing).await {
        Ok(response) => {
            let header = |name: &str| {
                response
                    .header(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let retry_after = header("retry-after").and_then(|v| v.trim().parse().ok());
            let delivery = mail::classify(
                provider,
                *response.status(),
                response.body(),
                header("x-message-id").as_deref(),
            );
            (delivery, retry_after)
        }
        Err(e) => {
            let message = format!("request to {} failed: {e}", request.url);
            let denied = matches!(
                &e,
                spin_sdk::http::SendError::Http(spin_sdk::http::ErrorCode::HttpRequestDenied)
            );
            let delivery = if denied {
                Delivery::Permanent {
                    status: 0,
                    message: format!("{message} (host not in allowed_outbound_hosts)"),
                }
            } else {
                Delivery::Transient { status: 0, message }
            };
            (delivery, None)
        }
    }
}
