//! The chaos soak: the whole shop under the project's supervisor (as `make up` runs it),
//! many concurrent clients, and a schedule of faults together; then redrive until quiet,
//! and every invariant checked and printed with its count.
//!
//! `CHAOS_SECONDS` sets the length of the load (20 in `make test`, 120 in `make chaos`).
//! The figures go to stdout and `target/chaos/summary.json`.
//!
//! Faults: Redis killed with SIGKILL and restarted (by the supervisor) several times,
//! which ends every Redis trigger as it ends Spin's (the supervisor restarts them too);
//! fulfilment replicas killed with SIGKILL mid-flow, two of them running; the mail API
//! answering bursts of 429 and 5xx, slowly, and refusing the sender as unverified for a
//! while; events republished (duplicates) and malformed messages injected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};

const CLIENTS: usize = 12;
/// Each SKU with the units added per second of load, through the admin endpoint before
/// the load starts (so that most orders go through fulfilment rather than end out of
/// stock; the limited print stays scarce, for contention).
const RESTOCK_PER_SECOND: [(&str, i64); 3] = [
    ("STICKER-PACK", 250),
    ("SPIN-MUG", 60),
    ("LIMITED-PRINT", 0),
];

/// The shop as `make up` runs it, under the supervisor, in a scratch directory.
struct Supervised {
    // Kept for their Drop: the supervisor stops everything, the directory goes.
    _scratch: Scratch,
    _process: Process,
    status_file: std::path::PathBuf,
    redis_port: u16,
    base_url: String,
    mail_url: String,
}

