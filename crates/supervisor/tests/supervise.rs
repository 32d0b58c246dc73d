//! The real `supervisor` binary on configs written to a temporary directory, supervising
//! ordinary programs (`sh`, `sleep`, `python3`): restarts after SIGKILL, start order
//! behind readiness checks, periodic jobs, shutdown, and refusals at startup.
//!
//! Timeouts are generous and every wait polls, so a loaded 2-core machine only makes the
//! tests slower. Each test's `Supervisor` guard stops the supervisor and kills any child
//! it saw, even when an assertion fails.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "supervisor-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn str(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port no other test here has been given: the tests run in parallel,
/// and the kernel may hand one free port to two of them before either binds it.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Alive and not a zombie (this container's init may not reap orphans).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Polls `check` until it gives a value, or panics after `WAIT` describing `what`.
fn wait_for<T>(what: &str, context: impl Fn() -> String, check: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", context());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The supervisor under test, its captured output, and the children it reported.
struct Supervisor {
    child: Child,
    status_file: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// Every child pid seen, killed on drop if still alive.
    seen_pids: Mutex<Vec<u32>>,
}

impl Supervisor {
    fn start(dir: &TempDir, config: &str, env: &[(&str, &str)]) -> Supervisor {
        let config_path = dir.path("supervisor.toml");
        std::fs::write(&config_path, config).unwrap();
        let status_file = dir.path("status.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_supervisor"))
            .arg("--config")
            .arg(&config_path)
            .arg("--status-file")
            .arg(&status_file)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the supervisor binary");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            capture(child.stdout.take().unwrap(), stdout.clone()),
            capture(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Supervisor {
            child,
            status_file,
            stdout,
            stderr,
            readers,
            seen_pids: Mutex::new(Vec::new()),
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn output(&self) -> String {
        format!(
            "--- supervisor stdout ---\n{}--- supervisor stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    fn status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(&self.status_file).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// `(pid, restarts)` of `name` once it is ready and `accept` likes them.
    fn ready_process(&self, name: &str, accept: impl Fn(u32, u64) -> bool) -> (u32, u64) {
        let found = wait_for(
            &format!("{name} to be ready"),
            || format!("status: {:?}\n{}", self.status(), self.output()),
            || {
                let process = self.status()?["processes"][name].clone();
                let pid = u32::try_from(process["pid"].as_u64()?).ok()?;
                let restarts = process["restarts"].as_u64()?;
                (process["ready"] == Value::Bool(true) && accept(pid, restarts))
                    .then_some((pid, restarts))
            },
        );
        self.seen_pids.lock().unwrap().push(found.0);
        found
    }

    fn wait_for_stderr(&self, text: &str) {
        wait_for(
            &format!("{text:?} on the supervisor's stderr"),
            || self.output(),
            || self.stderr().contains(text).then_some(()),
        );
    }

    fn signal(&self, signal: libc::c_int) {
        send_signal(self.child.id(), signal);
    }

    /// Waits for the supervisor to exit, then for its output to be fully read.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                panic!("the supervisor did not exit\n{}", self.output());
            }
            thread::sleep(Duration::from_millis(50));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for &pid in self.seen_pids.lock().unwrap().iter() {
            if alive(pid) {
                send_signal(pid, libc::SIGKILL);
            }
        }
    }
}

fn capture(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read @ 1..) = from.read(&mut buffer) {
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    })
}

/// The pid in "supervisor: started NAME (pid N)".
fn started_pid(stderr: &str, name: &str) -> u32 {
    let marker = format!("supervisor: started {name} (pid ");
    let start = stderr.find(&marker).expect(&marker) + marker.len();
    let end = start + stderr[start..].find(')').unwrap();
    stderr[start..end].parse().unwrap()
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_process_killed_with_sigkill_is_restarted_with_a_new_pid() {
    let dir = TempDir::new();
    let supervisor = Supervisor::start(
        &dir,
        r#"
            [[process]]
            name = "sleeper"
            command = "sh"
            args = ["-c", "echo up; printf 'no newline'; exec sleep 1000"]
        "#,
        &[],
    );
    let (first_pid, restarts) = supervisor.ready_process("sleeper", |_, _| true);
    assert_eq!(restarts, 0);
    // The partial line is printed once the child's output ends, i.e. after the kill.
    wait_for(
        "the first output line",
        || supervisor.output(),
        || supervisor.stdout().contains("[sleeper] up\n").then_some(()),
    );

    send_signal(first_pid, libc::SIGKILL);
    let (second_pid, restarts) =
        supervisor.ready_process("sleeper", |pid, restarts| pid != first_pid && restarts == 1);
    assert_ne!(second_pid, first_pid);
    assert_eq!(restarts, 1);
    assert!(!alive(first_pid));

    supervisor.wait_for_stderr(&format!(
        "supervisor: sleeper is ready again (pid {second_pid})"
    ));
    let stderr = supervisor.stderr();
    assert!(
        stderr.contains(
            "supervisor: sleeper exited (killed by signal 9); restarting in 0.5s (restart 1)"
        ),
        "{}",
        supervisor.output()
    );
    assert!(
        supervisor.stdout().contains("[sleeper] no newline\n"),
        "{}",
        supervisor.output()
    );
}

#[test]
fn processes_start_in_order_each_after_the_previous_is_ready() {
    let dir = TempDir::new();
    let (tcp_port, http_port) = (free_port(), free_port());
    // Records when it started listening (just before), after a delay.
    let slow_listener = r#"
import socket, sys, time
time.sleep(1.5)
open(sys.argv[1], "w").write(repr(time.time()))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[2])))
server.listen()
while True:
    server.accept()[0].close()
