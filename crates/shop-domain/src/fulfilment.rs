//! Fulfilling one order-placed event, step by step, over the key-value port and the
//! other [`crate::ports`].
//!
//! 1. decode the event, or dead-letter it;
//! 2. load the order (an unknown one is dead-lettered); a finished order is a no-op;
//! 3. claim the order for the event's epoch: a duplicate of the event, or the same event
//!    seen by another replica, is a no-op; a redrive comes with a new epoch;
//! 4. settle: capture the payment (deterministic, so a repeat decides the same), giving
//!    the stock back once if it fails;
//! 5. send the email under the order's mail lease (one sender at a time, whatever the
//!    overlap of handlers, replicas and redrives), retrying transient failures with
//!    backoff, recording a refusal with the provider's own words; once the email is sent
//!    or refused, the lease is closed for good, so it is never sent twice.
//!
//! What is left: a send whose answer was lost (sent, then the handler died before
//! recording it) is sent again when redrive takes over after the lease; only providers
//! with an idempotency key (Resend) drop that second copy.
//!
//! Spin gives a subscriber its messages one at a time, so a handler waiting on the mail
//! API holds up the orders behind it on its shard. So a handler also takes on, under
//! claims of their own, the orders of its shard already waiting behind its own
//! ([`claim_waiting`]: up to `batch`), and the caller fulfils them all at once, their
//! mail requests in flight together ([`fulfil`]). Their own events, when they come, find
//! them claimed: no-ops. Every guarantee above holds, as it does for replicas.

use crate::durable::{Budget, Durable};
use crate::event::{self, DecodeError};
use crate::lease::{self, Lease};
use crate::mail::{self, Delivery, MailConfig, RetryPolicy};
use crate::order::{Order, OrderEvent, OrderStatus};
use crate::ports::{Environment, Mailer, SendFailure, Step, Trace};
use crate::records;
use crate::stock;
use crate::store::{keys, KeyValue, StoreError};

/// How fulfilment sends mail.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The mail configuration, or why it is unusable (the order then waits, pending).
    pub mail: Result<MailConfig, String>,
    pub retry: RetryPolicy,
    /// How long a handler owns an order's email before another may take over: longer
    /// than all its attempts and backoff can take.
    pub mail_lease_secs: i64,
    pub store_budget: Budget,
    /// How many shards the order channel has (`order_shards`): the next order of a
    /// shard is this many numbers on.
    pub shards: u32,
    /// At most this many waiting orders of its shard a handler takes on besides its own
    /// (`fulfilment_batch`; 0: none).
    pub batch: usize,
}

/// What handling a message came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Unusable; kept as dead letter `seq`.
    DeadLettered { seq: i64, reason: String },
    /// Nothing to do (a duplicate, a finished order, another handler at work).
    NoOp { reason: String },
    /// The order as this handler left it.
    Handled { order: Box<Order> },
}

impl Outcome {
    /// Why this handling counts as failed in a trace: a dead letter, an order that
    /// failed, an email refused.
    pub fn failure(&self) -> Option<String> {
        match self {
            Outcome::DeadLettered { seq, reason } => {
                Some(format!("dead-lettered as #{seq}: {reason}"))
            }
            Outcome::NoOp { .. } => None,
            Outcome::Handled { order } => match (&order.status, &order.notification) {
                (OrderStatus::Failed { reason }, _) => Some(format!("order failed: {reason}")),
                (_, crate::order::Notification::Failed { provider, reason }) => {
                    Some(format!("email refused by {provider}: {reason}"))
                }
                _ => None,
            },
        }
    }
}

