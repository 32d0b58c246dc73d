//! `checkout`: the shop's HTTP API on Spin's HTTP trigger.
//!
//! - `GET  /api/products`          catalogue with live stock
//! - `POST /api/orders`            place an order (honours `Idempotency-Key`)
//! - `GET  /api/orders/{id}`       the order's true current state
//! - `POST /api/admin/redrive`     republish orders still waiting (bearer token)
//! - `GET  /api/admin/dead-letters` messages fulfilment could not use (bearer token)
//! - `GET  /api/admin/stock`       stock levels and changes in doubt (bearer token)
//! - `POST /api/admin/stock/{sku}` add or remove units: `{"add": n}` (bearer token)
//!
//! Business rules live in `shop-domain`; this file only translates HTTP, key-value and
//! Redis into calls on it. Errors are RFC 9457 problem details naming the field at fault.

// Log lines go through `shop_adapters::log_line!`: one write each, whole on Spin.
#![deny(clippy::print_stderr, clippy::print_stdout)]

mod http_io;
mod orders;

use opentelemetry::trace::{FutureExt, Status, TraceContextExt, Tracer};
use opentelemetry::KeyValue;
use shop_adapters::telemetry;
use spin_sdk::http::{IncomingRequest, Method, Response, ResponseOutparam};
use spin_sdk::http_component;

use http_io::{problem_response, Incoming};
use shop_domain::problem::Problem;

#[http_component]
async fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
    let response = answer(request).await;
    // Body first, then the headers: one write for the host to send (see the module).
    shop_adapters::http_response::send(response_out, response).await;
}

async fn answer(request: IncomingRequest) -> Response {
    let _tracing = telemetry::start();
    let incoming = Incoming::from(&request);
    let segments: Vec<&str> = incoming
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = incoming.method.clone();

    // One span per request under the host's (Spin's `POST /api/...`), named for what
    // the request does; every step below hangs under it.
    let operation = match (segments.as_slice(), &method) {
        (["api", "products"], Method::Get) => "list products",
        (["api", "orders"], Method::Post) => "place order",
        (["api", "orders", _], Method::Get) => "get order",
        (["api", "admin", "redrive"], Method::Post) => "redrive orders",
        (["api", "admin", "dead-letters"], Method::Get) => "list dead letters",
        (["api", "admin", "stock"], Method::Get) => "list stock",
        (["api", "admin", "stock", _], Method::Post) => "adjust stock",
        _ => "refuse request",
    };
    let parent = telemetry::request_parent(
        incoming.header("traceparent"),
        incoming.header("tracestate"),
    );
    let tracer = telemetry::tracer("checkout");
    let span = tracer
        .span_builder(operation)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", incoming.path.clone()),
        ])
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);

    let mut response = async {
        match (segments.as_slice(), &method) {
            (["api", "products"], Method::Get) => orders::list_products(),
            (["api", "orders"], Method::Post) => orders::place_order(&incoming, request).await,
            (["api", "orders", id], Method::Get) => orders::get_order(id),
            (["api", "admin", "redrive"], Method::Post) => orders::redrive(&incoming),
            (["api", "admin", "dead-letters"], Method::Get) => orders::dead_letters(&incoming),
            (["api", "admin", "stock"], Method::Get) => orders::stock(&incoming),
            (["api", "admin", "stock", sku], Method::Post) => {
                orders::adjust_stock(&incoming, request, sku).await
            }
            (["api", "products"], _)
            | (["api", "orders", _], _)
            | (["api", "admin", "dead-letters"], _)
            | (["api", "admin", "stock"], _) => method_not_allowed(&incoming, "GET"),
            (["api", "orders"], _)
            | (["api", "admin", "redrive"], _)
            | (["api", "admin", "stock", _], _) => method_not_allowed(&incoming, "POST"),
            _ => problem_response(&Problem::not_found(format!(
                "no such resource: {}",
                incoming.path
            ))),
        }
    }
    .with_context(cx.clone())
    .await;

    let status = *response.status();
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(Status::error(format!("answered {status}")));
    }
    // The client can find this request's trace (and the order's) from the answer.
    if let Some(traceparent) = telemetry::traceparent(span.span_context()) {
        response.set_header("traceparent", traceparent);
    }
    shop_adapters::log_line!(
        "checkout: {} {} -> {status}",
        incoming.method,
        incoming.path
    );
    response
}

fn method_not_allowed(incoming: &Incoming, allow: &str) -> Response {
    let problem = Problem::new(
        405,
        "method-not-allowed",
        "Method not allowed",
        format!("{} does not accept {}", incoming.path, incoming.method),
    );
    let mut response = problem_response(&problem);
    response.set_header("allow", allow);
    response
}
