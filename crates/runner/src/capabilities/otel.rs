//! Tracing, as Spin's `factor-otel` and `spin-telemetry` do it:
//!
//! - [`Exporter`]: OTLP over HTTP (protobuf or JSON, `OTEL_EXPORTER_OTLP_*`), through a
//!   batch processor that exports on its own thread, so exporting never blocks or fails
//!   a request. On when an endpoint is set, as with Spin ([`host_telemetry`]).
//! - [`TraceScope`]: one per instance, where the runner's own spans hang. The trigger
//!   makes the instance's outer span; a host call's span goes under the guest's active
//!   span where Spin reparents it (`fermyon:spin/key-value`, outbound Redis, outbound
//!   HTTP), and under the outer span where Spin does not (`wasi:keyvalue`).
//! - The `wasi:otel/tracing` host ([`add_to_linker`]), linked only under
//!   `--experimental-wasi-otel`: guest spans are exported as the guest made them (trace,
//!   parent, kind, status), with the component's id added.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use indexmap::IndexMap;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, SpanData, SpanEvents, SpanLinks, SpanProcessor};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "spin-shop:worlds/otel",
        imports: { default: trappable },
        with: {
            "wasi:clocks/wall-clock": wasmtime_wasi::p2::bindings::clocks::wall_clock,
        },
    });
}

use bindings::wasi::otel::{tracing as wit, types as wit_types};

/// The attribute naming the component a span belongs to.
pub const COMPONENT_ATTRIBUTE: &str = "spin.component_id";

/// Where spans go: built once per process from the `OTEL_*` environment.
pub struct Exporter {
    pipeline: host_telemetry::Pipeline,
    tracer: SdkTracer,
}

impl Exporter {
    /// `None` unless an OTLP endpoint is set (see [`host_telemetry::Pipeline`]); spans
    /// are then from service `spin` unless `OTEL_SERVICE_NAME` says otherwise, as with
    /// Spin. Build it outside the async runtime.
    pub fn from_env() -> Result<Option<Arc<Exporter>>> {
        Ok(host_telemetry::Pipeline::from_env("spin")?.map(|pipeline| {
            let tracer = pipeline.provider.tracer("spin-runner");
            Arc::new(Exporter { pipeline, tracer })
        }))
    }

    /// Exports what is still buffered; called once when the runner stops.
    pub fn shutdown(&self) {
        self.pipeline.shutdown();
    }

    /// A span of the runner's own under `parent` (an empty context: a new trace).
    pub fn start(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> HostSpan {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        HostSpan(Some(span))
    }

    /// Exports a span a component made.
    fn export_guest_span(&self, span: SpanData) {
        self.pipeline.processor.on_end(span);
    }
}

/// A span of the runner's; ends when dropped. Inert when nothing is exported.
pub struct HostSpan(Option<opentelemetry_sdk::trace::Span>);

impl HostSpan {
    pub fn none() -> HostSpan {
        HostSpan(None)
    }

    pub fn set_attribute(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(attribute);
        }
    }

    /// Status error, with the message as an `exception` event too.
    pub fn fail(&mut self, message: impl Into<String>) {
        if let Some(span) = &mut self.0 {
            let message = message.into();
            span.add_event(
                "exception",
                vec![KeyValue::new("exception.message", message.clone())],
            );
            span.set_status(Status::error(message));
        }
    }

    pub fn span_context(&self) -> SpanContext {
        self.0
            .as_ref()
            .map(|s| s.span_context().clone())
            .unwrap_or_else(SpanContext::empty_context)
    }

    /// A context whose active span is this one, to parent others or inject headers.
    pub fn context(&self) -> Context {
        under(&self.span_context())
    }
}

impl Drop for HostSpan {
    fn drop(&mut self) {
        if let Some(span) = &mut self.0 {
            span.end();
        }
    }
}

/// A context whose active span is `parent` (a span of this process, so not "remote").
pub fn under(parent: &SpanContext) -> Context {
    if !parent.is_valid() {
        return Context::new();
    }
    let local = SpanContext::new(
        parent.trace_id(),
        parent.span_id(),
        parent.trace_flags(),
        false,
        parent.trace_state().clone(),
    );
    Context::new().with_remote_span_context(local)
}