impl Supervised {
    fn start() -> Supervised {
        let scratch = Scratch::new("chaos");
        let (redis_port, mail_port, http_port) = (free_port(), free_port(), free_port());
        let data = scratch.path().join("redis-data");
        std::fs::create_dir_all(&data).unwrap();
        let runtime_config = scratch.path().join("runtime-config.toml");
        std::fs::write(
            &runtime_config,
            format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{redis_port}\"\n"),
        )
        .unwrap();
        let variables = [
            format!("redis_address=redis://127.0.0.1:{redis_port}"),
            format!("redis_host=redis://127.0.0.1:{redis_port}"),
            // spin.toml's own 16 shards; duplicates and garbage go to shard 0.
            format!("orders_channel={CHANNEL_BASE}"),
            format!("admin_token={ADMIN_TOKEN}"),
            "mail_provider=resend".into(),
            format!("mail_api_base_url=http://127.0.0.1:{mail_port}"),
            format!("mail_api_key={MAIL_KEY}"),
            format!("mail_from=orders@{VERIFIED_DOMAIN}"),
            // Short leases, so that redrive takes over from dead requests and handlers
            // within the soak.
            "redrive_after_seconds=3".into(),
            "lease_seconds=3".into(),
            "mail_lease_seconds=10".into(),
        ];
        let runner = |components: &[&str], listen: u16| {
            let mut args = vec![
                "up".to_owned(),
                "--experimental-wasi-otel".into(),
                "--from".into(),
                workspace_root().join("spin.toml").display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{listen}"),
                "--runtime-config-file".into(),
                runtime_config.display().to_string(),
            ];
            for v in &variables {
                args.push("--variable".into());
                args.push(v.clone());
            }
            for c in components {
                args.push("--component-id".into());
                args.push(c.to_string());
            }
            toml_strings(&args)
        };
        let config = format!(
            r#"
[[process]]
name = "redis"
command = "redis-server"
args = ["--port", "{redis_port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", "{data}"]
ready = {{ tcp = "127.0.0.1:{redis_port}" }}

[[process]]
name = "devmail"
command = "{devmail}"
args = ["--listen", "127.0.0.1:{mail_port}", "--api-key", "{MAIL_KEY}", "--verified-domain", "{VERIFIED_DOMAIN}"]
ready = {{ tcp = "127.0.0.1:{mail_port}" }}

[[process]]
name = "checkout"
command = "{runner}"
args = {checkout}
ready = {{ http = "http://127.0.0.1:{http_port}/api/products" }}

[[process]]
name = "fulfilment-a"
command = "{runner}"
args = {fulfilment_a}

[[process]]
name = "fulfilment-b"
command = "{runner}"
args = {fulfilment_b}

[[every]]
name = "redrive"
interval_seconds = 2
command = "curl"
args = ["-fsS", "-o", "/dev/null", "-X", "POST", "-H", "Authorization: Bearer {ADMIN_TOKEN}", "http://127.0.0.1:{http_port}/api/admin/redrive"]
"#,
            data = data.display(),
            devmail = binary("devmail").display(),
            runner = runner_binary().display(),
            checkout = runner(&["checkout"], http_port),
            fulfilment_a = runner(&["fulfilment"], free_port()),
            fulfilment_b = runner(&["fulfilment"], free_port()),
        );
        let config_path = scratch.path().join("supervisor.toml");
        std::fs::write(&config_path, config).unwrap();
        let status_file = scratch.path().join("status.json");
        let process = Process::spawn(
            "supervisor",
            std::process::Command::new(binary("supervisor"))
                .arg("--config")
                .arg(&config_path)
                .arg("--status-file")
                .arg(&status_file)
                .env("RUST_LOG", "warn"),
            scratch.path(),
        );
        let shop = Supervised {
            _scratch: scratch,
            _process: process,
            status_file,
            redis_port,
            base_url: format!("http://127.0.0.1:{http_port}"),
            mail_url: format!("http://127.0.0.1:{mail_port}"),
        };
        wait_for("the shop to start", Duration::from_secs(120), || {
            (shop.subscribers() >= 2
                && http()
                    .get(format!("{}/api/products", shop.base_url))
                    .send()
                    .is_ok())
            .then_some(())
        });
        shop
    }

    fn status(&self) -> Value {
        std::fs::read(&self.status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn pid(&self, name: &str) -> Option<u32> {
        self.status()["processes"][name]["pid"]
            .as_u64()
            .map(|p| p as u32)
    }

    fn kill(&self, name: &str) -> bool {
        match self.pid(name) {
            Some(pid) => std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success()),
            None => false,
        }
    }

    fn subscribers(&self) -> i64 {
        redis_command(self.redis_port, &["PUBSUB", "NUMSUB", CHANNEL])
            .ok()
            .and_then(|r| {
                r.lines()
                    .filter_map(|l| l.strip_prefix(':'))
                    .next_back()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    fn fault(&self, fault: Value) {
        let _ = http()
            .post(format!("{}/__devmail/faults", self.mail_url))
            .json(&fault)
            .send();
    }
}

fn toml_strings(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A small deterministic generator per client (no dependency for dice).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % sides
    }
}

/// A fault of the schedule.
enum Fault {
    /// SIGKILL to the supervised process of this name (the supervisor restarts it).
    Kill(&'static str),
    /// Sent to the dev mail API's fault injection.
    Mail(Value),
}

/// What one client asked for with one key, and every answer it got.
#[derive(Debug, Clone)]
struct Attempt {
    key: String,
    answers: Vec<(u16, Option<String>)>,
}

/// Places an order with `key`, retrying with the same key as a well-behaved client
/// does on 409 in-progress, 503 and connection errors; returns the final answer.
fn place(base: &str, key: &str, body: &Value) -> (u16, Option<String>, String) {
    let mut last = (0, None, String::new());
    for _ in 0..40 {
        let sent = http()
            .post(format!("{base}/api/orders"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .timeout(Duration::from_secs(20))
            .send();
        if let Ok(response) = sent {
            let reply = Reply::from(response);
            let kind = reply.body["type"].as_str().unwrap_or("").to_owned();
            let id = reply.body["order_id"].as_str().map(str::to_owned);
            last = (reply.status, id, kind.clone());
            let retry = reply.status == 503
                || (reply.status == 409 && kind == "/problems/idempotency-key-in-use");
            if !retry {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    last
}

#[test]
fn the_shop_loses_nothing_under_load_and_faults() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let shop = Supervised::start();
    let base = shop.base_url.clone();
    let mut stock_before = BTreeMap::new();
    for (sku, per_second) in RESTOCK_PER_SECOND {
        let add = per_second * seconds as i64;
        let level: Value = if add > 0 {
            http()
                .post(format!("{base}/api/admin/stock/{sku}"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "add": add }))
                .send()
                .unwrap()
                .error_for_status()
                .unwrap()
                .json()
                .unwrap()
        } else {
            let all: Value = http()
                .get(format!("{base}/api/admin/stock"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .unwrap()
                .json()
                .unwrap();
            all["products"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["sku"] == sku)
                .cloned()
                .unwrap()
        };
        stock_before.insert(sku, level["available"].as_i64().unwrap());
    }
    let checkout_pid = shop.pid("checkout").expect("checkout runs");
    let rss_start = rss_kib(checkout_pid).unwrap_or(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let stop = Arc::new(AtomicBool::new(false));

    // Events seen on the channel, to republish (duplicates).
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    // The listener's subscription fails while Redis is down (it reconnects): those
    // failures are expected, and not printed.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some("event-listener") {
            default_hook(info);
        }
    }));
    let listener = {
        let (seen, stop, port) = (seen.clone(), stop.clone(), shop.redis_port);
        std::thread::Builder::new()
            .name("event-listener".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Reconnects after each Redis kill.
                    if let Ok(events) = std::panic::catch_unwind(|| {
                        let captured = Redis::capture_port(port, CHANNEL);
                        std::thread::sleep(Duration::from_secs(1));
                        captured.messages()
                    }) {
                        let mut seen = seen.lock().unwrap();
                        seen.extend(events);
                        let len = seen.len();
                        if len > 500 {
                            seen.drain(..len - 500);
                        }
                    }
                }
            })
            .unwrap()
    };

    // The clients.
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let mismatched_replays = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (base, attempts, mismatched) =
                (base.clone(), attempts.clone(), mismatched_replays.clone());
            std::thread::spawn(move || {
                let mut dice = Dice(client as u64 + 1);
                let mut n = 0;
                while Instant::now() < deadline {
                    n += 1;
                    let key = format!("chaos-{client}-{n}");
                    let (sku, quantity, card) = match dice.roll(10) {
                        0 => ("SPIN-MUG", 1, DECLINED_CARD),
                        1 => ("STICKER-PACK", 1, CAPTURE_FAILS_CARD),
                        2 => ("LIMITED-PRINT", 2, APPROVED_CARD),
                        3 => ("SPIN-MUG", 1, APPROVED_CARD),
                        _ => ("STICKER-PACK", 1 + dice.roll(3) as u32, APPROVED_CARD),
                    };
                    let body = order(sku, quantity, card, &format!("client{client}@example.com"));
                    let (status, id, _) = place(&base, &key, &body);
                    let mut answers = vec![(status, id.clone())];
                    // Some clients repeat the request with the same key: same answer.
                    if dice.roll(5) == 0 {
                        let (again, again_id, _) = place(&base, &key, &body);
                        answers.push((again, again_id.clone()));
                        if status != 0 && (again, &again_id) != (status, &id) {
                            mismatched
                                .lock()
                                .unwrap()
                                .push((key.clone(), status, again));
                        }
                    }
                    attempts.lock().unwrap().push(Attempt { key, answers });
                }
            })
        })
        .collect();

    // The faults, spread over the load: (when, as a fraction of it; name; what).
    let faults: [(f64, &str, Fault); 10] = [
        (
            0.10,
            "mail 429",
            Fault::Mail(json!({"count": 6, "status": 429})),
        ),
        (0.20, "kill redis", Fault::Kill("redis")),
        (
            0.30,
            "mail 503",
            Fault::Mail(json!({"count": 6, "status": 503})),
        ),
        (0.35, "kill fulfilment-a", Fault::Kill("fulfilment-a")),
        (
            0.45,
            "mail slow",
            Fault::Mail(json!({"count": 10, "delay_ms": 400})),
        ),
        (0.50, "kill redis", Fault::Kill("redis")),
        (
            0.60,
            "mail unverified",
            Fault::Mail(json!({"count": 4, "unverified": true})),
        ),
        (0.65, "kill fulfilment-b", Fault::Kill("fulfilment-b")),
        (
            0.70,
            "mail 500",
            Fault::Mail(json!({"count": 4, "status": 500})),
        ),
        (0.80, "kill redis", Fault::Kill("redis")),
    ];
    let mut injected: BTreeMap<&str, u32> = BTreeMap::new();
    let mut malformed = 0u32;
    let mut duplicates = 0u32;
    let mut next_fault = faults.iter().peekable();
    let mut rng = Dice(99);
    while Instant::now() < deadline {
        let progress = started.elapsed().as_secs_f64() / seconds as f64;
        while let Some((at, name, fault)) = next_fault.peek() {
            if progress < *at {
                break;
            }
            let done = match fault {
                Fault::Kill(process) => shop.kill(process),
                Fault::Mail(fault) => {
                    shop.fault(fault.clone());
                    true
                }
            };
            if !done {
                // The process is between a crash and its restart: try again shortly.
                break;
            }
            *injected.entry(*name).or_default() += 1;
            next_fault.next();
        }
        // Duplicates and malformed messages, all along.
        let event = {
            let seen = seen.lock().unwrap();
            (!seen.is_empty()).then(|| seen[rng.roll(seen.len() as u64) as usize].clone())
        };
        if let Some(event) = event {
            if redis_command(shop.redis_port, &["PUBLISH", CHANNEL, &event]).is_ok() {
                duplicates += 1;
            }
        }
        let garbage = [
            "{not json",
            r#"{"schema_version":2,"type":"order.placed"}"#,
            r#"{"schema_version":1,"type":"order.placed","order_id":"ord_../x"}"#,
        ];
        if redis_command(
            shop.redis_port,
            &["PUBLISH", CHANNEL, garbage[rng.roll(3) as usize]],
        )
        .is_ok()
        {
            malformed += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for client in clients {
        client.join().unwrap();
    }
    let load_seconds = started.elapsed().as_secs_f64();

    // Faults over: redrive until every order is finished (the supervisor's job also
    // redrives every 2 s; this only hurries it).
    let attempts = attempts.lock().unwrap().clone();
    let quiet_started = Instant::now();
    let orders = wait_for(
        "every order to be finished",
        Duration::from_secs(180),
        || {
            let _ = http()
                .post(format!("{base}/api/admin/redrive?older_than_seconds=0"))
                .bearer_auth(ADMIN_TOKEN)
                .send();
            let orders = all_orders(shop.redis_port)?;
            orders
                .values()
                .all(|o| o["status"] != "accepted" && o["notification"]["state"] != "pending")
                .then_some(orders)
        },
    );
    let quiet_seconds = quiet_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = listener.join();
    let rss_end = rss_kib(checkout_pid).unwrap_or(0);

    // The invariants.
    let mut report: Vec<(&str, usize, usize)> = Vec::new(); // (invariant, violations, checked)
    let answered: HashMap<String, &Attempt> = attempts
        .iter()
        .flat_map(|a| {
            a.answers
                .iter()
                .filter(|(status, _)| *status == 202)
                .map(move |(_, id)| (id.clone().unwrap(), a))
        })
        .collect();
    let lost = answered
        .keys()
        .filter(|id| !orders.contains_key(*id))
        .count();
    report.push((
        "orders answered 202 that exist and ended confirmed or failed (0 lost)",
        lost,
        answered.len(),
    ));
    let unexplained = orders
        .values()
        .filter(|o| o["status"] == "failed" && o["reason"].as_str().is_none_or(str::is_empty))
        .count();
    report.push(("failed orders that say why", unexplained, orders.len()));
    // One order per key: no key was answered with two orders, and every order in the
    // store is the answer some key got (a second order made behind a key would not be).
    let mut keys_with_two_orders = Vec::new();
    let mut told: HashSet<&String> = HashSet::new();
    for attempt in &attempts {
        let ids: HashSet<&String> = attempt
            .answers
            .iter()
            .filter_map(|(_, id)| id.as_ref())
            .collect();
        if ids.len() > 1 {
            keys_with_two_orders.push(attempt.key.clone());
        }
        told.extend(ids);
    }
    report.push((
        "Idempotency-Keys answered with more than one order",
        keys_with_two_orders.len(),
        attempts.len(),
    ));
    let untold = orders.keys().filter(|id| !told.contains(id)).count();
    report.push((
        "orders in the store that no request was answered with",
        untold,
        orders.len(),
    ));
    let replays = mismatched_replays.lock().unwrap().clone();
    report.push((
        "repeated requests answered differently",
        replays.len(),
        attempts.iter().filter(|a| a.answers.len() > 1).count(),
    ));

    let emails: Vec<Value> = http()
        .get(format!("{}/__devmail/messages", shop.mail_url))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut emails_per_order: HashMap<&str, usize> = HashMap::new();
    for email in &emails {
        if let Some(subject) = email["subject"].as_str() {
            for id in orders.keys() {
                if subject.contains(id.as_str()) {
                    *emails_per_order.entry(id.as_str()).or_default() += 1;
                }
            }
        }
    }
    let sent: Vec<&String> = orders
        .iter()
        .filter(|(_, o)| o["notification"]["state"] == "sent")
        .map(|(id, _)| id)
        .collect();
    let wrong_email_count = orders
        .iter()
        .filter(|(id, o)| {
            let expected = usize::from(o["notification"]["state"] == "sent");
            emails_per_order.get(id.as_str()).copied().unwrap_or(0) != expected
        })
        .count();
    report.push((
        "orders without exactly one email if sent, none if refused (0 duplicates)",
        wrong_email_count,
        orders.len(),
    ));
    let emails_total_mismatch = usize::from(emails.len() != sent.len());
    report.push((
        "emails accepted = orders whose email is sent",
        emails_total_mismatch,
        1,
    ));
    // Bounded memory: the checkout runner (never restarted here) may not grow by more
    // than 64 MiB over the soak, whatever its length.
    report.push((
        "checkout runner RSS grew by more than 64 MiB",
        usize::from(rss_start == 0 || rss_end > rss_start + 64 * 1024),
        1,
    ));

    // Stock, as the operator's endpoint reports it: levels and units in doubt (changes
    // whose outcome died with Redis or with a handler; see docs/reliability.md).
    let stock: Value = http()
        .get(format!("{base}/api/admin/stock"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut stock_lines = Vec::new();
    let (mut oversold, mut leaked_silently) = (0, 0);
    for (&sku, &initial) in &stock_before {
        let level = stock["products"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["sku"] == sku)
            .unwrap();
        let remaining = level["available"].as_i64().unwrap();
        let in_doubt = level["in_doubt"].as_i64().unwrap();
        let confirmed: i64 = orders
            .values()
            .filter(|o| o["status"] == "confirmed")
            .flat_map(|o| o["items"].as_array().cloned().unwrap_or_default())
            .filter(|i| i["sku"] == sku)
            .map(|i| i["quantity"].as_i64().unwrap())
            .sum();
        let leaked = initial - remaining - confirmed;
        if leaked < 0 || remaining < 0 {
            oversold += 1;
        }
        if leaked > in_doubt {
            leaked_silently += 1;
        }
        stock_lines.push(json!({"sku": sku, "initial": initial, "remaining": remaining, "confirmed": confirmed, "missing": leaked, "in_doubt": in_doubt}));
    }
    report.push((
        "SKUs where remaining + confirmed > initial (0 oversold, 0 double give-backs)",
        oversold,
        stock_before.len(),
    ));
    report.push((
        "SKUs missing units not recorded in doubt (0 leaked silently)",
        leaked_silently,
        stock_before.len(),
    ));

    let status = shop.status();
    let restarts: BTreeMap<String, u64> = status["processes"]
        .as_object()
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.clone(), v["restarts"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let counts = json!({
        "load_seconds": load_seconds,
        "quiet_after_seconds": quiet_seconds,
        "clients": CLIENTS,
        "requests": attempts.len(),
        "answers": count_by(attempts.iter().map(|a| a.answers[0].0)),
        "orders": orders.len(),
        "orders_answered_202": answered.len(),
        "orders_by_status": count_by(orders.values().map(|o| o["status"].as_str().unwrap_or("?").to_owned())),
        "emails_by_state": count_by(orders.values().map(|o| o["notification"]["state"].as_str().unwrap_or("?").to_owned())),
        "emails_accepted": emails.len(),
        "faults": {"injected": injected, "duplicates_published": duplicates, "malformed_published": malformed},
        "restarts": restarts,
        "stock": stock_lines,
        "stock_doubts": stock["doubts"],
        "checkout_rss_kib": {"start": rss_start, "end": rss_end},
        "invariants": report.iter().map(|(name, bad, checked)| json!({"invariant": name, "violations": bad, "checked": checked})).collect::<Vec<_>>(),
    });
    let dir = workspace_root().join("target/chaos");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&counts).unwrap(),
    )
    .unwrap();
    println!("\n== chaos soak: {seconds} s of load, {CLIENTS} clients ==");
    println!("{}", serde_json::to_string_pretty(&counts).unwrap());
    println!(
        "\n{:<78} {:>10} {:>8}",
        "invariant", "violations", "checked"
    );
    for (name, bad, checked) in &report {
        println!("{name:<78} {bad:>10} {checked:>8}");
    }
    println!("checkout runner RSS: {rss_start} KiB at start, {rss_end} KiB at the end");

    // The faults really happened: Redis and the replicas were restarted.
    assert!(
        restarts.get("redis").copied().unwrap_or(0) >= 1,
        "{restarts:?}"
    );
    assert!(restarts.values().sum::<u64>() >= 3, "{restarts:?}");
    let failed: Vec<&(&str, usize, usize)> = report.iter().filter(|(_, bad, _)| *bad > 0).collect();
    assert!(
        failed.is_empty(),
        "invariants violated: {failed:?}\n(replays: {replays:?}; keys with two orders: {keys_with_two_orders:?})"
    );
    assert!(!answered.is_empty());
    drop(shop);
}

fn count_by<T: Ord + ToString>(items: impl Iterator<Item = T>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item.to_string()).or_default() += 1;
    }
    counts
}

/// Every order record in the store, by id (read straight from Redis, for checking).
fn all_orders(redis_port: u16) -> Option<BTreeMap<String, Value>> {
    let keys = redis_command(redis_port, &["KEYS", "shop:v1:order:*"]).ok()?;
    let mut orders = BTreeMap::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let record: Value =
            serde_json::from_str(&redis_command(redis_port, &["GET", key]).ok()?).ok()?;
        let (status, reason) = match &record["status"]["state"] {
            Value::String(s) => (s.clone(), record["status"]["reason"].clone()),
            _ => ("?".to_owned(), Value::Null),
        };
        let items: Vec<Value> = record["lines"]
            .as_array()
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| json!({"sku": l["sku"], "quantity": l["quantity"]}))
                    .collect()
            })
            .unwrap_or_default();
        orders.insert(
            record["id"].as_str()?.to_owned(),
            json!({"status": status, "reason": reason, "notification": record["notification"], "items": items}),
        );
    }
    Some(orders)
}
