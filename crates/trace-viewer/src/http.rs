//! The HTTP side: the OTLP/HTTP receiver (`POST /v1/traces`), the JSON query API the
//! shop's end-to-end tests read, and the HTML pages.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::html;
use crate::model::ORDER_ID_ATTRIBUTE;
use crate::otlp::{self, Encoding};
use crate::store::Store;

/// Largest export accepted; the OTel SDKs send batches of 512 spans, far below this.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Accepts connections until SIGTERM or Ctrl-C.
pub async fn serve(listener: TcpListener, store: Arc<Store>) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: keep serving the others.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let store = store.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(route(&store, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    Ok(())
}

/// A response before it becomes a hyper one.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub location: Option<String>,
}

impl Answer {
    fn json(status: u16, value: serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            location: None,
        }
    }

    fn text(status: u16, text: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.into().into_bytes(),
            location: None,
        }
    }

    fn html(status: u16, page: String) -> Answer {
        Answer {
            status,
            content_type: "text/html; charset=utf-8",
            body: page.into_bytes(),
            location: None,
        }
    }
}

async fn route(store: &Store, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let answer = if path == "/v1/traces" && method == Method::POST {
        receive(store, req).await
    } else {
        respond(store, &method, &path, req.uri().query())
    };
    tracing::debug!("{method} {path} -> {}", answer.status);
    let mut builder = Response::builder()
        .status(answer.status)
        .header(CONTENT_TYPE, answer.content_type);
    if let Some(location) = &answer.location {
        builder = builder.header(hyper::header::LOCATION, location);
    }
    builder
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"internal error"))))
}

/// `POST /v1/traces`: headers are checked before the body is read.
async fn receive(store: &Store, req: Request<Incoming>) -> Answer {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let Some(encoding) = header(CONTENT_TYPE).and_then(Encoding::from_content_type) else {
        return Answer::text(
            415,
            "send OTLP as application/x-protobuf or application/json",
        );
    };
    if let Some(coding) = header(CONTENT_ENCODING).filter(|c| !c.eq_ignore_ascii_case("identity")) {
        return Answer::text(
            415,
            format!("content-encoding {coding} is not supported: send uncompressed OTLP"),
        );
    }
    let declared_length = header(CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > MAX_BODY as u64) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(e) => return Answer::text(400, format!("could not read the body: {e}")),
    };
    export(store, encoding, &body)
}

fn too_large() -> Answer {
    Answer::text(
        413,
        format!("an export may be at most {MAX_BODY} bytes: send smaller batches"),
    )
}

pub fn export(store: &Store, encoding: Encoding, body: &[u8]) -> Answer {
    match otlp::decode(encoding, body) {
        Ok(decoded) => {
            tracing::debug!(
                "received {} spans ({} rejected)",
                decoded.spans.len(),
                decoded.rejected
            );
            store.insert(decoded.spans);
            Answer {
                status: 200,
                content_type: encoding.content_type(),
                body: otlp::response(encoding, decoded.rejected),
                location: None,
            }
        }
        Err(message) => Answer::text(400, message),
    }
}

/// Everything but the receiver: reads only, so it needs no body.
pub fn respond(store: &Store, method: &Method, path: &str, query: Option<&str>) -> Answer {
    if path == "/v1/traces" {
        return Answer::text(405, "OTLP exports are POSTed here");
    }
    if method != Method::GET && method != Method::HEAD {
        return Answer::text(405, format!("{method} is not supported here"));
    }
    if path == "/" {
        return Answer::html(200, html::index(&store.summaries()));
    }
    if path == "/api/traces" {
        return Answer::json(200, json!({ "traces": store.summaries() }));
    }
    if path == "/api/search" {
        let param = |name: &str| {
            query_pairs(query.unwrap_or(""))
                .find(|(key, _)| key == name)
                .map(|(_, value)| value)
        };
        return match (param("attribute"), param("value")) {
            (Some(attribute), Some(value)) => Answer::json(
                200,
                json!({ "trace_ids": store.search(&attribute, &value) }),
            ),
            _ => Answer::json(
                400,
                json!({ "error": "expected ?attribute=<key>&value=<value>" }),
            ),
        };
    }
    if let Some(trace_id) = segment(path, "/api/traces/") {
        return match store.trace(&trace_id.to_ascii_lowercase()) {
            Some(detail) => Answer::json(200, json!(detail)),
            None => Answer::json(404, json!({ "error": format!("no trace {trace_id}") })),
        };
    }
    if let Some(order_id) = segment(path, "/api/orders/") {
        return match store.search(ORDER_ID_ATTRIBUTE, &order_id).first() {
            Some(trace_id) => Answer {
                status: 303,
                content_type: "text/plain; charset=utf-8",
                body: Vec::new(),
                location: Some(format!("/traces/{trace_id}")),
            },
            None => Answer::html(
                404,
                html::not_found(&format!(
                    "No trace has {ORDER_ID_ATTRIBUTE} = {order_id}. {}",
                    why_missing(store)
                )),
            ),
        };
    }
    if let Some(trace_id) = segment(path, "/traces/") {
        return match store.trace(&trace_id.to_ascii_lowercase()) {
            Some(detail) => Answer::html(200, html::trace(&detail)),
            None => Answer::html(
                404,
                html::not_found(&format!("No trace {trace_id} here. {}", why_missing(store))),
            ),
        };
    }
    Answer::html(404, html::not_found(&format!("Nothing at {path}.")))
}

