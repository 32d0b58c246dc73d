//! The endpoint handlers: each turns a request into calls on the domain's use cases
//! (`shop_domain::checkout`) and a response.

// Every error path here ends as the problem+json response itself, once per request, in
// an instance that lives for that request: boxing `Problem` would buy nothing.
#![allow(clippy::result_large_err)]

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue as Attribute};
use serde_json::{json, Value};
use shop_adapters::telemetry::{self, Steps};
use shop_adapters::{now, seconds_variable, variable, ShopStore, SpinEnv};
use shop_domain::catalogue::PRODUCTS;
use shop_domain::checkout::{self, Settings, TraceIds};
use shop_domain::durable::Budget;
use shop_domain::event::OrderPlaced;
use shop_domain::idempotency::StoredResponse;
use shop_domain::ids::is_order_id;
use shop_domain::ports::Publisher;
use shop_domain::problem::{FieldError, Problem};
use shop_domain::records;
use shop_domain::stock;
use shop_domain::store::{keys, KeyValue, StoreError};
use shop_domain::validation::MAX_BODY_BYTES;
use spin_sdk::http::{IncomingRequest, Response};

use crate::http_io::{json_response, problem_response, read_body, Incoming};

/// Handlers return `Err(problem)` for anything that is not the happy path.
type Outcome = Result<Response, Problem>;

fn respond(outcome: Outcome) -> Response {
    outcome.unwrap_or_else(|problem| problem_response(&problem))
}

fn open_store() -> Result<ShopStore, Problem> {
    ShopStore::open().map_err(|e| checkout::unavailable(&e))
}

/// A stock read's failure as the client sees it.
fn stock_unavailable(e: stock::StockError) -> Problem {
    match e {
        stock::StockError::Store(e) => checkout::unavailable(&e),
        other => Problem::unavailable("stock is being initialised; try again")
            .with_cause(format!("{other:?}")),
    }
}

/// The catalogue with live stock: one counter read per product (stock is seeded on
/// first use, see `shop_domain::stock`).
pub fn list_products() -> Response {
    respond((|| {
        let kv = open_store()?;
        let mut products = Vec::new();
        for p in PRODUCTS {
            let available = stock::available(&kv, p).map_err(stock_unavailable)?;
            products.push(json!({
                "sku": p.sku,
                "name": p.name,
                "price": checkout::money(p.price_minor),
                "available": available,
            }));
        }
        Ok(json_response(200, &json!({ "products": products })))
    })())
}

fn settings() -> Settings {
    Settings {
        lease_secs: seconds_variable("lease_seconds", 30),
        store_budget: Budget::default(),
    }
}

pub async fn place_order(incoming: &Incoming, request: IncomingRequest) -> Response {
    let body = match json_body(incoming, request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    respond(place(incoming, &body))
}

/// The body of a request that must be JSON: a body without a content type, or with
/// another one, is refused with 415; one over `limit` bytes with 413.
async fn json_body(
    incoming: &Incoming,
    request: IncomingRequest,
    limit: usize,
) -> Result<Vec<u8>, Response> {
    let content_type = incoming.header("content-type").unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        let detail = if content_type.is_empty() {
            "the request has no Content-Type; send application/json".to_owned()
        } else {
            format!("{content_type:?} is not application/json")
        };
        return Err(problem_response(
            &Problem::new(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as application/json",
            )
            .with_errors(vec![FieldError::new("header:content-type", detail)]),
        ));
    }
    read_body(incoming, request, limit).await
}