"#;
    let config = format!(
        r#"
            [[process]]
            name = "slow"
            command = "python3"
            args = ["-c", '''{slow_listener}''', "{listening}", "${{TCP_PORT}}"]
            ready = {{ tcp = "127.0.0.1:${{TCP_PORT}}" }}

            [[process]]
            name = "web"
            command = "sh"
            args = ["-c", "date +%s.%N > web-started; exec python3 -m http.server --bind 127.0.0.1 $0", "${{HTTP_PORT}}"]
            cwd = "{dir}"
            ready = {{ http = "http://127.0.0.1:${{HTTP_PORT}}/" }}

            [[process]]
            name = "last"
            command = "sh"
            args = ["-c", "date +%s.%N > last-started; exec sleep 1000"]
            cwd = "{dir}"
        "#,
        listening = dir.str("slow-listening"),
        dir = dir.str(""),
    );
    let supervisor = Supervisor::start(
        &dir,
        &config,
        &[
            ("TCP_PORT", &tcp_port.to_string()),
            ("HTTP_PORT", &http_port.to_string()),
        ],
    );
    supervisor.ready_process("slow", |_, _| true);
    supervisor.ready_process("web", |_, _| true);
    supervisor.ready_process("last", |_, _| true);

    let time = |name: &str| -> f64 {
        let text = std::fs::read_to_string(dir.path(name)).unwrap();
        text.trim().parse().unwrap()
    };
    assert!(
        time("web-started") > time("slow-listening"),
        "web started before slow listened\n{}",
        supervisor.output()
    );
    let stderr = supervisor.stderr();
    let position = |text: &str| stderr.find(text).expect(text);
    assert!(position("supervisor: web is ready") < position("supervisor: started last"));
    assert!(position("supervisor: slow is ready") < position("supervisor: started web"));
    // The http check asked the server itself (its log line is relayed a moment later).
    supervisor.wait_for_stderr("\"GET / HTTP/1.0\" 200");
    assert!(
        supervisor.stderr().contains("[web] ")
            && supervisor.stderr().contains("\"GET / HTTP/1.0\" 200"),
        "{}",
        supervisor.output()
    );
}

#[test]
fn periodic_jobs_repeat_never_overlap_and_only_warn_on_failure() {
    let dir = TempDir::new();
    let config = format!(
        r#"
            [[every]]
            name = "tick"
            interval_seconds = 1
            command = "sh"
            args = ["-c", "echo run >> '{ticks}'; echo ran"]

            [[every]]
            name = "slow"
            interval_seconds = 1
            command = "sh"
            args = ["-c", "echo start >> '{slow}'; sleep 2.5; echo end >> '{slow}'"]

            [[every]]
            name = "broken"
            interval_seconds = 1
            command = "sh"
            args = ["-c", "echo failing >&2; exit 3"]
        "#,
        ticks = dir.str("ticks"),
        slow = dir.str("slow"),
    );
    let supervisor = Supervisor::start(&dir, &config, &[]);
    let ticks = dir.path("ticks");
    let first_run = wait_for(
        "the first run",
        || supervisor.output(),
        || (!read_lines(&ticks).is_empty()).then(Instant::now),
    );
    thread::sleep(Duration::from_millis(2500).saturating_sub(first_run.elapsed()));
    let runs = read_lines(&ticks).len();
    assert!(
        (2..=4).contains(&runs),
        "{runs} runs in 2.5 s at interval 1 s\n{}",
        supervisor.output()
    );
    wait_for(
        "a third run",
        || supervisor.output(),
        || (read_lines(&ticks).len() >= 3).then_some(()),
    );
    assert!(supervisor.stdout().contains("[tick] ran\n"));

    supervisor.wait_for_stderr("supervisor: slow is still running; skipping this run");
    wait_for(
        "a second slow run",
        || supervisor.output(),
        || (read_lines(&dir.path("slow")).len() >= 3).then_some(()),
    );
    let slow = read_lines(&dir.path("slow"));
    assert!(
        slow.windows(2).all(|pair| pair[0] != pair[1]),
        "overlapping runs: {slow:?}"
    );

    supervisor.wait_for_stderr("supervisor: warning: broken failed (status 3)");
    assert!(supervisor.stderr().contains("[broken] failing\n"));
    // Failures stop nothing: the tick job goes on.
    let before = read_lines(&ticks).len();
    wait_for(
        "another run after the failures",
        || supervisor.output(),
        || (read_lines(&ticks).len() > before).then_some(()),
    );
}

