//! The supervisor's TOML configuration: parsing (unknown fields are refused by name),
//! `${VAR}` / `${VAR:-default}` expansion from the supervisor's environment, and the
//! checks that can be made before anything starts.
//!
//! ```toml
//! # Started in this order, each after the previous one passed its readiness check.
//! [[process]]
//! name = "redis"
//! command = "redis-server"                  # searched in PATH, or a path
//! args = ["--port", "${REDIS_PORT:-6379}"]
//! env = { SOME = "value" }                  # added to the inherited environment
//! cwd = "some/dir"                          # relative to the supervisor's directory
//! ready = { tcp = "127.0.0.1:${REDIS_PORT:-6379}" }  # or { http = "http://..." }: any 2xx-4xx
//! ready_timeout_seconds = 60                # default 60
//! start_attempts = 3                        # default 3: starts before giving up, see below
//! stop_signal = "TERM"                      # TERM (default) or INT
//!
//! # Run once every process is ready, then every interval_seconds (a run still going
//! # when the next is due makes that one skipped). env and cwd as above.
//! [[every]]
//! name = "redrive"
//! interval_seconds = 30
//! command = "curl"
//! args = ["-fsS", "-X", "POST", "http://127.0.0.1:3000/api/admin/redrive"]
//! ```
//!
//! Expansion applies to command, args, env values, cwd and ready.
//!
//! A process that exits before its first readiness is started again (with backoff) up to
//! `start_attempts` times in all, as supervisord's `startretries` does: something it
//! needs may have gone down meanwhile (Redis killed while the app was starting makes
//! the app exit, as `spin up` does), while a broken command still fails within seconds.
//! Once it has been ready, a process is restarted whenever it exits, without limit.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Started in this order, each behind its readiness check.
    #[serde(default, rename = "process")]
    pub processes: Vec<ProcessConfig>,
    /// Periodic jobs, started once every process is ready.
    #[serde(default, rename = "every")]
    pub jobs: Vec<JobConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub ready: Option<ReadyCheck>,
    #[serde(default = "default_ready_timeout_seconds")]
    pub ready_timeout_seconds: u64,
    #[serde(default = "default_start_attempts")]
    pub start_attempts: u32,
    #[serde(default)]
    pub stop_signal: StopSignal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub name: String,
    pub interval_seconds: u64,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

/// `{ tcp = "host:port" }` or `{ http = "http://host:port/path" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyCheck {
    Tcp(String),
    Http(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum StopSignal {
    #[default]
    #[serde(rename = "TERM")]
    Term,
    #[serde(rename = "INT")]
    Int,
}

impl StopSignal {
    pub fn number(self) -> libc::c_int {
        match self {
            StopSignal::Term => libc::SIGTERM,
            StopSignal::Int => libc::SIGINT,
        }
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
        })
    }
}

fn default_ready_timeout_seconds() -> u64 {
    60
}

fn default_start_attempts() -> u32 {
    3
}

impl ProcessConfig {
    pub fn ready_timeout(&self) -> Duration {
        Duration::from_secs(self.ready_timeout_seconds)
    }
}

