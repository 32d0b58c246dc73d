//! Exporting spans from a host process (the runner, the dev mail API) the way Spin
//! does: OTLP over HTTP, configured by the standard `OTEL_*` environment variables, on
//! when an endpoint is set. And W3C Trace Context (`traceparent`, `tracestate`) in and
//! out of HTTP headers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::Context;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

/// A tracer provider exporting through a batch processor, which is also reachable
/// directly (the runner hands it spans that components made).
pub struct Pipeline {
    pub provider: SdkTracerProvider,
    pub processor: Arc<BatchSpanProcessor>,
}

impl Pipeline {
    /// `None` unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// is set and `OTEL_SDK_DISABLED` is not, as with Spin. `service.name` comes from
    /// `OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`, else `default_service`.
    ///
    /// The batch processor exports on a thread of its own with a blocking HTTP client:
    /// exporting never holds up a request, and a dead collector only costs dropped
    /// spans. Call this outside any async runtime.
    pub fn from_env(default_service: &str) -> Result<Option<Pipeline>> {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            || set("OTEL_SDK_DISABLED")
        {
            return Ok(None);
        }
        let protocol = protocol(
            [
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
            .as_deref(),
        )?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()
            .context("configuring the OTLP exporter (OTEL_EXPORTER_OTLP_*)")?;
        let resource = resource(default_service);
        let mut processor = BatchSpanProcessor::builder(exporter).build();
        processor.set_resource(&resource);
        let processor = Arc::new(processor);
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(Shared(processor.clone()))
            .build();
        Ok(Some(Pipeline {
            provider,
            processor,
        }))
    }

    /// Exports what is still buffered (bounded wait); call once when the process stops.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("flushing spans at shutdown: {e}");
        }
    }
}

/// `http/protobuf` (the OTLP default) or `http/json`; gRPC is not built in.
fn protocol(value: Option<&str>) -> Result<opentelemetry_otlp::Protocol> {
    match value.map(str::trim) {
        None | Some("http/protobuf") => Ok(opentelemetry_otlp::Protocol::HttpBinary),
        Some("http/json") => Ok(opentelemetry_otlp::Protocol::HttpJson),
        Some(other) => bail!(
            "OTLP protocol {other:?} is not supported here: set OTEL_EXPORTER_OTLP_PROTOCOL to http/protobuf or http/json"
        ),
    }
}

fn resource(default_service: &str) -> Resource {
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder
            .with_service_name(default_service.to_owned())
            .build()
    }
}

/// Lets the provider and direct callers share one batch processor.
#[derive(Debug)]
struct Shared(Arc<BatchSpanProcessor>);

impl SpanProcessor for Shared {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    // The resource was given to the processor before it was shared.
}

/// The W3C trace context of incoming `headers` (an empty context if there is none).
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes the active span of `cx` into `headers` as `traceparent` / `tracestate`.
pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn protocols_follow_the_otlp_names_and_default() {
        assert_eq!(
            protocol(None).unwrap(),
            opentelemetry_otlp::Protocol::HttpBinary
        );
        assert_eq!(
            protocol(Some("http/json")).unwrap(),
            opentelemetry_otlp::Protocol::HttpJson
        );
        let err = protocol(Some("grpc")).unwrap_err().to_string();
        assert!(err.contains("http/protobuf"), "{err}");
    }

    #[test]
    fn trace_context_round_trips_through_headers() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = extract(&headers);
        assert_eq!(
            format!("{:032x}", cx.span().span_context().trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = http::HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out["traceparent"], headers["traceparent"]);
        assert!(!extract(&http::HeaderMap::new())
            .span()
            .span_context()
            .is_valid());
    }
}
