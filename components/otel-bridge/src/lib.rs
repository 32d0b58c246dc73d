//! The guest side of `wasi:otel` tracing (`wasi:otel/tracing@0.2.0-rc.2`, the interface
//! Spin 4 links under `spin up --experimental-wasi-otel`).
//!
//! Component code uses the ordinary [`opentelemetry`] API; [`install`] puts a tracer
//! provider in place whose [`WasiSpanProcessor`] hands every span to the host as it
//! starts (so the host can parent its own spans, e.g. key-value calls, under it) and
//! as it ends (so the host exports it with its own spans). [`outer_context`] is the
//! host's span for this request or message, the parent of the component's first span.
//!
//! No such bridge is published for Spin guests, hence this small crate. The host
//! functions only exist inside a component (`wasm32`); everything else, the
//! conversions and the processor over any [`SpanHost`], is tested natively.

mod bindings;
mod convert;
mod processor;

use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::trace::SdkTracerProvider;

pub use bindings::wasi::otel::tracing as wit;
pub use convert::{span_context_from_wit, span_context_to_wit, span_data_to_wit};
pub use processor::{SpanHost, WasiHost, WasiSpanProcessor};

/// A tracer provider whose spans go to the Spin host. Install it once per instance
/// (Spin makes a fresh instance per request or message) with
/// `opentelemetry::global::set_tracer_provider`.
pub fn provider() -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_span_processor(WasiSpanProcessor::new(WasiHost))
        .build()
}

/// Installs [`provider`] as the global tracer provider and returns it (keep it alive
/// for the instance's lifetime; dropping the last copy shuts it down).
pub fn install() -> SdkTracerProvider {
    let provider = provider();
    opentelemetry::global::set_tracer_provider(provider.clone());
    provider
}

/// The host's span for this request or message, as a remote parent context: the
/// component's top-level span is started under it so both are one trace.
pub fn outer_context() -> opentelemetry::Context {
    context_under(&WasiHost)
}

/// [`outer_context`] over any host (for tests).
pub fn context_under(host: &impl SpanHost) -> opentelemetry::Context {
    let outer = host.outer_span_context();
    if outer.is_valid() {
        opentelemetry::Context::new().with_remote_span_context(outer)
    } else {
        // The host exports nothing (no OTEL_EXPORTER_* set): start a trace of our own.
        opentelemetry::Context::new()
    }
}
