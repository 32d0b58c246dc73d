//! Placing an order (`POST /api/orders`) and redriving unfinished ones, step by step,
//! over the key-value port and the other [`crate::ports`].
//!
//! Placing, in order; a crash between any two steps leaves a state that a retry with
//! the same `Idempotency-Key` or redrive completes or undoes, exactly once:
//!
//! 1. validate (no store needed);
//! 2. take the `Idempotency-Key` (replay, mismatch, in progress, or ours: see
//!    [`crate::idempotency`]); if an earlier owner of the key committed an order, answer
//!    with it (recording it from its draft if the owner died first), else give that
//!    order up;
//! 3. authorise the card (a decline is an answer, replayed like any other);
//! 4. number the order and store its draft, then note it on the key;
//! 5. reserve stock line by line ([`crate::stock`]);
//! 6. win the order's commit claim and record it ([`crate::records`]), unless the key
//!    was taken over or redrive gave the order up;
//! 7. publish the event (a lost publish is redriven), answer 202, store the answer.

// A problem is the answer itself, returned once per request: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::catalogue::{format_money, CURRENCY};
use crate::durable::{Budget, Durable};
use crate::event::OrderPlaced;
use crate::idempotency::{self, PreviousOrder, Start, StoredResponse};
use crate::ids::{hash_idempotency_key, new_event_id, new_order_id, validate_idempotency_key};
use crate::order::{Notification, Order, OrderStatus};
use crate::payment::Authorisation;
use crate::ports::{Environment, Publisher, Step, Trace};
use crate::problem::{FieldError, Problem};
use crate::records::{self, Fate};
use crate::stock::{self, StockError};
use crate::store::{keys, KeyValue, StoreError};
use crate::validation::{parse_order_request, ValidOrder};

/// How long an `Idempotency-Key`'s owner keeps it before a retry may take over (its
/// request is then presumed dead), and how long repeatable store operations retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub lease_secs: i64,
    pub store_budget: Budget,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease_secs: 30,
            store_budget: Budget::default(),
        }
    }
}

/// A request that passed validation.
pub struct Placement {
    order: ValidOrder,
    key_hash: Option<String>,
}

/// The trace the order is placed in, kept on the order so fulfilment and redrive can
/// continue it (W3C ids, from the component's span).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: Option<String>,
    pub traceparent: Option<String>,
}

/// Step 1: the body (JSON) and the raw `Idempotency-Key` header, if any.
pub fn validate(
    body: &[u8],
    idempotency_key: Option<&[u8]>,
    today: chrono::NaiveDate,
) -> Result<Placement, Problem> {
    let key_hash = match idempotency_key {
        None => None,
        Some(raw) => {
            let key = std::str::from_utf8(raw)
                .map_err(|_| "must be visible ASCII characters".to_owned())
                .and_then(|key| validate_idempotency_key(key).map(|()| key));
            match key {
                Ok(key) => Some(hash_idempotency_key(key)),
                Err(detail) => {
                    return Err(Problem::new(
                        400,
                        "invalid-idempotency-key",
                        "Invalid Idempotency-Key",
                        &detail,
                    )
                    .with_errors(vec![FieldError::new("header:idempotency-key", detail)]))
                }
            }
        }
    };
    let order = parse_order_request(body, today).map_err(|e| e.to_problem())?;
    Ok(Placement { order, key_hash })
}

impl Placement {
    pub fn item_count(&self) -> usize {
        self.order.lines.len()
    }
}

/// A key-value failure is the shop being unavailable, not the client's fault. The
/// store's own words go to logs and spans, not to the client.
pub fn unavailable(e: &StoreError) -> Problem {
    Problem::unavailable("the order store is unavailable; try again shortly")
        .with_cause(e.to_string())
}

