//! The security pass, as a hostile client would try it: card data never kept or shown,
//! admin endpoints behind a bearer token, order URLs treated as bearer URLs, hostile
//! input refused with the field at fault, the runner's HTTP front door hardened, and
//! outbound hosts limited to what the manifest allows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};

/// A card number and CVC that cannot appear anywhere by chance.
const PAN: &str = "4000 0566 5566 5556";
const PAN_DIGITS: &str = "4000056655665556";
const CVC: &str = "7319";

fn order_with(card: &str, cvc: &str, email: &str) -> Value {
    json!({
        "email": email,
        "items": [{ "sku": "SPIN-MUG", "quantity": 1 }],
        "card": { "number": card, "expiry": "12/39", "cvc": cvc }
    })
}

fn settled(order: &Value) -> bool {
    order["status"] != "accepted" && order["notification"]["state"] != "pending"
}

/// Every key and value in Redis, as text.
fn redis_dump(redis: &Redis) -> String {
    let keys = redis.command(&["KEYS", "*"]).unwrap();
    let mut dump = String::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        dump.push_str(key);
        dump.push('=');
        dump.push_str(&redis.command(&["GET", key]).unwrap_or_default());
        dump.push('\n');
    }
    dump
}

#[test]
fn card_data_is_never_stored_logged_traced_or_echoed() {
    let scratch = Scratch::new("card-data");
    let redis = Redis::start(&scratch);
    let viewer = TraceViewer::start(&scratch);
    let mail = DevMail::start_exporting(&scratch, Some(&viewer.endpoint()));
    let runner = Runner::start(
        &scratch,
        &redis,
        &mail,
        RunnerOptions {
            otlp_endpoint: Some(viewer.endpoint()),
            ..RunnerOptions::default()
        },
    );
    redis.wait_for_subscribers(CHANNEL, 1);

    let mut bodies = Vec::new();
    let accepted = runner.post_json(
        "/api/orders",
        &order_with(PAN, CVC, "ada@example.com"),
        Some("card-1"),
    );
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let replay = runner.post_json(
        "/api/orders",
        &order_with(PAN, CVC, "ada@example.com"),
        Some("card-1"),
    );
    bodies.push(replay.body.to_string());
    let id = accepted.body["order_id"].as_str().unwrap().to_owned();
    let order = runner.wait_for_order(&id, "settled", settled);
    bodies.push(order.to_string());
    assert_eq!(order["card"], json!({"brand": "visa", "last4": "5556"}));
    // Refusals too: a bad CVC, a declined card, bad JSON around a card.
    for body in [
        order_with(PAN, "12a", "ada@example.com"),
        order_with("4000 0000 0000 0002", CVC, "ada@example.com"),
        order_with(PAN, CVC, "not an email"),
    ] {
        bodies.push(
            runner
                .post_json("/api/orders", &body, None)
                .body
                .to_string(),
        );
    }
    let broken = format!(r#"{{"card": {{"number": "{PAN}", "cvc": "{CVC}""#);
    bodies.push(
        runner
            .post_raw("/api/orders", broken.into_bytes())
            .body
            .to_string(),
    );
    std::thread::sleep(Duration::from_millis(500));

    let spans = serde_json::to_string(
        &viewer
            .search("shop.order.id", &id)
            .iter()
            .map(|t| viewer.spans(t))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(spans.contains(&id), "the order's spans were exported");
    let places: [(&str, String); 4] = [
        ("the key-value store", redis_dump(&redis)),
        ("the runner's log", runner.process.log()),
        ("the answers", bodies.join("\n")),
        ("the exported spans", spans),
    ];
    // The CVC's digits may occur in a timestamp or an id by chance: it is looked for
    // where a leaked value would stand, as a JSON string or next to its name.
    let cvc_value = format!("\"{CVC}\"");
    let cvc_named = format!("cvc={CVC}");
    for (place, text) in &places {
        for secret in [PAN, PAN_DIGITS, "4000-0566", &cvc_value, &cvc_named] {
            assert!(!text.contains(secret), "{secret:?} found in {place}");
        }
    }
    // The replay is the same answer, though nothing about the card was kept to compare.
    assert_eq!(replay.body, accepted.body);
}

#[test]
fn admin_endpoints_want_the_bearer_token_and_never_log_it() {
    let shop_scratch = Scratch::new("admin");
    let redis = Redis::start(&shop_scratch);
    let mail = DevMail::start(&shop_scratch);
    let runner = Runner::start(&shop_scratch, &redis, &mail, RunnerOptions::default());
    for path in ["/api/admin/redrive", "/api/admin/dead-letters"] {
        for token in [None, Some("wrong"), Some("e2e-admin-tokeN"), Some("")] {
            let mut request = if path.ends_with("redrive") {
                http().post(format!("{}{path}", runner.base_url))
            } else {
                http().get(format!("{}{path}", runner.base_url))
            };
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().unwrap();
            assert_eq!(response.status().as_u16(), 401, "{path} {token:?}");
            let challenge = response.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
        }
    }
    let (status, _) = runner.admin_get("/api/admin/dead-letters");
    assert_eq!(status, 200);
    assert!(!runner.process.log().contains(ADMIN_TOKEN));

    // An empty token disables them.
    let scratch = Scratch::new("admin-off");
    let off = Runner::start(
        &scratch,
        &redis,
        &mail,
        RunnerOptions {
            extra_variables: vec![("admin_token".into(), String::new())],
            ..RunnerOptions::default()
        },
    );
    let response = http()
        .post(format!("{}/api/admin/redrive", off.base_url))
        .bearer_auth("")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
}

#[test]
fn an_order_url_is_a_bearer_url() {
    let scratch = Scratch::new("bearer-url");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let runner = Runner::start(&scratch, &redis, &mail, RunnerOptions::default());
    let reply = runner.post_json(
        "/api/orders",
        &order("SPIN-MUG", 1, APPROVED_CARD, "grace.hopper@example.com"),
        None,
    );
    let id = reply.body["order_id"].as_str().unwrap();
    // Unguessable: 128 random bits.
    assert_eq!(id.len(), "ord_".len() + 32);
    let response = http()
        .get(format!("{}/api/orders/{id}", runner.base_url))
        .send()
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().unwrap();
    assert_eq!(body["email"], "g***@example.com");
    assert!(!body.to_string().contains("grace.hopper"));
}

#[test]
fn hostile_input_is_refused_naming_the_field() {
    let scratch = Scratch::new("hostile");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let runner = Runner::start(&scratch, &redis, &mail, RunnerOptions::default());
    let before = runner.available("SPIN-MUG");

    for email in [
        "ada\u{200B}@example.com",
        "ada@\u{202E}moc.elpmaxe",
        "\u{2066}ada@example.com\u{2069}",
        "ada@example.com\u{FEFF}",
    ] {
        let reply = runner.post_json(
            "/api/orders",
            &order("SPIN-MUG", 1, APPROVED_CARD, email),
            None,
        );
        assert_eq!(reply.status, 422, "{email:?}: {reply:?}");
        assert_eq!(reply.body["errors"][0]["pointer"], "/email", "{reply:?}");
    }

    // An Idempotency-Key that is not UTF-8 is refused, not silently ignored (a retry
    // without it would make a second order).
    let body = order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com").to_string();
    for key in [&b"caf\xe9-1"[..], b"two words", b""] {
        let response = http()
            .post(format!("{}/api/orders", runner.base_url))
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(key).unwrap(),
            )
            .body(body.clone())
            .send()
            .unwrap();
        let reply = Reply::from(response);
        assert_eq!(reply.status, 400, "{key:?}: {reply:?}");
        assert_eq!(reply.body["errors"][0]["pointer"], "header:idempotency-key");
    }

    // Only JSON: no content type, or another one, is 415.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = http()
            .post(format!("{}/api/orders", runner.base_url))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let reply = Reply::from(request.send().unwrap());
        assert_eq!(reply.status, 415, "{content_type:?}: {reply:?}");
        assert_eq!(reply.content_type, "application/problem+json");
        assert_eq!(reply.body["errors"][0]["pointer"], "header:content-type");
    }
    assert_eq!(runner.available("SPIN-MUG"), before);
    assert!(mail.requests().is_empty());
}

