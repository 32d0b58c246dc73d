//! The endpoint handlers: each turns a request into domain calls and a response.

// Every error path here ends as the problem+json response itself, once per request, in
// an instance that lives for that request: boxing `Problem` would buy nothing.
#![allow(clippy::result_large_err)]

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue as Attribute};
use serde_json::{json, Value};
use shop_adapters::{now, random_bytes, sleep_ms, telemetry, timestamp, variable, SpinKeyValue};
use shop_domain::catalogue::{format_money, CURRENCY, PRODUCTS};
use shop_domain::event::OrderPlaced;
use shop_domain::idempotency::{self, Start, StoredResponse};
use shop_domain::ids::{
    hash_idempotency_key, is_order_id, new_event_id, new_order_id, validate_idempotency_key,
};
use shop_domain::order::{Notification, Order, OrderStatus};
use shop_domain::payment::Authorisation;
use shop_domain::problem::{FieldError, Problem};
use shop_domain::records;
use shop_domain::stock::{self, StockError};
use shop_domain::store::{keys, KeyValue, StoreError};
use shop_domain::validation::{parse_order_request, ValidOrder, MAX_BODY_BYTES};
use spin_sdk::http::{IncomingRequest, Response};

use crate::http_io::{json_response, problem_response, read_body, Incoming};

/// Handlers return `Err(problem)` for anything that is not the happy path.
type Outcome = Result<Response, Problem>;

fn respond(outcome: Outcome) -> Response {
    outcome.unwrap_or_else(|problem| problem_response(&problem))
}

/// A key-value failure is the shop being unavailable, not the client's fault.
fn store_unavailable(e: StoreError) -> Problem {
    eprintln!("checkout: {e}");
    Problem::unavailable("the order store is unavailable; try again shortly")
}

fn open_store() -> Result<SpinKeyValue, Problem> {
    SpinKeyValue::open().map_err(store_unavailable)
}

fn tracer() -> BoxedTracer {
    telemetry::tracer("checkout")
}

/// Runs one step of a request in a span of its own, under the current span; a problem
/// it ends with marks the span failed.
fn step<T>(
    name: &'static str,
    f: impl FnOnce(&Context) -> Result<T, Problem>,
) -> Result<T, Problem> {
    tracer().in_span(name, |cx| {
        let result = f(&cx);
        if let Err(problem) = &result {
            telemetry::fail(&cx, describe(problem));
        }
        result
    })
}

/// A problem as one line, for spans: status, title and detail.
fn describe(problem: &Problem) -> String {
    format!("{} {}: {}", problem.status, problem.title, problem.detail)
}

/// Seeds the catalogue's stock on first use; waits briefly if another request is
/// seeding it right now.
fn catalogue_ready(kv: &impl KeyValue) -> Result<(), Problem> {
    for _ in 0..200 {
        if stock::ensure_catalogue_seeded(kv).map_err(store_unavailable)? {
            return Ok(());
        }
        sleep_ms(5);
    }
    Err(Problem::unavailable("the catalogue is being initialised"))
}

pub fn list_products() -> Response {
    respond((|| {
        let kv = open_store()?;
        catalogue_ready(&kv)?;
        let mut products = Vec::new();
        for p in PRODUCTS {
            let available = stock::available(&kv, p.sku).map_err(store_unavailable)?;
            products.push(json!({
                "sku": p.sku,
                "name": p.name,
                "price": money(p.price_minor),
                "available": available,
            }));
        }
        Ok(json_response(200, &json!({ "products": products })))
    })())
}

fn money(minor: u64) -> Value {
    json!({ "minor": minor, "currency": CURRENCY, "display": format_money(minor) })
}

