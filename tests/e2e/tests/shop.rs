//! The shop end to end: real `redis-server`, the dev mail API, and the runner executing
//! the compiled checkout and fulfilment components from `spin.toml`, over loopback HTTP.

use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

/// Redis, dev mail API, and one runner with both components.
struct Shop {
    runner: Runner,
    mail: DevMail,
    redis: Redis,
    _scratch: Scratch,
}

impl Shop {
    fn start(test: &str, options: RunnerOptions<'_>) -> Shop {
        let scratch = Scratch::new(test);
        let redis = Redis::start(&scratch);
        let mail = DevMail::start(&scratch);
        let runner = Runner::start(&scratch, &redis, &mail, options);
        redis.wait_for_subscribers(CHANNEL, 1);
        Shop {
            runner,
            mail,
            redis,
            _scratch: scratch,
        }
    }

    /// `clients` threads each placing `each` orders of one WASM-TEE-M at once; every
    /// answer's status.
    fn order_tees_concurrently(&self, clients: usize, each: usize) -> Vec<u16> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    scope.spawn(|| {
                        (0..each)
                            .map(|_| {
                                self.runner
                                    .post_json(
                                        "/api/orders",
                                        &order("WASM-TEE-M", 1, APPROVED_CARD, "ada@example.com"),
                                        None,
                                    )
                                    .status
                            })
                            .collect::<Vec<u16>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    }

    fn place(&self, sku: &str, quantity: u32, card: &str) -> String {
        let reply = self.runner.post_json(
            "/api/orders",
            &order(sku, quantity, card, "ada@example.com"),
            None,
        );
        assert_eq!(reply.status, 202, "{reply:?}");
        reply.body["order_id"]
            .as_str()
            .expect("order_id")
            .to_owned()
    }
}

/// A runner with just one of the components, like a separately deployed replica.
fn only(scratch: &Scratch, redis: &Redis, mail: &DevMail, component: &str) -> Runner {
    Runner::start(
        scratch,
        redis,
        mail,
        RunnerOptions {
            components: &[component],
            ..RunnerOptions::default()
        },
    )
}

fn settled(order: &Value) -> bool {
    order["status"] != "accepted" && order["notification"]["state"] != "pending"
}

fn emails_to_order(mail: &DevMail, order_id: &str) -> Vec<Value> {
    mail.messages()
        .into_iter()
        .filter(|m| m["subject"].as_str().is_some_and(|s| s.contains(order_id)))
        .collect()
}

#[test]
fn an_order_is_accepted_then_confirmed_and_emailed_once() {
    let shop = Shop::start("happy", RunnerOptions::default());
    let before = shop.runner.available("SPIN-MUG");

    let reply = shop.runner.post_json(
        "/api/orders",
        &json!({
            "email": "ada@example.com",
            "items": [{"sku": "SPIN-MUG", "quantity": 2}, {"sku": "STICKER-PACK", "quantity": 1}],
            "card": {"number": APPROVED_CARD, "expiry": "12/39", "cvc": "123"}
        }),
        None,
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let order_id = reply.body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(reply.body["status"], "accepted");
    assert_eq!(
        reply.location.as_deref(),
        Some(format!("/api/orders/{order_id}").as_str())
    );

    let order = shop.runner.wait_for_order(&order_id, "settled", settled);
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["notification"]["state"], "sent", "{order}");
    assert_eq!(order["notification"]["provider"], "resend");
    assert_eq!(order["total"]["minor"], 2 * 1_200 + 400);
    assert_eq!(order["card"]["last4"], "4242");
    assert_eq!(order["event_published"], true);
    assert!(
        !order.to_string().contains("4242 4242"),
        "card number leaked: {order}"
    );

    let emails = emails_to_order(&shop.mail, &order_id);
    assert_eq!(emails.len(), 1, "{emails:?}");
    let email = &emails[0];
    assert_eq!(email["to"], json!(["ada@example.com"]));
    assert_eq!(email["from"], format!("orders@{VERIFIED_DOMAIN}"));
    let text = email["text"].as_str().unwrap();
    assert!(text.contains("2 x Spin enamel mug"), "{text}");
    assert!(text.contains("1 x Sticker pack"), "{text}");
    assert!(text.contains("Total: 28.00 EUR"), "{text}");
    assert_eq!(email["idempotency_key"], format!("{order_id}/confirmed"));

    assert_eq!(shop.runner.available("SPIN-MUG"), before - 2);
    // Nothing touches stock again later.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(shop.runner.available("SPIN-MUG"), before - 2);
    assert_eq!(shop.mail.requests().len(), 1);
}

#[test]
fn refusals_are_problem_details_naming_the_field_and_take_no_stock() {
    let shop = Shop::start("refusals", RunnerOptions::default());
    let before = shop.runner.available("LIMITED-PRINT");

    let out_of_stock = shop.runner.post_json(
        "/api/orders",
        &order(
            "LIMITED-PRINT",
            before as u32 + 1,
            APPROVED_CARD,
            "ada@example.com",
        ),
        None,
    );
    assert_eq!(out_of_stock.status, 409, "{out_of_stock:?}");
    assert_eq!(out_of_stock.content_type, "application/problem+json");
    assert_eq!(
        out_of_stock.body["errors"][0]["pointer"],
        "/items/0/quantity"
    );
    assert_eq!(out_of_stock.body["available"], before);
    assert_eq!(shop.runner.available("LIMITED-PRINT"), before);

    let declined = shop.runner.post_json(
        "/api/orders",
        &order("LIMITED-PRINT", 1, DECLINED_CARD, "ada@example.com"),
        None,
    );
    assert_eq!(declined.status, 402, "{declined:?}");
    assert_eq!(declined.body["errors"][0]["pointer"], "/card/number");
    assert_eq!(shop.runner.available("LIMITED-PRINT"), before);

    let malformed = shop
        .runner
        .post_raw("/api/orders", b"{\"email\": ".to_vec());
    assert_eq!(malformed.status, 400, "{malformed:?}");
    assert_eq!(malformed.content_type, "application/problem+json");
    assert_eq!(malformed.body["type"], "/problems/malformed-json");

    let unknown = shop.runner.post_json(
        "/api/orders",
        &order("NO-SUCH-SKU", 1, APPROVED_CARD, "ada@example.com"),
        None,
    );
    assert_eq!(unknown.status, 422, "{unknown:?}");
    assert_eq!(unknown.body["errors"][0]["pointer"], "/items/0/sku");

    let bad_email = shop.runner.post_json(
        "/api/orders",
        &order("SPIN-MUG", 1, APPROVED_CARD, "not-an-email"),
        None,
    );
    assert_eq!(bad_email.status, 422, "{bad_email:?}");
    assert_eq!(bad_email.body["errors"][0]["pointer"], "/email");

    let too_big = shop
        .runner
        .post_raw("/api/orders", vec![b' '; 64 * 1024 + 1]);
    assert_eq!(too_big.status, 413, "{too_big:?}");

    let (status, body) = shop
        .runner
        .get("/api/orders/ord_00000000000000000000000000000000");
    assert_eq!(status, 404, "{body}");
    assert_eq!(shop.runner.available("LIMITED-PRINT"), before);
    assert!(shop.mail.requests().is_empty());
}

#[test]
fn the_same_idempotency_key_makes_one_order() {
    let shop = Shop::start("idempotency", RunnerOptions::default());
    let before = shop.runner.available("SPIN-MUG");
    let body = order("SPIN-MUG", 3, APPROVED_CARD, "ada@example.com");

    let first = shop.runner.post_json("/api/orders", &body, Some("key-1"));
    let second = shop.runner.post_json("/api/orders", &body, Some("key-1"));
    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(second.status, 202, "{second:?}");
    assert_eq!(first.body, second.body);
    assert_eq!(first.location, second.location);

    let other_body = order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com");
    let reused = shop
        .runner
        .post_json("/api/orders", &other_body, Some("key-1"));
    assert_eq!(reused.status, 422, "{reused:?}");
    assert_eq!(
        reused.body["errors"][0]["pointer"],
        "header:idempotency-key"
    );

    let order_id = first.body["order_id"].as_str().unwrap();
    shop.runner.wait_for_order(order_id, "settled", settled);
    assert_eq!(shop.runner.available("SPIN-MUG"), before - 3);
    assert_eq!(shop.mail.messages().len(), 1);
}

#[test]
fn an_unverified_sender_is_recorded_on_the_order_and_not_retried() {
    let shop = Shop::start(
        "unverified",
        RunnerOptions {
            mail_from: "orders@unverified.example".to_owned(),
            ..RunnerOptions::default()
        },
    );
    let before = shop.runner.available("SPIN-MUG");
    let order_id = shop.place("SPIN-MUG", 1, APPROVED_CARD);

    let order = shop.runner.wait_for_order(&order_id, "settled", settled);
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["notification"]["state"], "failed", "{order}");
    assert_eq!(order["notification"]["provider"], "resend");
    let reason = order["notification"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("unverified.example domain is not verified"),
        "{reason}"
    );

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(shop.mail.requests().len(), 1, "retried a permanent failure");
    assert!(shop.mail.messages().is_empty());
    assert_eq!(shop.runner.available("SPIN-MUG"), before - 1);
}

