//! HTTP plumbing: request facts, a size-limited body reader, JSON and problem responses.

use futures::StreamExt;
use shop_domain::problem::{self, Problem};
use spin_sdk::http::{IncomingRequest, Method, Response};

/// What the handlers need from a request, read before its body is consumed.
pub struct Incoming {
    pub method: Method,
    pub path: String,
    pub query: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl From<&IncomingRequest> for Incoming {
    fn from(request: &IncomingRequest) -> Self {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = match path_with_query.split_once('?') {
            Some((p, q)) => (p.to_owned(), q.to_owned()),
            None => (path_with_query, String::new()),
        };
        Self {
            method: request.method(),
            path,
            query,
            headers: request.headers().entries(),
        }
    }
}

impl Incoming {
    /// A header as text; None if absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw_header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// A header's bytes, whatever they are.
    pub fn raw_header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// A query parameter (no percent-decoding: our parameters are plain numbers).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Reads the body, refusing (413) as soon as it is known to exceed `limit` bytes, so an
/// oversized upload is never buffered whole.
pub async fn read_body(
    incoming: &Incoming,
    request: IncomingRequest,
    limit: usize,
) -> Result<Vec<u8>, Response> {
    let too_large = || problem_response(&Problem::body_too_large(limit));
    if let Some(length) = incoming.header("content-length") {
        if length
            .trim()
            .parse::<u64>()
            .map_or(true, |n| n > limit as u64)
        {
            return Err(too_large());
        }
    }
    let mut stream = request.into_body_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            // The host's error is for the log, not the client.
            shop_adapters::log_line!("checkout: reading a request body failed: {e:?}");
            problem_response(&Problem::new(
                400,
                "unreadable-body",
                "Request body could not be read",
                "the request body ended early or could not be read; send it again",
            ))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub fn json_response(status: u16, body: &serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap_or_default())
        .build()
}

pub fn problem_response(problem: &Problem) -> Response {
    if let Some(cause) = &problem.cause {
        shop_adapters::log_line!("checkout: {} {}: {cause}", problem.status, problem.title);
    }
    let mut builder = Response::builder();
    builder
        .status(problem.status)
        .header("content-type", problem::CONTENT_TYPE)
        .body(problem.to_json());
    if let Some(seconds) = problem.retry_after {
        builder.header("retry-after", seconds.to_string());
    }
    if problem.status == 401 {
        // RFC 6750: a bearer-token endpoint says so when it refuses.
        builder.header("www-authenticate", "Bearer realm=\"spin-shop admin\"");
    }
    builder.build()
}