/// Handles one message. `Err` only when the store fails: Spin merely logs it, and
/// redrive picks the order up later.
pub async fn process<K, E, T, M>(
    kv: &K,
    env: &E,
    trace: &T,
    mailer: &M,
    payload: &[u8],
    settings: &Settings,
) -> Result<Outcome, StoreError>
where
    K: KeyValue,
    E: Environment,
    T: Trace,
    M: Mailer,
{
    let kv = &Durable::new(kv, env, settings.store_budget);
    let event = match event::decode(payload) {
        Ok(event) => event,
        Err(reason) => return dead_letter(kv, env, payload, &reason),
    };
    let id = &event.order_id;
    let mut step = trace.step("load order");
    let loaded = records::load_order(kv, id);
    if let Err(e) = &loaded {
        step.fail(&e.to_string());
    }
    drop(step);
    let Some(order) = loaded? else {
        return dead_letter(
            kv,
            env,
            payload,
            &DecodeError::Invalid(format!("order {id} does not exist")),
        );
    };
    if order.is_finished() {
        return Ok(Outcome::NoOp {
            reason: format!("{id} already finished; event {} ignored", event.event_id),
        });
    }
    let mut step = trace.step("claim order");
    step.attribute("shop.fulfilment.epoch", (event.epoch as i64).into());
    let claimed = kv.claim(&keys::fulfilment_claim(id, event.epoch));
    drop(step);
    if !claimed? {
        return Ok(Outcome::NoOp {
            reason: format!(
                "{id} epoch {} already claimed (a duplicate, another replica, or taken on \
                 ahead of its event); ignored",
                event.epoch
            ),
        });
    }
    complete(kv, env, trace, mailer, order, settings).await
}

/// An order of the shard claimed by this handler ahead of its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub order: Order,
    pub epoch: u64,
}

/// The orders [`claim_waiting`] claimed, and the store error that stopped it early, if
/// one did.
#[derive(Debug, Default)]
pub struct Waiting {
    /// Claimed by this handler: their own events are now no-ops, so it must fulfil
    /// every one of them, even when the search stopped on an error.
    pub claimed: Vec<Claimed>,
    pub stopped_by: Option<StoreError>,
}

/// Claims the orders waiting behind the order numbered `sequence` on its shard, at
/// most `settings.batch`: recorded, unfinished, and nobody's yet. Stops at the first
/// that is not (not numbered yet, still being placed, finished or claimed: whoever
/// has it takes on the ones behind it), so with nothing waiting it costs one read.
pub fn claim_waiting<K: KeyValue, E: Environment, T: Trace>(
    kv: &K,
    env: &E,
    trace: &T,
    sequence: i64,
    settings: &Settings,
) -> Waiting {
    let mut waiting = Waiting::default();
    if sequence <= 0 || settings.batch == 0 {
        return waiting;
    }
    // Its reads run while this handler's own send is in flight: a step of their own
    // keeps the host's key-value spans off that send's span.
    let mut step = trace.step("claim waiting orders");
    let result = claim_waiting_behind(kv, env, sequence, settings, &mut waiting.claimed);
    step.attribute(
        "shop.fulfilment.taken_on",
        (waiting.claimed.len() as i64).into(),
    );
    if let Err(e) = result {
        step.fail(&e.to_string());
        waiting.stopped_by = Some(e);
    }
    waiting
}

fn claim_waiting_behind<K: KeyValue, E: Environment>(
    kv: &K,
    env: &E,
    sequence: i64,
    settings: &Settings,
    claimed: &mut Vec<Claimed>,
) -> Result<(), StoreError> {
    let kv = &Durable::new(kv, env, settings.store_budget);
    let stride = i64::from(settings.shards.max(1));
    let mut next = sequence + stride;
    while claimed.len() < settings.batch {
        let Some(draft) = records::load_draft(kv, next)? else {
            break;
        };
        let Some(order) = records::load_order(kv, &draft.id)? else {
            break;
        };
        if order.is_finished() {
            break;
        }
        let epoch = kv.counter(&keys::fulfilment_epoch(&order.id))?.max(0) as u64;
        if !kv.claim(&keys::fulfilment_claim(&order.id, epoch))? {
            break;
        }
        claimed.push(Claimed { order, epoch });
        next += stride;
    }
    Ok(())
}

