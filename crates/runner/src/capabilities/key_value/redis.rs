//! Spin's Redis key-value backend: plain keys, counters by `INCRBY` (ASCII decimal).

use std::sync::Arc;

use anyhow::{Context, Result};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::sync::OnceCell;

use super::backend::KvError;
use crate::redis_conn::{redact, spin_manager_config};

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    /// Made by the first `open` that connects, then shared by every instance.
    manager: Arc<OnceCell<ConnectionManager>>,
}

impl RedisStore {
    pub fn new(url: &str) -> Result<RedisStore> {
        let client = redis::Client::open(url)
            .with_context(|| format!("redis key-value store url {:?}", redact(url)))?;
        Ok(RedisStore {
            client,
            manager: Arc::new(OnceCell::new()),
        })
    }

    /// The shared connection, connecting (with Spin's retries) if none has yet: until
    /// one has, Redis being unreachable fails the call, and the next one tries again.
    async fn connection(&self) -> Result<ConnectionManager, KvError> {
        self.manager
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(self.client.clone(), spin_manager_config())
            })
            .await
            .cloned()
            .map_err(|e| format!("redis: {e}"))
    }

    /// Runs one command on the shared connection, once (see [`crate::redis_conn`]).
    async fn run<'a, T, F, Fut>(&self, command: F) -> Result<T, KvError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + 'a,
    {
        command(self.connection().await?)
            .await
            .map_err(|e| format!("redis: {e}"))
    }

    /// What an `open` of the store does on Spin: connect if no connection was made yet
    /// (failing the `open` if that fails), then a `PING`, sent once, its answer ignored
    /// (see [`super::Backend::open`]).
    pub async fn open(&self) -> Result<(), KvError> {
        let mut connection = self.connection().await?;
        if let Err(e) = redis::cmd("PING").query_async::<()>(&mut connection).await {
            tracing::debug!("redis key-value PING on open: {e}");
        }
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.run(|mut c| async move { c.get(key).await }).await
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.run(|mut c| async move { c.set(key, value).await })
            .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.run(|mut c| async move { c.del::<_, i64>(key).await })
            .await
            .map(drop)
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.run(|mut c| async move { c.exists(key).await }).await
    }

    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.run(|mut c| async move { c.keys("*").await }).await
    }

    /// The very call Spin's Redis backend makes for `get-many` (Spin 3.1 to 4.0.2, read
    /// in `crates/key-value-redis/src/store.rs`): `KEYS <key>...`, not `MGET`. Redis
    /// refuses `KEYS` with more than one argument, one key that exists comes back as a
    /// reply that does not parse, and one that does not as an empty list. The runner
    /// does the same, so an app that works here does not rely on a call that fails on
    /// Spin (docs/spin-semantics.md).
    pub async fn get_many(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        let keys = &keys;
        // Spin's redis client accepts a list for `keys`; this one wants a single pattern,
        // so the same command is spelled out.
        self.run(|mut c| async move {
            redis::cmd("KEYS")
                .arg(keys)
                .query_async::<Vec<(String, Option<Vec<u8>>)>>(&mut c)
                .await
        })
        .await
    }

    /// `MSET`, as Spin sends it: one round trip, all keys set at once.
    pub async fn set_many(&self, key_values: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        let key_values = &key_values;
        self.run(|mut c| async move { c.mset::<_, _, ()>(key_values).await })
            .await
    }

    /// `DEL <key>...`, as Spin sends it.
    pub async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        let keys = &keys;
        self.run(|mut c| async move { c.del::<_, i64>(keys).await })
            .await
            .map(drop)
    }

    /// INCRBY, as Spin's backend sends it (the shop reads a counter with delta 0).
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.run(|mut c| async move { c.incr(key, delta).await })
            .await
    }

    /// A Lua script runs atomically in Redis: compare and set in one step.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        let script = redis::Script::new(
            r"local current = redis.call('GET', KEYS[1])
              if (ARGV[1] == '0' and current == false) or (ARGV[1] == '1' and current == ARGV[2]) then
                redis.call('SET', KEYS[1], ARGV[3])
                return 1
              end
              return 0",
        );
        let script = &script;
        let swapped: i64 = self
            .run(|mut c| async move {
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

    pub fn describe(&self) -> String {
        format!("redis {:?}", self.client.get_connection_info().addr())
    }
}
