//! Where a store's data lives: Redis or SQLite, each storing counters the way Spin's
//! backend of that kind does (Redis `INCRBY`: ASCII decimal; SQLite: 8-byte
//! little-endian), so the app is tested against both encodings.

use std::path::Path;

use anyhow::Result;

use super::redis::RedisStore;
use super::sqlite::SqliteStore;

/// Why an operation failed; becomes the interfaces' `other(string)` error.
pub type KvError = String;

#[derive(Clone)]
pub enum Backend {
    Redis(RedisStore),
    Sqlite(SqliteStore),
}

impl Backend {
    /// A store in the Redis at `url` (connects at the first `open`, reconnects after a
    /// restart).
    pub fn redis(url: &str) -> Result<Backend> {
        RedisStore::new(url).map(Backend::Redis)
    }

    /// The store `label` in the SQLite file at `path`.
    pub fn sqlite(path: &Path, label: &str) -> Result<Backend> {
        SqliteStore::open(path, label).map(Backend::Sqlite)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Backend::Redis(r) => r.get(key).await,
            Backend::Sqlite(s) => s.get(key).await,
        }
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        match self {
            Backend::Redis(r) => r.set(key, value).await,
            Backend::Sqlite(s) => s.set(key, value).await,
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        match self {
            Backend::Redis(r) => r.delete(key).await,
            Backend::Sqlite(s) => s.delete(key).await,
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        match self {
            Backend::Redis(r) => r.exists(key).await,
            Backend::Sqlite(s) => Ok(s.get(key).await?.is_some()),
        }
    }

    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        match self {
            Backend::Redis(r) => r.keys().await,
            Backend::Sqlite(s) => s.keys().await,
        }
    }

    /// `wasi:keyvalue/batch`'s `get-many`, with each backend's own behaviour.
    pub async fn get_many(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        match self {
            Backend::Redis(r) => r.get_many(keys).await,
            Backend::Sqlite(s) => s.get_many(keys).await,
        }
    }

    pub async fn set_many(&self, key_values: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        match self {
            Backend::Redis(r) => r.set_many(key_values).await,
            Backend::Sqlite(s) => s.set_many(key_values).await,
        }
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        match self {
            Backend::Redis(r) => r.delete_many(keys).await,
            Backend::Sqlite(s) => s.delete_many(keys).await,
        }
    }

    /// What Spin's backend does on every `open` of the store, before answering it
    /// (`StoreManager::get`, then `Store::after_open`, in Spin's `factor-key-value`):
    /// Redis connects if it has not yet (so an unreachable Redis fails the `open`) and is
    /// sent a `PING`, whose failure is ignored (the connection reconnects by itself);
    /// SQLite, nothing. On Spin that is one more round trip for every `open`, so it is
    /// here too.
    pub async fn open(&self) -> Result<(), KvError> {
        match self {
            Backend::Redis(r) => r.open().await,
            Backend::Sqlite(_) => Ok(()),
        }
    }