#[test]
fn a_flapping_mail_api_gets_one_email_after_retries() {
    let shop = Shop::start("flapping", RunnerOptions::default());
    shop.mail.fail_next(2, 503);
    let order_id = shop.place("SPIN-MUG", 1, APPROVED_CARD);

    let order = shop.runner.wait_for_order(&order_id, "settled", settled);
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["notification"]["state"], "sent", "{order}");
    let requests = shop.mail.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(emails_to_order(&shop.mail, &order_id).len(), 1);
    // It backed off before each retry (0.2 s, then 0.4 s), rather than hammering.
    let at: Vec<chrono::DateTime<chrono::Utc>> = requests
        .iter()
        .map(|r| r["at"].as_str().unwrap().parse().unwrap())
        .collect();
    for (gap, backoff_ms) in at.windows(2).zip([200, 400]) {
        let waited = (gap[1] - gap[0]).num_milliseconds();
        assert!(waited >= backoff_ms, "{waited} ms: {requests:?}");
    }
}

#[test]
fn a_failed_capture_fails_the_order_and_returns_stock_once() {
    let shop = Shop::start("capture", RunnerOptions::default());
    let before = shop.runner.available("LIMITED-PRINT");
    let order_id = shop.place("LIMITED-PRINT", 2, CAPTURE_FAILS_CARD);

    let order = shop.runner.wait_for_order(&order_id, "settled", settled);
    assert_eq!(order["status"], "failed", "{order}");
    assert!(order["reason"]
        .as_str()
        .unwrap()
        .contains("capture declined"));
    assert_eq!(order["notification"]["state"], "sent");
    let email = &emails_to_order(&shop.mail, &order_id)[0];
    assert!(email["subject"]
        .as_str()
        .unwrap()
        .contains("could not be completed"));
    assert_eq!(shop.runner.available("LIMITED-PRINT"), before);
}

