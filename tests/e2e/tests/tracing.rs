//! One OpenTelemetry trace per order, end to end: the runner and the dev mail API
//! export OTLP to the project's trace viewer, and the spans it received are checked.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use e2e::*;
use serde_json::Value;

/// Redis, the trace viewer, the dev mail API and the runner, all exporting spans.
struct TracedShop {
    viewer: TraceViewer,
    runner: Runner,
    _mail: DevMail,
    _redis: Redis,
    _scratch: Scratch,
}

impl TracedShop {
    fn start(test: &str, options: RunnerOptions<'_>) -> TracedShop {
        let scratch = Scratch::new(test);
        let redis = Redis::start(&scratch);
        let viewer = TraceViewer::start(&scratch);
        let mail = DevMail::start_exporting(&scratch, Some(&viewer.endpoint()));
        let runner = Runner::start(
            &scratch,
            &redis,
            &mail,
            RunnerOptions {
                otlp_endpoint: Some(viewer.endpoint()),
                ..options
            },
        );
        redis.wait_for_subscribers(CHANNEL, 1);
        TracedShop {
            viewer,
            runner,
            _mail: mail,
            _redis: redis,
            _scratch: scratch,
        }
    }

    /// Places an order; returns its id and the trace id the answer's `traceparent` names.
    fn place(&self, card: &str) -> (String, String) {
        let reply = self.runner.post_json(
            "/api/orders",
            &order("SPIN-MUG", 1, card, "ada@example.com"),
            None,
        );
        assert_eq!(reply.status, 202, "{reply:?}");
        let order_id = reply.body["order_id"].as_str().unwrap().to_owned();
        let traceparent = reply.traceparent.expect("a traceparent response header");
        let trace_id = traceparent.split('-').nth(1).unwrap().to_owned();
        (order_id, trace_id)
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn one<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "expected one {name:?} span, got {found:#?}");
    found[0]
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn failed(span: &Value) -> bool {
    span["status"]["code"] == "error"
}

fn children<'a>(spans: &'a [Value], parent: &Value) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["parent_span_id"] == parent["span_id"])
        .collect()
}

