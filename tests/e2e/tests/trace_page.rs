//! The trace viewer's page, in headless Chromium, on real traces of the four failures
//! this shop was built to answer. Each test saves a screenshot (`docs/tracing.md` shows
//! them; `make screenshots` refreshes them).

use std::collections::HashSet;

use e2e::browser::{screenshot_path, Browser};
use e2e::*;
use serde_json::Value;

/// `rgb(211, 47, 47)`: the viewer's error red (#d32f2f), as the browser computes it.
const RED: &str = "rgb(211, 47, 47)";

struct Setup {
    viewer: TraceViewer,
    runner: Runner,
    mail: DevMail,
    redis: Redis,
    scratch: Scratch,
}

fn start(test: &str, mail_from: Option<&str>) -> Setup {
    let scratch = Scratch::new(test);
    let redis = Redis::start(&scratch);
    let viewer = TraceViewer::start(&scratch);
    let mail = DevMail::start_exporting(&scratch, Some(&viewer.endpoint()));
    let mut options = RunnerOptions {
        otlp_endpoint: Some(viewer.endpoint()),
        ..RunnerOptions::default()
    };
    if let Some(from) = mail_from {
        options.mail_from = from.to_owned();
    }
    let runner = Runner::start(&scratch, &redis, &mail, options);
    redis.wait_for_subscribers(CHANNEL, 1);
    Setup {
        viewer,
        runner,
        mail,
        redis,
        scratch,
    }
}

impl Setup {
    /// Places an order and waits until it settles; returns (order id, trace id).
    fn order(&self, card: &str) -> (String, String) {
        let reply = self.runner.post_json(
            "/api/orders",
            &order("SPIN-MUG", 1, card, "ada@example.com"),
            None,
        );
        assert_eq!(reply.status, 202, "{reply:?}");
        let id = reply.body["order_id"].as_str().unwrap().to_owned();
        self.runner.wait_for_order(&id, "settled", |o| {
            o["status"] != "accepted" && o["notification"]["state"] != "pending"
        });
        let trace_id = reply
            .traceparent
            .unwrap()
            .split('-')
            .nth(1)
            .unwrap()
            .to_owned();
        (id, trace_id)
    }

    /// Opens the trace's page once every span named in `expected` has arrived, checks
    /// that the page shows every span of the trace, and saves a screenshot.
    fn open(&self, trace_id: &str, expected: &[&str], screenshot: &str) -> (Browser, Vec<Value>) {
        self.viewer
            .wait_for_spans(trace_id, "the spans to show", |spans| {
                expected
                    .iter()
                    .all(|name| spans.iter().any(|s| s["name"] == *name))
            });
        // Late batches (the final records) land within the export interval.
        std::thread::sleep(std::time::Duration::from_millis(400));
        let spans = self.viewer.spans(trace_id);
        let browser = Browser::start(&self.scratch, 1400, 2000);
        browser.goto(&format!("{}/traces/{trace_id}", self.viewer.base_url));
        let shown: HashSet<String> = browser.texts(".span-name").into_iter().collect();
        for span in &spans {
            let name = span["name"].as_str().unwrap();
            assert!(
                shown.contains(name),
                "{name:?} is not on the page: {shown:?}"
            );
        }
        assert_eq!(browser.texts(".span-name").len(), spans.len());
        browser.screenshot(&screenshot_path(screenshot));
        (browser, spans)
    }
}

/// Names of the failed spans on the page, and whether each is drawn in red.
fn failed_on_page(browser: &Browser) -> Vec<String> {
    let names = browser.texts(".error .span-name");
    let colours = browser.computed(".error .bar", "backgroundColor");
    assert_eq!(names.len(), colours.len());
    assert!(colours.iter().all(|c| c == RED), "{colours:?}");
    assert!(browser
        .computed(".error .span-name", "color")
        .iter()
        .all(|c| c == RED));
    names
}