/// Steps 2 to 7. `Ok` answers are stored for the key (and replayed); `Err` problems are
/// not: a retry does the work again.
pub fn place<K, E, T, P>(
    kv: &K,
    env: &E,
    trace: &T,
    publisher: &P,
    placement: Placement,
    trace_ids: TraceIds,
    settings: &Settings,
) -> Result<StoredResponse, Problem>
where
    K: KeyValue,
    E: Environment,
    T: Trace,
    P: Publisher,
{
    let kv = Durable::new(kv, env, settings.store_budget);
    let Placement { order, key_hash } = placement;
    let Some(key_hash) = key_hash else {
        return accept(&kv, env, trace, publisher, order, trace_ids, None);
    };
    let fingerprint = order.fingerprint.clone();
    let mut step = trace.step("claim idempotency key");
    let started = idempotency::begin(
        &kv,
        &key_hash,
        &fingerprint,
        env.now().timestamp(),
        settings.lease_secs,
    );
    let (attempt, previous_order) =
        match started {
            Err(e) => return Err(failed(&mut step, unavailable(&e))),
            Ok(Start::New {
                attempt,
                previous_order,
            }) => {
                step.attribute("shop.idempotency.attempt", attempt.into());
                (attempt, previous_order)
            }
            Ok(Start::Replay(stored)) => {
                step.attribute("shop.idempotency.replayed", true.into());
                return Ok(stored);
            }
            Ok(Start::Mismatch) => return Err(failed(
                &mut step,
                Problem::new(
                    422,
                    "idempotency-key-reused",
                    "Idempotency-Key reused with a different body",
                    "this Idempotency-Key was already used for a different order; use a new key",
                )
                .with_errors(vec![FieldError::new(
                    "header:idempotency-key",
                    "already used with a different request body",
                )]),
            )),
            Ok(Start::InProgress { retry_after }) => {
                return Err(failed(&mut step, in_progress(retry_after)));
            }
        };
    drop(step);

    // An earlier owner of the key numbered an order and stopped: if it had committed
    // it, that order is the answer; if not, it is given up now (and its owner, if only
    // slow, can no longer commit it), and this request makes the order.
    if let Some(previous) = previous_order {
        match adopt(&kv, env, publisher, &previous) {
            Ok(Some(order_id)) => {
                let stored = accepted(&order_id);
                finish(&kv, &key_hash, &fingerprint, Some(&order_id), &stored);
                return Ok(stored);
            }
            Ok(None) => {}
            Err(e) => {
                let _ = idempotency::abandon(&kv, &key_hash, attempt);
                return Err(unavailable(&e));
            }
        }
    }

    let owner = KeyOwner {
        key_hash: &key_hash,
        fingerprint: &fingerprint,
        attempt,
    };
    match accept(&kv, env, trace, publisher, order, trace_ids, Some(&owner)) {
        Ok(stored) => {
            let order_id = stored.body["order_id"].as_str().map(str::to_owned);
            finish(&kv, &key_hash, &fingerprint, order_id.as_deref(), &stored);
            Ok(stored)
        }
        Err(problem) => {
            // A 5xx is not the answer to replay: let the client's retry try again now.
            if problem.status >= 500 {
                let _ = idempotency::abandon(&kv, &key_hash, attempt);
            }
            Err(problem)
        }
    }
}

/// The order an earlier owner of the key committed, if it did: recorded, or recorded
/// now from its draft (and published). `None` once it is given up.
fn adopt<K: KeyValue, E: Environment, P: Publisher>(
    kv: &K,
    env: &E,
    publisher: &P,
    previous: &PreviousOrder,
) -> Result<Option<String>, StoreError> {
    if let Some(order) = records::load_order(kv, &previous.id)? {
        return Ok(Some(order.id));
    }
    let Some(seq) = previous.sequence else {
        return Ok(None);
    };
    match records::load_draft(kv, seq)? {
        Some(draft) if draft.id == previous.id => match records::settle_draft(kv, &draft)? {
            Fate::Recorded(order) => Ok(Some(order.id)),
            Fate::Completed(order) => {
                publish_placed(kv, env, publisher, &order);
                Ok(Some(order.id))
            }
            Fate::GivenUp { .. } => Ok(None),
        },
        _ => Ok(None),
    }
}

/// Publishes the first order-placed event of a recorded order. A lost publish is
/// found and redone by redrive.
fn publish_placed<E: Environment, P: Publisher>(
    kv: &impl KeyValue,
    env: &E,
    publisher: &P,
    order: &Order,
) {
    let mut event = OrderPlaced::new(
        new_event_id(env.random()),
        order.id.clone(),
        0,
        timestamp(env.now()),
    );
    event.sequence = order.sequence;
    if publisher.publish(event).is_ok() {
        let _ = kv.increment(&keys::order_published(&order.id), 1);
    }
}

/// The request that owns an `Idempotency-Key`.
struct KeyOwner<'a> {
    key_hash: &'a str,
    fingerprint: &'a str,
    attempt: u32,
}

