//! The real binary: OTLP exports in (protobuf and JSON), then the JSON API, the pages
//! and the `trace` command's waterfall out.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_trace-viewer");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ORDER_ID: &str = "ord_0123456789abcdef0123456789abcdef";
const JSON_TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
/// 2023-11-14T22:13:20Z, in nanoseconds.
const T0: u64 = 1_700_000_000_000_000_000;

/// A running `trace-viewer serve`, killed when dropped (also when a test panics).
struct Server {
    child: Child,
    base: String,
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start trace-viewer");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the address line");
        let base = line
            .trim()
            .strip_prefix("trace-viewer listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server {
            child,
            base,
            _stdout: stdout,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get_json(&self, path: &str) -> Value {
        let response = reqwest::blocking::get(self.url(path)).unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().unwrap()
    }

    fn post(&self, content_type: &str, body: Vec<u8>) -> reqwest::blocking::Response {
        reqwest::blocking::Client::new()
            .post(self.url("/v1/traces"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap()
    }

    fn trace_command(&self, id: &str) -> Output {
        Command::new(BIN)
            .args(["trace", id, "--from", &self.base])
            .output()
            .expect("run trace-viewer trace")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.to_owned()))
}

fn span(id: u8, parent: Option<u8>, name: &str, kind: span::SpanKind, ms: (u64, u64)) -> Span {
    Span {
        trace_id: hex(TRACE_ID),
        span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
        parent_span_id: parent.map_or_else(Vec::new, |p| vec![0, 0, 0, 0, 0, 0, 0, p]),
        name: name.to_owned(),
        kind: kind as i32,
        start_time_unix_nano: T0 + ms.0 * 1_000_000,
        end_time_unix_nano: T0 + ms.1 * 1_000_000,
        ..Default::default()
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn service(name: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![text("service.name", name)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: format!("{name}-scope"),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// curl -> checkout (reserve stock) -> fulfilment -> a mail API that refuses the sender.
fn shop_trace() -> ExportTraceServiceRequest {
    let mut root = span(
        1,
        None,
        "POST /api/orders",
        span::SpanKind::Server,
        (0, 120),
    );
    root.attributes = vec![
        text("shop.order.id", ORDER_ID),
        attribute("http.response.status_code", any_value::Value::IntValue(202)),
    ];
    let stock = span(
        2,
        Some(1),
        "kv.increment stock",
        span::SpanKind::Client,
        (10, 15),
    );
    let mut fulfil = span(
        3,
        Some(1),
        "fulfil order",
        span::SpanKind::Consumer,
        (40, 110),
    );
    fulfil.attributes = vec![text("shop.order.id", ORDER_ID)];
    let mut email = span(4, Some(3), "send email", span::SpanKind::Client, (60, 100));
    email.status = Some(Status {
        code: status::StatusCode::Error as i32,
        message: "domain not verified".to_owned(),
    });
    email.events = vec![span::Event {
        name: "exception".to_owned(),
        time_unix_nano: T0 + 99_000_000,
        attributes: vec![text(
            "exception.message",
            "The example.com domain is not verified",
        )],
        ..Default::default()
    }];
    ExportTraceServiceRequest {
        resource_spans: vec![
            service("checkout", vec![root, stock]),
            service("fulfilment", vec![fulfil, email]),
        ],
    }
}

/// What opentelemetry-otlp's http-json exporter sends: hex ids, int64 as strings.
fn json_trace() -> Vec<u8> {
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "devmail"}}]},
        "scopeSpans": [{
            "scope": {"name": "devmail"},
            "spans": [{
                "traceId": JSON_TRACE_ID,
                "spanId": "eee19b7ec3c1b174",
                "parentSpanId": "",
                "name": "POST /emails",
                "kind": 2,
                "startTimeUnixNano": (T0 + 1_000_000_000).to_string(),
                "endTimeUnixNano": (T0 + 1_002_500_000).to_string(),
                "attributes": [{"key": "shop.order.id", "value": {"stringValue": "ord_json"}}],
                "status": {"code": 1}
            }]
        }]
    }]})
    .to_string()
    .into_bytes()
}

