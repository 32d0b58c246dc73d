//! An in-memory [`KeyValue`] that stores counters the way one of Spin's backends does.
//!
//! Tests run the domain against both encodings so that reading a counter with `get`
//! (which only happens to work on one backend) shows up as a failure.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::{KeyValue, StoreError};

/// How `increment` stores a counter, as Spin's key-value backends do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterEncoding {
    /// Spin's Redis backend (`INCRBY`): ASCII decimal, e.g. `b"42"`.
    AsciiDecimal,
    /// Spin's SQLite backend: 8-byte little-endian `i64`.
    LittleEndian8,
}

impl CounterEncoding {
    fn decode(self, bytes: &[u8]) -> Result<i64, StoreError> {
        match self {
            CounterEncoding::AsciiDecimal => std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError("value is not an integer or out of range".into())),
            CounterEncoding::LittleEndian8 => bytes
                .try_into()
                .map(i64::from_le_bytes)
                .map_err(|_| StoreError(format!("counter holds {} bytes, not 8", bytes.len()))),
        }
    }

    fn encode(self, value: i64) -> Vec<u8> {
        match self {
            CounterEncoding::AsciiDecimal => value.to_string().into_bytes(),
            CounterEncoding::LittleEndian8 => value.to_le_bytes().to_vec(),
        }
    }
}

/// A thread-safe in-memory store; every operation is atomic.
#[derive(Debug)]
pub struct MemoryStore {
    encoding: CounterEncoding,
    data: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new(encoding: CounterEncoding) -> Self {
        Self {
            encoding,
            data: Mutex::new(HashMap::new()),
        }
    }

    fn data(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // A panicking test thread must not hide the state from the others.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raw bytes at `key`, for assertions about the stored encoding.
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.data().get(key).cloned()
    }

    /// Keys starting with `prefix`, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .data()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}

impl KeyValue for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.data().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.data().insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let mut data = self.data();
        let current = match data.get(key) {
            Some(bytes) => self.encoding.decode(bytes)?,
            None => 0,
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| StoreError("increment or decrement would overflow".into()))?;
        data.insert(key.to_owned(), self.encoding.encode(next));
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_use_the_backend_encoding() {
        let redis = MemoryStore::new(CounterEncoding::AsciiDecimal);
        assert_eq!(redis.increment("c", 42).unwrap(), 42);
        assert_eq!(redis.raw("c").unwrap(), b"42");

        let sqlite = MemoryStore::new(CounterEncoding::LittleEndian8);
        assert_eq!(sqlite.increment("c", -3).unwrap(), -3);
        assert_eq!(sqlite.raw("c").unwrap(), (-3i64).to_le_bytes());
    }

    #[test]
    fn incrementing_a_plain_value_fails_like_the_backends() {
        let sqlite = MemoryStore::new(CounterEncoding::LittleEndian8);
        sqlite.set("v", b"12").unwrap();
        assert!(sqlite.increment("v", 1).is_err());
        let redis = MemoryStore::new(CounterEncoding::AsciiDecimal);
        redis.set("v", b"{}").unwrap();
        assert!(redis.increment("v", 1).is_err());
    }

    #[test]
    fn claim_is_true_once() {
        let s = MemoryStore::new(CounterEncoding::AsciiDecimal);
        assert!(s.claim("k").unwrap());
        assert!(!s.claim("k").unwrap());
        assert_eq!(s.counter("k").unwrap(), 2);
    }
}