#[test]
fn sigterm_stops_every_child_in_reverse_order_and_exits_zero() {
    let dir = TempDir::new();
    let mut supervisor = Supervisor::start(
        &dir,
        r#"
            [[process]]
            name = "first"
            command = "sleep"
            args = ["1000"]

            [[process]]
            name = "second"
            command = "sleep"
            args = ["1000"]
            stop_signal = "INT"

            # Ignores SIGTERM, so it needs the SIGKILL that follows 10 s later.
            [[process]]
            name = "stubborn"
            command = "sh"
            args = ["-c", "trap '' TERM; exec sleep 1000"]
        "#,
        &[],
    );
    let pids: Vec<u32> = ["first", "second", "stubborn"]
        .iter()
        .map(|name| supervisor.ready_process(name, |_, _| true).0)
        .collect();

    supervisor.signal(libc::SIGTERM);
    let status = supervisor.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", supervisor.output());
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} outlived the supervisor");
    }

    let stderr = supervisor.stderr();
    let position = |text: &str| stderr.find(text).expect(text);
    assert!(position("supervisor: received SIGTERM; stopping") < position("stopping stubborn"));
    assert!(
        position("supervisor: stubborn did not stop within 10s; sending SIGKILL")
            < position(&format!(
                "supervisor: stopping second (pid {}) with SIGINT",
                pids[1]
            ))
    );
    assert!(
        position("supervisor: second exited (killed by signal 2)")
            < position(&format!(
                "supervisor: stopping first (pid {}) with SIGTERM",
                pids[0]
            ))
    );
    assert!(stderr.contains("supervisor: first exited (killed by signal 15)"));
    assert!(stderr.ends_with("supervisor: stopped\n"), "{stderr}");
}

#[test]
fn children_die_when_the_supervisor_is_killed_with_sigkill() {
    let dir = TempDir::new();
    let mut supervisor = Supervisor::start(
        &dir,
        r#"
            [[process]]
            name = "one"
            command = "sleep"
            args = ["1000"]

            [[process]]
            name = "two"
            command = "sh"
            args = ["-c", "exec sleep 1000"]
        "#,
        &[],
    );
    let pids = [
        supervisor.ready_process("one", |_, _| true).0,
        supervisor.ready_process("two", |_, _| true).0,
    ];

    supervisor.signal(libc::SIGKILL);
    supervisor.wait_exit();
    wait_for(
        "the children to die",
        || supervisor.output(),
        || pids.iter().all(|pid| !alive(*pid)).then_some(()),
    );
}

#[test]
fn a_missing_program_fails_at_startup_naming_it() {
    let dir = TempDir::new();
    let marker = dir.path("started");
    let config = format!(
        r#"
            [[process]]
            name = "fine"
            command = "sh"
            args = ["-c", "touch '{marker}'; exec sleep 1000"]

            [[process]]
            name = "ghost"
            command = "no-such-program-for-the-supervisor-test"
        "#,
        marker = marker.display(),
    );
    let mut supervisor = Supervisor::start(&dir, &config, &[]);
    let status = supervisor.wait_exit();
    assert!(!status.success());
    let stderr = supervisor.stderr();
    assert!(
        stderr.contains(
            "process \"ghost\": program \"no-such-program-for-the-supervisor-test\" not found"
        ),
        "{stderr}"
    );
    // Refused before anything started.
    assert!(!marker.exists());
}