impl Config {
    /// Reads, parses, expands (from the supervisor's environment) and checks `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Config::parse(&text, |name| std::env::var(name).ok())
            .and_then(|config| config.check_programs().map(|()| config))
            .with_context(|| path.display().to_string())
    }

    /// Parses `text`, expands `${...}` with `lookup` and checks what needs no file system.
    pub fn parse(text: &str, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let mut config: Config = toml::from_str(text)?;
        config.expand(&lookup)?;
        config.validate()?;
        Ok(config)
    }

    fn expand(&mut self, lookup: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        for process in &mut self.processes {
            let at = format!("process \"{}\"", process.name);
            expand_command(
                &at,
                &mut process.command,
                &mut process.args,
                &mut process.env,
                &mut process.cwd,
                lookup,
            )?;
            if let Some(ReadyCheck::Tcp(target) | ReadyCheck::Http(target)) = &mut process.ready {
                expand_field(&at, "ready", target, lookup)?;
            }
        }
        for job in &mut self.jobs {
            let at = format!("every \"{}\"", job.name);
            expand_command(
                &at,
                &mut job.command,
                &mut job.args,
                &mut job.env,
                &mut job.cwd,
                lookup,
            )?;
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.processes.is_empty() && self.jobs.is_empty() {
            bail!("nothing to supervise: no [[process]] and no [[every]]");
        }
        // Names prefix output lines and key the status file: they must tell things apart.
        let mut names = HashSet::new();
        let all_names = self.processes.iter().map(|p| &p.name);
        for name in all_names.chain(self.jobs.iter().map(|j| &j.name)) {
            if name.trim().is_empty() {
                bail!("a [[process]] or [[every]] has an empty name");
            }
            if !names.insert(name) {
                bail!("the name \"{name}\" is used more than once");
            }
        }
        for process in &self.processes {
            if process.command.is_empty() {
                bail!("process \"{}\": command is empty", process.name);
            }
            if process.ready_timeout_seconds == 0 {
                bail!(
                    "process \"{}\": ready_timeout_seconds must be at least 1",
                    process.name
                );
            }
            if process.start_attempts == 0 {
                bail!(
                    "process \"{}\": start_attempts must be at least 1",
                    process.name
                );
            }
            if let Some(ReadyCheck::Http(url)) = &process.ready {
                parse_http_url(url)
                    .with_context(|| format!("process \"{}\": ready.http", process.name))?;
            }
        }
        for job in &self.jobs {
            if job.command.is_empty() {
                bail!("every \"{}\": command is empty", job.name);
            }
            if job.interval_seconds == 0 {
                bail!(
                    "every \"{}\": interval_seconds must be at least 1",
                    job.name
                );
            }
        }
        Ok(())
    }

    /// Refuses a program that cannot be found before anything is started, so a typo does
    /// not leave half the processes running (or a job failing quietly every interval).
    fn check_programs(&self) -> anyhow::Result<()> {
        let processes = self.processes.iter().map(|p| {
            let at = format!("process \"{}\"", p.name);
            (at, &p.command, &p.env, &p.cwd)
        });
        let jobs = self.jobs.iter().map(|j| {
            let at = format!("every \"{}\"", j.name);
            (at, &j.command, &j.env, &j.cwd)
        });
        for (at, command, env, cwd) in processes.chain(jobs) {
            let path = env
                .get("PATH")
                .cloned()
                .or_else(|| std::env::var("PATH").ok());
            if find_program(command, path.as_deref(), cwd.as_deref().map(Path::new)).is_none() {
                bail!("{at}: program \"{command}\" not found (or not executable)");
            }
        }
        Ok(())
    }
}

fn expand_command(
    at: &str,
    command: &mut String,
    args: &mut [String],
    env: &mut BTreeMap<String, String>,
    cwd: &mut Option<String>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    expand_field(at, "command", command, lookup)?;
    for (i, arg) in args.iter_mut().enumerate() {
        expand_field(at, &format!("args[{i}]"), arg, lookup)?;
    }
    for (key, value) in env.iter_mut() {
        expand_field(at, &format!("env.{key}"), value, lookup)?;
    }
    if let Some(cwd) = cwd {
        expand_field(at, "cwd", cwd, lookup)?;
    }
    Ok(())
}

fn expand_field(
    at: &str,
    field: &str,
    value: &mut String,
    lookup: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    *value = expand(value, lookup).with_context(|| format!("{at}: {field}"))?;
    Ok(())
}

