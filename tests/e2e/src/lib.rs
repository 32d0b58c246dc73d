//! Harness for the end-to-end tests in `tests/`: starts real processes on free loopback
//! ports (a `redis-server`, the dev mail API, the Spin-compatible runner with the real
//! compiled components) and stops them when dropped, so a test leaves nothing running.
//!
//! The binaries come from this workspace's target directory (`make test` builds them
//! before running the tests); the components from `target/wasm32-wasip2/release`, as
//! `spin.toml` names them.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;

/// The admin token every test runner is started with.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
/// The mail API key every test runner and dev mail API share.
pub const MAIL_KEY: &str = "e2e-mail-key";
/// The verified sender domain of the dev mail API.
pub const VERIFIED_DOMAIN: &str = "shop.test";
/// The `orders_channel` every test runner is started with: orders go to its shards,
/// `e2e.orders.0` to `e2e.orders.<order_shards - 1>`.
pub const CHANNEL_BASE: &str = "e2e.orders";
/// Where every order goes with one shard, the tests' default ([`RunnerOptions`]).
pub const CHANNEL: &str = "e2e.orders.0";

/// The workspace's root, canonical (no `..`), so that paths under it can be compared
/// and shown relative to it.
pub fn workspace_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// A binary of this workspace, from `target/debug` (or whatever profile dir the test
/// binary runs from).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A test: target/<profile>/deps/<test>; a binary (the benchmark):
    // target/<profile>/<binary>. Either way the others are in target/<profile>/.
    let mut dir = exe.parent().expect("target profile directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target profile directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// The Spin-compatible runner's binary.
pub fn runner_binary() -> PathBuf {
    binary("spin-runner")
}

/// Runs `spin-runner up` on `manifest` (from `dir`, with `extra_args`), expecting it to
/// refuse to start; returns what it said on stderr.
pub fn refused_at_startup(dir: &Path, manifest: &Path, extra_args: &[&str]) -> String {
    let output = Command::new(runner_binary())
        .args(["up", "--from"])
        .arg(manifest)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(extra_args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!output.status.success(), "the runner started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A loopback port nobody listens on right now, and that no other test in this
/// process has been given: the tests of one binary run in parallel, and the kernel may
/// hand the same free port to two of them before either has bound it.
pub fn free_port() -> u16 {
    free_listener().local_addr().expect("bound address").port()
}

/// A listener on a loopback port no other test in this process has been given (see
/// [`free_port`]), for a server the test runs itself.
pub fn free_listener() -> TcpListener {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = listener.local_addr().expect("bound address").port();
        if given.insert(port) {
            return listener;
        }
    }
}

/// Whether something listens on the loopback `port`. A connection to itself does not
/// count: `free_port` hands out ports from the ephemeral range, and while nothing
/// listens there, Linux may pick that very port as the source of a connect, which then
/// "succeeds" (TCP simultaneous open) with nobody on the other side.
pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port))
        .is_ok_and(|stream| stream.local_addr().ok() != stream.peer_addr().ok())
}

/// Polls `check` until it returns Some or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process whose output goes to a log file; killed on drop. If the test is
/// failing, the end of the log is printed to help find out why.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, dir: &Path) -> Process {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn child_id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}:\n{}", self.name, self.log());
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after 5 s) and returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A scratch directory for one test's configs and logs, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "spin-shop-e2e-{test}-{}-{}",
            std::process::id(),
            free_port()
        ));
        fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A real `redis-server` on a free port.
pub struct Redis {
    pub port: u16,
    process: Process,
    dir: PathBuf,
    persistent: bool,
}

impl Redis {
    /// Without persistence: a restart loses everything.
    pub fn start(scratch: &Scratch) -> Redis {
        Self::start_with(scratch, false)
    }

    /// With an append-only file synced on every write, as `make up` runs it: a restart
    /// (even after SIGKILL) keeps everything that was acknowledged.
    pub fn start_persistent(scratch: &Scratch) -> Redis {
        Self::start_with(scratch, true)
    }

    fn start_with(scratch: &Scratch, persistent: bool) -> Redis {
        let port = free_port();
        let redis = Redis {
            port,
            process: Self::spawn(port, scratch.path(), persistent),
            dir: scratch.path().to_owned(),
            persistent,
        };
        redis.wait_until_up();
        redis
    }

    fn spawn(port: u16, dir: &Path, persistent: bool) -> Process {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .current_dir(dir);
        if persistent {
            let data = dir.join(format!("redis-data-{port}"));
            fs::create_dir_all(&data).expect("redis data dir");
            command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(data);
        } else {
            command.args(["--appendonly", "no"]);
        }
        Process::spawn(&format!("redis-{port}"), &mut command, dir)
    }

