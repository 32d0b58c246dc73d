//! The shop's key-value port on a Redis reached through Spin's outbound Redis
//! (`fermyon:spin/redis`), for hosts whose own key-value store other deployments cannot
//! share: a managed platform runs checkout with this, and a fulfilment elsewhere (SpinKube,
//! `spin up`) reads the same data through its key-value store mapped to that Redis.
//!
//! It stores exactly what Spin's Redis key-value backend (`crates/key-value-redis`)
//! stores: every key as given, with no prefix and no store label (Spin's backend ignores
//! the label, so one Redis database is one store); values as plain strings (`GET`/`SET`);
//! counters with `INCRBY`, so as ASCII decimal. Either side can therefore take over the
//! other's keys, and a counter increments atomically whoever wrote it first.

use shop_domain::store::{KeyValue, StoreError};
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

use crate::redact_url;

/// One outbound Redis connection for the life of the instance (a request or message):
/// Spin opens a connection per `open`, so the store opens once and reuses it.
pub struct RedisKeyValue {
    connection: Connection,
    /// The address with any password hidden, for errors and spans.
    shown: String,
}

impl RedisKeyValue {
    /// Opens the Redis at `address` (which `allowed_outbound_hosts` must list).
    pub fn open(address: &str) -> Result<Self, StoreError> {
        let shown = redact_url(address);
        let connection = Connection::open(address)
            .map_err(|e| StoreError(format!("opening Redis {shown}: {e}")))?;
        Ok(Self { connection, shown })
    }

    /// Where this store lives, without credentials.
    pub fn address(&self) -> &str {
        &self.shown
    }
}

impl KeyValue for RedisKeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.connection
            .get(key)
            .map_err(|e| StoreError(format!("GET {key} on {}: {e}", self.shown)))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.connection
            .set(key, value)
            .map_err(|e| StoreError(format!("SET {key} on {}: {e}", self.shown)))
    }

    /// `INCRBY key delta` through `execute`: the outbound interface's own `incr` only adds
    /// one, and Spin's key-value backend uses `INCRBY` too, so the encoding is the same.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        crate::traced_increment("redis", &self.shown, key, delta, || {
            let reply = self
                .connection
                .execute(
                    "INCRBY",
                    &[
                        RedisParameter::Binary(key.as_bytes().to_vec()),
                        RedisParameter::Int64(delta),
                    ],
                )
                .map_err(|e| StoreError(format!("INCRBY {key} on {}: {e}", self.shown)))?;
            integer_reply(&reply)
                .ok_or_else(|| StoreError(format!("INCRBY {key}: unexpected reply {reply:?}")))
        })
    }
}

/// The integer of an `INCRBY` reply (one `int64`).
fn integer_reply(reply: &[RedisResult]) -> Option<i64> {
    match reply {
        [RedisResult::Int64(n)] => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_integer_is_an_increment_result() {
        assert_eq!(integer_reply(&[RedisResult::Int64(-3)]), Some(-3));
        assert_eq!(integer_reply(&[]), None);
        assert_eq!(integer_reply(&[RedisResult::Status("OK".into())]), None);
        assert_eq!(integer_reply(&[RedisResult::Binary(b"3".to_vec())]), None);
        assert_eq!(
            integer_reply(&[RedisResult::Int64(1), RedisResult::Int64(2)]),
            None
        );
    }
}
