//! The shop with `store = "redis"`: state in a Redis reached through Spin's outbound
//! Redis, as on a managed platform. The scenarios the shop's correctness rests on
//! (`shop.rs` runs them on the key-value store) run again on this backend: oversell,
//! duplicated events seen by two replicas, redrive exactly once. Then the point of the
//! backend: a checkout from `deploy/managed/spin.toml` and fulfilment replicas on either
//! backend share one state, because both store what Spin's Redis key-value backend
//! stores.
//!
//! To show that `store = "redis"` is honoured, the runners' key-value store `default`
//! is SQLite in these tests (but in the interop test): state found in Redis can only
//! have come through outbound Redis.

use std::time::Duration;

use e2e::*;
use serde_json::Value;

/// Runners on `store = "redis"`, from a copy of spin.toml in which fulfilment may also
/// reach Redis (the shipped manifest lets it reach only the mail API: it maps its
/// key-value store to Redis instead).
fn redis_store<'a>(scratch: &Scratch, components: &'a [&'a str]) -> RunnerOptions<'a> {
    RunnerOptions {
        components,
        backend: Backend::Sqlite,
        extra_variables: vec![("store".into(), "redis".into())],
        manifest: Some(fulfilment_reaching_redis(scratch)),
        ..RunnerOptions::default()
    }
}

fn fulfilment_reaching_redis(scratch: &Scratch) -> std::path::PathBuf {
    let original = std::fs::read_to_string(workspace_root().join("spin.toml")).unwrap();
    let mail_only = r#"allowed_outbound_hosts = ["{{ mail_api_base_url }}"]"#;
    assert!(original.contains(mail_only), "spin.toml changed");
    let manifest = original
        .replace(
            mail_only,
            r#"allowed_outbound_hosts = ["{{ mail_api_base_url }}", "{{ redis_address }}"]"#,
        )
        .replace(
            "target/wasm32-wasip2",
            &workspace_root()
                .join("target/wasm32-wasip2")
                .display()
                .to_string(),
        );
    // A file per runner: rewriting one shared file while an earlier runner is still
    // reading it at startup would hand that runner an empty manifest.
    static WRITTEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = scratch.path().join(format!("spin-redis-store-{n}.toml"));
    std::fs::write(&path, manifest).unwrap();
    path
}

fn settled(order: &Value) -> bool {
    order["status"] != "accepted" && order["notification"]["state"] != "pending"
}

fn emails_to_order(mail: &DevMail, order_id: &str) -> usize {
    mail.messages()
        .iter()
        .filter(|m| m["subject"].as_str().is_some_and(|s| s.contains(order_id)))
        .count()
}

fn place(checkout: &Runner, sku: &str, quantity: u32, card: &str) -> String {
    let reply = checkout.post_json(
        "/api/orders",
        &order(sku, quantity, card, "ada@example.com"),
        None,
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    reply.body["order_id"].as_str().unwrap().to_owned()
}

/// A counter as Spin's Redis key-value backend stores it: ASCII decimal under the key.
fn redis_counter(redis: &Redis, key: &str) -> i64 {
    let raw = redis.command(&["GET", key]).expect("GET");
    raw.parse()
        .unwrap_or_else(|_| panic!("{key} holds {raw:?}, not an ASCII decimal"))
}

#[test]
fn two_hundred_concurrent_orders_for_fifty_units_accept_exactly_fifty() {
    let scratch = Scratch::new("redis-store-oversell");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let shop = Runner::start(&scratch, &redis, &mail, redis_store(&scratch, &[]));
    redis.wait_for_subscribers(CHANNEL, 1);
    assert_eq!(shop.available("WASM-TEE-M"), 50);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| {
                    (0..10)
                        .map(|_| {
                            shop.post_json(
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
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!((accepted, refused), (50, 150), "{statuses:?}");
    assert_eq!(shop.available("WASM-TEE-M"), 0);
    // In Redis, under the domain's own key, as Spin's Redis backend would keep it.
    assert_eq!(redis_counter(&redis, "shop:v1:stock:WASM-TEE-M"), 0);
    assert_eq!(redis_counter(&redis, "shop:v1:stock:SPIN-MUG"), 100);
}

#[test]
fn duplicate_events_and_two_replicas_do_the_work_once() {
    let scratch = Scratch::new("redis-store-duplicates");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let checkout = Runner::start(
        &scratch,
        &redis,
        &mail,
        redis_store(&scratch, &["checkout"]),
    );
    let events = redis.capture(CHANNEL);
    let before = checkout.available("LIMITED-PRINT");
    let order_id = place(&checkout, "LIMITED-PRINT", 1, CAPTURE_FAILS_CARD);
    let event = events.wait_for(1)[0].clone();
    assert!(event.contains(&order_id), "{event}");
    assert_eq!(checkout.available("LIMITED-PRINT"), before - 1);

    let _a = Runner::start(
        &scratch,
        &redis,
        &mail,
        redis_store(&scratch, &["fulfilment"]),
    );
    let _b = Runner::start(
        &scratch,
        &redis,
        &mail,
        redis_store(&scratch, &["fulfilment"]),
    );
    redis.wait_for_subscribers(CHANNEL, 3);
    assert_eq!(redis.publish(CHANNEL, &event), 3);
    assert_eq!(redis.publish(CHANNEL, &event), 3);

    let order = checkout.wait_for_order(&order_id, "settled", settled);
    assert_eq!(order["status"], "failed", "{order}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mail.requests().len(), 1, "{:?}", mail.requests());
    // Reserved once, released once.
    assert_eq!(checkout.available("LIMITED-PRINT"), before);
    assert_eq!(redis_counter(&redis, "shop:v1:stock:LIMITED-PRINT"), before);
}

#[test]
fn orders_placed_while_fulfilment_is_down_complete_after_redrive_exactly_once() {
    let scratch = Scratch::new("redis-store-redrive");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let checkout = Runner::start(
        &scratch,
        &redis,
        &mail,
        redis_store(&scratch, &["checkout"]),
    );
    let ids: Vec<String> = (0..3)
        .map(|_| place(&checkout, "SPIN-MUG", 1, APPROVED_CARD))
        .collect();

    let _fulfilment = Runner::start(
        &scratch,
        &redis,
        &mail,
        redis_store(&scratch, &["fulfilment"]),
    );
    redis.wait_for_subscribers(CHANNEL, 1);
    std::thread::sleep(Duration::from_millis(500));
    for id in &ids {
        let (_, order) = checkout.get(&format!("/api/orders/{id}"));
        assert_eq!(order["status"], "accepted", "{order}");
    }
    let (status, body) = checkout.admin_post("/api/admin/redrive?older_than_seconds=0");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 3, "{body}");
    for id in &ids {
        let order = checkout.wait_for_order(id, "settled", settled);
        assert_eq!(order["status"], "confirmed", "{order}");
    }
    let (_, again) = checkout.admin_post("/api/admin/redrive?older_than_seconds=0");
    assert_eq!(again["count"], 0, "{again}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mail.messages().len(), 3);
    assert_eq!(mail.requests().len(), 3);
    assert_eq!(checkout.available("SPIN-MUG"), 97);
}

#[test]
fn a_managed_checkout_and_fulfilment_on_either_backend_share_one_state() {
    let scratch = Scratch::new("redis-store-managed");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    // Checkout as a managed platform runs it: deploy/managed/spin.toml, the plain
    // build, outbound Redis only, no runtime config.
    let managed = Runner::start_with_variables(
        &scratch,
        &workspace_root().join("deploy/managed/spin.toml"),
        &[
            ("redis_address", redis.url()),
            ("redis_host", redis.url()),
            ("orders_channel", CHANNEL_BASE.to_owned()),
            ("order_shards", "1".to_owned()),
            ("admin_token", ADMIN_TOKEN.to_owned()),
        ],
    );
    // Fulfilment as SpinKube runs it (key-value store mapped to that Redis by the
    // runtime config), and one more replica on outbound Redis.
    let on_key_value = RunnerOptions {
        components: &["fulfilment"],
        ..RunnerOptions::default()
    };
    let _spinkube = Runner::start(&scratch, &redis, &mail, on_key_value);
    let _outbound = Runner::start(
        &scratch,
        &redis,
        &mail,
        redis_store(&scratch, &["fulfilment"]),
    );
    redis.wait_for_subscribers(CHANNEL, 2);

    let before = managed.available("LIMITED-PRINT");
    let confirmed = place(&managed, "SPIN-MUG", 2, APPROVED_CARD);
    let failed = place(&managed, "LIMITED-PRINT", 1, CAPTURE_FAILS_CARD);
    let order = managed.wait_for_order(&confirmed, "settled", settled);
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["notification"]["state"], "sent", "{order}");
    let order = managed.wait_for_order(&failed, "settled", settled);
    assert_eq!(order["status"], "failed", "{order}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(emails_to_order(&mail, &confirmed), 1);
    assert_eq!(emails_to_order(&mail, &failed), 1);
    assert_eq!(mail.requests().len(), 2);

    // A checkout on the key-value store sees what the managed one wrote, and the
    // other way round: one stock, one set of orders.
    let on_kv = Runner::start(
        &scratch,
        &redis,
        &mail,
        RunnerOptions {
            components: &["checkout"],
            ..RunnerOptions::default()
        },
    );
    for sku in ["SPIN-MUG", "LIMITED-PRINT", "WASM-TEE-M"] {
        assert_eq!(on_kv.available(sku), managed.available(sku), "{sku}");
    }
    assert_eq!(on_kv.available("SPIN-MUG"), 98);
    assert_eq!(on_kv.available("LIMITED-PRINT"), before);
    let (status, seen) = on_kv.get(&format!("/api/orders/{confirmed}"));
    assert_eq!((status, &seen["status"]), (200, &Value::from("confirmed")));
    let other = place(&on_kv, "SPIN-MUG", 1, APPROVED_CARD);
    let order = managed.wait_for_order(&other, "settled", settled);
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(managed.available("SPIN-MUG"), 97);
    assert_eq!(redis_counter(&redis, "shop:v1:stock:SPIN-MUG"), 97);

    // The managed checkout redrives through outbound Redis too.
    let (status, body) = managed.admin_post("/api/admin/redrive?older_than_seconds=0");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 0, "{body}");
}

#[test]
fn a_store_variable_that_names_no_backend_is_a_clear_503() {
    let scratch = Scratch::new("redis-store-bad-variable");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let checkout = Runner::start(
        &scratch,
        &redis,
        &mail,
        RunnerOptions {
            components: &["checkout"],
            extra_variables: vec![("store".into(), "sqlite".into())],
            ..RunnerOptions::default()
        },
    );
    let reply = checkout.post_json(
        "/api/orders",
        &order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com"),
        None,
    );
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.content_type, "application/problem+json");
    assert!(
        checkout.process.log().contains("\"sqlite\""),
        "the log does not name the bad value"
    );
}

#[test]
fn fulfilment_on_the_redis_store_needs_redis_in_its_allowed_hosts() {
    let scratch = Scratch::new("redis-store-denied");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let checkout = Runner::start(
        &scratch,
        &redis,
        &mail,
        RunnerOptions {
            components: &["checkout"],
            ..RunnerOptions::default()
        },
    );
    // The shipped spin.toml: fulfilment may call the mail API only.
    let mut fulfilment = Runner::start(
        &scratch,
        &redis,
        &mail,
        RunnerOptions {
            components: &["fulfilment"],
            extra_variables: vec![("store".into(), "redis".into())],
            ..RunnerOptions::default()
        },
    );
    redis.wait_for_subscribers(CHANNEL, 1);
    let id = place(&checkout, "SPIN-MUG", 1, APPROVED_CARD);
    wait_for("the denial in the log", Duration::from_secs(10), || {
        fulfilment
            .process
            .log()
            .contains("not in allowed_outbound_hosts")
            .then_some(())
    });
    let (_, order) = checkout.get(&format!("/api/orders/{id}"));
    assert_eq!(order["status"], "accepted", "{order}");
    assert!(mail.requests().is_empty());
    assert!(
        fulfilment.process.exited().is_none(),
        "a denial is not a crash"
    );
}
