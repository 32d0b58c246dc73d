//! OpenTelemetry SDK types to and from the `wasi:otel` records.
//!
//! The interface carries attribute values as JSON (WIT has no recursive types), trace
//! and span ids as lowercase hex, and times as `wasi:clocks` datetimes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

use crate::bindings::wasi::clocks::wall_clock::Datetime;
use crate::bindings::wasi::otel::tracing as wit;
use crate::bindings::wasi::otel::types as wit_types;

pub fn span_context_to_wit(context: &SpanContext) -> wit::SpanContext {
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

/// An invalid id (or an empty host context) becomes the invalid context, never a panic.
pub fn span_context_from_wit(context: &wit::SpanContext) -> SpanContext {
    let trace_state = TraceState::from_key_value(
        context
            .trace_state
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .unwrap_or_default();
    SpanContext::new(
        TraceId::from_hex(&context.trace_id).unwrap_or(TraceId::INVALID),
        SpanId::from_hex(&context.span_id).unwrap_or(SpanId::INVALID),
        if context.trace_flags.contains(wit::TraceFlags::SAMPLED) {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        context.is_remote,
        trace_state,
    )
}

pub fn span_data_to_wit(span: &SpanData) -> wit::SpanData {
    let scope = &span.instrumentation_scope;
    wit::SpanData {
        span_context: span_context_to_wit(&span.span_context),
        parent_span_id: if span.parent_span_id == SpanId::INVALID {
            String::new()
        } else {
            format!("{:016x}", span.parent_span_id)
        },
        span_kind: match span.span_kind {
            SpanKind::Client => wit::SpanKind::Client,
            SpanKind::Server => wit::SpanKind::Server,
            SpanKind::Producer => wit::SpanKind::Producer,
            SpanKind::Consumer => wit::SpanKind::Consumer,
            SpanKind::Internal => wit::SpanKind::Internal,
        },
        name: span.name.to_string(),
        start_time: datetime(span.start_time),
        end_time: datetime(span.end_time),
        attributes: key_values(&span.attributes),
        events: span
            .events
            .iter()
            .map(|event| wit::Event {
                name: event.name.to_string(),
                time: datetime(event.timestamp),
                attributes: key_values(&event.attributes),
            })
            .collect(),
        links: span
            .links
            .iter()
            .map(|link| wit::Link {
                span_context: span_context_to_wit(&link.span_context),
                attributes: key_values(&link.attributes),
            })
            .collect(),
        status: match &span.status {
            Status::Unset => wit::Status::Unset,
            Status::Ok => wit::Status::Ok,
            Status::Error { description } => wit::Status::Error(description.to_string()),
        },
        instrumentation_scope: wit_types::InstrumentationScope {
            name: scope.name().to_owned(),
            version: scope.version().map(str::to_owned),
            schema_url: scope.schema_url().map(str::to_owned),
            attributes: key_values(&scope.attributes().cloned().collect::<Vec<_>>()),
        },
        dropped_attributes: span.dropped_attributes_count,
        dropped_events: span.events.dropped_count,
        dropped_links: span.links.dropped_count,
    }
}

fn datetime(at: SystemTime) -> Datetime {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Datetime {
        seconds: since.as_secs(),
        nanoseconds: since.subsec_nanos(),
    }
}

fn key_values(attributes: &[KeyValue]) -> Vec<wit_types::KeyValue> {
    attributes
        .iter()
        .map(|kv| wit_types::KeyValue {
            key: kv.key.to_string(),
            value: json_value(&kv.value).to_string(),
        })
        .collect()
}

/// An attribute value in the interface's JSON encoding.
fn json_value(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    let float = |f: f64| serde_json::Number::from_f64(f).map_or(J::Null, J::Number);
    match value {
        Value::Bool(b) => J::Bool(*b),
        Value::I64(i) => J::from(*i),
        Value::F64(f) => float(*f),
        Value::String(s) => J::String(s.to_string()),
        Value::Array(Array::Bool(v)) => J::Array(v.iter().map(|b| J::Bool(*b)).collect()),
        Value::Array(Array::I64(v)) => J::Array(v.iter().map(|i| J::from(*i)).collect()),
        Value::Array(Array::F64(v)) => J::Array(v.iter().map(|f| float(*f)).collect()),
        Value::Array(Array::String(v)) => {
            J::Array(v.iter().map(|s| J::String(s.to_string())).collect())
        }
        // Newer value kinds: keep them readable rather than dropping them.
        #[allow(unreachable_patterns)]
        other => J::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        )
    }

    #[test]
    fn span_contexts_round_trip_as_lowercase_hex() {
        let wit = span_context_to_wit(&context());
        assert_eq!(wit.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(wit.span_id, "00f067aa0ba902b7");
        assert!(wit.trace_flags.contains(wit::TraceFlags::SAMPLED));
        assert_eq!(wit.trace_state, [("vendor".to_owned(), "value".to_owned())]);
        assert_eq!(span_context_from_wit(&wit), context());
    }

    #[test]
    fn a_malformed_host_context_is_invalid_not_a_panic() {
        let bad = wit::SpanContext {
            trace_id: "not hex".into(),
            span_id: String::new(),
            trace_flags: wit::TraceFlags::empty(),
            is_remote: false,
            trace_state: vec![("BAD KEY".into(), "x".into())],
        };
        assert!(!span_context_from_wit(&bad).is_valid());
    }

    #[test]
    fn attribute_values_are_json() {
        let values = key_values(&[
            KeyValue::new("s", "text \"quoted\""),
            KeyValue::new("i", 42_i64),
            KeyValue::new("f", 1.5),
            KeyValue::new("b", true),
            KeyValue::new("a", Value::Array(Array::I64(vec![1, 2]))),
        ]);
        let json: Vec<(&str, &str)> = values
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(
            json,
            [
                ("s", r#""text \"quoted\"""#),
                ("i", "42"),
                ("f", "1.5"),
                ("b", "true"),
                ("a", "[1,2]")
            ]
        );
    }

    #[test]
    fn times_are_seconds_and_nanoseconds_since_the_epoch() {
        let at = UNIX_EPOCH + Duration::new(1_764_000_000, 123_456_789);
        let d = datetime(at);
        assert_eq!((d.seconds, d.nanoseconds), (1_764_000_000, 123_456_789));
    }
}