fn place(incoming: &Incoming, body: &[u8]) -> Outcome {
    let steps = Steps::new("checkout");
    let placement = {
        let mut step = shop_domain::ports::Trace::step(&steps, "validate order");
        let validated = checkout::validate(
            body,
            incoming.raw_header("idempotency-key"),
            now().date_naive(),
        );
        match &validated {
            Ok(p) => shop_domain::ports::Step::attribute(
                &mut step,
                "shop.order.item_count",
                (p.item_count() as i64).into(),
            ),
            Err(problem) => shop_domain::ports::Step::fail(&mut step, &checkout::describe(problem)),
        }
        validated?
    };
    let kv = open_store()?;
    let order_span = Context::current();
    let trace_ids = TraceIds {
        trace_id: telemetry::trace_id(order_span.span().span_context()),
        traceparent: telemetry::traceparent(order_span.span().span_context()),
    };
    let publisher = RedisPublisher::from_variables()?;
    let stored = checkout::place(
        &kv,
        &SpinEnv,
        &steps,
        &publisher,
        placement,
        trace_ids,
        &settings(),
    )?;
    if let Some(id) = stored.body["order_id"].as_str() {
        order_span
            .span()
            .set_attribute(Attribute::new("shop.order.id", id.to_owned()));
    }
    Ok(replayable(&stored))
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

/// Publishes order events on Spin's outbound Redis, each on its order's shard of the
/// channel (`shop_domain::event::order_channel`) and in a `PRODUCER` span whose W3C
/// context the event carries to fulfilment. A redrive's event comes with the order's
/// own context: its span joins the order's trace, linked to the current request.
struct RedisPublisher {
    address: String,
    base_channel: String,
    shards: u32,
}

impl RedisPublisher {
    fn from_variables() -> Result<RedisPublisher, Problem> {
        let configuration = |e| Problem::internal("configuration error").with_cause(e);
        let read = |name| variable(name).map_err(configuration);
        Ok(RedisPublisher {
            address: read("redis_address")?,
            base_channel: read("orders_channel")?,
            shards: shop_domain::event::parse_shards(&read("order_shards")?)
                .map_err(configuration)?,
        })
    }
}

/// `PUBLISH` through `execute`, which, unlike `publish`, answers how many subscribers
/// got the message: none means nobody will fulfil it (fulfilment down, or a shard
/// without a trigger in `spin.toml`), so it counts as not published and redrive
/// tries again.
fn publish_to_subscribers(address: &str, channel: &str, payload: &[u8]) -> Result<i64, String> {
    use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
    let connection = Connection::open(address).map_err(|e| format!("connecting to Redis: {e}"))?;
    let reply = connection
        .execute(
            "PUBLISH",
            &[
                RedisParameter::Binary(channel.as_bytes().to_vec()),
                RedisParameter::Binary(payload.to_vec()),
            ],
        )
        .map_err(|e| format!("publishing to {channel}: {e}"))?;
    match reply.as_slice() {
        [RedisResult::Int64(0)] => Err(format!(
            "no subscriber on {channel}: fulfilment is not running, or spin.toml has no \
             trigger for this shard (order_shards)"
        )),
        [RedisResult::Int64(receivers)] => Ok(*receivers),
        other => Err(format!(
            "publishing to {channel}: unexpected reply {other:?}"
        )),
    }
}

impl Publisher for RedisPublisher {
    fn publish(&self, mut event: OrderPlaced) -> Result<(), String> {
        let channel =
            shop_domain::event::order_channel(&self.base_channel, event.sequence, self.shards);
        let current = Context::current();
        let order_trace = telemetry::remote_parent(event.traceparent.as_deref(), None);
        let (parent, link) = if order_trace.has_active_span() {
            (order_trace, Some(current))
        } else {
            (current, None)
        };
        let tracer = telemetry::tracer("checkout");
        let mut span = tracer
            .span_builder(format!("publish {channel}"))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                Attribute::new("messaging.system", "redis"),
                Attribute::new("messaging.destination.name", channel.clone()),
                Attribute::new("messaging.operation.type", "publish"),
                Attribute::new("messaging.operation.name", "publish"),
                Attribute::new("messaging.message.id", event.event_id.clone()),
                Attribute::new("shop.order.id", event.order_id.clone()),
                Attribute::new("shop.fulfilment.epoch", event.epoch as i64),
            ]);
        if let Some(link) = link {
            span = span.with_links(vec![Link::with_context(link.span().span_context().clone())]);
        }
        let cx = parent.with_span(span.start_with_context(&tracer, &parent));
        let _active = cx.clone().attach();
        event.traceparent = telemetry::traceparent(cx.span().span_context());
        event.tracestate = telemetry::tracestate(cx.span().span_context());
        let result = publish_to_subscribers(&self.address, &channel, &event.to_json());
        match &result {
            Ok(receivers) => {
                cx.span()
                    .set_attribute(Attribute::new("shop.messaging.receivers", *receivers));
                shop_adapters::log_line!(
                    "checkout: order {} published on {channel} (epoch {})",
                    event.order_id,
                    event.epoch
                )
            }
            Err(e) => {
                telemetry::fail(&cx, e.clone());
                shop_adapters::log_line!(
                    "checkout: order {} NOT published ({e}); redrive will republish it",
                    event.order_id
                );
            }
        }
        result.map(drop)
    }
}

