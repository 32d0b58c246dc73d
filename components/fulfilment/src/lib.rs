//! `fulfilment`: handles order-placed events from the Redis channel.
//!
//! For each event: decode it (or dead-letter it), claim the order for the event's epoch
//! (so a duplicate message, or the same message seen by several replicas, does nothing),
//! settle the order (capture the payment: confirmed, or failed with its stock given back
//! once), then send the email through the configured provider, retrying transient
//! failures a bounded number of times and recording a permanent refusal with the
//! provider's own message.
//!
//! The handler returns an error only when the key-value store fails; Spin merely logs it
//! (there is no redelivery), and `POST /api/admin/redrive` picks the order up later.

use bytes::Bytes;
use shop_adapters::{now, sleep_ms, timestamp, variable, SpinKeyValue};
use shop_domain::event::{self, OrderPlaced};
use shop_domain::mail::{self, Delivery, MailConfig, RetryPolicy};
use shop_domain::order::{Order, OrderEvent};
use shop_domain::records;
use shop_domain::stock;
use shop_domain::store::{keys, KeyValue};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::redis_component;

#[redis_component]
async fn on_message(message: Bytes) -> anyhow::Result<()> {
    let kv = SpinKeyValue::open()?;
    let event = match event::decode(&message) {
        Ok(event) => event,
        Err(reason) => {
            let seq = records::dead_letter(&kv, &message, &reason.to_string(), &timestamp(now()))?;
            eprintln!("fulfilment: dead-lettered message #{seq}: {reason}");
            return Ok(());
        }
    };
    process(&kv, &message, &event).await
}

async fn process(kv: &SpinKeyValue, message: &[u8], event: &OrderPlaced) -> anyhow::Result<()> {
    let id = &event.order_id;
    let Some(mut order) = records::load_order(kv, id)? else {
        let reason = format!("order {id} does not exist");
        records::dead_letter(kv, message, &reason, &timestamp(now()))?;
        eprintln!(
            "fulfilment: dead-lettered event {}: {reason}",
            event.event_id
        );
        return Ok(());
    };
    if order.is_finished() {
        eprintln!(
            "fulfilment: {id} already finished; event {} ignored",
            event.event_id
        );
        return Ok(());
    }
    if !kv.claim(&keys::fulfilment_claim(id, event.epoch))? {
        eprintln!(
            "fulfilment: {id} epoch {} already claimed; duplicate ignored",
            event.epoch
        );
        return Ok(());
    }

    settle(kv, &mut order)?;
    if !order.notification.is_terminal() {
        notify(kv, &mut order).await?;
    }
    Ok(())
}

/// Captures the (simulated) payment: confirmed, or failed with its stock given back.
/// Deterministic, so a redrive that repeats it reaches the same decision.
fn settle(kv: &SpinKeyValue, order: &mut Order) -> anyhow::Result<()> {
    if order.status.is_terminal() {
        return Ok(());
    }
    let event = if order.capture_fails {
        stock::release(kv, &order.id, &order.lines)?;
        OrderEvent::Failed {
            reason: "payment capture declined by the card issuer; stock released, nothing charged"
                .into(),
        }
    } else {
        OrderEvent::Confirmed
    };
    order.apply(&event, &timestamp(now()));
    records::save_order(kv, order)?;
    eprintln!("fulfilment: {} -> {:?}", order.id, order.status);
    Ok(())
}

/// Sends the email, retrying transient failures with backoff inside this handler.
async fn notify(kv: &SpinKeyValue, order: &mut Order) -> anyhow::Result<()> {
    let config = match mail_config() {
        Ok(config) => config,
        Err(problem) => {
            // Configuration can be fixed and the order redriven: keep it pending.
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
        let (delivery, retry_after) = send(&request, config.provider).await;
        let outcome = match delivery {
            Delivery::Sent { message_id } => {
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
                eprintln!(
                    "fulfilment: {} attempt {attempt} failed: {reason}",
                    order.id
                );
                match policy.delay_after(attempt, retry_after) {
                    Some(delay) => {
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
        return record(kv, order, outcome);
    }
}

fn record(kv: &SpinKeyValue, order: &mut Order, event: OrderEvent) -> anyhow::Result<()> {
    if order.apply(&event, &timestamp(now())) {
        records::save_order(kv, order)?;
    }
    Ok(())
}

fn status_word(order: &Order) -> &'static str {
    match order.status {
        shop_domain::order::OrderStatus::Failed { .. } => "failed",
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
