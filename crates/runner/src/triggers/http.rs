//! Spin's HTTP trigger: routes matched as Spin does (`routes`: exact, `:name` and
//! wildcard segments, Spin's precedence), a fresh component instance per request,
//! Spin's `spin-*` request headers with Spin's values, Spin's own
//! `/.well-known/spin/health` and `/info` answers before any route, and a 500 (not a
//! dead server) when a component traps.
//!
//! Traced as Spin traces it: a `SERVER` span `<method> <route>` that continues an
//! inbound `traceparent`, and under it `execute_wasm_component <id>`, the instance's
//! outer span (what the guest's `outer-span-context` returns).
//!
//! Requests Spin refuses are refused: one whose authority is in neither `Host` nor its
//! URI (Spin ends the connection; here a 400 says why). Slow clients cannot hold an
//! instance: headers must arrive within [`ReadLimits::timeout`], and a body that stalls
//! that long between chunks fails. Header blocks are bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use tokio::net::TcpListener;
use tracing::Instrument;
use wasmtime::Store;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::capabilities::otel::{Exporter, HostSpan, COMPONENT_ATTRIBUTE};
use crate::instance::{ComponentRuntime, InstanceState};
use crate::routes::{RouteMatch, Router};

/// What a route leads to: a component, ready to instantiate as an HTTP handler.
pub struct Handler {
    pub component: Arc<ComponentRuntime>,
    pub pre: ProxyPre<InstanceState>,
}

/// The application as Spin's `/.well-known/spin/info` describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppInfo {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Paths under this prefix are Spin's own, whatever the routes say.
const WELL_KNOWN_PREFIX: &str = "/.well-known/spin/";

/// How long in-flight requests may take to finish once shutdown begins.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How patient the trigger is with a client.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// For the request head, and between chunks of its body.
    pub timeout: std::time::Duration,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_head_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            timeout: std::time::Duration::from_secs(10),
            max_head_bytes: 64 * 1024,
        }
    }
}

/// Serves requests on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (up to [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    routes: Router<Handler>,
    app_info: AppInfo,
    exporter: Option<Arc<Exporter>>,
    limits: ReadLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let routes = Arc::new(routes);
    let app_info = Arc::new(app_info);
    let local = listener.local_addr()?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors: keep serving the others.
                    tracing::warn!("http trigger: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A response whose body the guest ends after hyper has flushed its first chunk
        // goes out in two writes; with Nagle's algorithm the second (the chunked
        // body's terminator) then waits for the client's delayed ACK, 40 ms on Linux,
        // and a keep-alive client at one connection stalls on a quarter to half of its
        // requests. Spin 4.1 (no TCP_NODELAY either) answered `GET /api/products`
        // without that stall, so the runner sends every write at once. (Spin did stall
        // on `POST /api/orders` while checkout handed over its headers before its body,
        // which it no longer does: see `shop_adapters::http_response`.)
        let _ = stream.set_nodelay(true);
        let routes = routes.clone();
        let app_info = app_info.clone();
        let exporter = exporter.clone();
        let service = hyper::service::service_fn(move |req| {
            let routes = routes.clone();
            let app_info = app_info.clone();
            let exporter = exporter.clone();
            async move {
                let req = req.map(|body| TimedBody::new(body, limits.timeout));
                Ok::<_, Infallible>(
                    handle(&routes, &app_info, exporter.as_deref(), req, peer, local).await,
                )
            }
        });
        let connection = http1::Builder::new()
            .keep_alive(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.timeout)
            .max_buf_size(limits.max_head_bytes)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("http trigger: requests still running after {DRAIN:?}; stopping anyway");
    }
    Ok(())
}

/// The request's authority as Spin's HTTP trigger finds it: from `Host` or the URI,
/// which must agree when both are present. Spin refuses a request without one,
/// HTTP/1.0 included, by ending the connection; RFC 9112 asks for a 400, given here.
fn request_authority<B>(
    req: &hyper::Request<B>,
) -> Result<hyper::http::uri::Authority, &'static str> {
    let from_header = match req.headers().get(hyper::header::HOST) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|host| host.parse::<hyper::http::uri::Authority>().ok())
                .ok_or("the Host header is not a valid authority")?,
        ),
    };
    match (from_header, req.uri().authority().cloned()) {
        (None, None) => Err("no Host header"),
        (Some(a), None) | (None, Some(a)) => Ok(a),
        (Some(header), Some(uri)) if header == uri => Ok(header),
        _ => Err("the Host header does not match the URI's authority"),
    }
}