    fn wait_until_up(&self) {
        wait_for(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || self.command(&["PING"]).ok().filter(|r| r == "+PONG"),
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.child_id()
    }

    /// Stops the server and starts it again on the same port: every connection drops;
    /// the data survives only if it is persistent.
    pub fn restart(&mut self) {
        self.process.stop();
        self.process = Self::spawn(self.port, &self.dir, self.persistent);
        self.wait_until_up();
    }

    /// Kills the server with SIGKILL (no chance to save anything) and starts it again.
    pub fn kill_and_restart(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        self.process = Self::spawn(self.port, &self.dir, self.persistent);
        self.wait_until_up();
    }

    /// Sends one command with the RESP protocol and returns the first reply line, or the
    /// bulk string's content.
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        redis_command(self.port, args)
    }
}

/// One command to the Redis on `port` (see [`Redis::command`]).
pub fn redis_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_owned();
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len.parse().unwrap_or(-1);
        if len < 0 {
            return Ok(String::new());
        }
        let mut body = vec![0u8; len as usize + 2];
        reader.read_exact(&mut body)?;
        body.truncate(len as usize);
        return Ok(String::from_utf8_lossy(&body).into_owned());
    }
    if let Some(count) = line.strip_prefix('*') {
        // Arrays: one line per element (a bulk string's length line is skipped),
        // enough for NUMSUB and friends.
        let mut rest = String::new();
        for _ in 0..count.parse::<usize>().unwrap_or(0) {
            let mut element = String::new();
            reader.read_line(&mut element)?;
            if element.starts_with('$') {
                element.clear();
                reader.read_line(&mut element)?;
            }
            rest.push_str(element.trim_end());
            rest.push('\n');
        }
        return Ok(rest);
    }
    Ok(line)
}

impl Redis {
    pub fn publish(&self, channel: &str, payload: &str) -> i64 {
        let reply = self
            .command(&["PUBLISH", channel, payload])
            .expect("PUBLISH");
        reply.trim_start_matches(':').parse().unwrap_or(-1)
    }

    /// How many clients subscribe to `channel`.
    pub fn subscribers(&self, channel: &str) -> i64 {
        self.command(&["PUBSUB", "NUMSUB", channel])
            .ok()
            .and_then(|reply| {
                reply
                    .lines()
                    .filter_map(|l| l.strip_prefix(':'))
                    .next_back()
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    pub fn wait_for_subscribers(&self, channel: &str, count: i64) {
        wait_for(
            &format!("{count} subscriber(s) on {channel}"),
            Duration::from_secs(60),
            || (self.subscribers(channel) >= count).then_some(()),
        );
    }

    /// Subscribes to `channel` in the background and collects every message.
    pub fn capture(&self, channel: &str) -> Captured {
        Self::capture_port(self.port, channel)
    }

    /// [`Redis::capture`] on the Redis at `port`.
    pub fn capture_port(port: u16, channel: &str) -> Captured {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let cmd = format!(
            "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
            channel.len()
        );
        stream.write_all(cmd.as_bytes()).expect("SUBSCRIBE");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let reader_stream = stream.try_clone().expect("clone stream");
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader_stream);
            // Each push is an array: ["message", channel, payload] (or "subscribe", ...).
            while let Ok(push) = read_array(&mut reader) {
                if push.len() == 3 && push[0] == "message" {
                    sink.lock().unwrap().push(push[2].clone());
                }
            }
        });
        let captured = Captured {
            messages,
            _stream: stream,
        };
        wait_for(
            &format!("a subscriber on {channel}"),
            Duration::from_secs(10),
            || {
                let reply = redis_command(port, &["PUBSUB", "NUMSUB", channel]).ok()?;
                let count: i64 = reply
                    .lines()
                    .filter_map(|l| l.strip_prefix(':'))
                    .next_back()?
                    .parse()
                    .ok()?;
                (count >= 1).then_some(())
            },
        );
        captured
    }
}

/// Reads one RESP array of bulk strings and integers.
fn read_array(reader: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut header = String::new();
    if reader.read_line(&mut header)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let count: usize = header
        .trim_end()
        .trim_start_matches('*')
        .parse()
        .unwrap_or(0);
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if let Some(len) = line.strip_prefix('$') {
            let mut data = vec![0u8; len.parse::<usize>().unwrap_or(0) + 2];
            reader.read_exact(&mut data)?;
            data.truncate(data.len() - 2);
            items.push(String::from_utf8_lossy(&data).into_owned());
        } else {
            items.push(line.trim_start_matches(':').to_owned());
        }
    }
    Ok(items)
}