fn failed_in_api(spans: &[Value]) -> Vec<String> {
    spans
        .iter()
        .filter(|s| s["status"]["code"] == "error")
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// The first failure: the customer got a success page though fulfilment failed. Here
/// the capture fails after the order was accepted, and the trace shows where.
#[test]
fn a_declined_capture_is_red_on_the_trace_page() {
    let setup = start("page-capture", None);
    let (_, trace_id) = setup.order(CAPTURE_FAILS_CARD);
    let (browser, spans) = setup.open(
        &trace_id,
        &[
            "capture payment",
            "release stock",
            "send email",
            "POST /emails",
        ],
        "trace-declined-capture.png",
    );
    let failed = failed_on_page(&browser);
    assert_eq!(sorted(failed.clone()), sorted(failed_in_api(&spans)));
    assert!(failed.contains(&"capture payment".to_owned()), "{failed:?}");
    assert!(
        failed.contains(&"process order.placed".to_owned()),
        "{failed:?}"
    );
    let messages = browser.texts(".error .status-message").join(" ");
    assert!(messages.contains("capture declined"), "{messages}");
    // The customer is told: the "could not be completed" email went out.
    assert!(!failed.contains(&"send email".to_owned()));
}

/// The second failure: the mail provider rejected an unverified sender.
#[test]
fn an_unverified_sender_is_red_with_the_providers_words() {
    let setup = start("page-unverified", Some("orders@unverified.example"));
    let (_, trace_id) = setup.order(APPROVED_CARD);
    let (browser, spans) = setup.open(
        &trace_id,
        &["send email", "POST /emails", "record notification"],
        "trace-unverified-sender.png",
    );
    let failed = failed_on_page(&browser);
    assert_eq!(sorted(failed.clone()), sorted(failed_in_api(&spans)));
    for name in ["send email", "POST", "POST /emails", "process order.placed"] {
        assert!(
            failed.contains(&name.to_owned()),
            "{name} not red: {failed:?}"
        );
    }
    let messages = browser.texts(".error .status-message").join(" ");
    assert!(
        messages.contains("unverified.example domain is not verified"),
        "{messages}"
    );
    // Opening the attempt shows the exception event with the provider's message.
    browser.click("details.error .span-name");
    let text = browser.wait_for_text("the span's details", |t| t.contains("exception"));
    assert!(text.contains("exception.message"), "{text}");
}

/// The third failure: automatic retries ran fulfilment three times. Here a flapping
/// mail API costs bounded retries inside one handler and one email.
#[test]
fn a_flapping_mail_api_shows_bounded_attempts_and_one_email() {
    let setup = start("page-flapping", None);
    setup.mail.fail_next(2, 503);
    let (order_id, trace_id) = setup.order(APPROVED_CARD);
    let (browser, spans) = setup.open(
        &trace_id,
        &["send email", "POST /emails", "record notification"],
        "trace-flapping-mail-api.png",
    );
    let attempts: Vec<&Value> = spans.iter().filter(|s| s["name"] == "send email").collect();
    assert_eq!(attempts.len(), 3);
    let failed_attempts = attempts
        .iter()
        .filter(|s| s["status"]["code"] == "error")
        .count();
    assert_eq!(failed_attempts, 2);
    assert!(attempts
        .iter()
        .filter(|s| s["status"]["code"] == "error")
        .all(|s| s["attributes"]["shop.mail.backoff_ms"].is_number()));
    let failed = failed_on_page(&browser);
    assert_eq!(sorted(failed.clone()), sorted(failed_in_api(&spans)));
    assert_eq!(failed.iter().filter(|n| *n == "send email").count(), 2);
    assert!(!failed.contains(&"process order.placed".to_owned()));
    let emails: Vec<Value> = setup
        .mail
        .messages()
        .into_iter()
        .filter(|m| m["subject"].as_str().is_some_and(|s| s.contains(&order_id)))
        .collect();
    assert_eq!(emails.len(), 1);
}

/// The fourth failure: stock decremented three times. Here a duplicated event is a
/// no-op on the page: no second stock change, no second email.
#[test]
fn a_duplicated_event_is_a_no_op_on_the_trace_page() {
    let setup = start("page-duplicate", None);
    let events = setup.redis.capture(CHANNEL);
    let (_, trace_id) = setup.order(APPROVED_CARD);
    let event = events.wait_for(1)[0].clone();
    assert_eq!(setup.redis.publish(CHANNEL, &event), 2);
    let (browser, spans) = setup.open(
        &trace_id,
        &[
            "process order.placed",
            "process order.placed (no-op)",
            "POST /emails",
        ],
        "trace-duplicated-event.png",
    );
    let names = browser.texts(".span-name");
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "process order.placed (no-op)")
            .count(),
        1
    );
    assert_eq!(names.iter().filter(|n| *n == "send email").count(), 1);
    assert!(failed_in_api(&spans).is_empty());
    assert!(failed_on_page(&browser).is_empty());
}

#[test]
fn the_trace_list_links_each_trace() {
    let setup = start("page-list", None);
    let (order_id, trace_id) = setup.order(APPROVED_CARD);
    setup
        .viewer
        .wait_for_spans(&trace_id, "the order's trace", |spans| !spans.is_empty());
    let browser = Browser::start(&setup.scratch, 1400, 900);
    browser.goto(&setup.viewer.base_url);
    let text = browser.wait_for_text("the trace list", |t| t.contains(&order_id));
    assert!(text.contains("POST /api/..."), "{text}");
    let links = browser.execute(
        "return [...document.querySelectorAll('a')].map(a => a.getAttribute('href'));",
        vec![],
    );
    assert!(
        links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str() == Some(&format!("/traces/{trace_id}"))),
        "{links}"
    );
}
