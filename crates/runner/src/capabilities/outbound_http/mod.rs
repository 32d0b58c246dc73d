//! Outbound `wasi:http` (linked from wasmtime-wasi-http), as Spin's
//! `factor-outbound-http`: only to `allowed_outbound_hosts` (otherwise the guest gets
//! `HttpRequestDenied`, as on Spin), each request in a client span under the guest's
//! active span, with that span's `traceparent` injected so the server joins the trace,
//! and sent on the app's pooled connections ([`client`]).

pub mod client;

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue as Attribute;

use super::allowed_hosts::{default_port, AllowedHosts};
use super::otel::{Parent, TraceScope};
use client::HttpClient;

/// The `wasi:http` hooks of one instance.
pub struct OutboundHttp {
    component: String,
    allowed: AllowedHosts,
    trace: TraceScope,
    client: HttpClient,
}

impl OutboundHttp {
    pub fn new(
        component: &str,
        allowed: AllowedHosts,
        trace: TraceScope,
        client: HttpClient,
    ) -> OutboundHttp {
        OutboundHttp {
            component: component.to_owned(),
            allowed,
            trace,
            client,
        }
    }
}

type ResponseFuture = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> ResponseFuture {
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("https").to_owned();
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri
            .port_u16()
            .or_else(|| default_port(&scheme))
            .unwrap_or(0);
        let method = request.method().to_string();
        // Span name: the method, as OpenTelemetry's HTTP conventions (and Spin) name it.
        let mut span = self.trace.span(
            method.clone(),
            SpanKind::Client,
            Parent::ActiveGuestSpan,
            vec![
                Attribute::new("http.request.method", method.clone()),
                Attribute::new("url.full", uri.to_string()),
                Attribute::new("server.address", host.clone()),
                Attribute::new("server.port", i64::from(port)),
            ],
        );
        if !self.allowed.allows(&scheme, &host, port) {
            tracing::warn!(
                component = %self.component,
                "outbound HTTP to {scheme}://{host}:{port} denied: not in allowed_outbound_hosts"
            );
            span.fail(format!(
                "{scheme}://{host}:{port} is not in allowed_outbound_hosts"
            ));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(component = %self.component, %method, %uri, "outbound HTTP");
        host_telemetry::inject(&span.context(), request.headers_mut());
        let client = self.client.clone();
        Box::new(async move {
            match client.send(request, options).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    span.set_attribute(Attribute::new(
                        "http.response.status_code",
                        i64::from(status),
                    ));
                    if status >= 400 {
                        span.fail(format!("answered {status}"));
                    }
                    // The client's own task drives the connection: nothing to await.
                    let io = async { Ok(()) };
                    Ok((
                        response,
                        Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
                    ))
                }
                Err(e) => {
                    span.fail(format!("{e:?}"));
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(p: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn request(uri: &str) -> http::Request<wasmtime_wasi_http::WasiBody> {
        use http_body_util::{BodyExt, Empty};
        http::Request::builder()
            .uri(uri)
            .body(
                Empty::<bytes::Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn denied_outbound_http_is_http_request_denied() {
        use wasmtime_wasi_http::WasiHttpHooks;
        let mut hooks = OutboundHttp::new(
            "c",
            hosts(&["http://127.0.0.1:8025"]),
            TraceScope::disabled(),
            HttpClient::new(true),
        );
        for denied in [
            "https://evil.example/steal",
            "http://127.0.0.1:8026/api",
            "https://127.0.0.1:8025/api",
        ] {
            let sent = hooks.send_request(request(denied), None, Box::new(async { Ok(()) }));
            let result = Box::into_pin(sent).await;
            assert!(
                matches!(result, Err(wasmtime_wasi_http::Error::HttpRequestDenied)),
                "{denied}"
            );
        }
        // Allowed: really sent (nothing listens on a fresh port: refused, not denied).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut hooks = OutboundHttp::new(
            "c",
            hosts(&[&format!("http://127.0.0.1:{port}")]),
            TraceScope::disabled(),
            HttpClient::new(true),
        );
        let sent = hooks.send_request(
            request(&format!("http://127.0.0.1:{port}/x")),
            None,
            Box::new(async { Ok(()) }),
        );
        let result = Box::into_pin(sent).await;
        assert!(
            !matches!(result, Err(wasmtime_wasi_http::Error::HttpRequestDenied)),
            "allowed request was denied"
        );
    }
}