    /// Atomically adds `delta` to the counter at `key` (absent = 0).
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        match self {
            Backend::Redis(r) => r.increment(key, delta).await,
            Backend::Sqlite(s) => s.increment(key, delta).await,
        }
    }

    /// Stores `value` only if `key` still holds `expected` (None = absent). Returns
    /// whether it did: a lost race is `false`, never reported as success.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        match self {
            Backend::Redis(r) => r.compare_and_swap(key, expected, value).await,
            Backend::Sqlite(s) => s.compare_and_swap(key, expected, value).await,
        }
    }

    /// For logs and spans (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Backend::Redis(r) => r.describe(),
            Backend::Sqlite(_) => "sqlite".to_owned(),
        }
    }
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

    #[tokio::test]
    async fn sqlite_batches_answer_as_spins_sqlite_backend() {
        let (path, kv) = temp_db();
        let pairs = vec![
            ("a".to_owned(), b"1".to_vec()),
            ("b".to_owned(), b"2".to_vec()),
        ];
        kv.set_many(pairs).await.unwrap();
        // A missing key has no entry, as in Spin's `SELECT ... IN`.
        let found = kv
            .get_many(vec!["a".into(), "missing".into(), "b".into()])
            .await
            .unwrap();
        assert_eq!(
            found,
            [
                ("a".to_owned(), Some(b"1".to_vec())),
                ("b".to_owned(), Some(b"2".to_vec()))
            ]
        );
        kv.delete_many(vec!["a".into(), "b".into()]).await.unwrap();
        assert!(kv.keys().await.unwrap().is_empty());
        let _ = std::fs::remove_file(path);
    }

    /// A port nothing listens on (the kernel's pick, released at once).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A real redis-server on a free port, killed on drop.
    struct RedisServer(std::process::Child, u16);

    impl RedisServer {
        fn start() -> RedisServer {
            RedisServer::start_on(free_port())
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
        let kv = Backend::redis(&format!("redis://127.0.0.1:{}", server.1)).unwrap();
        assert_eq!(kv.increment("c", 42).await.unwrap(), 42);
        assert_eq!(kv.get("c").await.unwrap().unwrap(), b"42");
        assert!(kv.compare_and_swap("k", None, b"a").await.unwrap());
        assert!(!kv.compare_and_swap("k", None, b"x").await.unwrap());
        assert!(!kv.compare_and_swap("k", Some(b"z"), b"x").await.unwrap());
        assert!(kv.compare_and_swap("k", Some(b"a"), b"b").await.unwrap());
        assert_eq!(kv.get("k").await.unwrap().unwrap(), b"b");
    }

    /// Spin's Redis backend sends `get-many` as `KEYS`: it cannot read values. Writes
    /// and deletes in bulk work (`MSET`, `DEL`).
    #[tokio::test]
    async fn redis_batches_answer_as_spins_redis_backend() {
        let server = RedisServer::start();
        let kv = Backend::redis(&format!("redis://127.0.0.1:{}", server.1)).unwrap();
        let pairs = vec![
            ("a".to_owned(), b"1".to_vec()),
            ("b".to_owned(), b"2".to_vec()),
        ];
        kv.set_many(pairs).await.unwrap();
        assert_eq!(kv.get("b").await.unwrap().unwrap(), b"2");

        let two = kv.get_many(vec!["a".into(), "b".into()]).await;
        assert!(two.unwrap_err().contains("wrong number of arguments"));
        assert!(kv.get_many(vec!["a".into()]).await.is_err());
        // A key that does not exist matches no key name: no entry, not `none`.
        assert_eq!(kv.get_many(vec!["missing".into()]).await.unwrap(), []);

        kv.delete_many(vec!["a".into(), "b".into()]).await.unwrap();
        assert!(!kv.exists("a").await.unwrap());
        assert!(!kv.exists("b").await.unwrap());
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
        let kv = Backend::redis(&format!("redis://127.0.0.1:{}", server.1)).unwrap();
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

    /// As Spin's backend: the first `open` connects, retrying for seconds as redis-rs
    /// 0.32 does, and fails if Redis cannot be reached; the next `open` tries again.
    /// Once connected, an `open` answers even with Redis gone (its `PING`'s failure is
    /// ignored) and the commands after it fail.
    #[tokio::test]
    async fn a_redis_store_that_cannot_connect_fails_its_open_until_it_can() {
        let port = free_port();
        let kv = Backend::redis(&format!("redis://127.0.0.1:{port}")).unwrap();
        let started = std::time::Instant::now();
        let refused = kv.open().await.unwrap_err();
        assert!(refused.starts_with("redis: "), "{refused}");
        // Six retries from 100 ms, doubling: 6.3 s before jitter.
        assert!(
            started.elapsed() >= std::time::Duration::from_secs(6),
            "gave up after {:?}",
            started.elapsed()
        );

        let mut server = RedisServer::start_on(port);
        kv.open().await.unwrap();
        kv.set("k", b"v").await.unwrap();

        let _ = server.0.kill();
        let _ = server.0.wait();
        kv.open().await.unwrap();
        assert!(kv.get("k").await.is_err(), "redis is down");
    }

    #[tokio::test]
    async fn redis_store_reconnects_after_a_restart() {
        let mut server = RedisServer::start();
        let port = server.1;
        let kv = Backend::redis(&format!("redis://127.0.0.1:{port}")).unwrap();
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
