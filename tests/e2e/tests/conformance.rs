//! Spin's own conformance cases, through a guest as Spin users build them: the
//! `conformance-guest` crate (spin-sdk 5.2) compiled for `wasm32-wasip1`, which makes a
//! core module, not a component. The runner must componentize it as Spin does, route
//! to it with Spin's precedence and headers, deny key-value stores it was not granted,
//! and hold its outbound requests to `allowed_outbound_hosts`, CIDR ranges included.
//!
//! The guest is built by this test, once per run (about two minutes the first time,
//! with the toolchain `make build` installs; see [`guest`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

/// The guest's core module: built with rustup's `wasm32-wasip1` target where it is
/// installed, else with the fallback toolchain of `scripts/build-wasm.sh` (Debian's
/// rustc-web and its std sources, lld-19's `wasm-ld`, Debian's wasi-libc), which
/// `make build` installs and which CI has.
fn guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let root = workspace_root();
        let rustup_has_target = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("wasm32-wasip1"));
        // Its own target directory: the `cargo test` running this holds the lock on
        // the workspace's.
        let (mut command, target_dir) = if rustup_has_target {
            let target_dir = root.join("target/conformance-guest");
            let mut command =
                Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            command.env_remove("RUSTFLAGS");
            (command, target_dir)
        } else {
            for needed in [
                "/usr/bin/cargo",
                "/usr/bin/rustc",
                "/usr/bin/wasm-ld-19",
                "/usr/lib/wasm32-wasi/libc.a",
            ] {
                assert!(
                    Path::new(needed).exists(),
                    "{needed} is missing: run `make build` first (it installs the fallback wasm toolchain)"
                );
            }
            let target_dir = root.join("target/wasm-fallback");
            let mut command = Command::new("/usr/bin/cargo");
            command
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env(
                    "RUSTFLAGS",
                    "-C linker=/usr/bin/wasm-ld-19 -C link-self-contained=no -L native=/usr/lib/wasm32-wasi",
                )
                .arg("-Zbuild-std=std,panic_abort");
            (command, target_dir)
        };
        let output = command
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .args([
                "build",
                "--locked",
                "--release",
                "--target",
                "wasm32-wasip1",
                "-p",
                "conformance-guest",
            ])
            .output()
            .expect("running cargo for the guest");
        assert!(
            output.status.success(),
            "building the guest failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let wasm = target_dir.join("wasm32-wasip1/release/conformance_guest.wasm");
        let bytes = std::fs::read(&wasm).expect("the guest's wasm");
        assert!(
            wasmparser::Parser::is_core_wasm(&bytes),
            "{} should be a core module, as wasm32-wasip1 builds are",
            wasm.display()
        );
        wasm
    })
}

/// Writes a manifest running the guest as component `guest` (and as `other`, for
/// routes that go elsewhere), with `[[trigger.http]]` routes to each.
fn app(scratch: &Scratch, routes: &[(&str, &str)], component_fields: &str) -> PathBuf {
    let mut manifest = String::from(
        "spin_manifest_version = 2\n[application]\nname = \"conformance\"\nversion = \"1.2.3\"\n",
    );
    for (route, component) in routes {
        manifest.push_str(&format!(
            "[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"{component}\"\n"
        ));
    }
    for id in ["guest", "other"] {
        manifest.push_str(&format!(
            "[component.{id}]\nsource = \"{}\"\n{component_fields}\n",
            guest().display()
        ));
    }
    let path = scratch.path().join("spin.toml");
    std::fs::write(&path, manifest).unwrap();
    path
}

fn start(scratch: &Scratch, manifest: &Path) -> Runner {
    Runner::start_manifest(scratch, manifest, free_port())
}