/// Messages seen on a channel by [`Redis::capture`].
pub struct Captured {
    messages: Arc<Mutex<Vec<String>>>,
    _stream: TcpStream,
}

impl Captured {
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    pub fn wait_for(&self, count: usize) -> Vec<String> {
        wait_for(
            &format!("{count} message(s) on the channel"),
            Duration::from_secs(10),
            || {
                let m = self.messages();
                (m.len() >= count).then_some(m)
            },
        )
    }
}

/// Sets `command` to export spans to the OTLP/HTTP receiver at `endpoint`, flushing
/// every 100 ms so tests see spans quickly.
fn export_spans_to(command: &mut Command, endpoint: Option<&str>) {
    if let Some(endpoint) = endpoint {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    }
}

/// The dev mail API (test double of the mail providers), on a free port.
pub struct DevMail {
    pub base_url: String,
    _process: Process,
}

impl DevMail {
    pub fn start(scratch: &Scratch) -> DevMail {
        Self::start_exporting(scratch, None)
    }

    /// Exports its server spans to `otlp_endpoint` when given.
    pub fn start_exporting(scratch: &Scratch, otlp_endpoint: Option<&str>) -> DevMail {
        let port = free_port();
        let mut command = Command::new(binary("devmail"));
        command.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api-key",
            MAIL_KEY,
            "--verified-domain",
            VERIFIED_DOMAIN,
        ]);
        export_spans_to(&mut command, otlp_endpoint);
        let process = Process::spawn(&format!("devmail-{port}"), &mut command, scratch.path());
        let mail = DevMail {
            base_url: format!("http://127.0.0.1:{port}"),
            _process: process,
        };
        wait_for("devmail to listen", Duration::from_secs(20), || {
            listening(port).then_some(())
        });
        mail
    }

    /// The dev mail API's process id.
    pub fn pid(&self) -> u32 {
        self._process.child_id()
    }

    /// Emails the dev mail API accepted.
    pub fn messages(&self) -> Vec<Value> {
        http()
            .get(format!("{}/__devmail/messages", self.base_url))
            .send()
            .and_then(|r| r.json::<Value>())
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Emails accepted after the first `since` (oldest first).
    pub fn messages_since(&self, since: usize) -> Vec<Value> {
        http()
            .get(format!(
                "{}/__devmail/messages?since={since}",
                self.base_url
            ))
            .send()
            .and_then(|r| r.json::<Value>())
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Sets the faults of the next send requests: `{"count", "status"?, "delay_ms"?,
    /// "unverified"?}` (devmail's `POST /__devmail/faults`).
    pub fn set_faults(&self, faults: &Value) {
        let response = http()
            .post(format!("{}/__devmail/faults", self.base_url))
            .json(faults)
            .send()
            .expect("devmail faults");
        assert!(response.status().is_success(), "{response:?}");
    }

    /// Every send attempt, accepted or not.
    pub fn requests(&self) -> Vec<Value> {
        http()
            .get(format!("{}/__devmail/requests", self.base_url))
            .send()
            .and_then(|r| r.json::<Value>())
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The next `count` send requests fail with `status`.
    pub fn fail_next(&self, count: u32, status: u16) {
        self.set_faults(&serde_json::json!({ "count": count, "status": status }));
    }
}

/// Which key-value backend the runner maps the `default` store to.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Redis,
    Sqlite,
}

/// Options for one runner process.
pub struct RunnerOptions<'a> {
    pub components: &'a [&'a str],
    pub backend: Backend,
    pub mail_from: String,
    pub extra_variables: Vec<(String, String)>,
    /// Export spans to this OTLP/HTTP receiver (e.g. [`TraceViewer::endpoint`]).
    pub otlp_endpoint: Option<String>,
    /// More environment for the runner process (e.g. `OTEL_*` settings).
    pub process_env: Vec<(String, String)>,
    /// More command-line arguments for `spin-runner up`.
    pub extra_args: Vec<String>,
    /// Another manifest than the repository's `spin.toml` (same variables).
    pub manifest: Option<PathBuf>,
    /// How many of `spin.toml`'s shards checkout spreads orders over: 1 (all on
    /// [`CHANNEL`]) unless a test is about sharding.
    pub order_shards: u32,
    /// Run this program (e.g. `spin`) instead of the runner; it takes the same arguments.
    pub program: Option<PathBuf>,
}