pub async fn place_order(incoming: &Incoming, request: IncomingRequest) -> Response {
    if let Some(content_type) = incoming.header("content-type") {
        if !content_type
            .trim()
            .to_ascii_lowercase()
            .starts_with("application/json")
        {
            return problem_response(
                &Problem::new(
                    415,
                    "unsupported-media-type",
                    "Unsupported media type",
                    "send the order as application/json",
                )
                .with_errors(vec![FieldError::new(
                    "header:content-type",
                    format!("{content_type:?} is not application/json"),
                )]),
            );
        }
    }
    let body = match read_body(incoming, request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    respond(place(incoming, &body))
}

fn place(incoming: &Incoming, body: &[u8]) -> Outcome {
    let order = step("validate order", |cx| {
        let order = parse_order_request(body, now().date_naive()).map_err(|e| e.to_problem())?;
        cx.span().set_attribute(Attribute::new(
            "shop.order.item_count",
            order.lines.len() as i64,
        ));
        Ok(order)
    })?;
    let key_hash = match incoming.header("idempotency-key") {
        None => None,
        Some(key) => {
            validate_idempotency_key(key).map_err(|detail| {
                Problem::new(
                    400,
                    "invalid-idempotency-key",
                    "Invalid Idempotency-Key",
                    &detail,
                )
                .with_errors(vec![FieldError::new("header:idempotency-key", detail)])
            })?;
            Some(hash_idempotency_key(key))
        }
    };

    let kv = open_store()?;
    catalogue_ready(&kv)?;
    let fingerprint = order.fingerprint.clone();

    let Some(key_hash) = key_hash else {
        return Ok(replayable(&accept(&kv, order)?));
    };
    let start = step("claim idempotency key", |_| {
        idempotency::begin(&kv, &key_hash, &fingerprint).map_err(store_unavailable)
    })?;
    let attempt = match start {
        Start::New { attempt } => attempt,
        Start::Replay(stored) => return Ok(replayable(&stored)),
        Start::Mismatch => {
            return Err(Problem::new(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused with a different body",
                "this Idempotency-Key was already used for a different order; use a new key",
            )
            .with_errors(vec![FieldError::new(
                "header:idempotency-key",
                "already used with a different request body",
            )]))
        }
        Start::InProgress => {
            return Err(Problem::new(
                409,
                "idempotency-key-in-use",
                "Request with this Idempotency-Key in progress",
                "an earlier request with this Idempotency-Key has not finished; retry shortly",
            ))
        }
    };
    match accept(&kv, order) {
        Ok(stored) => {
            idempotency::finish(&kv, &key_hash, &fingerprint, attempt, &stored)
                .map_err(store_unavailable)?;
            Ok(replayable(&stored))
        }
        Err(problem) => {
            // A 5xx is not the answer to replay: let the client's retry try again.
            if let Err(e) = idempotency::abandon(&kv, &key_hash, &fingerprint, attempt) {
                eprintln!("checkout: could not release idempotency key: {e}");
            }
            Err(problem)
        }
    }
}

/// Decides the order: a stored answer (202, 402 or 409) for the client, or a 5xx problem.
fn accept(kv: &SpinKeyValue, order: ValidOrder) -> Result<StoredResponse, Problem> {
    let ValidOrder {
        email, lines, card, ..
    } = order;
    // A refusal (declined card, out of stock) is the answer to replay, not an internal
    // failure: it comes back as `Ok(Err(problem))`, and its step's span is failed.
    let authorised = step("authorise card", |cx| {
        Ok(match card.authorise() {
            Authorisation::Approved {
                card,
                capture_fails,
            } => Ok((card, capture_fails)),
            Authorisation::Declined { card, reason } => {
                eprintln!("checkout: card ending {} declined", card.last4);
                let problem =
                    Problem::new(402, "payment-declined", "Payment declined", reason).with_errors(
                        vec![FieldError::new("/card/number", "the card was declined")],
                    );
                telemetry::fail(cx, describe(&problem));
                Err(problem)
            }
        })
    })?;
    let (card, capture_fails) = match authorised {
        Ok(approved) => approved,
        Err(declined) => return Ok(stored_problem(&declined)),
    };

    let order_id = new_order_id(random_bytes());
    let order_context = Context::current();
    order_context
        .span()
        .set_attribute(Attribute::new("shop.order.id", order_id.clone()));
    let reserved = step("reserve stock", |cx| {
        cx.span()
            .set_attribute(Attribute::new("shop.order.id", order_id.clone()));
        match stock::reserve(kv, &order_id, &lines) {
            Ok(()) => Ok(Ok(())),
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
                telemetry::fail(cx, describe(&problem));
                Ok(Err(problem))
            }
            Err(StockError::Store(e)) => Err(store_unavailable(e)),
            Err(other) => {
                eprintln!("checkout: reservation for {order_id} failed: {other:?}");
                Err(Problem::unavailable(
                    "stock could not be reserved; try again",
                ))
            }
        }
    })?;
    if let Err(out_of_stock) = reserved {
        return Ok(stored_problem(&out_of_stock));
    }

    let at = timestamp(now());
    let total_minor = lines.iter().map(|l| l.subtotal_minor()).sum();
    let record = |sequence| Order {
        id: order_id.clone(),
        email,
        lines: lines.clone(),
        total_minor,
        currency: CURRENCY.to_owned(),
        card,
        capture_fails,
        status: OrderStatus::Accepted,
        notification: Notification::Pending { last_error: None },
        sequence,
        created_at: at.clone(),
        updated_at: at.clone(),
        // The order's trace: fulfilment continues it, and so does any redrive.
        trace_id: telemetry::trace_id(order_context.span().span_context()),
        traceparent: telemetry::traceparent(order_context.span().span_context()),
    };
    step("record order", |_| {
        let saved = records::assign_sequence(kv, &order_id, &at)
            .and_then(|sequence| records::save_order(kv, &record(sequence)));
        saved.map_err(|e| {
            // The order does not exist, so it must not hold stock.
            if let Err(release) = stock::release(kv, &order_id, &lines) {
                eprintln!("checkout: releasing stock of unrecorded {order_id} failed: {release}");
            }
            store_unavailable(e)
        })
    })?;

    // The order is recorded: whatever happens to the event, the answer is "accepted".
    // An unpublished order is found and republished by redrive.
    match publish(kv, &order_id, 0, &order_context, None) {
        Ok(()) => eprintln!("checkout: order {order_id} accepted and published"),
        Err(e) => eprintln!("checkout: order {order_id} accepted but NOT published ({e}); redrive will republish it"),
    }
    let location = format!("/api/orders/{order_id}");
    Ok(StoredResponse {
        status: 202,
        body: json!({ "order_id": order_id, "status": "accepted", "status_url": location }),
        location: Some(location),
    })
}

