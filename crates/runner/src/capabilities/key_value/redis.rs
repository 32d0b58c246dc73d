//! Spin's Redis key-value backend: plain keys, counters by `INCRBY` (ASCII decimal).

use anyhow::{Context, Result};
use redis::AsyncCommands;

use super::backend::KvError;
use crate::redis_conn::{redact, retrying, Repeat, Repeat::Idempotent};

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    manager: redis::aio::ConnectionManager,
}

impl RedisStore {
    pub fn new(url: &str) -> Result<RedisStore> {
        // Connects lazily and reconnects after a Redis restart.
        let (client, manager) = crate::redis_conn::manager(url)
            .with_context(|| format!("redis key-value store url {:?}", redact(url)))?;
        Ok(RedisStore { client, manager })
    }

    /// Runs one command on the shared connection (see [`crate::redis_conn::retrying`]).
    async fn run<'a, T, F, Fut>(&self, repeat: Repeat, command: F) -> Result<T, KvError>
    where
        F: Fn(redis::aio::ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + 'a,
    {
        retrying(repeat, || command(self.manager.clone()))
            .await
            .map_err(|e| format!("redis: {e}"))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.run(Idempotent, |mut c| async move { c.get(key).await })
            .await
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.run(Idempotent, |mut c| async move { c.set(key, value).await })
            .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.run(
            Idempotent,
            |mut c| async move { c.del::<_, i64>(key).await },
        )
        .await
        .map(drop)
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.run(Idempotent, |mut c| async move { c.exists(key).await })
            .await
    }

    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.run(Idempotent, |mut c| async move { c.keys("*").await })
            .await
    }

    /// INCRBY. Reading (delta 0) may be repeated after a dropped connection; changing
    /// the counter may not.
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let repeat = if delta == 0 { Idempotent } else { Repeat::Once };
        self.run(repeat, |mut c| async move { c.incr(key, delta).await })
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

    pub fn describe(&self) -> String {
        format!("redis {:?}", self.client.get_connection_info().addr())
    }
}