/// Whether a host call's span goes under the guest's active span.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Parent {
    /// Spin reparents these (`fermyon:spin/key-value`, outbound Redis and HTTP).
    ActiveGuestSpan,
    /// Spin does not (`wasi:keyvalue`): the instance's outer span.
    Outer,
}

/// The tracing state of one instance, shared by its capabilities.
#[derive(Clone)]
pub struct TraceScope(Option<Arc<Scope>>);

struct Scope {
    exporter: Arc<Exporter>,
    component: String,
    /// The trigger's span for this instance (`execute_wasm_component ...`, `... receive`).
    outer: SpanContext,
    /// Guest spans started and not yet ended, in start order: the last is active.
    guest: Mutex<IndexMap<SpanId, SpanContext>>,
}

impl TraceScope {
    /// Nothing is exported: every span is inert.
    #[cfg(test)]
    pub fn disabled() -> TraceScope {
        TraceScope(None)
    }

    pub fn new(
        exporter: &Option<Arc<Exporter>>,
        component: &str,
        outer: SpanContext,
    ) -> TraceScope {
        TraceScope(exporter.as_ref().map(|exporter| {
            Arc::new(Scope {
                exporter: exporter.clone(),
                component: component.to_owned(),
                outer,
                guest: Mutex::default(),
            })
        }))
    }

    /// A span for a host call made by this instance.
    pub fn span(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Parent,
        mut attributes: Vec<KeyValue>,
    ) -> HostSpan {
        let Some(scope) = &self.0 else {
            return HostSpan::none();
        };
        let active = match parent {
            Parent::ActiveGuestSpan => scope.guest_spans().last().map(|(_, c)| c.clone()),
            Parent::Outer => None,
        };
        let parent = match active {
            // As Spin: the guest span is a remote parent of the host's span.
            Some(guest) => Context::new().with_remote_span_context(guest),
            None => under(&scope.outer),
        };
        attributes.push(KeyValue::new(COMPONENT_ATTRIBUTE, scope.component.clone()));
        scope.exporter.start(name, kind, &parent, attributes)
    }

    /// The instance's outer span (what `outer-span-context` answers).
    pub fn outer(&self) -> SpanContext {
        self.0
            .as_ref()
            .map(|s| s.outer.clone())
            .unwrap_or_else(SpanContext::empty_context)
    }
}

impl Scope {
    fn guest_spans(&self) -> std::sync::MutexGuard<'_, IndexMap<SpanId, SpanContext>> {
        self.guest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Links `wasi:otel/tracing`; the instance state gives its [`TraceScope`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    scope: fn(&mut T) -> &mut TraceScope,
) -> Result<()> {
    wit::add_to_linker::<T, wasmtime::component::HasSelf<TraceScope>>(linker, scope)?;
    Ok(())
}

impl wit_types::Host for TraceScope {}

impl wit::Host for TraceScope {
    fn on_start(&mut self, context: wit::SpanContext) -> wasmtime::Result<()> {
        if let Some(scope) = &self.0 {
            let context = span_context_from_wit(&context);
            scope.guest_spans().insert(context.span_id(), context);
        }
        Ok(())
    }

    fn on_end(&mut self, span: wit::SpanData) -> wasmtime::Result<()> {
        let Some(scope) = &self.0 else {
            return Ok(());
        };
        let mut data = span_data_from_wit(span);
        if scope
            .guest_spans()
            .shift_remove(&data.span_context.span_id())
            .is_none()
        {
            // Spin traps the guest the same way.
            wasmtime::bail!("Trying to end a span that was not started");
        }
        data.attributes
            .push(KeyValue::new(COMPONENT_ATTRIBUTE, scope.component.clone()));
        scope.exporter.export_guest_span(data);
        Ok(())
    }

