//! The mail provider over outbound `wasi:http`, with timeouts.
//!
//! spin-sdk's `http::send` sets no request options, so a provider that accepts the
//! connection and never answers would hold this handler, and with it Spin's Redis
//! subscriber, which handles one message at a time, for ever. The request is made with
//! `wasi:http/outgoing-handler` directly, with connect and first-byte timeouts (Spin and
//! the project's runner both honour them).
//!
//! Waiting for the answer yields to spin-sdk's executor (the same `spin-executor` the SDK
//! awaits its own requests with), so that the handler's other orders (see `lib.rs`) send
//! theirs meanwhile: several requests in flight in one instance.

use shop_domain::mail::MailRequest;
use shop_domain::ports::{MailAnswer, Mailer, SendFailure};
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, RequestOptions, Scheme,
};

const CONNECT_TIMEOUT_NS: u64 = 5_000_000_000;
const FIRST_BYTE_TIMEOUT_NS: u64 = 10_000_000_000;
const BETWEEN_BYTES_TIMEOUT_NS: u64 = 10_000_000_000;
/// Largest answer read from a provider (their bodies are small JSON documents).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

pub struct HttpMailer;

impl Mailer for HttpMailer {
    async fn send(&self, request: &MailRequest) -> Result<MailAnswer, SendFailure> {
        send(request).await
    }
}

async fn send(request: &MailRequest) -> Result<MailAnswer, SendFailure> {
    let transport = |what: &str, e: String| {
        SendFailure::Transport(format!("request to {} failed: {what}: {e}", request.url))
    };
    let outgoing = build(request).map_err(|e| transport("building the request", e))?;
    let options = RequestOptions::new();
    // Each setter only fails if the host does not support that option: then without it.
    let _ = options.set_connect_timeout(Some(CONNECT_TIMEOUT_NS));
    let _ = options.set_first_byte_timeout(Some(FIRST_BYTE_TIMEOUT_NS));
    let _ = options.set_between_bytes_timeout(Some(BETWEEN_BYTES_TIMEOUT_NS));
    let body = outgoing
        .body()
        .map_err(|()| transport("opening the body", String::new()))?;
    let pending =
        outgoing_handler::handle(outgoing, Some(options)).map_err(|e| refused(request, e))?;
    // A host that refuses the request drops its body: the write then fails, and the
    // response says why. Either way the handler waits for it (it has nothing else to do).
    let written = write_body(body, &request.body);
    let response = match answer(&pending).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(refused(request, e)),
        Err(()) => return Err(transport("no response", "the host lost it".into())),
    };
    written.map_err(|e| transport("writing the body", e))?;
    read_answer(response).map_err(|e| transport("reading the answer", e))
}

/// The response, once the host has it: until then the executor polls the others.
async fn answer(
    pending: &FutureIncomingResponse,
) -> Result<Result<IncomingResponse, ErrorCode>, ()> {
    shop_adapters::wait_for(|| pending.get(), || pending.subscribe()).await
}

/// A host refusal (`HttpRequestDenied`: not in `allowed_outbound_hosts`) is for good;
/// anything else may pass on a later attempt.
fn refused(request: &MailRequest, e: ErrorCode) -> SendFailure {
    let message = format!("request to {} failed: {e:?}", request.url);
    match e {
        ErrorCode::HttpRequestDenied => SendFailure::Denied(message),
        _ => SendFailure::Transport(message),
    }
}

fn build(request: &MailRequest) -> Result<OutgoingRequest, String> {
    let (scheme, rest) = request
        .url
        .split_once("://")
        .ok_or_else(|| format!("{} is not an absolute URL", request.url))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let entries: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.as_bytes().to_vec()))
        .collect();
    let headers = Fields::from_list(&entries).map_err(|e| format!("headers: {e:?}"))?;
    let outgoing = OutgoingRequest::new(headers);
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    let set = |ok: Result<(), ()>, what: &str| ok.map_err(|()| format!("invalid {what}"));
    set(outgoing.set_method(&Method::Post), "method")?;
    set(outgoing.set_scheme(Some(&scheme)), "scheme")?;
    set(outgoing.set_authority(Some(authority)), "authority")?;
    set(outgoing.set_path_with_query(Some(path)), "path")?;
    Ok(outgoing)
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), String> {
    let stream = body.write().map_err(|()| "no body stream".to_owned())?;
    // `blocking-write-and-flush` takes at most 4096 bytes at a time.
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| format!("{e:?}"))?;
    }
    drop(stream);
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))
}

fn read_answer(response: IncomingResponse) -> Result<MailAnswer, String> {
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(&name.to_owned())
            .into_iter()
            .next()
            .and_then(|v| String::from_utf8(v).ok())
    };
    let retry_after = header("retry-after").and_then(|v| v.trim().parse().ok());
    let message_id = header("x-message-id");
    let body = response.consume().map_err(|()| "no body".to_owned())?;
    let stream = body.stream().map_err(|()| "no body stream".to_owned())?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(16 * 1024) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(wasi::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("{e:?}")),
        }
    }
    drop(stream);
    Ok(MailAnswer {
        status,
        body: bytes,
        retry_after,
        message_id,
    })
}