fn stored_problem(problem: &Problem) -> StoredResponse {
    StoredResponse {
        status: problem.status,
        body: serde_json::to_value(problem).unwrap_or(Value::Null),
        location: None,
    }
}

/// Renders a stored answer; replays are byte-for-byte the first answer.
fn replayable(stored: &StoredResponse) -> Response {
    let content_type = if stored.status >= 400 {
        shop_domain::problem::CONTENT_TYPE
    } else {
        "application/json"
    };
    let mut builder = Response::builder();
    builder
        .status(stored.status)
        .header("content-type", content_type)
        .body(serde_json::to_vec(&stored.body).unwrap_or_default());
    if let Some(location) = &stored.location {
        builder.header("location", location.as_str());
    }
    builder.build()
}

/// Publishes the order-placed event for `epoch` and notes that the order reached Redis.
///
/// The event carries the W3C context of its `PRODUCER` span (under `parent`, the
/// order's trace), so fulfilment continues that trace. `link` ties a redrive's span to
/// the admin request that caused it.
fn publish(
    kv: &impl KeyValue,
    order_id: &str,
    epoch: u64,
    parent: &Context,
    link: Option<&Context>,
) -> Result<(), String> {
    let address = variable("redis_address")?;
    let channel = variable("orders_channel")?;
    let event_id = new_event_id(random_bytes());
    let tracer = tracer();
    let mut span = tracer
        .span_builder(format!("publish {channel}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            Attribute::new("messaging.system", "redis"),
            Attribute::new("messaging.destination.name", channel.clone()),
            Attribute::new("messaging.operation.type", "publish"),
            Attribute::new("messaging.operation.name", "publish"),
            Attribute::new("messaging.message.id", event_id.clone()),
            Attribute::new("shop.order.id", order_id.to_owned()),
            Attribute::new("shop.fulfilment.epoch", epoch as i64),
        ]);
    if let Some(link) = link {
        span = span.with_links(vec![Link::with_context(link.span().span_context().clone())]);
    }
    let cx = parent.with_span(span.start_with_context(&tracer, parent));
    let _active = cx.clone().attach();

    let mut event = OrderPlaced::new(event_id, order_id.to_owned(), epoch, timestamp(now()));
    event.traceparent = telemetry::traceparent(cx.span().span_context());
    event.tracestate = telemetry::tracestate(cx.span().span_context());
    let result = (|| -> Result<(), String> {
        let connection = spin_sdk::redis::Connection::open(&address)
            .map_err(|e| format!("connecting to Redis: {e}"))?;
        connection
            .publish(&channel, &event.to_json())
            .map_err(|e| format!("publishing to {channel}: {e}"))?;
        kv.increment(&keys::order_published(order_id), 1)
            .map_err(|e| e.to_string())?;
        Ok(())
    })();
    if let Err(e) = &result {
        telemetry::fail(&cx, e.clone());
    }
    result
}

pub fn get_order(id: &str) -> Response {
    respond((|| {
        if !is_order_id(id) {
            return Err(Problem::not_found(format!("no order {id:?}")));
        }
        let kv = open_store()?;
        let order = records::load_order(&kv, id)
            .map_err(store_unavailable)?
            .ok_or_else(|| Problem::not_found(format!("no order {id:?}")))?;
        let published = kv
            .counter(&keys::order_published(id))
            .map_err(store_unavailable)?
            > 0;
        Context::current()
            .span()
            .set_attribute(Attribute::new("shop.order.id", id.to_owned()));
        Ok(json_response(200, &order_view(&order, published)))
    })())
}

