//! OTLP/HTTP trace export requests, protobuf or JSON, turned into the viewer's spans.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use prost::Message;
use serde_json::{Map, Number, Value};

use crate::model::{nanos_to_ms, Event, Link, Span, SpanKind, Status, StatusCode};

/// What OTLP says a service without `service.name` is called.
const UNKNOWN_SERVICE: &str = "unknown_service";

/// The two encodings OTLP/HTTP defines; the answer uses the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// The encoding named by a `content-type` header, parameters (charset) ignored.
    pub fn from_content_type(content_type: &str) -> Option<Encoding> {
        let media_type = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match media_type.as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// The spans of one request, and how many were refused (no usable trace or span id).
#[derive(Debug, Default)]
pub struct Decoded {
    pub spans: Vec<Span>,
    pub rejected: usize,
}

pub fn decode(encoding: Encoding, body: &[u8]) -> Result<Decoded, String> {
    let request = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body)
            .map_err(|e| format!("invalid OTLP protobuf: {e}"))?,
        Encoding::Json => serde_json::from_slice::<ExportTraceServiceRequest>(body)
            .map_err(|e| format!("invalid OTLP JSON: {e}"))?,
    };
    Ok(spans_of(request))
}

/// The success answer, telling the exporter about refused spans as OTLP asks.
pub fn response(encoding: Encoding, rejected: usize) -> Vec<u8> {
    let response = ExportTraceServiceResponse {
        partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected as i64,
            error_message: "spans need a non-empty trace id and span id".to_owned(),
        }),
    };
    match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        // serde would write `"partialSuccess": null`; OTLP's empty answer is `{}`.
        Encoding::Json if response.partial_success.is_none() => b"{}".to_vec(),
        Encoding::Json => serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

fn spans_of(request: ExportTraceServiceRequest) -> Decoded {
    let mut decoded = Decoded::default();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(any_value_text)
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                if span.trace_id.is_empty() || span.span_id.is_empty() {
                    decoded.rejected += 1;
                    continue;
                }
                decoded.spans.push(convert(span, &service, &scope));
            }
        }
    }
    decoded
}

fn convert(span: opentelemetry_proto::tonic::trace::v1::Span, service: &str, scope: &str) -> Span {
    let status = span.status.unwrap_or_default();
    Span {
        trace_id: hex::encode(&span.trace_id),
        span_id: hex::encode(&span.span_id),
        parent_span_id: hex::encode(&span.parent_span_id),
        kind: match span::SpanKind::try_from(span.kind) {
            Ok(span::SpanKind::Internal) => SpanKind::Internal,
            Ok(span::SpanKind::Server) => SpanKind::Server,
            Ok(span::SpanKind::Client) => SpanKind::Client,
            Ok(span::SpanKind::Producer) => SpanKind::Producer,
            Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
            Ok(span::SpanKind::Unspecified) | Err(_) => SpanKind::Unspecified,
        },
        service: service.to_owned(),
        scope: scope.to_owned(),
        start_unix_nano: span.start_time_unix_nano,
        end_unix_nano: span.end_time_unix_nano,
        duration_ms: nanos_to_ms(span.start_time_unix_nano, span.end_time_unix_nano),
        status: Status {
            code: match status::StatusCode::try_from(status.code) {
                Ok(status::StatusCode::Ok) => StatusCode::Ok,
                Ok(status::StatusCode::Error) => StatusCode::Error,
                Ok(status::StatusCode::Unset) | Err(_) => StatusCode::Unset,
            },
            message: status.message,
        },
        attributes: attributes(span.attributes),
        events: span
            .events
            .into_iter()
            .map(|e| Event {
                name: e.name,
                time_unix_nano: e.time_unix_nano,
                attributes: attributes(e.attributes),
            })
            .collect(),
        links: span
            .links
            .into_iter()
            .map(|l| Link {
                trace_id: hex::encode(&l.trace_id),
                span_id: hex::encode(&l.span_id),
                attributes: attributes(l.attributes),
            })
            .collect(),
        name: span.name,
    }
}

fn attributes(key_values: Vec<KeyValue>) -> Map<String, Value> {
    key_values
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value.as_ref().map_or(Value::Null, any_value_json),
            )
        })
        .collect()
}

