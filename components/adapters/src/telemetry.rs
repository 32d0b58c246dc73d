//! Tracing for the components, with the ordinary OpenTelemetry API.
//!
//! With the `otel` feature, [`start`] installs a tracer provider whose spans reach Spin
//! through `wasi:otel` (`spin up --experimental-wasi-otel`), and a handler's first span
//! hangs under the host's span for the request or message. Without it nothing is
//! imported, spans are no-ops, and a W3C trace context that came in (an inbound
//! `traceparent`, the one in an event) is still carried along, as W3C Trace Context asks
//! of a service that does not trace.

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, ContextGuard, KeyValue};
use shop_domain::ports::{Attribute, Step, Trace};

/// Keeps the tracer provider of this instance alive (Spin makes one instance per
/// request or message, so each handler installs its own).
pub struct Tracing {
    #[cfg(feature = "otel")]
    _provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// Call first in each handler. A host that exports nothing (Spin without
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) answers `outer-span-context` with an invalid context:
/// then no provider is installed and spans cost next to nothing.
pub fn start() -> Tracing {
    Tracing {
        #[cfg(feature = "otel")]
        _provider: otel_bridge::outer_context()
            .has_active_span()
            .then(otel_bridge::install),
    }
}

/// Spans of `component` (the instrumentation scope names the component).
pub fn tracer(component: &'static str) -> BoxedTracer {
    global::tracer(component)
}

/// Whether spans reach a host (built with `otel`).
pub const ENABLED: bool = cfg!(feature = "otel");

/// The parent of an HTTP handler's first span: the host's span for the request (which
/// already continues an inbound `traceparent`), or, when the host does not trace, that
/// inbound context itself.
pub fn request_parent(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    #[cfg(feature = "otel")]
    {
        let outer = otel_bridge::outer_context();
        if outer.has_active_span() {
            return outer;
        }
    }
    remote_parent(traceparent, tracestate)
}

/// The host's span for this instance (the Redis trigger's `... receive`), if traced.
pub fn host_span() -> Option<SpanContext> {
    #[cfg(feature = "otel")]
    {
        let outer = otel_bridge::outer_context();
        let span = outer.span().span_context().clone();
        span.is_valid().then_some(span)
    }
    #[cfg(not(feature = "otel"))]
    None
}

/// A context continuing a W3C `traceparent` (and `tracestate`) from elsewhere, e.g. an
/// event; an absent or invalid one gives an empty context (a new trace).
pub fn remote_parent(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    match traceparent.and_then(|tp| parse_traceparent(tp, tracestate)) {
        Some(span) => Context::new().with_remote_span_context(span),
        None => Context::new(),
    }
}

/// Parses `00-<trace id>-<span id>-<flags>`; None for anything else.
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    if !shop_domain::event::is_traceparent(traceparent) {
        return None;
    }
    let mut parts = traceparent.split('-').skip(1);
    let trace_id = TraceId::from_hex(parts.next()?).ok()?;
    let span_id = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

/// The W3C `traceparent` of `span`, if it has a valid context.
pub fn traceparent(span: &SpanContext) -> Option<String> {
    span.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    })
}

/// The W3C `tracestate` of `span`, if not empty.
pub fn tracestate(span: &SpanContext) -> Option<String> {
    let header = span.trace_state().header();
    (!header.is_empty()).then_some(header)
}

/// The trace id of `span` as 32 lowercase hex digits, if valid.
pub fn trace_id(span: &SpanContext) -> Option<String> {
    span.is_valid().then(|| format!("{:032x}", span.trace_id()))
}

/// Marks the active span of `cx` failed: status error, and the message as an
/// `exception` event (what trace viewers show as the error).
pub fn fail(cx: &Context, message: impl Into<String>) {
    let message = message.into();
    let span = cx.span();
    span.add_event(
        "exception",
        vec![KeyValue::new("exception.message", message.clone())],
    );
    span.set_status(Status::error(message));
}

/// The domain's steps as spans of `component`'s, each the active span while it runs
/// (so the host's spans and the component's own hang under it).
pub struct Steps {
    tracer: BoxedTracer,
}

impl Steps {
    pub fn new(component: &'static str) -> Steps {
        Steps {
            tracer: tracer(component),
        }
    }
}

/// A step's span; ends (and stops being the active one) when dropped.
pub struct SpanStep {
    // Dropped first: the previous context is active again before the span ends.
    _active: ContextGuard,
    cx: Context,
}

impl Trace for Steps {
    type Step = SpanStep;

    fn step(&self, name: &'static str) -> SpanStep {
        let cx = Context::current_with_span(self.tracer.start(name));
        SpanStep {
            _active: cx.clone().attach(),
            cx,
        }
    }
}

impl Step for SpanStep {
    fn attribute(&mut self, key: &'static str, value: Attribute) {
        let value = match value {
            Attribute::Text(s) => opentelemetry::Value::from(s),
            Attribute::Int(i) => opentelemetry::Value::from(i),
            Attribute::Bool(b) => opentelemetry::Value::from(b),
        };
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    fn fail(&mut self, message: &str) {
        fail(&self.cx, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_bad_ones_start_a_new_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = parse_traceparent(tp, Some("vendor=x")).unwrap();
        assert!(span.is_remote());
        assert_eq!(traceparent(&span).as_deref(), Some(tp));
        assert_eq!(tracestate(&span).as_deref(), Some("vendor=x"));
        assert_eq!(
            trace_id(&span).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad}");
            assert!(!remote_parent(Some(bad), None).has_active_span());
        }
        assert!(remote_parent(Some(tp), None)
            .span()
            .span_context()
            .is_valid());
    }
}