async fn handle(
    routes: &Router<Handler>,
    app_info: &AppInfo,
    exporter: Option<&Exporter>,
    mut req: hyper::Request<TimedBody>,
    peer: SocketAddr,
    local: SocketAddr,
) -> hyper::Response<HyperOutgoingBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Err(why) = request_authority(&req) {
        return plain(400, &format!("Bad Request: {why}"));
    }
    if let Some(well_known) = path.strip_prefix(WELL_KNOWN_PREFIX) {
        return match well_known {
            "health" => plain(200, "OK"),
            "info" => {
                json(&serde_json::to_string_pretty(app_info).unwrap_or_else(|_| "{}".to_owned()))
            }
            _ => plain(404, ""),
        };
    }
    let route = routes.route(&path);
    let mut server_span = match exporter {
        Some(exporter) => exporter.start(
            match &route {
                Some(found) => format!("{method} {}", found.route.raw),
                None => method.to_string(),
            },
            SpanKind::Server,
            &host_telemetry::extract(req.headers()),
            vec![
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.path", path.clone()),
                KeyValue::new("url.query", req.uri().query().unwrap_or("").to_owned()),
                KeyValue::new("url.scheme", "http"),
                KeyValue::new("network.protocol.name", "http"),
                KeyValue::new("network.peer.address", peer.ip().to_string()),
                KeyValue::new("network.peer.port", i64::from(peer.port())),
            ],
        ),
        None => HostSpan::none(),
    };
    let Some(found) = route else {
        server_span.set_attribute(KeyValue::new("http.response.status_code", 404));
        // Spin's 404 has no body.
        return plain(404, "");
    };
    let started = std::time::Instant::now();
    let handler = &found.route.target;
    let raw_route = found.route.raw.clone();
    let component = handler.component.id.clone();
    server_span.set_attribute(KeyValue::new("http.route", raw_route.clone()));
    server_span.set_attribute(KeyValue::new(COMPONENT_ATTRIBUTE, component.clone()));
    add_spin_headers(&mut req, &found, peer, local);
    let execute_span = match exporter {
        Some(exporter) => exporter.start(
            format!("execute_wasm_component {component}"),
            SpanKind::Internal,
            &server_span.context(),
            vec![KeyValue::new(COMPONENT_ATTRIBUTE, component.clone())],
        ),
        None => HostSpan::none(),
    };
    // The log's span: everything the component does (host calls, its output) is
    // logged inside it.
    let log_span = tracing::info_span!("http", component = %component, route = %raw_route);
    let instance = handler.component.instance(execute_span.span_context());
    let response = match run(handler, instance, req).instrument(log_span).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(component, "{method} {path}: component failed: {e:#}");
            server_span.fail(format!("component failed: {e:#}"));
            plain(500, "Internal Server Error")
        }
    };
    drop(execute_span);
    let status = response.status().as_u16();
    server_span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        server_span.fail(format!("answered {status}"));
    }
    tracing::info!(
        component,
        status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "{method} {path}"
    );
    response
}

/// Spin's request headers, so components see what they would see under `spin up`;
/// each replaces a header of the same name the client sent, as in Spin.
fn add_spin_headers(
    req: &mut hyper::Request<TimedBody>,
    found: &RouteMatch<'_, Handler>,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| local.to_string());
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    for (name, value) in found.spin_headers("http", &host, &path_and_query, peer) {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            req.headers_mut().insert(name, value);
        }
    }
}

/// One request in a fresh instance.
async fn run(
    handler: &Handler,
    instance: InstanceState,
    req: hyper::Request<TimedBody>,
) -> Result<hyper::Response<HyperOutgoingBody>> {
    let mut store = Store::new(handler.pre.engine(), instance);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let pre = handler.pre.clone();
    // The guest may keep running (streaming the body) after it has set the response.
    let task = tokio::spawn(
        async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        }
        .instrument(tracing::Span::current()),
    );
    match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => anyhow::bail!("component answered with error code {code:?}"),
        Err(_) => match task.await {
            Ok(Ok(())) => anyhow::bail!("component returned without setting a response"),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        },
    }
}

/// A request body that fails (`connection-read-timeout`, as the component sees it) when
/// the client sends nothing for `timeout`.
pub struct TimedBody {
    inner: hyper::body::Incoming,
    timeout: std::time::Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: hyper::body::Incoming, timeout: std::time::Duration) -> TimedBody {
        TimedBody {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + self.timeout;
                self.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(wasmtime_wasi_http::p2::hyper_request_error)))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(
                    wasmtime_wasi_http::p2::bindings::http::types::ErrorCode::ConnectionReadTimeout,
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn json(text: &str) -> hyper::Response<HyperOutgoingBody> {
    let mut response = plain(200, text);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn plain(status: u16, text: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::copy_from_slice(text.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
}
