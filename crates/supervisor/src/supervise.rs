//! The run loop: start processes in order behind their readiness checks, restart any that
//! exits (with backoff), run the periodic jobs, and on SIGTERM/SIGINT stop everything in
//! reverse order.
//!
//! Each process has one task that owns its child for its whole life (start, readiness,
//! restarts). The main task only sequences: it waits for each start to be ready, and at
//! shutdown signals the processes one by one and waits for their tasks to end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, MissedTickBehavior};

use crate::backoff::Backoff;
use crate::config::{parse_http_url, Config, JobConfig, ProcessConfig, ReadyCheck, StopSignal};
use crate::output::{spawn_prefixer, Stream};

/// How often a readiness check is retried.
const READY_POLL: Duration = Duration::from_millis(100);
/// A single readiness probe that takes longer than this counts as "not yet".
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a process may take to stop before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for a dead child's last output lines before moving on.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// What the status file shows; the test harness reads children's current pids from it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    processes: BTreeMap<String, ProcessStatus>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct ProcessStatus {
    /// None while the process is down (between an exit and its restart).
    pid: Option<u32>,
    restarts: u32,
    ready: bool,
}

/// Shared, observable status: every change wakes the status-file writer.
type Board = watch::Sender<Status>;

fn update(board: &Board, name: &str, change: impl FnOnce(&mut ProcessStatus)) {
    board.send_modify(|status| {
        if let Some(process) = status.processes.get_mut(name) {
            change(process);
        }
    });
}

pub enum Outcome {
    /// Stopped on SIGTERM/SIGINT.
    Stopped,
    /// A process could not be started or made ready; what was started has been stopped.
    StartupFailed,
}

pub async fn run(config: Config, status_file: Option<PathBuf>) -> anyhow::Result<Outcome> {
    // Listen before starting anything, so an early Ctrl-C still stops what was started.
    let mut signals = Signals {
        terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
    };
    let initial = Status {
        processes: config
            .processes
            .iter()
            .map(|p| (p.name.clone(), ProcessStatus::default()))
            .collect(),
    };
    let (board, board_changes) = watch::channel(initial);
    let status_writer =
        status_file.map(|path| tokio::spawn(write_status_file(path, board_changes)));
    let (shutdown, shutdown_changes) = watch::channel(false);

    let mut started: Vec<StartedProcess> = Vec::new();
    let mut failure = None;
    let mut received = None;
    for spec in &config.processes {
        let (ready_tx, ready_rx) = oneshot::channel();
        started.push(StartedProcess {
            name: spec.name.clone(),
            stop_signal: spec.stop_signal,
            task: tokio::spawn(supervise_process(
                spec.clone(),
                board.clone(),
                shutdown_changes.clone(),
                ready_tx,
            )),
        });
        tokio::select! {
            startup = ready_rx => match startup {
                Ok(Ok(())) => continue,
                Ok(Err(why)) => failure = Some(why),
                Err(_) => failure = Some(format!("{} stopped being supervised", spec.name)),
            },
            name = signals.next() => received = Some(name),
        }
        break;
    }

    let mut jobs = Vec::new();
    if failure.is_none() && received.is_none() {
        for job in &config.jobs {
            jobs.push(tokio::spawn(run_every(
                job.clone(),
                shutdown_changes.clone(),
            )));
        }
        received = Some(signals.next().await);
    }
    match (&failure, received) {
        (Some(why), _) => eprintln!("supervisor: {why}; stopping what was started"),
        (None, Some(name)) => eprintln!("supervisor: received {name}; stopping"),
        (None, None) => {}
    }

    shutdown.send_replace(true);
    for job in jobs {
        let _ = job.await;
    }
    for process in started.into_iter().rev() {
        stop_process(&board, process).await;
    }
    // Every process task has ended; dropping the last sender lets the writer finish
    // after writing the final state.
    drop(board);
    if let Some(writer) = status_writer {
        let _ = writer.await;
    }
    if failure.is_some() {
        return Ok(Outcome::StartupFailed);
    }
    eprintln!("supervisor: stopped");
    Ok(Outcome::Stopped)
}

struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

struct StartedProcess {
    name: String,
    stop_signal: StopSignal,
    task: JoinHandle<()>,
}

/// Sends the process its stop signal, gives it `STOP_GRACE`, then SIGKILL; returns once
/// its task has seen it exit (and printed its last output).
async fn stop_process(board: &Board, process: StartedProcess) {
    let StartedProcess {
        name,
        stop_signal,
        mut task,
    } = process;
    // Read where the task would write it, with no await in between on this
    // single-threaded runtime: the pid is that of a live (or not yet reaped) child.
    let pid = board.borrow().processes.get(&name).and_then(|p| p.pid);
    if let Some(pid) = pid {
        eprintln!("supervisor: stopping {name} (pid {pid}) with {stop_signal}");
        signal_group(pid, stop_signal.number());
        if timeout(STOP_GRACE, &mut task).await.is_ok() {
            return;
        }
        eprintln!(
            "supervisor: {name} did not stop within {}s; sending SIGKILL",
            STOP_GRACE.as_secs()
        );
        signal_group(pid, libc::SIGKILL);
    }
    let _ = task.await;
}

/// One process's whole life. Reports the first readiness (or why it failed) on `ready`:
/// before that, an exit counts against `start_attempts`; after it, the process is
/// restarted whenever it exits, until shutdown.
async fn supervise_process(
    spec: ProcessConfig,
    board: Board,
    mut shutdown: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let name = spec.name.as_str();
    let mut first_readiness = Some(ready);
    let mut running = match start_process(&spec, &board) {
        Ok(running) => running,
        Err(error) => {
            if let Some(ready) = first_readiness {
                let _ = ready.send(Err(format!("cannot start {name}: {error:#}")));
            }
            return;
        }
    };
    let mut backoff = Backoff::default();
    let mut restarts = 0;
    let mut failed_starts = 0;
    loop {
        match readiness(&spec, &mut running).await {
            Readiness::Ready => {
                update(&board, name, |p| p.ready = true);
                match first_readiness.take() {
                    Some(ready) => {
                        eprintln!("supervisor: {name} is ready (pid {})", running.pid);
                        let _ = ready.send(Ok(()));
                    }
                    None => eprintln!("supervisor: {name} is ready again (pid {})", running.pid),
                }
            }
            Readiness::Exited if first_readiness.is_some() && !*shutdown.borrow() => {
                failed_starts += 1;
                if failed_starts >= spec.start_attempts {
                    let status = running.child.wait().await;
                    finish(&board, name, running).await;
                    let times = match failed_starts {
                        1 => String::new(),
                        n => format!(", {n} starts in a row"),
                    };
                    let why = format!(
                        "{name} exited during startup ({}{times})",
                        describe(&status)
                    );
                    if let Some(ready) = first_readiness {
                        let _ = ready.send(Err(why));
                    }
                    return;
                }
            }
            // Reported (and restarted) below.
            Readiness::Exited => {}
            Readiness::TimedOut => {
                let why = format!(
                    "{name} was not ready within {}s",
                    spec.ready_timeout_seconds
                );
                if let Some(ready) = first_readiness {
                    let _ = ready.send(Err(why));
                    // The main task stops it, in reverse start order with the others.
                    let status = running.child.wait().await;
                    finish(&board, name, running).await;
                    eprintln!("supervisor: {name} exited ({})", describe(&status));
                    return;
                }
                eprintln!("supervisor: {why} of its restart; killing it");
                signal_group(running.pid, libc::SIGKILL);
            }
        }

        let status = running.child.wait().await;
        let up_for = running.started_at.elapsed();
        finish(&board, name, running).await;
        if *shutdown.borrow() {
            eprintln!("supervisor: {name} exited ({})", describe(&status));
            return;
        }
        let mut delay = backoff.delay_after(up_for);
        let during = if first_readiness.is_some() {
            format!(
                " during startup, start {failed_starts} of {}",
                spec.start_attempts
            )
        } else {
            String::new()
        };
        eprintln!(
            "supervisor: {name} exited ({}{during}); restarting in {}s (restart {})",
            describe(&status),
            delay.as_secs_f64(),
            restarts + 1
        );
        running = loop {
            tokio::select! {
                _ = sleep(delay) => {}
                _ = stopping(&mut shutdown) => return,
            }
            restarts += 1;
            update(&board, name, |p| p.restarts = restarts);
            match start_process(&spec, &board) {
                Ok(running) => break running,
                Err(error) => {
                    delay = backoff.delay_after(Duration::ZERO);
                    eprintln!(
                        "supervisor: cannot restart {name}: {error:#}; retrying in {}s (restart {})",
                        delay.as_secs_f64(),
                        restarts + 1
                    );
                }
            }
        };
    }
}