#[test]
fn receives_exports_and_shows_them() {
    let server = Server::start();

    let answer = server.post("application/x-protobuf", shop_trace().encode_to_vec());
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/x-protobuf");
    assert!(answer.bytes().unwrap().is_empty());
    let answer = server.post("application/json", json_trace());
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().unwrap(), "{}");

    // The list: newest first.
    let list = server.get_json("/api/traces");
    let traces = list["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 2);
    assert_eq!(traces[0]["trace_id"], JSON_TRACE_ID);
    assert_eq!(traces[0]["order_ids"], json!(["ord_json"]));
    assert_eq!(
        traces[1],
        json!({
            "trace_id": TRACE_ID, "root_name": "POST /api/orders",
            "services": ["checkout", "fulfilment"], "span_count": 4, "error_count": 1,
            "start_unix_nano": T0, "duration_ms": 120.0, "order_ids": [ORDER_ID],
            "dropped_spans": 0
        })
    );

    // One trace: spans by start time, ids in hex.
    let detail = server.get_json(&format!("/api/traces/{TRACE_ID}"));
    assert_eq!(detail["trace_id"], TRACE_ID);
    let spans = detail["spans"].as_array().unwrap();
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "POST /api/orders",
            "kv.increment stock",
            "fulfil order",
            "send email"
        ]
    );
    assert_eq!(spans[0]["parent_span_id"], "");
    assert_eq!(spans[0]["kind"], "server");
    assert_eq!(spans[0]["service"], "checkout");
    assert_eq!(spans[0]["scope"], "checkout-scope");
    assert_eq!(spans[0]["attributes"]["http.response.status_code"], 202);
    let email = &spans[3];
    assert_eq!(email["span_id"], "0000000000000004");
    assert_eq!(email["parent_span_id"], "0000000000000003");
    assert_eq!(email["kind"], "client");
    assert_eq!(email["service"], "fulfilment");
    assert_eq!(email["duration_ms"], 40.0);
    assert_eq!(email["start_unix_nano"], T0 + 60_000_000);
    assert_eq!(email["end_unix_nano"], T0 + 100_000_000);
    assert_eq!(
        email["status"],
        json!({"code": "error", "message": "domain not verified"})
    );
    assert_eq!(
        email["events"],
        json!([{"name": "exception", "time_unix_nano": T0 + 99_000_000,
                "attributes": {"exception.message": "The example.com domain is not verified"}}])
    );
    assert_eq!(email["links"], json!([]));
    let json_span = &server.get_json(&format!("/api/traces/{JSON_TRACE_ID}"))["spans"][0];
    assert_eq!(json_span["status"]["code"], "ok");
    assert_eq!(json_span["duration_ms"], 2.5);

    let missing =
        reqwest::blocking::get(server.url("/api/traces/00000000000000000000000000000001")).unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.json::<Value>().unwrap()["error"].is_string());

    let search = server.get_json(&format!(
        "/api/search?attribute=shop.order.id&value={ORDER_ID}"
    ));
    assert_eq!(search, json!({"trace_ids": [TRACE_ID]}));
    let search = server.get_json("/api/search?attribute=http.response.status_code&value=202");
    assert_eq!(search, json!({"trace_ids": [TRACE_ID]}));

    // Pages.
    let no_redirects = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let order = no_redirects
        .get(server.url(&format!("/api/orders/{ORDER_ID}")))
        .send()
        .unwrap();
    assert_eq!(order.status(), 303);
    assert_eq!(order.headers()["location"], format!("/traces/{TRACE_ID}"));
    let index = reqwest::blocking::get(server.url("/"))
        .unwrap()
        .text()
        .unwrap();
    assert!(index.contains(&format!("href=\"/traces/{TRACE_ID}\"")));
    assert!(index.contains(ORDER_ID));
    let page = reqwest::blocking::get(server.url(&format!("/traces/{TRACE_ID}"))).unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().unwrap();
    for name in names {
        assert!(
            page.contains(&format!(">{name}</span>")),
            "{name} missing from the page"
        );
    }
    assert!(page.contains("<details class=\"span error\" id=\"span-0000000000000004\">"));
    assert!(page.contains("data-span-id=\"0000000000000004\""));
    assert!(page.contains("domain not verified"));
    assert!(page.contains("The example.com domain is not verified"));
    assert_eq!(
        reqwest::blocking::get(server.url("/nowhere"))
            .unwrap()
            .status(),
        404
    );

    // The terminal waterfall, by trace id and by order id.
    for id in [TRACE_ID, ORDER_ID] {
        let output = server.trace_command(id);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "trace {id}: {output:?}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines[0],
            format!("trace {TRACE_ID}: 4 spans, 1 error, 120.0 ms, order {ORDER_ID}")
        );
        assert!(
            lines[1].starts_with("POST /api/orders [checkout] "),
            "{stdout}"
        );
        assert!(lines[1].contains("120.0 ms"), "{stdout}");
        assert!(
            lines[2].starts_with("  kv.increment stock [checkout] "),
            "{stdout}"
        );
        assert!(
            lines[3].starts_with("  fulfil order [fulfilment] "),
            "{stdout}"
        );
        assert!(
            lines[4].starts_with("    send email [fulfilment] "),
            "{stdout}"
        );
        assert!(lines[4].contains("40.0 ms"), "{stdout}");
        assert!(lines[4].contains("+60.0 ms"), "{stdout}");
        assert!(
            lines[4].ends_with("✗ ERROR: domain not verified"),
            "{stdout}"
        );
        assert_eq!(lines.len(), 5, "{stdout}");
    }
    let output = server.trace_command("ord_json");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout)
        .starts_with(&format!("trace {JSON_TRACE_ID}: 1 span, 0 errors")));
}

#[test]
fn refuses_what_it_cannot_read() {
    let server = Server::start();
    assert_eq!(server.post("text/plain", b"hello".to_vec()).status(), 415);
    let gzip = reqwest::blocking::Client::new()
        .post(server.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b])
        .send()
        .unwrap();
    assert_eq!(gzip.status(), 415);
    let garbage = server.post("application/x-protobuf", vec![0xff; 64]);
    assert_eq!(garbage.status(), 400);
    assert!(!garbage.text().unwrap().is_empty());
    assert_eq!(
        server
            .post("application/json", b"{\"resourceSpans\":".to_vec())
            .status(),
        400
    );
    // Refused from its content-length, before the body is sent (so a raw request).
    let mut stream = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        16 * 1024 * 1024 + 1
    )
    .unwrap();
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    // Still serving, and nothing was stored.
    assert_eq!(server.get_json("/api/traces"), json!({"traces": []}));
}

#[test]
fn trace_command_explains_what_it_could_not_find() {
    let server = Server::start();
    let output = server.trace_command("ord_unknown");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shop.order.id = ord_unknown"), "{stderr}");

    let output = server.trace_command(TRACE_ID);
    assert_eq!(output.status.code(), Some(1));

    // Nothing listens on port 9 (discard) on a test machine.
    let output = Command::new(BIN)
        .args(["trace", TRACE_ID, "--from", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the trace viewer"), "{stderr}");
}
