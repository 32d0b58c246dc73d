//! Scale-out on one Redis, as SpinKube runs it: 2 checkout replicas and 4 fulfilment
//! replicas (separate runner processes, each with only its component). Every fulfilment
//! replica receives every message, so each order is seen four times, and redrive from
//! both checkouts at once hands out two epochs for the same order: the claims and the
//! mail lease must still make exactly one stock change and one email per order.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::*;
use serde_json::Value;

const CHECKOUTS: usize = 2;
const FULFILMENTS: usize = 4;

fn replica(scratch: &Scratch, redis: &Redis, mail: &DevMail, component: &str) -> Runner {
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

fn fulfilment_replicas(scratch: &Scratch, redis: &Redis, mail: &DevMail) -> Vec<Runner> {
    let replicas: Vec<Runner> = (0..FULFILMENTS)
        .map(|_| replica(scratch, redis, mail, "fulfilment"))
        .collect();
    redis.wait_for_subscribers(CHANNEL, FULFILMENTS as i64);
    replicas
}

fn settled(order: &Value) -> bool {
    order["status"] != "accepted" && order["notification"]["state"] != "pending"
}

/// One order placed: which SKU, how many, whether its capture fails.
struct Placed {
    id: String,
    sku: &'static str,
    quantity: i64,
    fails: bool,
}

/// `count` orders from `clients` threads at once, spread over the checkouts, SKUs and
/// cards (every fourth capture fails, so its stock must come back exactly once).
fn place_concurrently(checkouts: &[Runner], clients: usize, count: usize) -> Vec<Placed> {
    const SKUS: [&str; 3] = ["SPIN-MUG", "STICKER-PACK", "WASM-TEE-L"];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                scope.spawn(move || {
                    (client..count)
                        .step_by(clients)
                        .map(|n| {
                            let sku = SKUS[n % SKUS.len()];
                            let quantity = 1 + (n % 2) as u32;
                            let fails = n % 4 == 3;
                            let card = if fails {
                                CAPTURE_FAILS_CARD
                            } else {
                                APPROVED_CARD
                            };
                            let reply = checkouts[n % checkouts.len()].post_json(
                                "/api/orders",
                                &order(sku, quantity, card, "ada@example.com"),
                                None,
                            );
                            assert_eq!(reply.status, 202, "{reply:?}");
                            Placed {
                                id: reply.body["order_id"].as_str().unwrap().to_owned(),
                                sku,
                                quantity: quantity.into(),
                                fails,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Waits until every order is settled (read through alternating checkouts) and checks
/// each ended as its card says.
fn wait_settled(checkouts: &[Runner], orders: &[Placed]) {
    for (i, placed) in orders.iter().enumerate() {
        let order = checkouts[i % checkouts.len()].wait_for_order(&placed.id, "settled", settled);
        let expected = if placed.fails { "failed" } else { "confirmed" };
        assert_eq!(order["status"], expected, "{order}");
        assert_eq!(order["notification"]["state"], "sent", "{order}");
    }
}

/// Emails per order id, from the subjects the dev mail API accepted.
fn emails_per_order(mail: &DevMail, orders: &[Placed]) -> BTreeMap<String, usize> {
    let subjects: Vec<String> = mail
        .messages()
        .iter()
        .filter_map(|m| m["subject"].as_str().map(str::to_owned))
        .collect();
    orders
        .iter()
        .map(|o| {
            let n = subjects.iter().filter(|s| s.contains(&o.id)).count();
            (o.id.clone(), n)
        })
        .collect()
}

fn assert_one_email_each(mail: &DevMail, orders: &[Placed], total: usize) {
    let per_order = emails_per_order(mail, orders);
    let wrong: Vec<_> = per_order.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        wrong.is_empty(),
        "orders without exactly one email: {wrong:?}"
    );
    assert_eq!(mail.messages().len(), total);
    // One send attempt each: no replica sent what another already had.
    assert_eq!(mail.requests().len(), total);
}

/// Stock each SKU should have after `orders`: only confirmed orders keep their units.
fn expected_stock(
    initial: &BTreeMap<&'static str, i64>,
    orders: &[Placed],
) -> BTreeMap<&'static str, i64> {
    let mut stock = initial.clone();
    for o in orders.iter().filter(|o| !o.fails) {
        *stock.get_mut(o.sku).unwrap() -= o.quantity;
    }
    stock
}

#[test]
fn four_fulfilment_and_two_checkout_replicas_do_each_order_once() {
    let scratch = Scratch::new("scale-out");
    let redis = Redis::start(&scratch);
    let mail = DevMail::start(&scratch);
    let checkouts: Vec<Runner> = (0..CHECKOUTS)
        .map(|_| replica(&scratch, &redis, &mail, "checkout"))
        .collect();
    let initial: BTreeMap<&'static str, i64> = ["SPIN-MUG", "STICKER-PACK", "WASM-TEE-L"]
        .into_iter()
        .map(|sku| (sku, checkouts[0].available(sku)))
        .collect();
    let fulfilment = fulfilment_replicas(&scratch, &redis, &mail);

    // 48 orders from 8 clients at once, through both checkouts, each order's event
    // received by all four fulfilment replicas.
    let first = place_concurrently(&checkouts, 8, 48);
    wait_settled(&checkouts, &first);
    std::thread::sleep(Duration::from_secs(1));
    assert_one_email_each(&mail, &first, first.len());
    let stock = expected_stock(&initial, &first);
    for (sku, level) in &stock {
        for checkout in &checkouts {
            assert_eq!(checkout.available(sku), *level, "{sku}");
        }
    }

    // Fulfilment down everywhere (a bad rollout): these orders' events reach nobody.
    drop(fulfilment);
    wait_for("no subscriber left", Duration::from_secs(10), || {
        (redis.subscribers(CHANNEL) == 0).then_some(())
    });
    let second = place_concurrently(&checkouts, 4, 12);
    let _fulfilment = fulfilment_replicas(&scratch, &redis, &mail);
    for placed in &second {
        let (_, order) = checkouts[0].get(&format!("/api/orders/{}", placed.id));
        assert_eq!(order["status"], "accepted", "{order}");
    }

    // Both checkouts redrive at the same moment: an order may get two new epochs, each
    // delivered to four replicas. Still one completion and one email per order.
    let counts: Vec<i64> = std::thread::scope(|scope| {
        let redrives: Vec<_> = checkouts
            .iter()
            .map(|c| {
                scope.spawn(move || {
                    let (status, body) = c.admin_post("/api/admin/redrive?older_than_seconds=0");
                    assert_eq!(status, 200, "{body}");
                    body["count"].as_i64().unwrap()
                })
            })
            .collect();
        redrives.into_iter().map(|r| r.join().unwrap()).collect()
    });
    eprintln!(
        "concurrent redrives republished {counts:?} of {} orders",
        second.len()
    );
    assert!(
        counts.iter().sum::<i64>() >= second.len() as i64,
        "redrive republished too little: {counts:?}"
    );
    wait_settled(&checkouts, &second);
    std::thread::sleep(Duration::from_secs(1));
    let all: Vec<Placed> = first.into_iter().chain(second).collect();
    assert_one_email_each(&mail, &all, all.len());
    let stock = expected_stock(&initial, &all);
    for (sku, level) in &stock {
        assert_eq!(checkouts[1].available(sku), *level, "{sku}");
    }
    // Nothing left to redrive.
    let (_, again) = checkouts[0].admin_post("/api/admin/redrive?older_than_seconds=0");
    assert_eq!(again["count"], 0, "{again}");
    let (_, stock) = checkouts[0].admin_get("/api/admin/stock");
    assert_eq!(stock["doubts"], serde_json::json!([]), "{stock}");
}