    fn outer_span_context(&mut self) -> wasmtime::Result<wit::SpanContext> {
        Ok(span_context_to_wit(&self.outer()))
    }
}

fn span_context_to_wit(context: &SpanContext) -> wit::SpanContext {
    wit::SpanContext {
        trace_id: format!("{:032x}", context.trace_id()),
        span_id: format!("{:016x}", context.span_id()),
        trace_flags: if context.trace_flags().is_sampled() {
            wit::TraceFlags::SAMPLED
        } else {
            wit::TraceFlags::empty()
        },
        is_remote: context.is_remote(),
        trace_state: context
            .trace_state()
            .header()
            .split(',')
            .filter_map(|entry| entry.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

fn span_context_from_wit(context: &wit::SpanContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_hex(&context.trace_id).unwrap_or(TraceId::INVALID),
        SpanId::from_hex(&context.span_id).unwrap_or(SpanId::INVALID),
        if context.trace_flags.contains(wit::TraceFlags::SAMPLED) {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        context.is_remote,
        TraceState::from_key_value(
            context
                .trace_state
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .unwrap_or_default(),
    )
}

fn span_data_from_wit(span: wit::SpanData) -> SpanData {
    let mut events = SpanEvents::default();
    events.events = span
        .events
        .into_iter()
        .map(|e| {
            opentelemetry::trace::Event::new(e.name, time(e.time), key_values(e.attributes), 0)
        })
        .collect();
    events.dropped_count = span.dropped_events;
    let mut links = SpanLinks::default();
    links.links = span
        .links
        .into_iter()
        .map(|l| {
            opentelemetry::trace::Link::new(
                span_context_from_wit(&l.span_context),
                key_values(l.attributes),
                0,
            )
        })
        .collect();
    links.dropped_count = span.dropped_links;
    let scope = span.instrumentation_scope;
    let mut instrumentation_scope = opentelemetry::InstrumentationScope::builder(scope.name)
        .with_attributes(key_values(scope.attributes));
    if let Some(version) = scope.version {
        instrumentation_scope = instrumentation_scope.with_version(version);
    }
    if let Some(url) = scope.schema_url {
        instrumentation_scope = instrumentation_scope.with_schema_url(url);
    }
    let parent_span_id = SpanId::from_hex(&span.parent_span_id).unwrap_or(SpanId::INVALID);
    SpanData {
        span_context: span_context_from_wit(&span.span_context),
        parent_span_id,
        parent_span_is_remote: false,
        span_kind: match span.span_kind {
            wit::SpanKind::Client => SpanKind::Client,
            wit::SpanKind::Server => SpanKind::Server,
            wit::SpanKind::Producer => SpanKind::Producer,
            wit::SpanKind::Consumer => SpanKind::Consumer,
            wit::SpanKind::Internal => SpanKind::Internal,
        },
        name: span.name.into(),
        start_time: time(span.start_time),
        end_time: time(span.end_time),
        attributes: key_values(span.attributes),
        dropped_attributes_count: span.dropped_attributes,
        events,
        links,
        status: match span.status {
            wit::Status::Unset => Status::Unset,
            wit::Status::Ok => Status::Ok,
            wit::Status::Error(message) => Status::error(message),
        },
        instrumentation_scope: instrumentation_scope.build(),
    }
}

fn time(at: wit::Datetime) -> SystemTime {
    UNIX_EPOCH + Duration::new(at.seconds, at.nanoseconds)
}

fn key_values(attributes: Vec<wit_types::KeyValue>) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|kv| KeyValue::new(kv.key, value_from_json(&kv.value)))
        .collect()
}

/// The interface's JSON-encoded attribute value; text that is not JSON is kept as a
/// string rather than dropped.
fn value_from_json(json: &str) -> Value {
    use opentelemetry::{Array, StringValue};
    use serde_json::Value as J;
    let Ok(parsed) = serde_json::from_str::<J>(json) else {
        return Value::String(json.to_owned().into());
    };
    match parsed {
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::I64(i),
            None => Value::F64(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(s.into()),
        J::Array(items) => {
            if items.iter().all(J::is_boolean) {
                Value::Array(Array::Bool(items.iter().filter_map(J::as_bool).collect()))
            } else if items.iter().all(J::is_i64) {
                Value::Array(Array::I64(items.iter().filter_map(J::as_i64).collect()))
            } else if items.iter().all(J::is_number) {
                Value::Array(Array::F64(items.iter().filter_map(J::as_f64).collect()))
            } else {
                Value::Array(Array::String(
                    items
                        .iter()
                        .map(|i| {
                            StringValue::from(
                                i.as_str().map_or_else(|| i.to_string(), str::to_owned),
                            )
                        })
                        .collect(),
                ))
            }
        }
        other => Value::String(other.to_string().into()),
    }
}