/// An OTLP value as JSON of the same type; bytes as hex, and the floats JSON cannot
/// hold (NaN, infinities) as their names.
fn any_value_json(value: &AnyValue) -> Value {
    match &value.value {
        None | Some(any_value::Value::StringValueStrindex(_)) => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::Number((*i).into()),
        Some(any_value::Value::DoubleValue(d)) => {
            Number::from_f64(*d).map_or_else(|| Value::String(d.to_string()), Value::Number)
        }
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex::encode(bytes)),
        Some(any_value::Value::ArrayValue(array)) => {
            Value::Array(array.values.iter().map(any_value_json).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => Value::Object(attributes(list.values.clone())),
    }
}

fn any_value_text(value: &AnyValue) -> String {
    crate::model::value_text(&any_value_json(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of opentelemetry-proto's `examples/trace.json` (the OTLP spec example),
    /// plus what opentelemetry-otlp's http-json exporter writes: empty parent ids,
    /// integer enums, int64 as strings, an error status and an exception event.
    const SPEC_EXAMPLE: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
          "scope": {"name": "my.library", "version": "1.0.0",
                    "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
          "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "EEE19B7EC3C1B174",
            "parentSpanId": "EEE19B7EC3C1B173",
            "name": "I'm a server span",
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": "1544712661000000000",
            "kind": 2,
            "attributes": [
              {"key": "my.span.attr", "value": {"stringValue": "some value"}},
              {"key": "retries", "value": {"intValue": "3"}},
              {"key": "ratio", "value": {"doubleValue": 0.5}},
              {"key": "cached", "value": {"boolValue": true}},
              {"key": "raw", "value": {"bytesValue": "3q2+7w=="}},
              {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": 1}]}}}
            ]
          }, {
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b175",
            "traceState": "",
            "parentSpanId": "",
            "flags": 0,
            "name": "send email",
            "kind": 3,
            "startTimeUnixNano": "1544712660100000000",
            "endTimeUnixNano": "1544712660350000000",
            "attributes": [],
            "droppedAttributesCount": 0,
            "events": [{"timeUnixNano": "1544712660300000000", "name": "exception",
                        "attributes": [{"key": "exception.message", "value": {"stringValue": "domain not verified"}}]}],
            "droppedEventsCount": 0,
            "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "attributes": []}],
            "droppedLinksCount": 0,
            "status": {"code": 2, "message": "mail refused"}
          }]
        }]
      }]
    }"#;

    #[test]
    fn decodes_otlp_json_with_hex_ids_string_ints_and_integer_enums() {
        let decoded = decode(Encoding::Json, SPEC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(decoded.rejected, 0);
        let [server, client] = decoded.spans.as_slice() else {
            panic!("two spans expected: {:?}", decoded.spans)
        };
        assert_eq!(server.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(server.span_id, "eee19b7ec3c1b174");
        assert_eq!(server.parent_span_id, "eee19b7ec3c1b173");
        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!(server.service, "my.service");
        assert_eq!(server.scope, "my.library");
        assert_eq!(server.duration_ms, 1000.0);
        assert_eq!(server.status.code, StatusCode::Unset);
        let attrs = serde_json::to_value(&server.attributes).unwrap();
        assert_eq!(
            attrs,
            serde_json::json!({"my.span.attr": "some value", "retries": 3, "ratio": 0.5,
                               "cached": true, "raw": "deadbeef", "tags": ["a", 1]})
        );

        assert_eq!(client.parent_span_id, "");
        assert_eq!(client.kind, SpanKind::Client);
        assert_eq!(client.duration_ms, 250.0);
        assert_eq!(client.status.code, StatusCode::Error);
        assert_eq!(client.status.message, "mail refused");
        assert_eq!(client.events[0].name, "exception");
        assert_eq!(
            client.events[0].attributes["exception.message"],
            "domain not verified"
        );
        assert_eq!(client.links[0].span_id, "b7ad6b7169203331");
    }

    #[test]
    fn protobuf_round_trip_and_empty_response() {
        let request: ExportTraceServiceRequest = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        let decoded = decode(Encoding::Protobuf, &request.encode_to_vec()).unwrap();
        assert_eq!(decoded.spans.len(), 2);
        assert_eq!(decoded.spans[1].name, "send email");
        // What opentelemetry-otlp's http-json exporter sends: `to_string_pretty(&request)`.
        let exported = serde_json::to_string_pretty(&request).unwrap();
        let from_json = decode(Encoding::Json, exported.as_bytes()).unwrap();
        assert_eq!(from_json.spans, decoded.spans);
        assert!(response(Encoding::Protobuf, 0).is_empty());
        assert_eq!(response(Encoding::Json, 0), b"{}");
    }

    #[test]
    fn refuses_garbage_and_spans_without_ids() {
        assert!(decode(Encoding::Json, b"{\"resourceSpans\": 7}").is_err());
        assert!(decode(Encoding::Json, b"not json").is_err());
        assert!(decode(Encoding::Protobuf, &[0xff, 0xff, 0xff]).is_err());
        let no_ids = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"x"}]}]}]}"#;
        let decoded = decode(Encoding::Json, no_ids.as_bytes()).unwrap();
        assert_eq!((decoded.spans.len(), decoded.rejected), (0, 1));
        let answer: Value = serde_json::from_slice(&response(Encoding::Json, 1)).unwrap();
        assert_eq!(answer["partialSuccess"]["rejectedSpans"], 1);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Encoding::from_content_type("application/json; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_content_type("Application/X-Protobuf"),
            Some(Encoding::Protobuf)
        );
        assert_eq!(Encoding::from_content_type("text/plain"), None);
    }
}