/// Expands `${VAR}` and `${VAR:-default}` (the default also replaces an empty value, as
/// in the shell). A `$` not followed by `{` is kept as is; the default is taken literally.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find("${") {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 2..];
        let Some(close) = after.find('}') else {
            bail!("unterminated \"${{\" in \"{input}\"");
        };
        let inner = &after[..close];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if !is_variable_name(name) {
            bail!("\"${{{inner}}}\" does not name a variable (letters, digits and _)");
        }
        match (lookup(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => bail!(
                "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
            ),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `http://host[:port][/path]` as (address to connect to, Host header, path).
pub fn parse_http_url(url: &str) -> anyhow::Result<(String, String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("\"{url}\" is not an http:// URL (the readiness check speaks plain HTTP only)");
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("\"{url}\" has no host");
    }
    // A port follows the last ':' unless that ':' is inside an IPv6 literal.
    let has_port = authority
        .rfind(':')
        .is_some_and(|colon| !authority[colon..].contains(']'));
    let address = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((address, authority.to_owned(), path.to_owned()))
}

/// Where `command` would be executed from: searched in `path` when it is a bare name,
/// otherwise taken relative to the child's `cwd` (where the child will resolve it).
pub fn find_program(command: &str, path: Option<&str>, cwd: Option<&Path>) -> Option<PathBuf> {
    if command.contains('/') {
        let candidate = match cwd {
            Some(cwd) if Path::new(command).is_relative() => cwd.join(command),
            _ => PathBuf::from(command),
        };
        return is_executable(&candidate).then_some(candidate);
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const EXAMPLE: &str = r#"
        [[process]]
        name = "redis"
        command = "redis-server"
        args = ["--port", "${REDIS_PORT:-6379}", "--appendonly", "yes"]
        env = { SOME = "value-${SUFFIX}" }
        cwd = "some/dir"
        ready = { tcp = "127.0.0.1:${REDIS_PORT:-6379}" }
        ready_timeout_seconds = 20
        start_attempts = 5
        stop_signal = "INT"

        [[process]]
        name = "app"
        command = "spin"
        ready = { http = "http://127.0.0.1:3000/api/products" }

        [[every]]
        name = "redrive"
        interval_seconds = 30
        command = "curl"
        args = ["-fsS", "-X", "POST", "http://127.0.0.1:3000/api/admin/redrive"]
    "#;

    #[test]
    fn parses_the_documented_example() {
        let config = Config::parse(EXAMPLE, vars(&[("SUFFIX", "x")])).unwrap();
        let redis = &config.processes[0];
        assert_eq!(redis.args, ["--port", "6379", "--appendonly", "yes"]);
        assert_eq!(redis.env["SOME"], "value-x");
        assert_eq!(redis.cwd.as_deref(), Some("some/dir"));
        assert_eq!(redis.ready, Some(ReadyCheck::Tcp("127.0.0.1:6379".into())));
        assert_eq!(redis.ready_timeout(), Duration::from_secs(20));
        assert_eq!(redis.start_attempts, 5);
        assert_eq!(redis.stop_signal, StopSignal::Int);

        let app = &config.processes[1];
        assert!(app.args.is_empty() && app.env.is_empty() && app.cwd.is_none());
        assert_eq!(app.ready_timeout_seconds, 60);
        assert_eq!(app.start_attempts, 3);
        assert_eq!(app.stop_signal, StopSignal::Term);

        assert_eq!(config.jobs[0].name, "redrive");
        assert_eq!(config.jobs[0].interval_seconds, 30);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let process = "[[process]]\nname = \"a\"\ncommand = \"sleep\"\nrestart = \"always\"\n";
        let error = Config::parse(process, vars(&[])).unwrap_err().to_string();
        assert!(error.contains("unknown field `restart`"), "{error}");

        let top = "[[process]]\nname = \"a\"\ncommand = \"sleep\"\n[[services]]\nname = \"b\"\n";
        let error = Config::parse(top, vars(&[])).unwrap_err().to_string();
        assert!(error.contains("unknown field `services`"), "{error}");

        let check = "[[process]]\nname = \"a\"\ncommand = \"sleep\"\nready = { udp = \"x\" }\n";
        let error = Config::parse(check, vars(&[])).unwrap_err().to_string();
        assert!(error.contains("unknown variant `udp`"), "{error}");

        let signal = "[[process]]\nname = \"a\"\ncommand = \"sleep\"\nstop_signal = \"HUP\"\n";
        let error = Config::parse(signal, vars(&[])).unwrap_err().to_string();
        assert!(error.contains("unknown variant `HUP`"), "{error}");
    }

    #[test]
    fn refuses_what_cannot_work() {
        let cases = [
            ("", "nothing to supervise"),
            (
                "[[process]]\nname = \"a\"\ncommand = \"x\"\n[[every]]\nname = \"a\"\ninterval_seconds = 1\ncommand = \"x\"\n",
                "\"a\" is used more than once",
            ),
            (
                "[[every]]\nname = \"a\"\ninterval_seconds = 0\ncommand = \"x\"\n",
                "interval_seconds must be at least 1",
            ),
            (
                "[[process]]\nname = \"a\"\ncommand = \"x\"\nstart_attempts = 0\n",
                "start_attempts must be at least 1",
            ),
            (
                "[[process]]\nname = \"a\"\ncommand = \"x\"\nready = { http = \"https://h/\" }\n",
                "not an http:// URL",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", Config::parse(text, vars(&[])).unwrap_err());
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn expands_variables_and_defaults() {
        let lookup = vars(&[("PORT", "7000"), ("EMPTY", ""), ("HOST", "h")]);
        let expand = |s| expand(s, &lookup).unwrap();
        assert_eq!(expand("${PORT}"), "7000");
        assert_eq!(expand("${HOST}:${PORT:-1}/x"), "h:7000/x");
        assert_eq!(expand("${UNSET:-6379}"), "6379");
        assert_eq!(expand("${UNSET:-}"), "");
        assert_eq!(expand("${EMPTY:-fallback}"), "fallback");
        assert_eq!(expand("${EMPTY}"), "");
        assert_eq!(expand("${UNSET:-a:-b}"), "a:-b");
        // A `$` not followed by `{` is literal.
        assert_eq!(expand("cost $5 $PORT $"), "cost $5 $PORT $");
        assert_eq!(expand("no variables"), "no variables");
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_it() {
        let error = expand("--port ${REDIS_PORT}", vars(&[])).unwrap_err();
        assert!(
            error.to_string().contains("REDIS_PORT is not set"),
            "{error}"
        );

        let text = "[[process]]\nname = \"redis\"\ncommand = \"x\"\nargs = [\"${REDIS_PORT}\"]\n";
        let error = format!("{:#}", Config::parse(text, vars(&[])).unwrap_err());
        assert!(
            error.contains("process \"redis\": args[0]") && error.contains("REDIS_PORT is not set"),
            "{error}"
        );

        for bad in ["${UNCLOSED", "${}", "${1X}", "${A B}"] {
            assert!(expand(bad, vars(&[])).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_http_readiness_urls() {
        let parse = |url| parse_http_url(url).unwrap();
        assert_eq!(
            parse("http://127.0.0.1:3000/api/products?x=1"),
            (
                "127.0.0.1:3000".into(),
                "127.0.0.1:3000".into(),
                "/api/products?x=1".into()
            )
        );
        assert_eq!(
            parse("http://localhost"),
            ("localhost:80".into(), "localhost".into(), "/".into())
        );
        assert_eq!(parse("http://[::1]/").0, "[::1]:80");
        assert_eq!(parse("http://[::1]:8080/").0, "[::1]:8080");
    }

    #[test]
    fn finds_programs_in_path() {
        let path = std::env::var("PATH").unwrap();
        assert!(find_program("sh", Some(&path), None).is_some());
        assert!(find_program("no-such-program-here", Some(&path), None).is_none());
        assert!(find_program("/bin/sh", None, None).is_some());
        assert!(find_program("./sh", None, Some(Path::new("/bin"))).is_some());
    }
}