/// The consumer spans of the trace (`process order.placed`, no-op or not).
fn consumer_spans(spans: &[Value]) -> Vec<&Value> {
    spans
        .iter()
        .filter(|s| {
            s["kind"] == "consumer"
                && s["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("process order.placed"))
        })
        .collect()
}

/// Every parent is in the trace, and exactly one span has none.
fn assert_one_connected_tree(spans: &[Value]) {
    let ids: HashSet<&str> = spans.iter().filter_map(|s| s["span_id"].as_str()).collect();
    let roots: Vec<&Value> = spans.iter().filter(|s| s["parent_span_id"] == "").collect();
    assert_eq!(roots.len(), 1, "roots: {roots:#?}");
    for span in spans {
        let parent = span["parent_span_id"].as_str().unwrap();
        assert!(
            parent.is_empty() || ids.contains(parent),
            "parent of {} ({parent}) is not in the trace",
            span["name"]
        );
    }
}

fn settled(order: &Value) -> bool {
    order["status"] != "accepted" && order["notification"]["state"] != "pending"
}

#[test]
fn a_placed_order_is_one_trace_from_the_request_to_the_mail_api() {
    let shop = TracedShop::start("trace-happy", RunnerOptions::default());
    let (order_id, trace_id) = shop.place(APPROVED_CARD);
    let order = shop.runner.wait_for_order(&order_id, "settled", settled);
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["trace_id"], trace_id.as_str());

    let spans = shop
        .viewer
        .wait_for_spans(&trace_id, "the mail API's span", |spans| {
            spans.iter().any(|s| s["service"] == "devmail")
                && !named(spans, "record notification").is_empty()
        });
    assert!(spans.iter().all(|s| s["trace_id"] == trace_id.as_str()));
    assert_one_connected_tree(&spans);

    // curl -> checkout: the trigger's server span is the root.
    let server = one(&spans, "POST /api/...");
    assert_eq!(server["kind"], "server");
    assert_eq!(server["parent_span_id"], "");
    assert_eq!(attribute(server, "http.response.status_code"), 202);
    let execute = one(&spans, "execute_wasm_component checkout");
    assert_eq!(execute["parent_span_id"], server["span_id"]);
    let place = one(&spans, "place order");
    assert_eq!(place["parent_span_id"], execute["span_id"]);
    assert_eq!(attribute(place, "shop.order.id"), order_id.as_str());
    assert_eq!(attribute(place, "spin.component_id"), "checkout");
    for step in [
        "validate order",
        "authorise card",
        "reserve stock",
        "record order",
    ] {
        let span = one(&spans, step);
        assert_eq!(span["parent_span_id"], place["span_id"], "{step}");
        assert!(!failed(span), "{step}: {span}");
    }
    // Key-value calls of checkout, in the trace: Spin's own spans, reparented under the
    // step, and the component's spans around its wasi:keyvalue increments.
    let record = one(&spans, "record order");
    let under_record: Vec<&str> = children(&spans, record)
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        under_record.contains(&"spin_key_value.set"),
        "{under_record:?}"
    );
    let reserve = one(&spans, "reserve stock");
    assert!(children(&spans, reserve)
        .iter()
        .any(|s| s["name"] == "keyvalue.increment"));

    // -> Redis: the producer span, with OpenTelemetry's messaging attributes.
    let publish = one(&spans, &format!("publish {CHANNEL}"));
    assert_eq!(publish["kind"], "producer");
    assert_eq!(attribute(publish, "messaging.system"), "redis");
    assert_eq!(attribute(publish, "messaging.destination.name"), CHANNEL);
    assert_eq!(attribute(publish, "messaging.operation.type"), "publish");
    assert!(children(&spans, publish)
        .iter()
        .any(|s| s["name"] == "PUBLISH"));

    // -> fulfilment: the consumer span continues the event's context.
    let consumer = one(&spans, "process order.placed");
    assert_eq!(consumer["kind"], "consumer");
    assert_eq!(consumer["parent_span_id"], publish["span_id"]);
    assert_eq!(attribute(consumer, "spin.component_id"), "fulfilment");
    assert_eq!(attribute(consumer, "shop.order.id"), order_id.as_str());
    assert_eq!(attribute(consumer, "shop.fulfilment.epoch"), 0);
    for step in [
        "load order",
        "claim order",
        "capture payment",
        "record order status",
        "record notification",
    ] {
        assert_eq!(
            one(&spans, step)["parent_span_id"],
            consumer["span_id"],
            "{step}"
        );
    }
    let load = one(&spans, "load order");
    assert!(children(&spans, load)
        .iter()
        .any(|s| s["name"] == "spin_key_value.get"));
    // The look for orders waiting behind this one runs while the send is in flight:
    // its reads are under a step of its own, not under the send.
    let look_ahead = one(&spans, "claim waiting orders");
    assert_eq!(look_ahead["parent_span_id"], consumer["span_id"]);
    assert_eq!(attribute(look_ahead, "shop.fulfilment.taken_on"), 0);
    assert!(children(&spans, look_ahead)
        .iter()
        .any(|s| s["name"] == "spin_key_value.get"));

    // -> the mail API: the attempt, the runner's outbound request, devmail's server span.
    let attempt = one(&spans, "send email");
    assert_eq!(attempt["parent_span_id"], consumer["span_id"]);
    assert_eq!(attribute(attempt, "shop.mail.provider"), "resend");
    assert_eq!(attribute(attempt, "shop.mail.attempt"), 1);
    let outbound = children(&spans, attempt);
    assert_eq!(outbound.len(), 1, "{outbound:#?}");
    assert_eq!(outbound[0]["name"], "POST");
    assert_eq!(outbound[0]["kind"], "client");
    let provider = children(&spans, outbound[0]);
    assert_eq!(provider.len(), 1, "{provider:#?}");
    assert_eq!(provider[0]["service"], "devmail");
    assert_eq!(provider[0]["kind"], "server");
    assert_eq!(provider[0]["name"], "POST /emails");

    assert!(spans.iter().all(|s| !failed(s)), "a span failed");
    // Never the card number, the email body or the API key.
    let exported = serde_json::to_string(&spans).unwrap();
    for secret in [
        "4242 4242 4242 4242",
        "4242424242424242",
        MAIL_KEY,
        "Thank you!",
    ] {
        assert!(!exported.contains(secret), "{secret:?} was exported");
    }
}

#[test]
fn an_inbound_traceparent_is_continued() {
    let shop = TracedShop::start("trace-inbound", RunnerOptions::default());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = http()
        .get(format!("{}/api/products", shop.runner.base_url))
        .header("traceparent", traceparent)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answered = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        answered.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{answered}"
    );
    let spans = shop.viewer.wait_for_spans(
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "the request's spans",
        |spans| {
            !named(spans, "list products").is_empty() && !named(spans, "GET /api/...").is_empty()
        },
    );
    assert_eq!(
        one(&spans, "GET /api/...")["parent_span_id"],
        "00f067aa0ba902b7"
    );
}

