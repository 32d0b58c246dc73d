//! The viewer's own span model: what the query API serves and the `trace` command reads
//! back, independent of the OTLP wire types.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The attribute the shop puts on its spans to name the order they work on.
pub const ORDER_ID_ATTRIBUTE: &str = "shop.order.id";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub code: StatusCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub trace_id: String,
    pub span_id: String,
    pub attributes: Map<String, Value>,
}

/// One span, ids as lowercase hex, with its resource's `service.name` attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    pub service: String,
    /// Name of the instrumentation scope that made the span.
    pub scope: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Derived from the two timestamps; kept in the JSON so readers need no arithmetic.
    pub duration_ms: f64,
    pub status: Status,
    pub attributes: Map<String, Value>,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
}

impl Span {
    pub fn is_error(&self) -> bool {
        self.status.code == StatusCode::Error
    }

    /// An attribute as text: strings as they are, anything else as its JSON.
    pub fn attribute_text(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(value_text)
    }
}

/// The text the search compares and the pages show for an attribute value.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Nanoseconds to milliseconds; a span ending before it starts lasts 0 ms.
pub fn nanos_to_ms(start: u64, end: u64) -> f64 {
    end.saturating_sub(start) as f64 / 1_000_000.0
}