/// The customer's view of an order: its real state, and why if it failed.
fn order_view(order: &Order, published: bool) -> Value {
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
        "email": order.email,
        "items": items,
        "total": money(order.total_minor),
        "card": order.card,
        "event_published": published,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
        "trace_id": order.trace_id,
        "trace_url": trace_url(order.trace_id.as_deref()),
    })
}

/// Where a person sees the order's trace, from the `trace_viewer_url` variable: a
/// template with `{trace_id}` (e.g. Jaeger's `http://127.0.0.1:16686/trace/{trace_id}`),
/// or the base URL of the project's trace viewer. None when unset.
fn trace_url(trace_id: Option<&str>) -> Option<String> {
    let template = variable("trace_viewer_url").ok()?;
    let template = template.trim();
    let trace_id = trace_id?;
    if template.is_empty() {
        return None;
    }
    Some(if template.contains("{trace_id}") {
        template.replace("{trace_id}", trace_id)
    } else {
        format!("{}/traces/{trace_id}", template.trim_end_matches('/'))
    })
}

/// Checks `Authorization: Bearer <admin_token>`. An empty `admin_token` disables the
/// admin endpoints rather than leaving them open.
fn authorise_admin(incoming: &Incoming) -> Result<(), Problem> {
    let token = variable("admin_token").map_err(|e| {
        eprintln!("checkout: {e}");
        Problem::internal("admin_token is not readable")
    })?;
    if token.is_empty() {
        return Err(Problem::new(
            403,
            "admin-disabled",
            "Admin endpoints disabled",
            "set the admin_token variable to enable admin endpoints",
        ));
    }
    let presented = incoming
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        return Err(Problem::new(
            401,
            "unauthorized",
            "Unauthorized",
            "send Authorization: Bearer <admin_token>",
        )
        .with_errors(vec![FieldError::new(
            "header:authorization",
            "missing or wrong bearer token",
        )]));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_number(incoming: &Incoming, name: &str, default: i64, max: i64) -> Result<i64, Problem> {
    match incoming.query_param(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=max).contains(n))
            .ok_or_else(|| {
                let detail = format!("must be an integer from 0 to {max}");
                Problem::new(400, "invalid-query", "Invalid query parameter", &detail)
                    .with_errors(vec![FieldError::new(format!("query:{name}"), detail)])
            }),
    }
}

/// Republishes every unfinished order idle for longer than `older_than_seconds` (default:
/// the `redrive_after_seconds` variable), each with a new epoch so that a claim left by
/// a handler that died can be taken over. Redis pub/sub drops messages published while
/// fulfilment is down; this is how such orders complete.
pub fn redrive(incoming: &Incoming) -> Response {
    respond((|| {
        authorise_admin(incoming)?;
        let default_idle = variable("redrive_after_seconds")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(30);
        let idle = query_number(incoming, "older_than_seconds", default_idle, 86_400 * 30)?;
        let limit = query_number(incoming, "limit", 100, 1_000)?;
        let kv = open_store()?;
        let orders = records::unfinished_orders(&kv, now(), idle, limit as usize)
            .map_err(store_unavailable)?;
        let mut redriven = Vec::new();
        let request = Context::current();
        for order in orders {
            let epoch = kv
                .increment(&keys::fulfilment_epoch(&order.id), 1)
                .map_err(store_unavailable)?;
            // Back in the order's own trace (linked to this admin request), or in this
            // request's trace for an order placed untraced.
            let order_trace = telemetry::remote_parent(order.traceparent.as_deref(), None);
            let order_trace = if order_trace.has_active_span() {
                order_trace
            } else {
                request.clone()
            };
            let result = publish(&kv, &order.id, epoch as u64, &order_trace, Some(&request));
            eprintln!("checkout: redrive {} epoch {epoch}: {result:?}", order.id);
            redriven.push(json!({
                "order_id": order.id,
                "epoch": epoch,
                "published": result.is_ok(),
                "error": result.err(),
            }));
        }
        Ok(json_response(
            200,
            &json!({ "count": redriven.len(), "redriven": redriven }),
        ))
    })())
}

pub fn dead_letters(incoming: &Incoming) -> Response {
    respond((|| {
        authorise_admin(incoming)?;
        let limit = query_number(incoming, "limit", 50, 1_000)?;
        let kv = open_store()?;
        let letters =
            records::recent_dead_letters(&kv, limit as usize).map_err(store_unavailable)?;
        let letters: Vec<Value> = letters
            .into_iter()
            .map(|(seq, letter)| json!({ "seq": seq, "letter": letter }))
            .collect();
        Ok(json_response(200, &json!({ "dead_letters": letters })))
    })())
}