#[test]
fn an_unverified_sender_fails_the_mail_and_fulfilment_spans_with_the_providers_message() {
    let shop = TracedShop::start(
        "trace-unverified",
        RunnerOptions {
            mail_from: "orders@unverified.example".to_owned(),
            ..RunnerOptions::default()
        },
    );
    let (order_id, trace_id) = shop.place(APPROVED_CARD);
    let order = shop.runner.wait_for_order(&order_id, "settled", settled);
    let reason = order["notification"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("domain is not verified"), "{reason}");

    let spans = shop
        .viewer
        .wait_for_spans(&trace_id, "the refused send", |spans| {
            spans.iter().any(|s| s["service"] == "devmail")
                && consumer_spans(spans).iter().any(|s| failed(s))
        });
    let attempt = one(&spans, "send email");
    assert!(failed(attempt), "{attempt}");
    let message = attempt["status"]["message"].as_str().unwrap();
    assert!(message.contains(&reason), "{message} vs {reason}");
    assert!(attempt["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "exception"
            && e["attributes"]["exception.message"]
                .as_str()
                .is_some_and(|m| m.contains(&reason))));
    let consumer = one(&spans, "process order.placed");
    assert!(failed(consumer));
    assert!(consumer["status"]["message"]
        .as_str()
        .unwrap()
        .contains(&reason));
    let provider = spans.iter().find(|s| s["service"] == "devmail").unwrap();
    assert!(failed(provider));
    // Permanent: one attempt, never retried.
    assert_eq!(named(&spans, "send email").len(), 1);
}

#[test]
fn duplicates_and_replicas_yield_no_op_consumer_spans_and_one_mail_span() {
    let scratch = Scratch::new("trace-duplicates");
    let redis = Redis::start(&scratch);
    let viewer = TraceViewer::start(&scratch);
    let mail = DevMail::start_exporting(&scratch, Some(&viewer.endpoint()));
    let exporting = |components: &'static [&'static str]| RunnerOptions {
        components,
        otlp_endpoint: Some(viewer.endpoint()),
        ..RunnerOptions::default()
    };
    let checkout = Runner::start(&scratch, &redis, &mail, exporting(&["checkout"]));
    let _replica_a = Runner::start(&scratch, &redis, &mail, exporting(&["fulfilment"]));
    let _replica_b = Runner::start(&scratch, &redis, &mail, exporting(&["fulfilment"]));
    redis.wait_for_subscribers(CHANNEL, 2);
    let events = redis.capture(CHANNEL);

    let reply = checkout.post_json(
        "/api/orders",
        &order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com"),
        None,
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let order_id = reply.body["order_id"].as_str().unwrap().to_owned();
    let trace_id = reply
        .traceparent
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned();
    let event = events.wait_for(1)[0].clone();
    checkout.wait_for_order(&order_id, "settled", settled);
    // The same event again: both replicas see it twice more.
    assert_eq!(redis.publish(CHANNEL, &event), 3);

    viewer.wait_for_spans(&trace_id, "four consumer spans", |spans| {
        consumer_spans(spans).len() >= 4
    });
    // Nothing more arrives.
    std::thread::sleep(Duration::from_millis(500));
    let spans = viewer.spans(&trace_id);
    let consumers = consumer_spans(&spans);
    assert_eq!(consumers.len(), 4, "{consumers:#?}");
    let (no_ops, worked): (Vec<&&Value>, Vec<&&Value>) = consumers
        .iter()
        .partition(|s| s["name"] == "process order.placed (no-op)");
    assert_eq!(worked.len(), 1, "{worked:#?}");
    assert_eq!(no_ops.len(), 3);
    for no_op in no_ops {
        assert_eq!(attribute(no_op, "shop.noop"), true);
        assert!(attribute(no_op, "shop.noop.reason").is_string());
        assert!(children(&spans, no_op)
            .iter()
            .all(|s| s["name"] != "send email"));
    }
    assert_eq!(named(&spans, "send email").len(), 1);
    assert_eq!(
        spans.iter().filter(|s| s["service"] == "devmail").count(),
        1
    );
}

