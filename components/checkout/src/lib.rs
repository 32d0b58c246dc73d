//! `checkout`: the shop's HTTP API on Spin's HTTP trigger.
//!
//! - `GET  /api/products`          catalogue with live stock
//! - `POST /api/orders`            place an order (honours `Idempotency-Key`)
//! - `GET  /api/orders/{id}`       the order's true current state
//! - `POST /api/admin/redrive`     republish orders still waiting (bearer token)
//! - `GET  /api/admin/dead-letters` messages fulfilment could not use (bearer token)
//!
//! Business rules live in `shop-domain`; this file only translates HTTP, key-value and
//! Redis into calls on it. Errors are RFC 9457 problem details naming the field at fault.

mod http_io;
mod orders;

use spin_sdk::http::{IncomingRequest, Method, Response};
use spin_sdk::http_component;

use http_io::{problem_response, Incoming};
use shop_domain::problem::Problem;

#[http_component]
async fn handle(request: IncomingRequest) -> Response {
    let incoming = Incoming::from(&request);
    let segments: Vec<&str> = incoming
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = incoming.method.clone();

    let response = match (segments.as_slice(), &method) {
        (["api", "products"], Method::Get) => orders::list_products(),
        (["api", "orders"], Method::Post) => orders::place_order(&incoming, request).await,
        (["api", "orders", id], Method::Get) => orders::get_order(id),
        (["api", "admin", "redrive"], Method::Post) => orders::redrive(&incoming),
        (["api", "admin", "dead-letters"], Method::Get) => orders::dead_letters(&incoming),
        (["api", "products"], _)
        | (["api", "orders", _], _)
        | (["api", "admin", "dead-letters"], _) => method_not_allowed(&incoming, "GET"),
        (["api", "orders"], _) | (["api", "admin", "redrive"], _) => {
            method_not_allowed(&incoming, "POST")
        }
        _ => problem_response(&Problem::not_found(format!(
            "no such resource: {}",
            incoming.path
        ))),
    };
    eprintln!(
        "checkout: {} {} -> {}",
        incoming.method,
        incoming.path,
        response.status()
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
