//! The span processor that forwards span starts and ends to the host.

use std::fmt;
use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanContext};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use crate::bindings::wasi::otel::tracing as wit;
use crate::convert::{span_context_from_wit, span_context_to_wit, span_data_to_wit};

/// What the processor needs from the host: the three functions of `wasi:otel/tracing`.
pub trait SpanHost: Send + Sync + fmt::Debug + 'static {
    fn on_start(&self, context: wit::SpanContext);
    fn on_end(&self, span: wit::SpanData);
    fn outer_span_context(&self) -> SpanContext;
}

/// The real host, through the imported `wasi:otel/tracing` functions.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasiHost;

impl SpanHost for WasiHost {
    fn on_start(&self, context: wit::SpanContext) {
        wit::on_start(&context);
    }

    fn on_end(&self, span: wit::SpanData) {
        wit::on_end(&span);
    }

    fn outer_span_context(&self) -> SpanContext {
        span_context_from_wit(&wit::outer_span_context())
    }
}

/// Hands each span to the host when it starts (the host then parents its own spans,
/// such as key-value calls, under the active one) and when it ends (the host exports
/// it). Nothing is buffered in the guest: an instance lives for one request.
#[derive(Debug)]
pub struct WasiSpanProcessor<H: SpanHost> {
    host: H,
}

impl<H: SpanHost> WasiSpanProcessor<H> {
    pub fn new(host: H) -> Self {
        Self { host }
    }
}

impl<H: SpanHost> SpanProcessor for WasiSpanProcessor<H> {
    fn on_start(&self, span: &mut Span, _parent: &opentelemetry::Context) {
        // An unsampled span is not recorded and will not be ended to the host either.
        if span.is_recording() {
            self.host.on_start(span_context_to_wit(span.span_context()));
        }
    }

    fn on_end(&self, span: SpanData) {
        self.host.on_end(span_data_to_wit(&span));
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
        TracerProvider as _,
    };
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use std::sync::{Arc, Mutex};

    /// Records the calls a host would receive.
    #[derive(Debug, Default, Clone)]
    struct Recorder {
        calls: Arc<Mutex<Vec<Call>>>,
        outer: Option<SpanContext>,
    }

    #[derive(Debug, Clone)]
    enum Call {
        Start(wit::SpanContext),
        End(Box<wit::SpanData>),
    }

    impl SpanHost for Recorder {
        fn on_start(&self, context: wit::SpanContext) {
            self.calls.lock().unwrap().push(Call::Start(context));
        }
        fn on_end(&self, span: wit::SpanData) {
            self.calls.lock().unwrap().push(Call::End(Box::new(span)));
        }
        fn outer_span_context(&self) -> SpanContext {
            self.outer.clone().unwrap_or(SpanContext::empty_context())
        }
    }

    fn host_span() -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    #[test]
    fn nested_spans_reach_the_host_in_order_under_the_outer_span() {
        let host = Recorder {
            outer: Some(host_span()),
            ..Recorder::default()
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(WasiSpanProcessor::new(host.clone()))
            .build();
        let tracer = provider.tracer("checkout");
        let parent = crate::context_under(&host);
        {
            let outer = tracer
                .span_builder("place order")
                .with_kind(SpanKind::Server)
                .start_with_context(&tracer, &parent);
            let cx = parent.with_span(outer);
            let mut inner = tracer.start_with_context("reserve stock", &cx);
            inner.set_attribute(KeyValue::new("shop.order.id", "ord_1"));
            inner.record_error(&std::io::Error::other("out of stock"));
            inner.set_status(Status::error("out of stock"));
            inner.end();
        }
        let calls = host.calls.lock().unwrap().clone();
        let kinds: Vec<String> = calls
            .iter()
            .map(|c| match c {
                Call::Start(_) => "start".into(),
                Call::End(d) => format!("end {}", d.name),
            })
            .collect();
        assert_eq!(
            kinds,
            ["start", "start", "end reserve stock", "end place order"]
        );
        let (Call::End(inner), Call::End(outer)) = (&calls[2], &calls[3]) else {
            unreachable!()
        };
        // One trace: the host's; the outer span hangs under the host span.
        assert_eq!(
            outer.span_context.trace_id,
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(outer.parent_span_id, "b7ad6b7169203331");
        assert_eq!(inner.span_context.trace_id, outer.span_context.trace_id);
        assert_eq!(inner.parent_span_id, outer.span_context.span_id);
        assert!(matches!(outer.span_kind, wit::SpanKind::Server));
        assert!(matches!(&inner.status, wit::Status::Error(m) if m == "out of stock"));
        assert_eq!(inner.events[0].name, "exception");
        assert!(inner
            .attributes
            .iter()
            .any(|kv| kv.key == "shop.order.id" && kv.value == "\"ord_1\""));
        assert_eq!(outer.instrumentation_scope.name, "checkout");
        // What the host got on start is the span it later ended.
        let Call::Start(first) = &calls[0] else {
            unreachable!()
        };
        assert_eq!(first.span_id, outer.span_context.span_id);
    }

    #[test]
    fn without_a_host_span_the_component_starts_its_own_trace() {
        let host = Recorder::default();
        assert!(!crate::context_under(&host).has_active_span());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(WasiSpanProcessor::new(host.clone()))
            .build();
        let tracer = provider.tracer("fulfilment");
        tracer.in_span("process order.placed", |_| {});
        let calls = host.calls.lock().unwrap();
        let Call::End(span) = &calls[1] else {
            unreachable!()
        };
        assert_eq!(span.parent_span_id, "");
        assert_ne!(span.span_context.trace_id, format!("{:032x}", 0));
    }
}
