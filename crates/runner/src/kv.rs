//! Key-value backends, storing data the way Spin's do so the app is tested against both:
//! Redis (`INCRBY`: counters are ASCII decimal) and SQLite (Spin's default store: one
//! table, counters as 8-byte little-endian integers).

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use redis::AsyncCommands;
use tracing::Instrument;

use crate::redis_conn::{redact, retrying, Repeat, Repeat::Idempotent};

/// Why a key-value operation failed; becomes the interface's `other(string)` error.
pub type KvError = String;

/// The span of one key-value operation: the one place a host span (e.g. OpenTelemetry's
/// `spin_key_value.get`) hangs for both `fermyon:spin/key-value` and `wasi:keyvalue`.
fn span(operation: &'static str, key: Option<&str>) -> tracing::Span {
    tracing::debug_span!("key_value", operation, key)
}

#[derive(Clone)]
pub enum Backend {
    Redis(RedisStore),
    Sqlite(SqliteStore),
}

impl Backend {
    pub async fn redis(url: &str) -> Result<Backend> {
        // Connects lazily and reconnects after a Redis restart.
        let (client, manager) = crate::redis_conn::manager(url)
            .with_context(|| format!("redis key-value store url {:?}", redact(url)))?;
        Ok(Backend::Redis(RedisStore { client, manager }))
    }

    pub fn sqlite(path: &Path, label: &str) -> Result<Backend> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = rusqlite::Connection::open(path)
            .with_context(|| format!("opening SQLite store {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Several runners (replicas) may open the same file at once; switching the
        // journal mode is not covered by the busy timeout, so retry it for a while.
        let mut attempts = 0;
        loop {
            match conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE IF NOT EXISTS spin_key_value (
                     store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                     PRIMARY KEY (store, key));",
            ) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && attempts < 100 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                result => {
                    result
                        .with_context(|| format!("setting up SQLite store {}", path.display()))?;
                    break;
                }
            }
        }
        Ok(Backend::Sqlite(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            label: label.to_owned(),
        }))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        async {
            match self {
                Backend::Redis(r) => {
                    r.run(Idempotent, |mut c| async move { c.get(key).await })
                        .await
                }
                Backend::Sqlite(s) => {
                    let key = key.to_owned();
                    s.with(move |c, label| get_row(c, label, &key)).await
                }
            }
        }
        .instrument(span("get", Some(key)))
        .await
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        async {
            match self {
                Backend::Redis(r) => {
                    r.run(Idempotent, |mut c| async move { c.set(key, value).await })
                        .await
                }
                Backend::Sqlite(s) => {
                    let (key, value) = (key.to_owned(), value.to_vec());
                    s.with(move |c, label| put_row(c, label, &key, &value))
                        .await
                }
            }
        }
        .instrument(span("set", Some(key)))
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        async {
            match self {
                Backend::Redis(r) => r
                    .run(
                        Idempotent,
                        |mut c| async move { c.del::<_, i64>(key).await },
                    )
                    .await
                    .map(drop),
                Backend::Sqlite(s) => {
                    let key = key.to_owned();
                    s.with(move |c, label| {
                        c.execute(
                            "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2",
                            rusqlite::params![label, key],
                        )
                        .map(drop)
                    })
                    .await
                }
            }
        }
        .instrument(span("delete", Some(key)))
        .await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        async {
            match self {
                Backend::Redis(r) => {
                    r.run(Idempotent, |mut c| async move { c.exists(key).await })
                        .await
                }
                Backend::Sqlite(_) => Ok(self.get(key).await?.is_some()),
            }
        }
        .instrument(span("exists", Some(key)))
        .await
    }

    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        async {
            match self {
                Backend::Redis(r) => {
                    r.run(Idempotent, |mut c| async move { c.keys("*").await })
                        .await
                }
                Backend::Sqlite(s) => {
                    s.with(|c, label| {
                        let mut stmt =
                            c.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
                        let keys = stmt
                            .query_map([label], |row| row.get::<_, String>(0))?
                            .collect::<rusqlite::Result<Vec<_>>>();
                        keys
                    })
                    .await
                }
            }
        }
        .instrument(span("keys", None))
        .await
    }

    /// Atomically adds `delta` to the counter at `key` (absent = 0).
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        async {
            match self {
                // INCRBY: the counter is the ASCII decimal Redis keeps. Reading it (delta 0)
                // may be repeated after a dropped connection; changing it may not.
                Backend::Redis(r) => {
                    let repeat = if delta == 0 { Idempotent } else { Repeat::Once };
                    r.run(repeat, |mut c| async move { c.incr(key, delta).await })
                        .await
                }
                Backend::Sqlite(s) => {
                    let key = key.to_owned();
                    s.with(move |c, label| {
                        let tx =
                            c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                        let current = match get_row(&tx, label, &key)? {
                            None => 0,
                            Some(bytes) => {
                                i64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| {
                                    rusqlite::Error::InvalidColumnType(
                                        0,
                                        "8-byte counter".into(),
                                        rusqlite::types::Type::Blob,
                                    )
                                })?)
                            }
                        };
                        let next = current
                            .checked_add(delta)
                            .ok_or(rusqlite::Error::IntegralValueOutOfRange(0, delta))?;
                        put_row(&tx, label, &key, &next.to_le_bytes())?;
                        tx.commit()?;
                        Ok(next)
                    })
                    .await
                }
            }
        }
        .instrument(span("increment", Some(key)))
        .await
    }

    /// Stores `value` only if `key` still holds `expected` (None = absent). Returns
    /// whether it did: a lost race is `false`, never reported as success.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        async {
            match self {
                Backend::Redis(r) => {
                    // A Lua script runs atomically in Redis: compare and set in one step.
                    let script = redis::Script::new(
                        r"local current = redis.call('GET', KEYS[1])
                          if (ARGV[1] == '0' and current == false) or (ARGV[1] == '1' and current == ARGV[2]) then
                            redis.call('SET', KEYS[1], ARGV[3])
                            return 1
                          end
                          return 0",
                    );
                    let script = &script;
                    let swapped: i64 = r
                        .run(Repeat::Once, |mut c| async move {
                            script
                                .key(key)
                                .arg(if expected.is_some() { "1" } else { "0" })
                                .arg(expected.unwrap_or_default())
                                .arg(value)
                                .invoke_async(&mut c)
                                .await
                        })
                        .await?;
                    Ok(swapped == 1)
                }
                Backend::Sqlite(s) => {
                    let (key, expected, value) =
                        (key.to_owned(), expected.map(<[u8]>::to_vec), value.to_vec());
                    s.with(move |c, label| {
                        let tx =
                            c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                        if get_row(&tx, label, &key)? != expected {
                            return Ok(false);
                        }
                        put_row(&tx, label, &key, &value)?;
                        tx.commit()?;
                        Ok(true)
                    })
                    .await
                }
            }
        }
        .instrument(span("compare_and_swap", Some(key)))
        .await
    }

    /// A human description for logs (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Backend::Redis(r) => {
                let info = r.client.get_connection_info();
                format!("redis {:?}", info.addr())
            }
            Backend::Sqlite(_) => "sqlite".to_owned(),
        }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    manager: redis::aio::ConnectionManager,
}

