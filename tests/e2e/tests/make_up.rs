//! `make up` as a user runs it (`scripts/up.sh`, here on ports of its own): the shop
//! answers; when Redis is killed, the app exits as `spin up` does and the supervisor
//! brings Redis and the app back, with every accepted order still there (Redis keeps an
//! append-only file); Ctrl-C (SIGTERM) stops everything it started.

use std::process::Command;
use std::time::Duration;

use e2e::*;
use serde_json::Value;

fn status(state: &std::path::Path) -> Value {
    std::fs::read(state.join("status.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

fn order_state(base: &str, id: &str) -> Option<(String, String)> {
    let order: Value = http()
        .get(format!("{base}/api/orders/{id}"))
        .send()
        .ok()?
        .json()
        .ok()?;
    Some((
        order["status"].as_str()?.to_owned(),
        order["notification"]["state"].as_str()?.to_owned(),
    ))
}

fn place(base: &str) -> Option<String> {
    let reply = http()
        .post(format!("{base}/api/orders"))
        .json(&order("SPIN-MUG", 1, APPROVED_CARD, "ada@example.com"))
        .send()
        .ok()?;
    let body: Value = reply.json().ok()?;
    body["order_id"].as_str().map(str::to_owned)
}

#[test]
fn make_up_runs_the_shop_and_brings_it_back_after_redis_dies() {
    let scratch = Scratch::new("make-up");
    let state = scratch.path().join("state");
    let (http_port, redis_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{http_port}");
    let mut up = Process::spawn(
        "up",
        Command::new(workspace_root().join("scripts/up.sh"))
            .env("LISTEN", format!("127.0.0.1:{http_port}"))
            .env("REDIS_PORT", redis_port.to_string())
            .env("MAIL_PORT", free_port().to_string())
            .env("VIEWER_PORT", free_port().to_string())
            .env("REDRIVE_SECONDS", "2")
            .env("STATE_DIR", &state)
            .env("SKIP_BUILD", "1")
            // The test build of the runner: `make test` does not build the optimised one.
            .env("RUNNER", runner_binary())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT"),
        scratch.path(),
    );
    wait_for("make up to serve", Duration::from_secs(300), || {
        assert!(up.exited().is_none(), "up.sh exited:\n{}", up.log());
        http()
            .get(format!("{base}/api/products"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
    });
    let config = std::fs::read_to_string(state.join("supervisor.toml")).unwrap();
    assert!(config.contains(r#""--appendfsync", "always""#), "{config}");
    assert!(
        !config.contains("dev-admin-token"),
        "the token is on no command line"
    );

    let first = wait_for("an order accepted", Duration::from_secs(30), || {
        place(&base)
    });
    wait_for("the order emailed", Duration::from_secs(30), || {
        (order_state(&base, &first)? == ("confirmed".into(), "sent".into())).then_some(())
    });

    // Redis dies: the app's Redis trigger ends and the app exits, as `spin up` does; the
    // supervisor restarts both.
    let redis_pid = status(&state)["processes"]["redis"]["pid"]
        .as_u64()
        .expect("redis is supervised");
    Command::new("kill")
        .args(["-KILL", &redis_pid.to_string()])
        .status()
        .unwrap();
    wait_for(
        "Redis and the app restarted",
        Duration::from_secs(120),
        || {
            let processes = &status(&state)["processes"];
            (processes["redis"]["restarts"].as_u64() >= Some(1)
                && processes["app"]["restarts"].as_u64() >= Some(1)
                && processes["app"]["ready"] == true)
                .then_some(())
        },
    );
    // The accepted order survived, and new orders go all the way again.
    assert_eq!(
        order_state(&base, &first),
        Some(("confirmed".into(), "sent".into()))
    );
    let second = wait_for("an order accepted again", Duration::from_secs(60), || {
        place(&base)
    });
    wait_for("the new order emailed", Duration::from_secs(60), || {
        (order_state(&base, &second)? == ("confirmed".into(), "sent".into())).then_some(())
    });
    let log = up.log();
    assert!(
        log.contains("redis exited"),
        "the supervisor says why:\n{log}"
    );

    // Ctrl-C: everything stops.
    Command::new("kill")
        .args(["-TERM", &up.child_id().to_string()])
        .status()
        .unwrap();
    wait_for("make up to stop", Duration::from_secs(60), || up.exited());
    for port in [http_port, redis_port] {
        assert!(!listening(port), "port {port} still open");
    }
}
