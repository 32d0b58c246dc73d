//! The dev mail API over real HTTP: each provider's success and error shapes, Resend
//! idempotency, fault injection, and the inbox page.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct DevMail {
    child: Child,
    base: String,
}

impl DevMail {
    fn start(args: &[&str]) -> DevMail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_devmail"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("devmail");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("devmail listening on ")
            .expect(&line)
            .to_owned();
        DevMail { child, base }
    }

    fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (u16, Value, Option<String>) {
        let mut req = reqwest::blocking::Client::new()
            .post(format!("{}{path}", self.base))
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().unwrap();
        let status = res.status().as_u16();
        let id = res
            .headers()
            .get("x-message-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = res.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            id,
        )
    }

    fn get(&self, path: &str) -> Value {
        reqwest::blocking::get(format!("{}{path}", self.base))
            .unwrap()
            .json()
            .unwrap()
    }
}

impl Drop for DevMail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resend(from: &str) -> Value {
    json!({"from": from, "to": ["ada@example.com"], "subject": "Hi", "text": "Hello"})
}

const KEY: (&str, &str) = ("authorization", "Bearer k");

#[test]
fn each_provider_accepts_its_own_shape() {
    let mail = DevMail::start(&["--api-key", "k", "--verified-domain", "shop.test"]);
    let (status, body, _) = mail.post("/emails", &[KEY], &resend("orders@shop.test"));
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].is_string());

    let (status, body, _) = mail.post(
        "/email",
        &[("x-postmark-server-token", "k")],
        &json!({"From": "orders@shop.test", "To": "ada@example.com", "Subject": "Hi", "TextBody": "Hello", "MessageStream": "outbound"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ErrorCode"], 0);

    let (status, _, id) = mail.post(
        "/v3/mail/send",
        &[KEY],
        &json!({"personalizations": [{"to": [{"email": "ada@example.com"}]}], "from": {"email": "orders@shop.test"}, "subject": "Hi", "content": [{"type": "text/plain", "value": "Hello"}]}),
    );
    assert_eq!(status, 202);
    assert!(id.is_some());

    let (status, body, _) = mail.post(
        "/api/v1/send",
        &[],
        &json!({"From": {"Email": "anyone@anywhere.test"}, "To": [{"Email": "ada@example.com"}], "Subject": "Hi", "Text": "Hello"}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["ID"].is_string());

    let messages = mail.get("/__devmail/messages");
    assert_eq!(messages.as_array().unwrap().len(), 4);
    assert_eq!(messages[0]["to"], json!(["ada@example.com"]));
    assert_eq!(messages[2]["provider"], "sendgrid");
    // A poller reads only what is new.
    let newer = mail.get("/__devmail/messages?since=3");
    assert_eq!(newer.as_array().unwrap().len(), 1);
    assert_eq!(newer[0]["id"], messages[3]["id"]);
    assert!(mail
        .get("/__devmail/messages?since=9")
        .as_array()
        .unwrap()
        .is_empty());

    let page = reqwest::blocking::get(format!("{}/", mail.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains("orders@shop.test") && page.contains("4 message(s)"),
        "{page}"
    );
}

#[test]
fn refusals_use_each_providers_error_body() {
    let mail = DevMail::start(&["--api-key", "k", "--verified-domain", "shop.test"]);
    let (status, body, _) = mail.post("/emails", &[KEY], &resend("orders@other.test"));
    assert_eq!(status, 403);
    assert_eq!(body["name"], "validation_error");
    assert_eq!(
        body["message"],
        "The other.test domain is not verified. Please, add and verify your domain on https://resend.com/domains"
    );

    let (status, body, _) = mail.post("/emails", &[], &resend("orders@shop.test"));
    assert_eq!(
        (status, body["name"].as_str()),
        (401, Some("missing_api_key"))
    );
    let (status, body, _) = mail.post(
        "/emails",
        &[("authorization", "Bearer nope")],
        &resend("orders@shop.test"),
    );
    assert_eq!(
        (status, body["name"].as_str()),
        (403, Some("invalid_api_key"))
    );

    let (status, body, _) = mail.post(
        "/email",
        &[("x-postmark-server-token", "k")],
        &json!({"From": "orders@other.test", "To": "ada@example.com", "Subject": "Hi", "TextBody": "x"}),
    );
    assert_eq!((status, body["ErrorCode"].as_i64()), (422, Some(300)));
    assert!(body["Message"]
        .as_str()
        .unwrap()
        .contains("is not a verified sender signature"));

    let (status, body, _) = mail.post(
        "/v3/mail/send",
        &[KEY],
        &json!({"personalizations": [{"to": [{"email": "a@b.test"}]}], "from": {"email": "orders@other.test"}, "subject": "Hi", "content": []}),
    );
    assert_eq!(status, 403);
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .starts_with("The from address does not match a verified Sender Identity"));

    assert!(mail
        .get("/__devmail/messages")
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(mail.get("/__devmail/requests").as_array().unwrap().len(), 5);
}

#[test]
fn resend_idempotency_keys_replay_or_conflict() {
    let mail = DevMail::start(&[]);
    let key = ("idempotency-key", "order-1/confirmed");
    let (s1, b1, _) = mail.post("/emails", &[KEY, key], &resend("a@shop.test"));
    let (s2, b2, _) = mail.post("/emails", &[KEY, key], &resend("a@shop.test"));
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1["id"], b2["id"]);
    assert_eq!(mail.get("/__devmail/messages").as_array().unwrap().len(), 1);
    let (s3, b3, _) = mail.post("/emails", &[KEY, key], &resend("other@shop.test"));
    assert_eq!(
        (s3, b3["name"].as_str()),
        (409, Some("invalid_idempotent_request"))
    );
    let long = "k".repeat(257);
    let (s4, _, _) = mail.post(
        "/emails",
        &[KEY, ("idempotency-key", &long)],
        &resend("a@shop.test"),
    );
    assert_eq!(s4, 400);
}

#[test]
fn injected_faults_fail_or_delay_exactly_the_next_requests() {
    let mail = DevMail::start(&[]);
    let client = reqwest::blocking::Client::new();
    let set = client
        .post(format!("{}/__devmail/faults", mail.base))
        .json(&json!({"count": 2, "status": 503}))
        .send()
        .unwrap();
    assert_eq!(set.status().as_u16(), 200);
    let (s1, b1, _) = mail.post("/emails", &[KEY], &resend("a@shop.test"));
    let (s2, _, _) = mail.post("/api/v1/send", &[], &json!({}));
    let (s3, _, _) = mail.post("/emails", &[KEY], &resend("a@shop.test"));
    assert_eq!((s1, s2, s3), (503, 503, 200));
    assert_eq!(b1["name"], "internal_server_error");

    client
        .post(format!("{}/__devmail/faults", mail.base))
        .json(&json!({"count": 1, "delay_ms": 300}))
        .send()
        .unwrap();
    let started = Instant::now();
    let (s4, _, _) = mail.post("/emails", &[KEY], &resend("a@shop.test"));
    assert_eq!(s4, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A lapse of sender verification: the next send is refused as the provider refuses
    // an unverified domain, though shop.test is verified.
    client
        .post(format!("{}/__devmail/faults", mail.base))
        .json(&json!({"count": 1, "unverified": true}))
        .send()
        .unwrap();
    let (s5, b5, _) = mail.post("/emails", &[KEY], &resend("b@shop.test"));
    assert_eq!(s5, 403);
    assert!(b5["message"]
        .as_str()
        .unwrap()
        .contains("domain is not verified"));
    let (s6, _, _) = mail.post("/emails", &[KEY], &resend("b@shop.test"));
    assert_eq!(s6, 200);

    let statuses: Vec<u64> = mail
        .get("/__devmail/requests")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 503, 200, 200, 403, 200]);
}