impl RedisStore {
    /// Runs one command on the shared connection (see [`crate::redis_conn::retrying`]).
    async fn run<'a, T, F, Fut>(&self, repeat: Repeat, command: F) -> Result<T, KvError>
    where
        F: Fn(redis::aio::ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + 'a,
    {
        retrying(repeat, || command(self.manager.clone()))
            .await
            .map_err(redis_error)
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<rusqlite::Connection>>,
    label: String,
}

impl SqliteStore {
    /// Runs `f` on the connection off the async runtime's threads.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection, &str) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, KvError> {
        let conn = self.conn.clone();
        let label = self.label.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn, &label)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("sqlite: {e}"))
    }
}

fn get_row(c: &rusqlite::Connection, label: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    use rusqlite::OptionalExtension;
    c.query_row(
        "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
        rusqlite::params![label, key],
        |row| row.get(0),
    )
    .optional()
}

fn put_row(c: &rusqlite::Connection, label: &str, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
        rusqlite::params![label, key, value],
    )
    .map(drop)
}

fn redis_error(e: redis::RedisError) -> KvError {
    format!("redis: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (std::path::PathBuf, Backend) {
        let path = std::env::temp_dir().join(format!(
            "spin-runner-kv-{}-{:?}.db",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        let backend = Backend::sqlite(&path, "default").unwrap();
        (path, backend)
    }

    #[tokio::test]
    async fn sqlite_counters_are_8_byte_little_endian() {
        let (path, kv) = temp_db();
        assert_eq!(kv.increment("c", 5).await.unwrap(), 5);
        assert_eq!(kv.increment("c", -7).await.unwrap(), -2);
        assert_eq!(kv.get("c").await.unwrap().unwrap(), (-2i64).to_le_bytes());
        kv.set("plain", b"12").await.unwrap();
        assert!(kv.increment("plain", 1).await.is_err());
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn sqlite_compare_and_swap_detects_a_lost_race() {
        let (path, kv) = temp_db();
        assert!(kv.compare_and_swap("k", None, b"a").await.unwrap());
        assert!(!kv.compare_and_swap("k", None, b"b").await.unwrap());
        assert!(kv.compare_and_swap("k", Some(b"a"), b"b").await.unwrap());
        assert!(!kv.compare_and_swap("k", Some(b"a"), b"c").await.unwrap());
        assert_eq!(kv.get("k").await.unwrap().unwrap(), b"b");
        assert_eq!(kv.keys().await.unwrap(), ["k"]);
        kv.delete("k").await.unwrap();
        assert!(!kv.exists("k").await.unwrap());
        let _ = std::fs::remove_file(path);
    }

    /// A real redis-server on a free port, killed on drop.
    struct RedisServer(std::process::Child, u16);

    impl RedisServer {
        fn start() -> RedisServer {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            RedisServer::start_on(port)
        }

        fn start_on(port: u16) -> RedisServer {
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (apt install redis-server)");
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            RedisServer(child, port)
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn redis_counters_are_ascii_decimal_and_cas_is_real() {
        let server = RedisServer::start();
        let kv = Backend::redis(&format!("redis://127.0.0.1:{}", server.1))
            .await
            .unwrap();
        assert_eq!(kv.increment("c", 42).await.unwrap(), 42);
        assert_eq!(kv.get("c").await.unwrap().unwrap(), b"42");
        assert!(kv.compare_and_swap("k", None, b"a").await.unwrap());
        assert!(!kv.compare_and_swap("k", None, b"x").await.unwrap());
        assert!(!kv.compare_and_swap("k", Some(b"z"), b"x").await.unwrap());
        assert!(kv.compare_and_swap("k", Some(b"a"), b"b").await.unwrap());
        assert_eq!(kv.get("k").await.unwrap().unwrap(), b"b");
    }

    /// Many concurrent read-modify-write loops over CAS: no update may be lost.
    async fn concurrent_cas_loses_nothing(kv: Backend) {
        const TASKS: i64 = 16;
        const EACH: i64 = 10;
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let kv = kv.clone();
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..EACH {
                    loop {
                        let snapshot = kv.get("n").await.unwrap();
                        let current = snapshot
                            .as_deref()
                            .map_or(0, |b| i64::from_le_bytes(b.try_into().unwrap()));
                        let next = (current + 1).to_le_bytes();
                        if kv
                            .compare_and_swap("n", snapshot.as_deref(), &next)
                            .await
                            .unwrap()
                        {
                            break;
                        }
                        conflicts += 1;
                    }
                }
                conflicts
            }));
        }
        let mut conflicts = 0;
        for t in tasks {
            conflicts += t.await.unwrap();
        }
        let total = i64::from_le_bytes(kv.get("n").await.unwrap().unwrap().try_into().unwrap());
        assert_eq!(total, TASKS * EACH, "({conflicts} conflicts detected)");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_concurrent_cas_loses_no_update() {
        let (path, kv) = temp_db();
        concurrent_cas_loses_nothing(kv).await;
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_concurrent_cas_and_increment_lose_no_update() {
        let server = RedisServer::start();
        let kv = Backend::redis(&format!("redis://127.0.0.1:{}", server.1))
            .await
            .unwrap();
        concurrent_cas_loses_nothing(kv.clone()).await;
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let kv = kv.clone();
                tokio::spawn(async move { kv.increment("counter", 2).await.unwrap() })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen.sort();
        assert_eq!(seen, (1..=50).map(|i| i * 2).collect::<Vec<i64>>());
        assert_eq!(kv.increment("counter", 0).await.unwrap(), 100);
        assert_eq!(kv.increment("missing", 0).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn redis_store_reconnects_after_a_restart() {
        let mut server = RedisServer::start();
        let port = server.1;
        let kv = Backend::redis(&format!("redis://127.0.0.1:{port}"))
            .await
            .unwrap();
        kv.set("k", b"v").await.unwrap();
        let _ = server.0.kill();
        let _ = server.0.wait();
        assert!(kv.get("k").await.is_err(), "redis is down");
        server = RedisServer::start_on(port);
        // The first command after the restart already works.
        assert_eq!(kv.get("k").await.unwrap(), None);
        assert_eq!(kv.increment("c", 1).await.unwrap(), 1);
        drop(server);
    }
}