impl Default for RunnerOptions<'_> {
    fn default() -> Self {
        RunnerOptions {
            components: &[],
            backend: Backend::Redis,
            mail_from: format!("orders@{VERIFIED_DOMAIN}"),
            extra_variables: Vec::new(),
            otlp_endpoint: None,
            process_env: Vec::new(),
            extra_args: Vec::new(),
            manifest: None,
            order_shards: 1,
            program: None,
        }
    }
}

/// The Spin-compatible runner running this repository's `spin.toml`.
pub struct Runner {
    pub base_url: String,
    pub process: Process,
}

impl Runner {
    pub fn start(
        scratch: &Scratch,
        redis: &Redis,
        mail: &DevMail,
        options: RunnerOptions<'_>,
    ) -> Runner {
        let port = free_port();
        let runtime_config = scratch.path().join(format!("runtime-config-{port}.toml"));
        let store = match options.backend {
            Backend::Redis => format!("type = \"redis\"\nurl = \"{}\"\n", redis.url()),
            Backend::Sqlite => format!(
                "type = \"spin\"\npath = \"{}\"\n",
                scratch.path().join("kv.db").display()
            ),
        };
        fs::write(
            &runtime_config,
            format!("[key_value_store.default]\n{store}"),
        )
        .expect("runtime config");

        let mut variables = vec![
            ("redis_address".to_owned(), redis.url()),
            ("redis_host".to_owned(), redis.url()),
            ("orders_channel".to_owned(), CHANNEL_BASE.to_owned()),
            ("order_shards".to_owned(), options.order_shards.to_string()),
            ("admin_token".to_owned(), ADMIN_TOKEN.to_owned()),
            ("mail_provider".to_owned(), "resend".to_owned()),
            ("mail_api_base_url".to_owned(), mail.base_url.clone()),
            ("mail_api_key".to_owned(), MAIL_KEY.to_owned()),
            ("mail_from".to_owned(), options.mail_from.clone()),
        ];
        variables.extend(options.extra_variables);

        let mut command = Command::new(options.program.clone().unwrap_or_else(runner_binary));
        // The components are built with tracing, as `make build` builds them: like
        // `spin up`, the runner needs the flag to link wasi:otel.
        command
            .arg("up")
            .arg("--experimental-wasi-otel")
            .arg("--from")
            .arg(
                options
                    .manifest
                    .clone()
                    .unwrap_or_else(|| workspace_root().join("spin.toml")),
            )
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--runtime-config-file")
            .arg(&runtime_config)
            .args(&options.extra_args)
            .env("RUST_LOG", "info");
        export_spans_to(&mut command, options.otlp_endpoint.as_deref());
        command.envs(options.process_env.iter().map(|(k, v)| (k, v)));
        for (name, value) in &variables {
            command.arg("--variable").arg(format!("{name}={value}"));
        }
        for component in options.components {
            command.arg("--component-id").arg(component);
        }
        let serves_http = options.components.is_empty() || options.components.contains(&"checkout");
        Self::spawn(scratch, command, port, serves_http)
    }

    /// Runs `manifest` with exactly `variables` and no runtime config, as a host that
    /// takes none (a managed platform) would: e.g. `deploy/managed/spin.toml`, which
    /// declares only checkout's variables.
    pub fn start_with_variables(
        scratch: &Scratch,
        manifest: &Path,
        variables: &[(&str, String)],
    ) -> Runner {
        let port = free_port();
        let mut command = Command::new(runner_binary());
        command
            .arg("up")
            .arg("--from")
            .arg(manifest)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info");
        for (name, value) in variables {
            command.arg("--variable").arg(format!("{name}={value}"));
        }
        Self::spawn(scratch, command, port, true)
    }

    /// Runs another manifest, without variables or runtime config.
    pub fn start_manifest(scratch: &Scratch, manifest: &Path, port: u16) -> Runner {
        let mut command = Command::new(runner_binary());
        command
            .arg("up")
            .arg("--experimental-wasi-otel")
            .arg("--from")
            .arg(manifest)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        Self::spawn(scratch, command, port, true)
    }