/// Stores the answer for the key. If that fails, the key's lease runs out and a retry
/// adopts the recorded order: the answer is the same.
fn finish(
    kv: &impl KeyValue,
    key_hash: &str,
    fingerprint: &str,
    order_id: Option<&str>,
    stored: &StoredResponse,
) {
    let _ = idempotency::finish(kv, key_hash, fingerprint, order_id, stored);
}

fn in_progress(retry_after: i64) -> Problem {
    let mut problem = Problem::new(
        409,
        "idempotency-key-in-use",
        "Request with this Idempotency-Key in progress",
        "an earlier request with this Idempotency-Key has not finished; retry shortly",
    );
    problem.retry_after = Some(retry_after.clamp(1, 3_600) as u64);
    problem
}

/// Marks `step` failed with `problem` (and its internal cause) and passes it on.
fn failed(step: &mut impl Step, problem: Problem) -> Problem {
    step.fail(&describe(&problem));
    problem
}

/// A problem as one line, for logs and spans: status, title, detail and cause.
pub fn describe(problem: &Problem) -> String {
    match &problem.cause {
        Some(cause) => format!(
            "{} {}: {} ({cause})",
            problem.status, problem.title, problem.detail
        ),
        None => format!("{} {}: {}", problem.status, problem.title, problem.detail),
    }
}

/// The 202 answer for `order_id`.
pub fn accepted(order_id: &str) -> StoredResponse {
    let location = format!("/api/orders/{order_id}");
    StoredResponse {
        status: 202,
        body: json!({ "order_id": order_id, "status": "accepted", "status_url": location }),
        location: Some(location),
    }
}

fn stored_problem(problem: &Problem) -> StoredResponse {
    StoredResponse {
        status: problem.status,
        body: serde_json::to_value(problem).unwrap_or(Value::Null),
        location: None,
    }
}

/// Steps 3 to 7 for one order.
fn accept<K, E, T, P>(
    kv: &K,
    env: &E,
    trace: &T,
    publisher: &P,
    order: ValidOrder,
    trace_ids: TraceIds,
    owner: Option<&KeyOwner<'_>>,
) -> Result<StoredResponse, Problem>
where
    K: KeyValue,
    E: Environment,
    T: Trace,
    P: Publisher,
{
    let ValidOrder {
        email, lines, card, ..
    } = order;
    let mut step = trace.step("authorise card");
    let (card, capture_fails) = match card.authorise() {
        Authorisation::Approved {
            card,
            capture_fails,
        } => (card, capture_fails),
        Authorisation::Declined { card, reason } => {
            let problem =
                Problem::new(402, "payment-declined", "Payment declined", reason).with_errors(
                    vec![FieldError::new("/card/number", "the card was declined")],
                );
            step.attribute("shop.card.last4", card.last4.into());
            return Ok(stored_problem(&failed(&mut step, problem)));
        }
    };
    drop(step);

    let at = timestamp(env.now());
    let total_minor = lines.iter().map(|l| l.subtotal_minor()).sum();
    let order = Order {
        id: new_order_id(env.random()),
        email,
        lines,
        total_minor,
        currency: CURRENCY.to_owned(),
        card,
        capture_fails,
        status: OrderStatus::Accepted,
        notification: Notification::Pending { last_error: None },
        sequence: 0,
        created_at: at.clone(),
        updated_at: at,
        trace_id: trace_ids.trace_id,
        traceparent: trace_ids.traceparent,
    };

    let mut step = trace.step("reserve stock");
    step.attribute("shop.order.id", order.id.clone().into());
    let order = records::begin_order(kv, order).map_err(|e| failed(&mut step, unavailable(&e)))?;
    // The key learns the order before it takes stock: a retry after this request dies
    // settles this very order instead of making a second one.
    if let Some(owner) = owner {
        idempotency::assign_order(
            kv,
            owner.key_hash,
            owner.fingerprint,
            &order.id,
            order.sequence,
        )
        .map_err(|e| failed(&mut step, unavailable(&e)))?;
    }
    match stock::reserve(kv, &order.id, &order.lines) {
        Ok(()) => {}
        Err(StockError::OutOfStock {
            line,
            sku,
            requested,
            available,
        }) => {
            let problem = Problem::new(
                409,
                "out-of-stock",
                "Out of stock",
                format!("{requested} x {sku} requested, {available} available"),
            )
            .with_errors(vec![FieldError::new(
                format!("/items/{line}/quantity"),
                format!("only {available} available"),
            )])
            .with_extension("sku", json!(sku))
            .with_extension("available", json!(available));
            return Ok(stored_problem(&failed(&mut step, problem)));
        }
        Err(StockError::Store(e)) => return Err(failed(&mut step, unavailable(&e))),
        Err(other) => {
            return Err(failed(
                &mut step,
                Problem::unavailable("stock could not be reserved; try again")
                    .with_cause(format!("{other:?}")),
            ))
        }
    }
    drop(step);

    let mut step = trace.step("record order");
    step.attribute("shop.order.id", order.id.clone().into());
    let taken_over = match owner {
        Some(owner) => idempotency::superseded(kv, owner.key_hash, owner.attempt)
            .map_err(|e| failed(&mut step, unavailable(&e)))?,
        None => false,
    };
    let committed = !taken_over
        && records::commit_order(kv, &order).map_err(|e| failed(&mut step, unavailable(&e)))?;
    if !committed {
        // Another request took the key over, or redrive gave this one up for dead: the
        // order must not exist, and what it holds goes back (once, whoever gives it).
        let _ = stock::release(kv, &order.id, &order.lines);
        return Err(failed(&mut step, in_progress(1)));
    }
    drop(step);

    // Recorded: whatever happens to the event, the answer is "accepted". An unpublished
    // order is found and republished by redrive.
    publish_placed(kv, env, publisher, &order);
    Ok(accepted(&order.id))
}