#[test]
fn a_redrive_completes_the_order_in_its_own_trace() {
    let scratch = Scratch::new("trace-redrive");
    let redis = Redis::start(&scratch);
    let viewer = TraceViewer::start(&scratch);
    let mail = DevMail::start_exporting(&scratch, Some(&viewer.endpoint()));
    let exporting = |components: &'static [&'static str]| RunnerOptions {
        components,
        otlp_endpoint: Some(viewer.endpoint()),
        ..RunnerOptions::default()
    };
    let checkout = Runner::start(&scratch, &redis, &mail, exporting(&["checkout"]));
    // No fulfilment yet: the event is lost, as Redis pub/sub loses it.
    let reply = checkout.post_json(
        "/api/orders",
        &order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com"),
        None,
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let order_id = reply.body["order_id"].as_str().unwrap().to_owned();
    let trace_id = reply
        .traceparent
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned();

    let _fulfilment = Runner::start(&scratch, &redis, &mail, exporting(&["fulfilment"]));
    redis.wait_for_subscribers(CHANNEL, 1);
    let (status, body) = checkout.admin_post("/api/admin/redrive?older_than_seconds=0");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1, "{body}");
    checkout.wait_for_order(&order_id, "settled", settled);

    let spans = viewer.wait_for_spans(&trace_id, "the redriven fulfilment", |spans| {
        !named(spans, "send email").is_empty()
            && !named(spans, "record notification").is_empty()
            && named(spans, &format!("publish {CHANNEL}")).len() == 2
    });
    assert_one_connected_tree(&spans);
    let publishes = named(&spans, &format!("publish {CHANNEL}"));
    assert_eq!(publishes.len(), 2, "the first publish and the redrive's");
    let redrive = publishes
        .iter()
        .find(|s| attribute(s, "shop.fulfilment.epoch") == 1)
        .expect("the redrive's publish span");
    // Linked to the admin request that redrove it, which is a trace of its own.
    let links = redrive["links"].as_array().unwrap();
    assert_eq!(links.len(), 1);
    assert_ne!(links[0]["trace_id"], trace_id.as_str());
    let consumer = one(&spans, "process order.placed");
    assert_eq!(consumer["parent_span_id"], redrive["span_id"]);
    assert_eq!(attribute(consumer, "shop.fulfilment.epoch"), 1);
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap(), s))
        .collect();
    let attempt = one(&spans, "send email");
    assert_eq!(
        by_id[attempt["parent_span_id"].as_str().unwrap()]["name"],
        "process order.placed"
    );
}

#[test]
fn export_follows_the_otel_environment_json_and_service_name() {
    let shop = TracedShop::start(
        "trace-json",
        RunnerOptions {
            process_env: vec![
                ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()),
                ("OTEL_SERVICE_NAME".into(), "spin-shop-json".into()),
                (
                    "OTEL_RESOURCE_ATTRIBUTES".into(),
                    "deployment.environment.name=e2e".into(),
                ),
            ],
            ..RunnerOptions::default()
        },
    );
    let (_, trace_id) = shop.place(APPROVED_CARD);
    let spans = shop
        .viewer
        .wait_for_spans(&trace_id, "checkout's spans", |spans| {
            !named(spans, "place order").is_empty()
        });
    let services: HashSet<&str> = spans
        .iter()
        .filter(|s| s["service"] != "devmail")
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(services, HashSet::from(["spin-shop-json"]));
}

#[test]
fn a_dead_collector_costs_requests_nothing() {
    let scratch = Scratch::new("trace-dead-collector");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let runner = Runner::start(
        &scratch,
        &redis,
        &mail,
        RunnerOptions {
            otlp_endpoint: Some(nobody),
            ..RunnerOptions::default()
        },
    );
    redis.wait_for_subscribers(CHANNEL, 1);
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let reply = runner.post_json(
            "/api/orders",
            &order("STICKER-PACK", 1, APPROVED_CARD, "ada@example.com"),
            None,
        );
        assert_eq!(reply.status, 202, "{reply:?}");
        ids.push(reply.body["order_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let order = runner.wait_for_order(id, "settled", settled);
        assert_eq!(order["notification"]["state"], "sent", "{order}");
    }
    // Export happens off the request path: 20 orders in well under the exporter's
    // connection timeouts.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn buffered_spans_are_flushed_when_the_runner_stops() {
    let shop = TracedShop::start(
        "trace-flush",
        RunnerOptions {
            // Nothing is exported on a schedule during the test.
            process_env: vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into())],
            ..RunnerOptions::default()
        },
    );
    let response = http()
        .get(format!("{}/api/products", shop.runner.base_url))
        .send()
        .unwrap();
    let trace_id = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_millis(500));
    assert!(shop.viewer.spans(&trace_id).is_empty(), "exported early");
    let mut runner = shop.runner;
    let status = runner.process.stop().expect("exit status");
    assert!(status.success(), "{status:?}");
    let spans = shop.viewer.spans(&trace_id);
    assert!(
        !named(&spans, "list products").is_empty(),
        "not flushed at shutdown: {spans:#?}"
    );
}
