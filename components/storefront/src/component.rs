//! The Spin glue: an incoming request's method, path and the two headers that matter,
//! in; [`serve::respond`]'s answer, out. The body is never read.

use spin_sdk::http::{IncomingRequest, Response};
use spin_sdk::http_component;

use crate::serve;

#[http_component]
fn handle(request: IncomingRequest) -> Response {
    let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_owned());
    let path = path_with_query
        .split_once('?')
        .map_or(path_with_query.as_str(), |(path, _)| path);
    let headers = request.headers();
    let header = |name: &str| {
        let values: Vec<String> = headers
            .get(&name.to_owned())
            .into_iter()
            .filter_map(|value| String::from_utf8(value).ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let if_none_match = header("if-none-match");
    let accept = header("accept");
    let method = request.method().to_string();
    let answer = serve::respond(&serve::Request {
        method: &method,
        path,
        if_none_match: if_none_match.as_deref(),
        accept: accept.as_deref(),
    });
    let mut builder = Response::builder();
    builder.status(answer.status);
    for (name, value) in &answer.headers {
        builder.header(*name, value.as_str());
    }
    if !answer.body.is_empty() {
        // Known up front; without it the host streams the body chunked.
        builder.header("content-length", answer.body.len().to_string());
    }
    builder.body(answer.body.into_owned()).build()
}