/// Sends raw bytes on a fresh connection and returns what comes back before the
/// connection closes (or `wait` passes).
fn raw(base_url: &str, request: &[u8], wait: Duration) -> String {
    let address = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_runner_front_door_refuses_what_spin_refuses_and_drops_slow_clients() {
    let scratch = Scratch::new("front-door");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let runner = Runner::start(
        &scratch,
        &redis,
        &mail,
        RunnerOptions {
            extra_args: vec!["--http-read-timeout-seconds".into(), "1".into()],
            ..RunnerOptions::default()
        },
    );
    let base = &runner.base_url;
    let wait = Duration::from_secs(5);

    // Without Host there is no authority: refused, never a 500.
    let answer = raw(
        base,
        b"GET /api/products HTTP/1.1\r\nConnection: close\r\n\r\n",
        wait,
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(base, b"GET /api/products HTTP/1.0\r\n\r\n", wait);
    assert!(
        answer.starts_with("HTTP/1.0 400") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // A Host that disagrees with an absolute URI's authority is refused, as Spin does.
    let answer = raw(
        base,
        b"GET http://elsewhere/api/products HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
        wait,
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("does not match"), "{answer}");
    // HTTP/1.0 with a Host is served.
    let answer = raw(
        base,
        b"GET /api/products HTTP/1.0\r\nHost: shop\r\n\r\n",
        wait,
    );
    assert!(answer.contains(" 200 "), "{answer}");
    assert!(answer.contains("SPIN-MUG"), "{answer}");

    // A head too large: 431, and others are served meanwhile.
    let huge = format!(
        "GET /api/products HTTP/1.1\r\nHost: shop\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(256 * 1024)
    );
    let answer = raw(base, huge.as_bytes(), wait);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert_eq!(runner.get("/api/products").0, 200);

    // Stalled mid-headers: closed after the read timeout, not held for ever.
    let started = Instant::now();
    let answer = raw(
        base,
        b"GET /api/products HTTP/1.1\r\nHost: sh",
        Duration::from_secs(10),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!answer.contains(" 200 "), "{answer}");

    // Stalled mid-body: the component sees the body fail, the client gets an answer,
    // and the instance is free.
    let started = Instant::now();
    let answer = raw(
        base,
        b"POST /api/orders HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"email\":",
        Duration::from_secs(10),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        !answer.contains("Error {"),
        "an internal error leaked: {answer}"
    );
    assert_eq!(runner.get("/api/products").0, 200);
}

#[test]
fn a_component_calling_a_host_it_may_not_is_denied_and_the_order_says_why() {
    let scratch = Scratch::new("outbound-denied");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    // The same app, but fulfilment may only call a host that is not the mail API.
    let manifest = std::fs::read_to_string(workspace_root().join("spin.toml"))
        .unwrap()
        .replace(
            r#"allowed_outbound_hosts = ["{{ mail_api_base_url }}"]"#,
            r#"allowed_outbound_hosts = ["http://127.0.0.1:9"]"#,
        )
        .replace(
            "target/wasm32-wasip2",
            &workspace_root()
                .join("target/wasm32-wasip2")
                .display()
                .to_string(),
        );
    let path = scratch.path().join("spin.toml");
    std::fs::write(&path, manifest).unwrap();
    let runner = Runner::start(
        &scratch,
        &redis,
        &mail,
        RunnerOptions {
            manifest: Some(path),
            ..RunnerOptions::default()
        },
    );
    redis.wait_for_subscribers(CHANNEL, 1);
    let reply = runner.post_json(
        "/api/orders",
        &order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com"),
        None,
    );
    let id = reply.body["order_id"].as_str().unwrap();
    let order = runner.wait_for_order(id, "settled", settled);
    assert_eq!(order["notification"]["state"], "failed", "{order}");
    let reason = order["notification"]["reason"].as_str().unwrap();
    assert!(reason.contains("allowed_outbound_hosts"), "{reason}");
    assert!(mail.requests().is_empty());
    assert!(runner.process.log().contains("denied"));
}