    /// Starts the runner with `command` (its arguments included); with an HTTP trigger
    /// listening on `port`, waits until it serves there.
    pub fn spawn(scratch: &Scratch, mut command: Command, port: u16, serves_http: bool) -> Runner {
        let mut process = Process::spawn(&format!("runner-{port}"), &mut command, scratch.path());
        if serves_http {
            // The runner prints this, as `spin up` does, once it has bound the port:
            // proof that what answers there is this runner, not another process that
            // got the same free port.
            let serving = format!("Serving http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(120);
            while !(process.log().contains(&serving) && listening(port)) {
                process.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "runner did not listen:\n{}",
                    process.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Runner {
            base_url: format!("http://127.0.0.1:{port}"),
            process,
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let response = http()
            .get(format!("{}{path}", self.base_url))
            .send()
            .expect("GET");
        decode(response)
    }

    pub fn post_json(&self, path: &str, body: &Value, idempotency_key: Option<&str>) -> Reply {
        let mut request = http()
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        Reply::from(request.send().expect("POST"))
    }

    pub fn post_raw(&self, path: &str, body: Vec<u8>) -> Reply {
        Reply::from(
            http()
                .post(format!("{}{path}", self.base_url))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .expect("POST"),
        )
    }

    pub fn admin_post(&self, path: &str) -> (u16, Value) {
        decode(
            http()
                .post(format!("{}{path}", self.base_url))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .expect("admin POST"),
        )
    }

    pub fn admin_get(&self, path: &str) -> (u16, Value) {
        decode(
            http()
                .get(format!("{}{path}", self.base_url))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .expect("admin GET"),
        )
    }

    /// Units of `sku` available, from the catalogue endpoint.
    pub fn available(&self, sku: &str) -> i64 {
        let (status, body) = self.get("/api/products");
        assert_eq!(status, 200, "{body}");
        body["products"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["sku"] == sku))
            .and_then(|p| p["available"].as_i64())
            .unwrap_or_else(|| panic!("no {sku} in {body}"))
    }

    /// Polls an order until `done` accepts it.
    pub fn wait_for_order(
        &self,
        order_id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(
            &format!("order {order_id} to be {what}"),
            Duration::from_secs(30),
            || {
                let (status, body) = self.get(&format!("/api/orders/{order_id}"));
                (status == 200 && done(&body)).then_some(body)
            },
        )
    }
}

/// The project's trace viewer as the OTLP/HTTP receiver of a test, on a free port.
pub struct TraceViewer {
    pub base_url: String,
    process: Process,
}

impl TraceViewer {
    pub fn start(scratch: &Scratch) -> TraceViewer {
        let port = free_port();
        let process = Process::spawn(
            &format!("trace-viewer-{port}"),
            Command::new(binary("trace-viewer")).args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ]),
            scratch.path(),
        );
        wait_for("trace-viewer to listen", Duration::from_secs(20), || {
            listening(port).then_some(())
        });
        TraceViewer {
            base_url: format!("http://127.0.0.1:{port}"),
            process,
        }
    }

    /// The viewer's process id.
    pub fn pid(&self) -> u32 {
        self.process.child_id()
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should be to export here.
    pub fn endpoint(&self) -> String {
        self.base_url.clone()
    }

    /// The spans of `trace_id` received so far (empty if none).
    pub fn spans(&self, trace_id: &str) -> Vec<Value> {
        http()
            .get(format!("{}/api/traces/{trace_id}", self.base_url))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.json::<Value>().ok())
            .and_then(|v| v["spans"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until the spans of `trace_id` satisfy `done` (spans arrive in batches).
    pub fn wait_for_spans(
        &self,
        trace_id: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        wait_for(
            &format!("trace {trace_id}: {what}"),
            Duration::from_secs(30),
            || {
                let spans = self.spans(trace_id);
                done(&spans).then_some(spans)
            },
        )
    }

    /// Ids of the traces holding a span whose attribute `key` is `value`.
    pub fn search(&self, key: &str, value: &str) -> Vec<String> {
        http()
            .get(format!("{}/api/search", self.base_url))
            .query(&[("attribute", key), ("value", value)])
            .send()
            .and_then(|r| r.json::<Value>())
            .ok()
            .and_then(|v| v["trace_ids"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}

/// An HTTP answer: status, selected headers, JSON body (Null if not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    pub traceparent: Option<String>,
    pub body: Value,
}

impl From<reqwest::blocking::Response> for Reply {
    fn from(response: reqwest::blocking::Response) -> Self {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let location = header("location");
        let traceparent = header("traceparent");
        let status = response.status().as_u16();
        let body = response.json().unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            location,
            traceparent,
            body,
        }
    }
}

/// The status and JSON body (Null if none) of a response.
pub fn decode(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// A valid order for `quantity` x `sku`, paid with `card`.
pub fn order(sku: &str, quantity: u32, card: &str, email: &str) -> Value {
    serde_json::json!({
        "email": email,
        "items": [{ "sku": sku, "quantity": quantity }],
        "card": { "number": card, "expiry": "12/39", "cvc": "123" }
    })
}

pub const APPROVED_CARD: &str = "4242 4242 4242 4242";
pub const DECLINED_CARD: &str = "4000 0000 0000 0002";
pub const CAPTURE_FAILS_CARD: &str = "4000 0000 0000 0341";