/// Resolves once shutdown has begun (or the supervisor is going away).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A started child: its output is being re-printed by the two prefixer tasks.
struct Running {
    child: Child,
    pid: u32,
    started_at: Instant,
    output: [JoinHandle<()>; 2],
}

fn start_process(spec: &ProcessConfig, board: &Board) -> anyhow::Result<Running> {
    let running = spawn_child(
        &spec.name,
        &spec.command,
        &spec.args,
        &spec.env,
        spec.cwd.as_deref(),
    )?;
    let ready = spec.ready.is_none();
    update(board, &spec.name, |p| {
        p.pid = Some(running.pid);
        p.ready = ready;
    });
    eprintln!(
        "supervisor: started {} (pid {}): {} {}",
        spec.name,
        running.pid,
        spec.command,
        spec.args.join(" ")
    );
    Ok(running)
}

fn spawn_child(
    name: &str,
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> anyhow::Result<Running> {
    let mut cmd = Command::new(command);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: stopping it also reaches what it started (`sh -c`,
        // `spin up`'s children), and Ctrl-C in a terminal reaches only the supervisor,
        // which then stops everything in reverse order.
        .process_group(0);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    die_with_supervisor(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run \"{command}\""))?;
    let pid = child.id().context("the child has no pid")?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    Ok(Running {
        child,
        pid,
        started_at: Instant::now(),
        output: [
            spawn_prefixer(name, stdout, Stream::Stdout),
            spawn_prefixer(name, stderr, Stream::Stderr),
        ],
    })
}

#[cfg(target_os = "linux")]
fn die_with_supervisor(cmd: &mut Command) {
    let supervisor = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // calls (prctl, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            // A supervisor killed with SIGKILL cannot stop its children: have the kernel
            // send them SIGTERM when it dies. (The kernel follows the *thread* that forked,
            // which is why main.rs runs a single-threaded runtime.)
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor may have died before prctl; then no signal would ever come.
            if libc::getppid() != supervisor {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_supervisor(_: &mut Command) {}

/// Signals the process group a child leads (`process_group(0)` made its pid the group id).
fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// After a child has exited (and been reaped): kills what is left of its group, records
/// it as down and prints its last output.
async fn finish(board: &Board, name: &str, running: Running) {
    // Leftovers (e.g. the server a `sh -c` started) would keep the ports a restart needs.
    // Done right after reaping, so the group id cannot have been reused yet.
    signal_group(running.pid, libc::SIGKILL);
    update(board, name, |p| {
        p.pid = None;
        p.ready = false;
    });
    drain(running.output).await;
}

/// Waits for the last lines, but not for a descendant that left the process group and
/// still holds the pipes open.
async fn drain(output: [JoinHandle<()>; 2]) {
    let _ = timeout(OUTPUT_DRAIN, async {
        for prefixer in output {
            let _ = prefixer.await;
        }
    })
    .await;
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let status = match status {
        Ok(status) => status,
        Err(error) => return format!("cannot tell how: {error}"),
    };
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) if status.core_dumped() => {
            format!("killed by signal {signal}, core dumped")
        }
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

enum Readiness {
    Ready,
    /// The child exited before it was ready; its status is still to be collected.
    Exited,
    TimedOut,
}

async fn readiness(spec: &ProcessConfig, running: &mut Running) -> Readiness {
    let Some(check) = &spec.ready else {
        return Readiness::Ready;
    };
    let ready = async {
        loop {
            if timeout(PROBE_TIMEOUT, probe(check)).await == Ok(true) {
                return;
            }
            sleep(READY_POLL).await;
        }
    };
    tokio::select! {
        _ = running.child.wait() => Readiness::Exited,
        within = timeout(spec.ready_timeout(), ready) => match within {
            Ok(()) => Readiness::Ready,
            Err(_) => Readiness::TimedOut,
        },
    }
}

async fn probe(check: &ReadyCheck) -> bool {
    match check {
        // A connection to itself is not a listener: with nothing on a port in the
        // ephemeral range, Linux may pick that port as the source (simultaneous open).
        ReadyCheck::Tcp(address) => TcpStream::connect(address.as_str())
            .await
            .is_ok_and(|stream| stream.local_addr().ok() != stream.peer_addr().ok()),
        ReadyCheck::Http(url) => http_status(url)
            .await
            .is_ok_and(|status| (200..500).contains(&status)),
    }
}

/// The status code of `GET url`, over plain HTTP/1.0 (enough for "is it answering?").
async fn http_status(url: &str) -> anyhow::Result<u16> {
    let (address, host, path) = parse_http_url(url)?;
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // "HTTP/1.1 200" is all we need.
    let mut head = Vec::new();
    let mut buffer = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/") => Ok(status),
        _ => anyhow::bail!("not an HTTP answer"),
    }
}

/// A periodic job: runs `job` every interval, skipping a tick while the last run is still
/// going, until shutdown (which stops a run in progress).
async fn run_every(job: JobConfig, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(job.interval_seconds));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut current: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopping(&mut shutdown) => break,
        }
        if current.as_ref().is_some_and(|run| !run.is_finished()) {
            eprintln!(
                "supervisor: {} is still running; skipping this run",
                job.name
            );
            continue;
        }
        current = Some(tokio::spawn(run_job_once(job.clone(), shutdown.clone())));
    }
    if let Some(run) = current {
        let _ = run.await;
    }
}

