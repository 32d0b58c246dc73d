//! The runner as a host: a component that traps costs one request a 500, not the
//! server; a manifest field the runner does not support is refused by name.

use std::process::Command;

use e2e::*;

/// A component exporting `wasi:http/incoming-handler@0.2.0` whose handler traps at once.
const TRAPPING_COMPONENT: &str = r#"
(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $request))
  (alias export $types "response-outparam" (type $response-out))
  (core module $m
    (func (export "handle") (param i32 i32) unreachable))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $request)) (param "response-out" (own $response-out))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler)))
"#;

fn write_app(scratch: &Scratch, extra_component_field: &str) -> std::path::PathBuf {
    let dir = scratch.path();
    std::fs::write(
        dir.join("trap.wasm"),
        wat::parse_str(TRAPPING_COMPONENT).unwrap(),
    )
    .unwrap();
    let checkout = workspace_root().join("target/wasm32-wasip2/release/checkout.wasm");
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "trap-test"
[variables]
redis_address = {{ default = "redis://127.0.0.1:1" }}
[[trigger.http]]
route = "/trap/..."
component = "trap"
[[trigger.http]]
route = "/api/..."
component = "checkout"
[component.trap]
source = "trap.wasm"
{extra_component_field}
[component.checkout]
source = "{}"
key_value_stores = ["default"]
[component.checkout.variables]
redis_address = "{{{{ redis_address }}}}"
"#,
        checkout.display()
    );
    let path = dir.join("spin.toml");
    std::fs::write(&path, manifest).unwrap();
    path
}

#[test]
fn a_trapping_component_answers_500_and_the_runner_keeps_serving() {
    let scratch = Scratch::new("trap");
    let manifest = write_app(&scratch, "");
    let port = free_port();
    // No runtime config: the default store is SQLite under .spin/, as with Spin.
    let _runner = Runner::start_manifest(&scratch, &manifest, port);
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..3 {
        let trapped = http().get(format!("{base}/trap/now")).send().unwrap();
        assert_eq!(trapped.status().as_u16(), 500);
        let healthy = http().get(format!("{base}/api/products")).send().unwrap();
        assert_eq!(healthy.status().as_u16(), 200);
    }
    let missing = http().get(format!("{base}/nowhere")).send().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert!(scratch.path().join(".spin/sqlite_key_value.db").exists());
}

#[test]
fn unsupported_manifest_fields_are_refused_by_name() {
    let scratch = Scratch::new("refuse");
    let manifest = write_app(&scratch, r#"sqlite_databases = ["default"]"#);
    let stderr = refused_at_startup(scratch.path(), &manifest, &[]);
    assert!(stderr.contains("sqlite_databases"), "{stderr}");
}

#[test]
fn sigterm_stops_the_runner_cleanly() {
    let scratch = Scratch::new("sigterm");
    let manifest = write_app(&scratch, "");
    let mut runner = Runner::start_manifest(&scratch, &manifest, free_port());
    let healthy = http()
        .get(format!("{}/api/products", runner.base_url))
        .send()
        .unwrap();
    assert_eq!(healthy.status().as_u16(), 200);
    // `stop` sends SIGTERM and only kills if the runner is still there after 5 s.
    let status = runner.process.stop().expect("exit status");
    assert!(status.success(), "{status:?}\n{}", runner.process.log());
    assert!(runner.process.log().contains("spin-runner: shutting down"));
}

#[test]
fn a_component_importing_wasi_otel_needs_the_experimental_flag() {
    // As `spin up` without --experimental-wasi-otel: the traced build is refused at
    // startup, naming the flag.
    let scratch = Scratch::new("otel-flag");
    let stderr = refused_at_startup(
        scratch.path(),
        &workspace_root().join("spin.toml"),
        &[
            "--variable",
            &format!("redis_address=redis://127.0.0.1:{}", free_port()),
        ],
    );
    assert!(stderr.contains("wasi:otel"), "{stderr}");
    assert!(stderr.contains("--experimental-wasi-otel"), "{stderr}");
}

#[test]
fn without_redis_at_startup_the_runner_fails_at_once() {
    // As `spin up`: the Redis trigger cannot subscribe, so the runner stops with an error
    // instead of waiting forever.
    let scratch = Scratch::new("no-redis");
    let port = free_port();
    let started = std::time::Instant::now();
    let output = Command::new(runner_binary())
        .args(["up", "--experimental-wasi-otel", "--from"])
        .arg(workspace_root().join("spin.toml"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--variable",
            &format!("redis_address=redis://127.0.0.1:{port}"),
        ])
        .current_dir(scratch.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot subscribe at redis://127.0.0.1:{port}")),
        "{stderr}"
    );
}
