//! Spin's HTTP trigger: routes matched as Spin does, a fresh component instance per
//! request, Spin's `spin-*` request headers, and a 500 (not a dead server) when a
//! component traps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use tokio::net::TcpListener;
use tracing::Instrument;
use wasmtime::Store;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::host::{ComponentRuntime, InstanceState};

/// A route from `spin.toml`: `/exact` or `/prefix/...` (`/...` matches everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    Exact(String),
    Wildcard(String),
}

impl RoutePattern {
    pub fn parse(route: &str) -> RoutePattern {
        match route.strip_suffix("/...") {
            Some(prefix) => RoutePattern::Wildcard(prefix.trim_end_matches('/').to_owned()),
            None if route == "..." => RoutePattern::Wildcard(String::new()),
            None => RoutePattern::Exact(route.trim_end_matches('/').to_owned()),
        }
    }

    /// The path info (the part after the route's prefix) if `path` matches.
    pub fn matches(&self, path: &str) -> Option<String> {
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        match self {
            RoutePattern::Exact(p) => {
                (path == p || (p.is_empty() && path == "/")).then(String::new)
            }
            RoutePattern::Wildcard(prefix) => {
                if path == prefix {
                    Some(String::new())
                } else if prefix.is_empty() || path.starts_with(&format!("{prefix}/")) {
                    Some(path[prefix.len()..].to_owned())
                } else {
                    None
                }
            }
        }
    }

    /// Higher wins: exact routes beat wildcards, longer prefixes beat shorter ones.
    fn specificity(&self) -> (usize, bool) {
        match self {
            RoutePattern::Exact(p) => (p.len(), true),
            RoutePattern::Wildcard(p) => (p.len(), false),
        }
    }

    /// The route without the wildcard, as in `spin-component-route`.
    fn base(&self) -> &str {
        match self {
            RoutePattern::Exact(p) | RoutePattern::Wildcard(p) => p,
        }
    }
}

pub struct Route {
    pub raw: String,
    pub pattern: RoutePattern,
    pub component: Arc<ComponentRuntime>,
    pub pre: ProxyPre<InstanceState>,
}

/// The most specific route matching `path`, with its path info.
fn best_match<'a>(routes: &'a [Route], path: &str) -> Option<(&'a Route, String)> {
    routes
        .iter()
        .filter_map(|r| r.pattern.matches(path).map(|info| (r, info)))
        .max_by_key(|(r, _)| r.pattern.specificity())
}

/// How long in-flight requests may take to finish once shutdown begins.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves requests on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (up to [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    routes: Vec<Route>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let routes = Arc::new(routes);
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
        let routes = routes.clone();
        let service = hyper::service::service_fn(move |req| {
            let routes = routes.clone();
            async move { Ok::<_, Infallible>(handle(&routes, req, peer, local).await) }
        });
        let connection = http1::Builder::new()
            .keep_alive(true)
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

async fn handle(
    routes: &[Route],
    mut req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
) -> hyper::Response<HyperOutgoingBody> {
    let path = req.uri().path().to_owned();
    let Some((route, path_info)) = best_match(routes, &path) else {
        return plain(404, "Not Found");
    };
    let started = std::time::Instant::now();
    let component = route.component.id.clone();
    add_spin_headers(&mut req, route, &path_info, peer, local);
    let method = req.method().clone();
    // The trigger's span: where an OpenTelemetry server span (`GET /api/...`) hangs;
    // everything the component does (host calls, its output) is logged inside it.
    let span = tracing::info_span!("http", component = %component, route = %route.raw);
    let response = match run(route, req).instrument(span).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(component, "{method} {path}: component failed: {e:#}");
            plain(500, "Internal Server Error")
        }
    };
    tracing::info!(
        component,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "{method} {path}"
    );
    response
}

/// Spin's request headers, so components see what they would see under `spin up`.
fn add_spin_headers(
    req: &mut hyper::Request<hyper::body::Incoming>,
    route: &Route,
    path_info: &str,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| local.to_string());
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let values = [
        ("spin-full-url", format!("http://{host}{path_and_query}")),
        ("spin-path-info", path_info.to_owned()),
        ("spin-matched-route", route.raw.clone()),
        ("spin-raw-component-route", route.raw.clone()),
        ("spin-component-route", route.pattern.base().to_owned()),
        ("spin-base-path", "/".to_owned()),
        ("spin-client-addr", peer.to_string()),
    ];
    for (name, value) in values {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            req.headers_mut().insert(name, value);
        }
    }
}

/// One request in a fresh instance.
async fn run(
    route: &Route,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<HyperOutgoingBody>> {
    let mut store = Store::new(
        route.pre.engine(),
        InstanceState::new(route.component.clone()),
    );
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let pre = route.pre.clone();
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

fn plain(status: u16, text: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_routes() {
        let api = RoutePattern::parse("/api/...");
        assert_eq!(api, RoutePattern::Wildcard("/api".into()));
        assert_eq!(api.matches("/api"), Some(String::new()));
        assert_eq!(api.matches("/api/orders/1"), Some("/orders/1".into()));
        assert_eq!(api.matches("/apix"), None);
        let all = RoutePattern::parse("/...");
        assert_eq!(
            all.matches("/anything/at/all"),
            Some("/anything/at/all".into())
        );
        let exact = RoutePattern::parse("/health");
        assert_eq!(exact.matches("/health"), Some(String::new()));
        assert_eq!(exact.matches("/health/x"), None);
    }

    #[test]
    fn the_most_specific_route_wins() {
        let patterns = [
            RoutePattern::parse("/..."),
            RoutePattern::parse("/api/..."),
            RoutePattern::parse("/api/orders/..."),
            RoutePattern::parse("/api/orders"),
        ];
        let best = |path: &str| {
            patterns
                .iter()
                .filter(|p| p.matches(path).is_some())
                .max_by_key(|p| p.specificity())
                .cloned()
        };
        assert_eq!(
            best("/api/orders"),
            Some(RoutePattern::Exact("/api/orders".into()))
        );
        assert_eq!(
            best("/api/orders/7"),
            Some(RoutePattern::Wildcard("/api/orders".into()))
        );
        assert_eq!(
            best("/api/products"),
            Some(RoutePattern::Wildcard("/api".into()))
        );
        assert_eq!(best("/"), Some(RoutePattern::Wildcard(String::new())));
    }
}