pub fn get_order(id: &str) -> Response {
    let mut response = respond((|| {
        if !is_order_id(id) {
            return Err(Problem::not_found(format!("no order {id:?}")));
        }
        let kv = open_store()?;
        let unavailable = |e: StoreError| checkout::unavailable(&e);
        let order = records::load_order(&kv, id)
            .map_err(unavailable)?
            .ok_or_else(|| Problem::not_found(format!("no order {id:?}")))?;
        let published = kv
            .counter(&keys::order_published(id))
            .map_err(unavailable)?
            > 0;
        Context::current()
            .span()
            .set_attribute(Attribute::new("shop.order.id", id.to_owned()));
        let view = checkout::order_view(&order, published, trace_url(order.trace_id.as_deref()));
        Ok(json_response(200, &view))
    })());
    // The order URL is a bearer URL: no cache may keep what it shows.
    response.set_header("cache-control", "no-store");
    response
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

/// Checks `Authorization: Bearer <admin_token>` in constant time. An empty
/// `admin_token` disables the admin endpoints rather than leaving them open. The token
/// is never logged or echoed.
fn authorise_admin(incoming: &Incoming) -> Result<(), Problem> {
    let token = variable("admin_token")
        .map_err(|e| Problem::internal("admin_token is not readable").with_cause(e))?;
    if token.is_empty() {
        return Err(Problem::new(
            403,
            "admin-disabled",
            "Admin endpoints disabled",
            "set the admin_token variable to enable admin endpoints",
        ));
    }
    let presented = incoming
        .raw_header("authorization")
        .and_then(|h| h.strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if !constant_time_eq(presented, token.as_bytes()) {
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

/// Compares without stopping at the first difference; the length is not secret.
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
/// the `redrive_after_seconds` variable), each with a new epoch, and settles orders
/// whose request died before recording them (see `shop_domain::checkout::redrive`).
/// Redis pub/sub drops messages published while fulfilment is down; this is how such
/// orders complete.
pub fn redrive(incoming: &Incoming) -> Response {
    respond((|| {
        authorise_admin(incoming)?;
        let default_idle = seconds_variable("redrive_after_seconds", 30);
        let idle = query_number(incoming, "older_than_seconds", default_idle, 86_400 * 30)?;
        let limit = query_number(incoming, "limit", 100, 1_000)?;
        let kv = open_store()?;
        let publisher = RedisPublisher::from_variables()?;
        let report = checkout::redrive(
            &kv,
            &SpinEnv,
            &publisher,
            idle,
            limit as usize,
            Budget::default(),
        )
        .map_err(|e| checkout::unavailable(&e))?;
        let redriven: Vec<Value> = report
            .republished
            .iter()
            .map(|(order_id, epoch, error)| {
                shop_adapters::log_line!("checkout: redrive {order_id} epoch {epoch}: {error:?}");
                json!({
                    "order_id": order_id,
                    "epoch": epoch,
                    "published": error.is_none(),
                    "error": error,
                })
            })
            .collect();
        for id in &report.abandoned {
            shop_adapters::log_line!("checkout: redrive gave up {id}, whose request died before recording it; its stock is back");
        }
        Ok(json_response(
            200,
            &json!({
                "count": redriven.len(),
                "redriven": redriven,
                "abandoned": report.abandoned,
                "completed": report.completed,
            }),
        ))
    })())
}

pub fn dead_letters(incoming: &Incoming) -> Response {
    respond((|| {
        authorise_admin(incoming)?;
        let limit = query_number(incoming, "limit", 50, 1_000)?;
        let kv = open_store()?;
        let letters = records::recent_dead_letters(&kv, limit as usize)
            .map_err(|e| checkout::unavailable(&e))?;
        let letters: Vec<Value> = letters
            .into_iter()
            .map(|(seq, letter)| json!({ "seq": seq, "letter": letter }))
            .collect();
        Ok(json_response(200, &json!({ "dead_letters": letters })))
    })())
}

/// Stock levels and the changes in doubt (see `shop_domain::stock::Doubt`): what an
/// operator needs to count and correct after a crash.
pub fn stock(incoming: &Incoming) -> Response {
    respond((|| {
        authorise_admin(incoming)?;
        let kv = open_store()?;
        let doubts = stock::doubts(&kv).map_err(|e| checkout::unavailable(&e))?;
        let levels = stock::levels(&kv, &doubts).map_err(stock_unavailable)?;
        Ok(json_response(
            200,
            &json!({ "products": levels, "doubts": doubts }),
        ))
    })())
}

/// `POST /api/admin/stock/{sku}` with `{"add": n}` (negative removes units) or
/// `{"set": n}`: changes the level atomically with the counter orders take from;
/// answers the new level.
pub async fn adjust_stock(incoming: &Incoming, request: IncomingRequest, sku: &str) -> Response {
    if let Err(problem) = authorise_admin(incoming) {
        return problem_response(&problem);
    }
    let body = match json_body(incoming, request, 1024).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    respond((|| {
        let Some(product) = shop_domain::catalogue::find(sku) else {
            return Err(Problem::not_found(format!("no product with SKU {sku:?}")));
        };
        let change = shop_domain::validation::parse_stock_adjustment(&body)?;
        let kv = open_store()?;
        match stock::adjust(&kv, product, change) {
            Ok(level) => {
                shop_adapters::log_line!("checkout: stock of {} {change:?}: {level}", product.sku);
                Ok(json_response(
                    200,
                    &json!({ "sku": product.sku, "available": level }),
                ))
            }
            Err(stock::StockError::OutOfStock {
                available,
                requested,
                ..
            }) => {
                let pointer = match change {
                    stock::StockChange::Add(_) => "/add",
                    stock::StockChange::Set(_) => "/set",
                };
                Err(Problem::new(
                    409,
                    "not-enough-stock",
                    "Not enough stock to remove",
                    format!("{available} available, {requested} to remove"),
                )
                .with_errors(vec![FieldError::new(
                    pointer,
                    format!("at most {available} can be removed"),
                )])
                .with_extension("available", json!(available)))
            }
            Err(stock::StockError::Store(e)) => Err(Problem::unavailable(
                "the store failed during the change, which may or may not have been applied; \
                 read GET /api/admin/stock before retrying",
            )
            .with_cause(e.to_string())),
            Err(other) => Err(Problem::unavailable("stock is being seeded; try again")
                .with_cause(format!("{other:?}"))),
        }
    })())
}