#[test]
fn duplicate_events_and_two_replicas_do_the_work_once() {
    let scratch = Scratch::new("duplicates");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let checkout = only(&scratch, &redis, &mail, "checkout");
    let events = redis.capture(CHANNEL);
    let before = checkout.available("LIMITED-PRINT");
    let reply = checkout.post_json(
        "/api/orders",
        &order("LIMITED-PRINT", 1, CAPTURE_FAILS_CARD, "ada@example.com"),
        None,
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let order_id = reply.body["order_id"].as_str().unwrap().to_owned();
    let event = events.wait_for(1)[0].clone();
    assert!(event.contains(&order_id), "{event}");
    assert_eq!(checkout.available("LIMITED-PRINT"), before - 1);

    // Two fulfilment replicas, and the event delivered twice to each.
    let _replica_a = only(&scratch, &redis, &mail, "fulfilment");
    let _replica_b = only(&scratch, &redis, &mail, "fulfilment");
    redis.wait_for_subscribers(CHANNEL, 3); // two replicas + this test's capture
    assert_eq!(redis.publish(CHANNEL, &event), 3);
    assert_eq!(redis.publish(CHANNEL, &event), 3);

    let order = checkout.wait_for_order(&order_id, "settled", settled);
    assert_eq!(order["status"], "failed", "{order}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mail.requests().len(), 1, "{:?}", mail.requests());
    // Reserved once, released once: back where it started, not above.
    assert_eq!(checkout.available("LIMITED-PRINT"), before);
}

#[test]
fn orders_placed_while_fulfilment_is_down_complete_after_redrive_exactly_once() {
    let scratch = Scratch::new("redrive");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let checkout = only(&scratch, &redis, &mail, "checkout");
    let order_ids: Vec<String> = (0..3)
        .map(|_| {
            let reply = checkout.post_json(
                "/api/orders",
                &order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com"),
                None,
            );
            assert_eq!(reply.status, 202, "{reply:?}");
            reply.body["order_id"].as_str().unwrap().to_owned()
        })
        .collect();

    // Published into the void: nobody listened, Redis dropped the messages, and
    // checkout, told by PUBLISH that nobody received them, says so.
    let fulfilment = only(&scratch, &redis, &mail, "fulfilment");
    redis.wait_for_subscribers(CHANNEL, 1);
    std::thread::sleep(Duration::from_millis(500));
    for id in &order_ids {
        let (_, order) = checkout.get(&format!("/api/orders/{id}"));
        assert_eq!(order["status"], "accepted", "{order}");
        assert_eq!(order["event_published"], false, "{order}");
    }

    let (status, body) = checkout.admin_post("/api/admin/redrive?older_than_seconds=0");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 3, "{body}");
    for id in &order_ids {
        let order = checkout.wait_for_order(id, "settled", settled);
        assert_eq!(order["status"], "confirmed", "{order}");
    }
    let (_, again) = checkout.admin_post("/api/admin/redrive?older_than_seconds=0");
    assert_eq!(again["count"], 0, "{again}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mail.messages().len(), 3);
    assert_eq!(mail.requests().len(), 3);
    drop(fulfilment);

    // Without the token, redrive is refused.
    let refused = http()
        .post(format!("{}/api/admin/redrive", checkout.base_url))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
}

#[test]
fn a_malformed_message_is_dead_lettered_and_the_shop_keeps_working() {
    let shop = Shop::start("dead-letter", RunnerOptions::default());
    assert_eq!(shop.redis.publish(CHANNEL, "this is not an event"), 1);
    assert_eq!(
        shop.redis
            .publish(CHANNEL, r#"{"schema_version": 99, "type": "order.placed"}"#),
        1
    );
    let letters = wait_for("two dead letters", Duration::from_secs(10), || {
        let (status, body) = shop.runner.admin_get("/api/admin/dead-letters");
        assert_eq!(status, 200, "{body}");
        let letters = body["dead_letters"].as_array().cloned().unwrap_or_default();
        (letters.len() == 2).then_some(letters)
    });
    // Messages are handled concurrently, so the letters may come in either order.
    let letter = |needle: &str| {
        letters
            .iter()
            .find(|l| l["letter"]["payload"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no dead letter with {needle:?}: {letters:?}"))
            .clone()
    };
    assert!(letter("schema_version")["letter"]["reason"]
        .as_str()
        .unwrap()
        .contains("unsupported schema_version 99"));
    assert!(letter("this is not an event")["letter"]["reason"]
        .as_str()
        .unwrap()
        .contains("not a JSON event"));

    let order_id = shop.place("SPIN-MUG", 1, APPROVED_CARD);
    let order = shop.runner.wait_for_order(&order_id, "settled", settled);
    assert_eq!(order["status"], "confirmed");
}

#[test]
fn an_operator_restocks_while_orders_take_stock_and_nothing_is_lost() {
    let shop = Shop::start("restock", RunnerOptions::default());
    let base = &shop.runner.base_url;
    let adjust = |sku: &str, body: Value| {
        decode(
            http()
                .post(format!("{base}/api/admin/stock/{sku}"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .unwrap(),
        )
    };
    assert_eq!(shop.runner.available("WASM-TEE-M"), 50);
    // 100 orders of one unit race with five restocks of ten: every unit is sold once.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let restocks: Vec<_> = (0..5)
            .map(|_| scope.spawn(|| adjust("WASM-TEE-M", json!({"add": 10})).0))
            .collect();
        let statuses = shop.order_tees_concurrently(10, 10);
        for r in restocks {
            assert_eq!(r.join().unwrap(), 200);
        }
        statuses
    });
    let accepted = statuses.iter().filter(|s| **s == 202).count() as i64;
    assert_eq!(accepted + shop.runner.available("WASM-TEE-M"), 100);

    // Removing more than is left is refused, naming the field; the level is untouched.
    let (status, level) = adjust("WASM-TEE-M", json!({"add": 3}));
    assert_eq!(status, 200, "{level}");
    let left = level["available"].as_i64().unwrap();
    assert!(left >= 3, "{level}");
    let (status, problem) = adjust("WASM-TEE-M", json!({"add": -(left + 1)}));
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/add");
    assert_eq!(problem["available"], left);
    let (status, level) = adjust("WASM-TEE-M", json!({"add": -left}));
    assert_eq!((status, level["available"].as_i64()), (200, Some(0)));

    // Setting a level, as an operator counting the shelf does (and the benchmark).
    let (status, level) = adjust("WASM-TEE-M", json!({"set": 7}));
    assert_eq!((status, level["available"].as_i64()), (200, Some(7)));
    assert_eq!(shop.runner.available("WASM-TEE-M"), 7);
    let (status, problem) = adjust("WASM-TEE-M", json!({"set": -1}));
    assert_eq!(
        (status, &problem["errors"][0]["pointer"]),
        (422, &json!("/set"))
    );
    let (status, level) = adjust("WASM-TEE-M", json!({"set": 0}));
    assert_eq!((status, level["available"].as_i64()), (200, Some(0)));

    // Bad requests: the field, the SKU, the media type, the token.
    let (status, problem) = adjust("WASM-TEE-M", json!({"add": 0}));
    assert_eq!(
        (status, &problem["errors"][0]["pointer"]),
        (422, &json!("/add"))
    );
    assert_eq!(adjust("NO-SUCH-SKU", json!({"add": 1})).0, 404);
    let text = http()
        .post(format!("{base}/api/admin/stock/WASM-TEE-M"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"add": 1}"#)
        .send()
        .unwrap();
    assert_eq!(text.status().as_u16(), 415);
    let anonymous = http()
        .post(format!("{base}/api/admin/stock/WASM-TEE-M"))
        .json(&json!({"add": 1000}))
        .send()
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // The operator's view: every product, nothing in doubt after a clean run.
    let (status, stock) = shop.runner.admin_get("/api/admin/stock");
    assert_eq!(status, 200, "{stock}");
    let tee = stock["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sku"] == "WASM-TEE-M")
        .unwrap();
    assert_eq!(
        (tee["available"].as_i64(), tee["in_doubt"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(stock["doubts"], json!([]));
}

#[test]
fn two_hundred_concurrent_orders_for_fifty_units_accept_exactly_fifty() {
    let shop = Shop::start("concurrency", RunnerOptions::default());
    assert_eq!(shop.runner.available("WASM-TEE-M"), 50);
    let statuses = shop.order_tees_concurrently(20, 10);
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!((accepted, refused), (50, 150), "{statuses:?}");
    assert_eq!(shop.runner.available("WASM-TEE-M"), 0);
}

#[test]
fn a_redis_restart_ends_the_runner_as_it_ends_spin_and_a_restart_loses_nothing() {
    let scratch = Scratch::new("redis-restart");
    let mut redis = Redis::start_persistent(&scratch);
    let mail = DevMail::start(&scratch);
    let mut runner = Runner::start(&scratch, &redis, &mail, RunnerOptions::default());
    redis.wait_for_subscribers(CHANNEL, 1);
    let reply = runner.post_json(
        "/api/orders",
        &order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com"),
        None,
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let before = reply.body["order_id"].as_str().unwrap().to_owned();
    runner.wait_for_order(&before, "settled", settled);
    let stock = runner.available("SPIN-MUG");

    redis.kill_and_restart();
    // As `spin up`: the subscription ends, the trigger ends with an error, the process
    // exits non-zero, saying why.
    let status = wait_for("the runner to exit", Duration::from_secs(15), || {
        runner.process.exited()
    });
    assert!(!status.success(), "{status:?}");
    let log = runner.process.log();
    assert!(
        log.contains(&format!(
            "disconnected from redis://127.0.0.1:{}",
            redis.port
        )),
        "{log}"
    );

    // What a supervisor does: start it again. Redis kept every acknowledged write.
    let runner = Runner::start(&scratch, &redis, &mail, RunnerOptions::default());
    redis.wait_for_subscribers(CHANNEL, 1);
    let (status, order_before) = runner.get(&format!("/api/orders/{before}"));
    assert_eq!(status, 200, "{order_before}");
    assert_eq!(order_before["status"], "confirmed");
    assert_eq!(order_before["notification"]["state"], "sent");
    assert_eq!(runner.available("SPIN-MUG"), stock);
    let after = runner.post_json(
        "/api/orders",
        &order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com"),
        None,
    );
    assert_eq!(after.status, 202, "{after:?}");
    let order = runner.wait_for_order(after.body["order_id"].as_str().unwrap(), "settled", settled);
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(emails_to_order(&mail, &before).len(), 1);
}

#[test]
fn messages_are_handled_one_at_a_time_as_spin_handles_them() {
    // The runner's trigger, as Spin's: without the handler taking on the orders behind
    // its own, nothing but the trigger decides when a message is handled.
    let shop = Shop::start(
        "serial",
        RunnerOptions {
            extra_variables: vec![("fulfilment_batch".into(), "0".into())],
            ..RunnerOptions::default()
        },
    );
    // Every send takes 300 ms: three orders' emails go out one after the other.
    let response = http()
        .post(format!("{}/__devmail/faults", shop.mail.base_url))
        .json(&json!({ "count": 3, "delay_ms": 300 }))
        .send()
        .unwrap();
    assert!(response.status().is_success());
    let started = std::time::Instant::now();
    let ids: Vec<String> = (0..3)
        .map(|_| shop.place("STICKER-PACK", 1, APPROVED_CARD))
        .collect();
    for id in &ids {
        shop.runner.wait_for_order(id, "settled", settled);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "three 300 ms sends overlapped: {elapsed:?}"
    );
    // In the order they were published.
    let sent: Vec<String> = shop
        .mail
        .messages()
        .iter()
        .filter_map(|m| m["subject"].as_str().map(str::to_owned))
        .collect();
    for (id, subject) in ids.iter().zip(&sent) {
        assert!(subject.contains(id.as_str()), "{sent:?}");
    }
}

#[test]
fn the_sqlite_backend_runs_the_same_flow() {
    let shop = Shop::start(
        "sqlite",
        RunnerOptions {
            backend: Backend::Sqlite,
            ..RunnerOptions::default()
        },
    );
    let before = shop.runner.available("SPIN-MUG");
    let order_id = shop.place("SPIN-MUG", 2, APPROVED_CARD);
    let order = shop.runner.wait_for_order(&order_id, "settled", settled);
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(shop.runner.available("SPIN-MUG"), before - 2);
    assert_eq!(emails_to_order(&shop.mail, &order_id).len(), 1);
}

#[test]
fn every_mail_provider_delivers_or_reports_the_refusal() {
    for provider in ["resend", "postmark", "sendgrid", "mailpit"] {
        let shop = Shop::start(
            &format!("provider-{provider}"),
            RunnerOptions {
                extra_variables: vec![("mail_provider".into(), provider.into())],
                ..RunnerOptions::default()
            },
        );
        let order_id = shop.place("SPIN-MUG", 1, APPROVED_CARD);
        let order = shop.runner.wait_for_order(&order_id, "settled", settled);
        assert_eq!(
            order["notification"]["state"], "sent",
            "{provider}: {order}"
        );
        assert_eq!(order["notification"]["provider"], provider);
        let emails = emails_to_order(&shop.mail, &order_id);
        assert_eq!(emails.len(), 1, "{provider}");
        assert_eq!(emails[0]["provider"], provider);
        assert_eq!(emails[0]["to"], json!(["ada@example.com"]));
    }
    // Each provider's own unverified-sender refusal ends up on the order, word for word.
    for (provider, words) in [
        ("postmark", "is not a verified sender signature"),
        ("sendgrid", "does not match a verified Sender Identity"),
    ] {
        let shop = Shop::start(
            &format!("refusal-{provider}"),
            RunnerOptions {
                mail_from: "orders@unverified.example".to_owned(),
                extra_variables: vec![("mail_provider".into(), provider.into())],
                ..RunnerOptions::default()
            },
        );
        let order_id = shop.place("SPIN-MUG", 1, APPROVED_CARD);
        let order = shop.runner.wait_for_order(&order_id, "settled", settled);
        assert_eq!(
            order["notification"]["state"], "failed",
            "{provider}: {order}"
        );
        let reason = order["notification"]["reason"].as_str().unwrap();
        assert!(reason.contains(words), "{provider}: {reason}");
        assert_eq!(
            shop.mail.requests().len(),
            1,
            "{provider} retried a refusal"
        );
    }
}

/// Places `count` orders at once with the mail API answering after `delay_ms`; checks
/// that each was confirmed and emailed once, and returns how close together (ms) the
/// mail API answered two of its sends.
fn closest_answers(shop: &Shop, count: usize, delay_ms: i64) -> i64 {
    shop.mail
        .set_faults(&json!({ "count": 1000, "delay_ms": delay_ms }));
    let ids: Vec<String> = std::thread::scope(|scope| {
        let placing: Vec<_> = (0..count)
            .map(|_| scope.spawn(|| shop.place("STICKER-PACK", 1, APPROVED_CARD)))
            .collect();
        placing.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for id in &ids {
        let order = shop
            .runner
            .wait_for_order(id, "emailed", |o| o["notification"]["state"] == "sent");
        assert_eq!(order["status"], "confirmed");
    }
    let messages = shop.mail.messages();
    assert_eq!(messages.len(), ids.len());
    for id in &ids {
        let about = messages
            .iter()
            .filter(|m| {
                m["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(id.as_str())
            })
            .count();
        assert_eq!(about, 1, "{id}");
    }
    assert_eq!(shop.mail.requests().len(), ids.len(), "one send per order");
    assert_eq!(shop.runner.available("STICKER-PACK"), 500 - count as i64);
    let mut answered: Vec<i64> = shop
        .mail
        .requests()
        .iter()
        .filter_map(|r| chrono_millis(r["at"].as_str()?))
        .collect();
    answered.sort_unstable();
    answered.windows(2).map(|w| w[1] - w[0]).min().unwrap()
}

#[test]
fn orders_spread_over_the_shards_are_fulfilled_concurrently_each_once() {
    // spin.toml's 16 shards, each its own subscriber; no batching, so only the shards
    // can put sends in flight together.
    let shards = 16;
    let shop = Shop::start(
        "shards",
        RunnerOptions {
            order_shards: shards,
            extra_variables: vec![("fulfilment_batch".into(), "0".into())],
            ..RunnerOptions::default()
        },
    );
    for shard in 0..shards {
        shop.redis
            .wait_for_subscribers(&format!("{CHANNEL_BASE}.{shard}"), 1);
    }
    // One subscriber handles its messages one at a time, so the answers to its sends
    // are at least the mail API's delay apart: two closer ones were in flight together,
    // from different shards.
    const DELAY_MS: i64 = 500;
    let closest = closest_answers(&shop, 16, DELAY_MS);
    assert!(
        closest < DELAY_MS / 2,
        "sends were never in flight together ({closest} ms)"
    );
}

#[test]
fn orders_waiting_behind_a_slow_send_on_one_shard_are_emailed_together() {
    // One shard, one subscriber: only the handler taking on the orders waiting behind
    // its own (fulfilment_batch, 8 by default) can put sends in flight together.
    let shop = Shop::start("batch", RunnerOptions::default());
    const DELAY_MS: i64 = 500;
    let closest = closest_answers(&shop, 8, DELAY_MS);
    assert!(
        closest < DELAY_MS / 2,
        "sends were never in flight together ({closest} ms)"
    );
}

/// Milliseconds since the epoch of an RFC 3339 time, as devmail writes them.
fn chrono_millis(at: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[test]
fn checkout_hands_over_every_answer_whole_with_its_length() {
    // Checkout writes and ends each body before it gives the host the headers
    // (`shop_adapters::http_response`): a client gets a `content-length`, never a
    // chunked body, whatever the answer.
    let shop = Shop::start("whole-answers", RunnerOptions::default());
    let base = &shop.runner.base_url;
    let placed = order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com").to_string();
    let client = http();
    let requests = [
        (
            "GET /api/products",
            client.get(format!("{base}/api/products")),
        ),
        (
            "POST /api/orders",
            client
                .post(format!("{base}/api/orders"))
                .header("content-type", "application/json")
                .body(placed),
        ),
        (
            "POST /api/orders, malformed",
            client
                .post(format!("{base}/api/orders"))
                .header("content-type", "application/json")
                .body("{"),
        ),
        ("PUT /api/orders", client.put(format!("{base}/api/orders"))),
        (
            "GET /api/nothing",
            client.get(format!("{base}/api/nothing")),
        ),
    ];
    let mut statuses = Vec::new();
    for (what, request) in requests {
        let response = request.send().expect(what);
        statuses.push(response.status().as_u16());
        let headers = response.headers().clone();
        let body = response.bytes().expect(what);
        assert!(
            headers.get("transfer-encoding").is_none(),
            "{what}: {headers:?}"
        );
        assert_eq!(
            headers
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok()),
            Some(body.len()),
            "{what}: {headers:?}"
        );
        assert!(!body.is_empty(), "{what}");
    }
    assert_eq!(statuses, [200, 202, 400, 405, 404]);
}