/// An RFC 3339 UTC timestamp with millisecond precision.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What one redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// (order id, epoch, publish error if it failed).
    pub republished: Vec<(String, u64, Option<String>)>,
    pub abandoned: Vec<String>,
    pub completed: Vec<String>,
}

/// Republishes every recorded order unfinished and idle for `idle_secs`, each with a
/// new epoch so that a fulfilment claim left by a handler that died can be taken over,
/// and settles drafts whose request died (see [`records::sweep`]). Each event carries
/// the order's own trace context, so the work that completes an order joins its trace.
pub fn redrive<K, E, P>(
    kv: &K,
    env: &E,
    publisher: &P,
    idle_secs: i64,
    limit: usize,
    budget: Budget,
) -> Result<Redrive, StoreError>
where
    K: KeyValue,
    E: Environment,
    P: Publisher,
{
    let kv = Durable::new(kv, env, budget);
    let sweep = records::sweep(&kv, env.now(), idle_secs, limit)?;
    let mut report = Redrive {
        abandoned: sweep.abandoned,
        completed: sweep.completed,
        ..Redrive::default()
    };
    for order in sweep.unfinished {
        let epoch = kv.increment(&keys::fulfilment_epoch(&order.id), 1)? as u64;
        let mut event = OrderPlaced::new(
            new_event_id(env.random()),
            order.id.clone(),
            epoch,
            timestamp(env.now()),
        );
        event.sequence = order.sequence;
        event.traceparent = order.traceparent.clone();
        let result = publisher.publish(event);
        if result.is_ok() {
            let _ = kv.increment(&keys::order_published(&order.id), 1);
        }
        report.republished.push((order.id, epoch, result.err()));
    }
    Ok(report)
}

/// The customer's view of an order: its real state, and why if it failed. The email
/// is shown masked: the order URL is a bearer URL, anyone holding it sees this.
pub fn order_view(order: &Order, published: bool, trace_url: Option<String>) -> Value {
    let (status, reason) = match &order.status {
        OrderStatus::Accepted => ("accepted", None),
        OrderStatus::Confirmed => ("confirmed", None),
        OrderStatus::Failed { reason } => ("failed", Some(reason.as_str())),
    };
    let items: Vec<Value> = order
        .lines
        .iter()
        .map(|l| {
            json!({
                "sku": l.sku,
                "name": l.name,
                "quantity": l.quantity,
                "unit_price": money(l.unit_price_minor),
                "subtotal": money(l.subtotal_minor()),
            })
        })
        .collect();
    json!({
        "order_id": order.id,
        "status": status,
        "reason": reason,
        "notification": order.notification,
        "email": mask_email(&order.email),
        "items": items,
        "total": money(order.total_minor),
        "card": order.card,
        "event_published": published,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
        "trace_id": order.trace_id,
        "trace_url": trace_url,
    })
}

pub fn money(minor: u64) -> Value {
    json!({ "minor": minor, "currency": CURRENCY, "display": format_money(minor) })
}

/// `ada@example.com` -> `a***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}
