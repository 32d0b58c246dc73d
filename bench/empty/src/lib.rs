//! The floor `make bench` measures the shop against: the same SDK, trigger and runner
//! as `checkout`, and no work at all (no key-value, no Redis, no JSON).

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(_request: Request) -> impl IntoResponse {
    Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body("ok")
        .build()
}