/// Fulfils an order claimed by [`claim_waiting`], as its own event would have.
pub async fn fulfil<K, E, T, M>(
    kv: &K,
    env: &E,
    trace: &T,
    mailer: &M,
    claimed: Claimed,
    settings: &Settings,
) -> Result<Outcome, StoreError>
where
    K: KeyValue,
    E: Environment,
    T: Trace,
    M: Mailer,
{
    let kv = &Durable::new(kv, env, settings.store_budget);
    complete(kv, env, trace, mailer, claimed.order, settings).await
}

/// Settles a claimed order and sends its email.
async fn complete<K, E, T, M>(
    kv: &K,
    env: &E,
    trace: &T,
    mailer: &M,
    mut order: Order,
    settings: &Settings,
) -> Result<Outcome, StoreError>
where
    K: KeyValue,
    E: Environment,
    T: Trace,
    M: Mailer,
{
    settle(kv, env, trace, &mut order)?;
    if !order.notification.is_terminal() {
        notify(kv, env, trace, mailer, &mut order, settings).await?;
    }
    Ok(Outcome::Handled {
        order: Box::new(order),
    })
}

fn dead_letter(
    kv: &impl KeyValue,
    env: &impl Environment,
    payload: &[u8],
    reason: &DecodeError,
) -> Result<Outcome, StoreError> {
    let reason = reason.to_string();
    let at = crate::checkout::timestamp(env.now());
    let seq = records::dead_letter(kv, payload, &reason, &at)?;
    Ok(Outcome::DeadLettered { seq, reason })
}

/// Captures the (simulated) payment: confirmed, or failed with its stock given back.
fn settle(
    kv: &impl KeyValue,
    env: &impl Environment,
    trace: &impl Trace,
    order: &mut Order,
) -> Result<(), StoreError> {
    if order.status.is_terminal() {
        return Ok(());
    }
    let mut step = trace.step("capture payment");
    let event = if order.capture_fails {
        let reason = "payment capture declined by the card issuer; stock released, nothing charged";
        step.fail(reason);
        let release = trace.step("release stock");
        stock::release(kv, &order.id, &order.lines)?;
        drop(release);
        OrderEvent::Failed {
            reason: reason.into(),
        }
    } else {
        OrderEvent::Confirmed
    };
    drop(step);
    let _step = trace.step("record order status");
    records::apply_to_stored(kv, order, &event, &crate::checkout::timestamp(env.now())).map(drop)
}