/// GET `path` with `headers`: the status and the body as text.
fn get(runner: &Runner, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = http().get(format!("{}{path}", runner.base_url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().expect("GET");
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

/// The `spin-*` headers the guest saw, sorted, with `spin-client-addr` checked (it is
/// the test's own loopback address) and left out.
fn spin_headers(runner: &Runner, path: &str, headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let (status, body) = get(runner, path, headers);
    assert_eq!(status, 200, "{path}: {body}");
    let seen: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(seen["path_with_query"], path, "{body}");
    let mut pairs: Vec<(String, String)> = seen["spin_headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    let client = pairs
        .iter()
        .position(|(name, _)| name == "spin-client-addr")
        .unwrap_or_else(|| panic!("no spin-client-addr in {pairs:?}"));
    let client: std::net::SocketAddr = pairs.remove(client).1.parse().unwrap();
    assert!(client.ip().is_loopback(), "{client}");
    pairs
}

fn expected(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn a_wasip1_core_module_is_componentized_once_then_served_from_the_cache() {
    let scratch = Scratch::new("conformance-componentize");
    let manifest = app(&scratch, &[("/...", "guest")], "");
    let mut runner = start(&scratch, &manifest);
    let (status, _) = get(&runner, "/hello", &[]);
    assert_eq!(status, 200);
    let log = runner.process.log();
    assert!(log.contains("made a component of the core module"), "{log}");
    // println! in the guest is WASI preview 1's fd_write, through the adapter to stdout.
    assert!(log.contains("conformance-guest: /hello"), "{log}");
    runner.process.stop();

    // A second start finds it compiled: nothing is encoded or compiled again.
    let runner = start(&scratch, &manifest);
    let (status, _) = get(&runner, "/again", &[]);
    assert_eq!(status, 200);
    let log = runner.process.log();
    assert!(
        log.contains("loaded compiled component from cache"),
        "{log}"
    );
    assert!(
        !log.contains("made a component of the core module"),
        "{log}"
    );
}

#[test]
fn every_request_gets_a_fresh_instance_even_from_a_reused_memory_slot() {
    // The runner reuses pooled memory slots (as Spin does) and resets only the pages an
    // instance dirtied: nothing a request left, in globals, statics or heap, may reach
    // the next one, one after another or many at once.
    let scratch = Scratch::new("conformance-fresh-instance");
    let manifest = app(&scratch, &[("/...", "guest")], "");
    let runner = start(&scratch, &manifest);
    let fresh = "requests before 0, dirty bytes 0";
    for _ in 0..20 {
        assert_eq!(
            get(&runner, "/instance", &[("probe", "instance")]),
            (200, fresh.to_owned())
        );
    }
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..10)
                        .map(|_| get(&runner, "/instance", &[("probe", "instance")]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for client in clients {
            for answer in client.join().unwrap() {
                assert_eq!(answer, (200, fresh.to_owned()));
            }
        }
    });
}

#[test]
fn routes_with_parameters_and_wildcards_carry_spins_headers() {
    let scratch = Scratch::new("conformance-routes");
    let manifest = app(
        &scratch,
        &[
            ("/base/:path_segment/:path_end/...", "guest"),
            ("/items/:id", "guest"),
            ("/items/special", "other"),
            ("/items/...", "guest"),
            ("/...", "other"),
        ],
        "",
    );
    let runner = start(&scratch, &manifest);

    // Spin's `request-shape` conformance case, value for value.
    assert_eq!(
        spin_headers(
            &runner,
            "/base/path/end/rest?key=value",
            &[("host", "example.com")]
        ),
        expected(&[
            (
                "spin-raw-component-route",
                "/base/:path_segment/:path_end/..."
            ),
            (
                "spin-full-url",
                "http://example.com/base/path/end/rest?key=value"
            ),
            ("spin-path-info", "/rest"),
            ("spin-base-path", "/"),
            ("spin-component-route", "/base/:path_segment/:path_end"),
            ("spin-path-match-path-segment", "path"),
            ("spin-path-match-path-end", "end"),
            ("spin-matched-route", "/base/:path_segment/:path_end/..."),
        ])
    );

    // A parameter beats a wildcard; an exact segment beats a parameter.
    let host = format!("127.0.0.1:{}", runner.base_url.rsplit(':').next().unwrap());
    let full = |path: &str| format!("http://{host}{path}");
    assert_eq!(
        spin_headers(&runner, "/items/42", &[]),
        expected(&[
            ("spin-raw-component-route", "/items/:id"),
            ("spin-full-url", &full("/items/42")),
            ("spin-path-info", ""),
            ("spin-base-path", "/"),
            ("spin-component-route", "/items/:id"),
            ("spin-path-match-id", "42"),
            ("spin-matched-route", "/items/:id"),
        ])
    );
    assert_eq!(
        spin_headers(&runner, "/items/special", &[]),
        expected(&[
            ("spin-raw-component-route", "/items/special"),
            ("spin-full-url", &full("/items/special")),
            ("spin-path-info", ""),
            ("spin-base-path", "/"),
            ("spin-component-route", "/items/special"),
            ("spin-matched-route", "/items/special"),
        ])
    );
    // The wildcard keeps the trailing slash in the path info, as Spin does.
    assert_eq!(
        spin_headers(&runner, "/items/42/parts/", &[]),
        expected(&[
            ("spin-raw-component-route", "/items/..."),
            ("spin-full-url", &full("/items/42/parts/")),
            ("spin-path-info", "/42/parts/"),
            ("spin-base-path", "/"),
            ("spin-component-route", "/items"),
            ("spin-matched-route", "/items/..."),
        ])
    );
    // The catch-all, and a client's own spin-* header replaced by Spin's value.
    assert_eq!(
        spin_headers(&runner, "/elsewhere?x=1", &[("spin-path-info", "/forged")]),
        expected(&[
            ("spin-raw-component-route", "/..."),
            ("spin-full-url", &full("/elsewhere?x=1")),
            ("spin-path-info", "/elsewhere"),
            ("spin-base-path", "/"),
            ("spin-component-route", ""),
            ("spin-matched-route", "/..."),
        ])
    );
    // Spin answers its own well-known paths before any route, even `/...`.
    assert_eq!(
        get(&runner, "/.well-known/spin/health", &[]),
        (200, "OK".to_owned())
    );
    let (status, info) = get(&runner, "/.well-known/spin/info", &[]);
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        info,
        serde_json::json!({"name": "conformance", "version": "1.2.3"})
    );
    assert_eq!(get(&runner, "/.well-known/spin/other", &[]).0, 404);
    // The startup listing, in precedence order, as `spin up` prints it.
    let log = runner.process.log();
    assert!(
        log.contains(&format!(
            "  guest: http://{host}/base/:path_segment/:path_end (wildcard)"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("  other: http://{host} (wildcard)")),
        "{log}"
    );
}

/// What the guest answers when it opens `label` through `interface` (`kv-spin` or
/// `kv-wasi`).
fn open_store(runner: &Runner, path: &str, interface: &str, label: &str) -> String {
    let (status, body) = get(runner, path, &[("probe", interface), ("label", label)]);
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn key_value_stores_not_granted_are_access_denied_through_both_interfaces() {
    let scratch = Scratch::new("conformance-kv");
    // `guest` may use `default`; `other` no store at all (Spin's
    // key-value-no-permission case), although the app has one.
    let manifest = app(
        &scratch,
        &[("/granted/...", "guest"), ("/...", "other")],
        "",
    );
    let text = std::fs::read_to_string(&manifest).unwrap().replacen(
        "[component.guest]\n",
        "[component.guest]\nkey_value_stores = [\"default\"]\n",
        1,
    );
    std::fs::write(&manifest, text).unwrap();
    let runner = start(&scratch, &manifest);
    for interface in ["kv-spin", "kv-wasi"] {
        // Granted: opened, and a value set is read back.
        assert_eq!(open_store(&runner, "/granted/", interface, "default"), "ok");
        // A label the component lists nowhere: denied, whether or not a store by that
        // name exists.
        assert_eq!(
            open_store(&runner, "/granted/", interface, "forbidden"),
            "access-denied",
            "{interface}"
        );
        assert_eq!(
            open_store(&runner, "/elsewhere", interface, "default"),
            "access-denied",
            "{interface}"
        );
    }
    let log = runner.process.log();
    assert!(
        log.contains("key-value store open denied: not in the component's key_value_stores"),
        "{log}"
    );
}

#[test]
fn a_granted_store_label_no_store_defines_stops_the_app_at_startup() {
    // As Spin: a label in key_value_stores that neither the runtime config nor the
    // default (`default`) defines is an error before anything runs.
    let scratch = Scratch::new("conformance-kv-unknown");
    let manifest = app(&scratch, &[("/...", "guest")], "");
    let text = std::fs::read_to_string(&manifest).unwrap().replacen(
        "[component.guest]\n",
        "[component.guest]\nkey_value_stores = [\"default\", \"cache\"]\n",
        1,
    );
    std::fs::write(&manifest, text).unwrap();
    let stderr = refused_at_startup(scratch.path(), &manifest, &[]);
    assert!(
        stderr.contains("unknown key_value_stores label \"cache\" for component \"guest\""),
        "{stderr}"
    );

    // Defined in a runtime config, the same label opens.
    let config = scratch.path().join("runtime-config.toml");
    std::fs::write(
        &config,
        format!(
            "[key_value_store.cache]\ntype = \"spin\"\npath = \"{}\"\n",
            scratch.path().join("cache.db").display()
        ),
    )
    .unwrap();
    let runner = start_with_config(&scratch, &manifest, &config);
    for interface in ["kv-spin", "kv-wasi"] {
        assert_eq!(open_store(&runner, "/", interface, "cache"), "ok");
    }
}

/// The runner on `manifest` with `--runtime-config-file config`, once it listens.
fn start_with_config(scratch: &Scratch, manifest: &Path, config: &Path) -> Runner {
    let port = free_port();
    let mut command = Command::new(runner_binary());
    command
        .args(["up", "--from"])
        .arg(manifest)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--runtime-config-file")
        .arg(config);
    Runner::spawn(scratch, command, port, true)
}

/// The guest on every route, granted the store `default`, which the runtime config
/// maps to `redis`.
fn guest_on_a_redis_store(scratch: &Scratch, redis: &Redis) -> Runner {
    let manifest = app(scratch, &[("/...", "guest")], "");
    let text = std::fs::read_to_string(&manifest).unwrap().replacen(
        "[component.guest]\n",
        "[component.guest]\nkey_value_stores = [\"default\"]\n",
        1,
    );
    std::fs::write(&manifest, text).unwrap();
    let config = scratch.path().join("runtime-config.toml");
    std::fs::write(
        &config,
        format!(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        ),
    )
    .unwrap();
    start_with_config(scratch, &manifest, &config)
}

/// A plain HTTP server on `127.0.0.1:<port>` and `127.0.0.2:<port>` answering
/// `hello from <address>`, counting the requests it gets.
struct Upstream {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    fn start() -> Upstream {
        use std::io::{BufRead, BufReader, Write};
        let first = free_listener();
        let port = first.local_addr().unwrap().port();
        let second = std::net::TcpListener::bind(("127.0.0.2", port)).unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for listener in [first, second] {
            let requests = requests.clone();
            std::thread::spawn(move || {
                for mut stream in listener.incoming().flatten() {
                    let local = stream.local_addr().unwrap().ip();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = format!("hello from {local}");
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
        Upstream { port, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_cidr_range_allows_any_address_in_it_and_no_host_name() {
    let upstream = Upstream::start();
    let port = upstream.port;
    let scratch = Scratch::new("conformance-cidr");
    let manifest = app(
        &scratch,
        &[("/...", "guest")],
        &format!("allowed_outbound_hosts = [\"*://127.0.0.0/24:{port}\"]"),
    );
    let runner = start(&scratch, &manifest);
    let outbound = |url: String| {
        let (status, body) = get(&runner, "/", &[("probe", "outbound"), ("url", &url)]);
        assert_eq!(status, 200, "{body}");
        body
    };
    // Any address in the range, on the allowed port.
    assert_eq!(
        outbound(format!("http://127.0.0.1:{port}/")),
        "status 200: hello from 127.0.0.1"
    );
    assert_eq!(
        outbound(format!("http://127.0.0.2:{port}/")),
        "status 200: hello from 127.0.0.2"
    );
    assert_eq!(upstream.requests(), 2);
    // Denied before any connection: a host name (though it resolves into the range),
    // an address outside the /24, another port.
    for denied in [
        format!("http://localhost:{port}/"),
        format!("http://127.0.1.1:{port}/"),
        format!("http://127.0.0.1:{}/", free_port()),
    ] {
        assert_eq!(
            outbound(denied.clone()),
            "error: ErrorCode::HttpRequestDenied",
            "{denied}"
        );
    }
    assert_eq!(upstream.requests(), 2);
}

/// The guest on every route, allowed outbound Redis to `redis`.
fn guest_allowed_outbound_redis(scratch: &Scratch, redis: &Redis) -> Runner {
    let manifest = app(
        scratch,
        &[("/...", "guest")],
        &format!("allowed_outbound_hosts = [\"{}\"]", redis.url()),
    );
    start(scratch, &manifest)
}

/// As Spin's outbound Redis: every `open` is a connection of its own, so what a guest
/// sets on one through `execute` (here `SELECT 1`) reaches neither its other
/// connections nor the connections of later instances.
#[test]
fn every_outbound_redis_open_is_a_connection_of_its_own() {
    let scratch = Scratch::new("conformance-redis-connections");
    let redis = Redis::start(&scratch);
    let runner = guest_allowed_outbound_redis(&scratch, &redis);
    let in_database_1 = |key: &str| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "-n", "1", "GET", key])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // Two requests, two instances: the second must not inherit the first's database.
    for key in ["first-request", "second-request"] {
        let (status, body) = get(
            &runner,
            "/",
            &[
                ("probe", "redis-connections"),
                ("url", &redis.url()),
                ("key", key),
            ],
        );
        assert_eq!(
            (status, body.as_str()),
            (200, "second sees nil, same client false"),
            "{key}"
        );
        assert_eq!(
            redis.command(&["EXISTS", key]).unwrap(),
            ":0",
            "{key} in db 0"
        );
        assert_eq!(in_database_1(key), "first", "{key} in db 1");
    }
}

/// As Spin's outbound Redis (redis-rs 0.32, no response timeout): a command Redis holds
/// (here `BLPOP` of an empty list for 2 s) is answered when Redis answers, not failed by
/// the host for taking long.
#[test]
fn an_outbound_redis_command_redis_holds_is_waited_for() {
    let scratch = Scratch::new("conformance-redis-blocking");
    let redis = Redis::start(&scratch);
    let runner = guest_allowed_outbound_redis(&scratch, &redis);
    let started = Instant::now();
    let (status, body) = get(
        &runner,
        "/",
        &[
            ("probe", "redis-blocking"),
            ("url", &redis.url()),
            ("key", "empty-list"),
            ("seconds", "2"),
        ],
    );
    // BLPOP answers nil when its time is up.
    assert_eq!(
        (status, body.as_str()),
        (200, "answered [RedisResult::Nil]")
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "answered after {:?}, before Redis did",
        started.elapsed()
    );
}

/// As Spin's Redis key-value backend: every `open` of the store, through either
/// interface, sends Redis a `PING` before the guest gets the store, so an order costs
/// that round trip on Spin and here alike.
#[test]
fn opening_a_redis_store_pings_it_through_both_interfaces() {
    let scratch = Scratch::new("conformance-kv-redis-open");
    let redis = Redis::start(&scratch);
    let runner = guest_on_a_redis_store(&scratch, &redis);
    let calls = |command: &str| -> u64 {
        let stats = redis.command(&["INFO", "commandstats"]).unwrap();
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    };
    for interface in ["kv-spin", "kv-wasi"] {
        assert_eq!(redis.command(&["CONFIG", "RESETSTAT"]).unwrap(), "+OK");
        // The probe opens the store, then sets a key and reads it back.
        assert_eq!(open_store(&runner, "/", interface, "default"), "ok");
        assert_eq!(
            (calls("ping"), calls("set"), calls("get")),
            (1, 1, 1),
            "{interface}"
        );
    }
}

/// As Spin's Redis key-value backend (one shared `ConnectionManager`, each command sent
/// once): when Redis drops the store's connection between two calls of an instance (here
/// its idle `timeout` closes it), the next call fails; the one after, like the next
/// request's `open` and its `PING`, finds the connection re-established. Checked on
/// Spin 4.1.0-pre0 with this probe.
#[test]
fn a_store_command_on_a_connection_redis_dropped_fails_once_then_the_store_recovers() {
    let scratch = Scratch::new("conformance-kv-redis-drop");
    let redis = Redis::start(&scratch);
    let runner = guest_on_a_redis_store(&scratch, &redis);
    let idle = |ms: &str| {
        let (status, body) = get(&runner, "/", &[("probe", "kv-idle"), ("ms", ms)]);
        assert_eq!(status, 200, "{body}");
        body
    };
    assert_eq!(idle("0"), "ok");
    // Redis closes connections idle for a second.
    assert_eq!(
        redis.command(&["CONFIG", "SET", "timeout", "1"]).unwrap(),
        "+OK"
    );
    let dropped = idle("2500");
    assert!(dropped.starts_with("error: get:"), "{dropped}");
    assert_eq!(idle("0"), "ok");
}