/// Why a trace a link names may be missing: the viewer keeps traces in memory only, so
/// an order placed before it (re)started keeps a link that leads nowhere.
fn why_missing(store: &Store) -> String {
    format!(
        "It has not arrived yet, was evicted (this viewer keeps the latest {} traces), \
         or arrived before this viewer last started: it keeps traces in memory only.",
        store.max_traces()
    )
}

/// The single, non-empty, percent-decoded path segment after `prefix`.
fn segment(path: &str, prefix: &str) -> Option<String> {
    let rest = path.strip_prefix(prefix)?;
    (!rest.is_empty() && !rest.contains('/')).then(|| percent_decode(rest, false))
}

fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key, true), percent_decode(value, true))
    })
}

/// `%XX` escapes (and `+` as space in query strings); malformed escapes stay as they are.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_pair = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex_pair) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) if plus_is_space => out.push(b' '),
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{span, with_attribute};

    fn store() -> Store {
        let store = Store::new(10, 10);
        store.insert(vec![
            span("abc", "a", "", "root", 0, 10),
            with_attribute(
                span("abc", "b", "a", "child", 1, 2),
                ORDER_ID_ATTRIBUTE,
                "ord 1/x".into(),
            ),
        ]);
        store
    }

    fn get(store: &Store, path: &str, query: Option<&str>) -> Answer {
        respond(store, &Method::GET, path, query)
    }

    #[test]
    fn routes() {
        let store = store();
        assert_eq!(get(&store, "/", None).status, 200);
        assert_eq!(get(&store, "/api/traces/abc", None).status, 200);
        assert_eq!(get(&store, "/api/traces/ABC", None).status, 200);
        assert_eq!(get(&store, "/api/traces/nope", None).status, 404);
        assert_eq!(get(&store, "/api/traces/abc/x", None).status, 404);
        assert_eq!(get(&store, "/traces/abc", None).status, 200);
        assert_eq!(get(&store, "/traces/nope", None).status, 404);
        assert_eq!(get(&store, "/elsewhere", None).status, 404);
        assert_eq!(get(&store, "/v1/traces", None).status, 405);
        assert_eq!(respond(&store, &Method::DELETE, "/", None).status, 405);

        let search = get(
            &store,
            "/api/search",
            Some("attribute=shop.order.id&value=ord+1%2Fx"),
        );
        assert_eq!(search.body, br#"{"trace_ids":["abc"]}"#);
        assert_eq!(get(&store, "/api/search", Some("attribute=x")).status, 400);

        let order = get(&store, "/api/orders/ord%201%2Fx", None);
        assert_eq!(
            (order.status, order.location.as_deref()),
            (303, Some("/traces/abc"))
        );
        assert_eq!(get(&store, "/api/orders/ord_2", None).status, 404);
    }

    #[test]
    fn a_missing_trace_says_the_viewer_forgets_on_restart() {
        // An order keeps its trace link after the viewer restarts; the page it leads to
        // must say why it is empty rather than leave the user guessing.
        let store = store();
        for path in [
            "/traces/4bf92f3577b34da6a3ce929d0e0e4736",
            "/api/orders/ord_2",
        ] {
            let answer = get(&store, path, None);
            let page = String::from_utf8(answer.body).unwrap();
            assert_eq!(answer.status, 404, "{path}");
            assert!(
                page.contains("keeps the latest 10 traces"),
                "{path}: {page}"
            );
            assert!(
                page.contains("before this viewer last started"),
                "{path}: {page}"
            );
            assert!(page.contains("in memory only"), "{path}: {page}");
        }
    }

    #[test]
    fn export_answers_in_the_request_encoding() {
        let store = Store::new(10, 10);
        let ok = export(&store, Encoding::Json, br#"{"resourceSpans":[]}"#);
        assert_eq!(
            (ok.status, ok.content_type, ok.body.as_slice()),
            (200, "application/json", &b"{}"[..])
        );
        let ok = export(&store, Encoding::Protobuf, b"");
        assert_eq!(
            (ok.status, ok.content_type, ok.body.len()),
            (200, "application/x-protobuf", 0)
        );
        assert_eq!(export(&store, Encoding::Json, b"{").status, 400);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%2", true), "a b c%2");
        assert_eq!(percent_decode("a+b%zz", false), "a+b%zz");
        assert_eq!(percent_decode("%E2%9C%97", false), "✗");
    }
}