/// Sends the email, retrying transient failures with backoff inside this handler.
async fn notify<K, E, T, M>(
    kv: &K,
    env: &E,
    trace: &T,
    mailer: &M,
    order: &mut Order,
    settings: &Settings,
) -> Result<(), StoreError>
where
    K: KeyValue,
    E: Environment,
    T: Trace,
    M: Mailer,
{
    let config = match &settings.mail {
        Ok(config) => config,
        Err(problem) => {
            // Configuration can be fixed and the order redriven: keep it pending.
            let mut step = trace.step("send email");
            step.fail(problem);
            drop(step);
            return record(
                kv,
                env,
                trace,
                order,
                OrderEvent::NotificationDelayed {
                    reason: problem.clone(),
                },
            );
        }
    };
    let outcome = status_word(order);
    let lease_name = keys::mail_lease(&order.id, outcome);
    let attempt_owned = match lease::acquire(
        kv,
        &lease_name,
        env.now().timestamp(),
        settings.mail_lease_secs,
    )? {
        Lease::Acquired { attempt, .. } => attempt,
        // Another handler (a replica, or a redrive overlapping a slow one) is sending.
        Lease::Held { .. } => return Ok(()),
        // Sent or refused for good. If the order's record no longer says so (a handler
        // working from an older copy wrote it back afterwards), the lease does: put it
        // back, or the order would stay pending for ever with nobody allowed to send.
        Lease::Done { result } => {
            let outcome = result.and_then(|r| serde_json::from_str::<OrderEvent>(&r).ok());
            return match outcome {
                Some(
                    event @ (OrderEvent::NotificationSent { .. }
                    | OrderEvent::NotificationFailed { .. }),
                ) => record(kv, env, trace, order, event),
                _ => Ok(()),
            };
        }
    };
    // It may have finished while we were settling.
    if let Some(fresh) = records::load_order(kv, &order.id)? {
        *order = fresh;
    }
    if order.notification.is_terminal() {
        return Ok(());
    }

    let provider = config.provider.name();
    let email = mail::order_email(order);
    // One key per order and outcome: Resend drops a duplicate send within 24 hours.
    let idempotency_key = format!("{}/{outcome}", order.id);
    let request = mail::build_request(config, &email, &idempotency_key);
    let mut attempt = 1;
    loop {
        let mut step = trace.step("send email");
        step.attribute("shop.mail.provider", provider.into());
        step.attribute("shop.mail.attempt", attempt.into());
        step.attribute("shop.order.id", order.id.clone().into());
        let (delivery, retry_after) = match mailer.send(&request).await {
            Ok(answer) => {
                step.attribute("http.response.status_code", i64::from(answer.status).into());
                let delivery = mail::classify(
                    config.provider,
                    answer.status,
                    &answer.body,
                    answer.message_id.as_deref(),
                );
                (delivery, answer.retry_after)
            }
            Err(SendFailure::Denied(message)) => (
                Delivery::Permanent {
                    status: 0,
                    message: format!("{message} (host not in allowed_outbound_hosts)"),
                },
                None,
            ),
            Err(SendFailure::Transport(message)) => {
                (Delivery::Transient { status: 0, message }, None)
            }
        };
        let event = match delivery {
            Delivery::Sent { message_id } => {
                step.attribute("shop.mail.sent", true.into());
                OrderEvent::NotificationSent {
                    provider: provider.to_owned(),
                    message_id,
                }
            }
            Delivery::Permanent { status, message } => {
                step.fail(&format!(
                    "{provider} refused the email ({status}): {message}"
                ));
                OrderEvent::NotificationFailed {
                    provider: provider.to_owned(),
                    reason: message,
                }
            }
            Delivery::Transient { status, message } => {
                let reason = match status {
                    0 => format!("{provider} unreachable: {message}"),
                    _ => format!("{provider} answered {status}: {message}"),
                };
                step.fail(&reason);
                match settings.retry.delay_after(attempt, retry_after) {
                    Some(delay) => {
                        step.attribute("shop.mail.backoff_ms", (delay as i64).into());
                        drop(step);
                        record(
                            kv,
                            env,
                            trace,
                            order,
                            OrderEvent::NotificationDelayed { reason },
                        )?;
                        env.pause_ms(delay).await;
                        attempt += 1;
                        continue;
                    }
                    None => {
                        // Out of attempts: pending with the reason; the next redrive may
                        // try at once.
                        drop(step);
                        record(
                            kv,
                            env,
                            trace,
                            order,
                            OrderEvent::NotificationDelayed { reason },
                        )?;
                        lease::give_up(kv, &lease_name, attempt_owned)?;
                        return Ok(());
                    }
                }
            }
        };
        drop(step);
        let result = serde_json::to_string(&event).unwrap_or_default();
        record(kv, env, trace, order, event)?;
        // Sent or refused for good: nobody sends this email again.
        return lease::close(kv, &lease_name, attempt_owned, &result);
    }
}

fn record(
    kv: &impl KeyValue,
    env: &impl Environment,
    trace: &impl Trace,
    order: &mut Order,
    event: OrderEvent,
) -> Result<(), StoreError> {
    let _step = trace.step("record notification");
    records::apply_to_stored(kv, order, &event, &crate::checkout::timestamp(env.now())).map(drop)
}

fn status_word(order: &Order) -> &'static str {
    match order.status {
        OrderStatus::Failed { .. } => "failed",
        _ => "confirmed",
    }
}