#[test]
fn bad_configs_are_refused_with_a_clear_message() {
    let cases = [
        (
            "[[process]]\nname = \"a\"\ncommand = \"sleep\"\nrestart = \"always\"\n",
            "unknown field `restart`",
        ),
        (
            "[[process]]\nname = \"a\"\ncommand = \"sleep\"\nargs = [\"${SUPERVISOR_TEST_UNSET}\"]\n",
            "environment variable SUPERVISOR_TEST_UNSET is not set",
        ),
        ("[[process]]\nname = \"a\"\n", "missing field `command`"),
    ];
    for (config, expected) in cases {
        let dir = TempDir::new();
        let mut supervisor = Supervisor::start(&dir, config, &[]);
        let status = supervisor.wait_exit();
        assert!(!status.success(), "{config}");
        assert!(
            supervisor.stderr().contains(expected),
            "{config}\n{}",
            supervisor.output()
        );
    }

    let missing = Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .args(["--config", "/nonexistent/supervisor.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains("cannot read /nonexistent/supervisor.toml"));
}

#[test]
fn a_process_exiting_at_every_start_stops_what_was_started() {
    let dir = TempDir::new();
    let mut supervisor = Supervisor::start(
        &dir,
        r#"
            [[process]]
            name = "first"
            command = "sleep"
            args = ["1000"]

            [[process]]
            name = "second"
            command = "sh"
            args = ["-c", "echo giving up; exit 7"]
            ready = { tcp = "127.0.0.1:1" }
            start_attempts = 2
        "#,
        &[],
    );
    let status = supervisor.wait_exit();
    assert!(!status.success(), "{}", supervisor.output());
    let stderr = supervisor.stderr();
    assert!(
        stderr.contains(
            "supervisor: second exited (status 7 during startup, start 1 of 2); restarting in 0.5s"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "supervisor: second exited during startup (status 7, 2 starts in a row); stopping what was started"
        ),
        "{stderr}"
    );
    assert_eq!(
        supervisor.stdout().matches("[second] giving up\n").count(),
        2,
        "{}",
        supervisor.output()
    );
    let first = started_pid(&stderr, "first");
    assert!(!alive(first), "first outlived the failed startup");
}

#[test]
fn a_process_that_exits_while_starting_because_a_dependency_died_is_started_again() {
    // What `make up` meets when Redis dies while the app is still starting: the app exits
    // (as `spin up` does without Redis), and must come back once Redis is back rather
    // than bring the whole shop down.
    let dir = TempDir::new();
    let (dependency_port, app_port) = (free_port(), free_port());
    let config = format!(
        r#"
            [[process]]
            name = "dependency"
            command = "sh"
            # Comes back slowly after its first life, as Redis replaying its log does.
            args = ["-c", "[ -e started ] && sleep 3; touch started; exec python3 -m http.server --bind 127.0.0.1 $0", "${{DEPENDENCY_PORT}}"]
            cwd = "{dir}"
            ready = {{ tcp = "127.0.0.1:${{DEPENDENCY_PORT}}" }}

            [[process]]
            name = "app"
            command = "sh"
            # Takes two seconds to start, then exits if its dependency does not answer.
            args = ["-c", "sleep 2; curl -fsS -o /dev/null http://127.0.0.1:$0/ || exit 3; exec python3 -m http.server --bind 127.0.0.1 $1", "${{DEPENDENCY_PORT}}", "${{APP_PORT}}"]
            cwd = "{dir}"
            ready = {{ http = "http://127.0.0.1:${{APP_PORT}}/" }}
        "#,
        dir = dir.str(""),
    );
    let supervisor = Supervisor::start(
        &dir,
        &config,
        &[
            ("DEPENDENCY_PORT", &dependency_port.to_string()),
            ("APP_PORT", &app_port.to_string()),
        ],
    );
    let (dependency, _) = supervisor.ready_process("dependency", |_, _| true);
    supervisor.wait_for_stderr("supervisor: started app");
    // The app is still starting: its dependency dies.
    send_signal(dependency, libc::SIGKILL);
    supervisor.wait_for_stderr("supervisor: dependency exited (killed by signal 9)");
    supervisor.wait_for_stderr("supervisor: app exited (status 3 during startup, start 1 of 3)");
    let (_, restarts) = supervisor.ready_process("app", |_, restarts| restarts >= 1);
    supervisor.ready_process("dependency", |_, restarts| restarts >= 1);
    // The status file says ready just before the supervisor prints it: wait for the line.
    let stderr = wait_for(
        "the app's readiness on the supervisor's stderr",
        || supervisor.output(),
        || {
            let stderr = supervisor.stderr();
            stderr
                .contains("supervisor: app is ready")
                .then_some(stderr)
        },
    );
    assert!(
        stderr.contains("supervisor: app is ready (pid "),
        "the app's first readiness came after its restart\n{stderr}"
    );
    assert!(
        !stderr.contains("stopping what was started"),
        "{}",
        supervisor.output()
    );
    assert!(restarts <= 2, "{}", supervisor.output());
}