async fn run_job_once(job: JobConfig, mut shutdown: watch::Receiver<bool>) {
    let name = job.name.as_str();
    let mut running = match spawn_child(name, &job.command, &job.args, &job.env, job.cwd.as_deref())
    {
        Ok(running) => running,
        Err(error) => {
            eprintln!("supervisor: warning: {name} could not run: {error:#}");
            return;
        }
    };
    let mut stopped = false;
    let status = tokio::select! {
        status = running.child.wait() => status,
        _ = stopping(&mut shutdown) => {
            stopped = true;
            eprintln!("supervisor: stopping {name} (pid {}) with SIGTERM", running.pid);
            signal_group(running.pid, libc::SIGTERM);
            match timeout(STOP_GRACE, running.child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    signal_group(running.pid, libc::SIGKILL);
                    running.child.wait().await
                }
            }
        }
    };
    signal_group(running.pid, libc::SIGKILL);
    drain(running.output).await;
    if !stopped && !status.as_ref().is_ok_and(ExitStatus::success) {
        eprintln!("supervisor: warning: {name} failed ({})", describe(&status));
    }
}

/// Rewrites `path` (write a temporary file, then rename, so a reader never sees half a
/// file) with every new state of the board, until the board is dropped.
async fn write_status_file(path: PathBuf, mut board: watch::Receiver<Status>) {
    let mut temporary = path.clone().into_os_string();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    loop {
        let json = {
            let status = board.borrow_and_update();
            serde_json::to_vec(&*status)
        };
        let written = async {
            let mut json = json?;
            json.push(b'\n');
            tokio::fs::write(&temporary, json).await?;
            tokio::fs::rename(&temporary, &path).await
        };
        if let Err(error) = written.await {
            eprintln!(
                "supervisor: warning: cannot write {}: {error}",
                path.display()
            );
        }
        if board.changed().await.is_err() {
            break;
        }
    }
}
