//! A key-value port that rides out a short outage of the store (a Redis restart) for the
//! operations that are safe to repeat.
//!
//! `get`, `set` and reading a counter (`increment(key, 0)`) give the same result however
//! often they run, so a failed one is tried again with backoff for up to a budget.
//! Changing a counter is never repeated: if the store failed after applying it, a second
//! try would apply it twice. Those errors go to the caller, whose state machine is built
//! to be recovered from them (claims, leases, drafts; see `docs/reliability.md`).

use crate::ports::Environment;
use crate::store::{KeyValue, StoreError};

/// How long a repeatable operation keeps trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub total_ms: u64,
    pub first_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Default for Budget {
    /// Long enough for a supervised Redis to come back after a crash (restart plus
    /// reloading its append-only file).
    fn default() -> Self {
        Budget {
            total_ms: 10_000,
            first_delay_ms: 50,
            max_delay_ms: 1_000,
        }
    }
}

/// `kv`, with repeatable operations retried within `budget`.
pub struct Durable<'a, K, E> {
    kv: &'a K,
    env: &'a E,
    budget: Budget,
}

impl<'a, K: KeyValue, E: Environment> Durable<'a, K, E> {
    pub fn new(kv: &'a K, env: &'a E, budget: Budget) -> Self {
        Durable { kv, env, budget }
    }

    fn retry<T>(&self, mut op: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut waited = 0;
        let mut delay = self.budget.first_delay_ms;
        loop {
            match op() {
                Ok(value) => return Ok(value),
                Err(e) if waited + delay > self.budget.total_ms => return Err(e),
                Err(_) => {
                    self.env.sleep_ms(delay);
                    waited += delay;
                    delay = (delay * 2).min(self.budget.max_delay_ms);
                }
            }
        }
    }
}

impl<K: KeyValue, E: Environment> KeyValue for Durable<'_, K, E> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.retry(|| self.kv.get(key))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.retry(|| self.kv.set(key, value))
    }

    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        if delta == 0 {
            self.retry(|| self.kv.increment(key, 0))
        } else {
            self.kv.increment(key, delta)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::{CounterEncoding, MemoryStore};
    use std::cell::Cell;

    struct Clock {
        slept: Cell<u64>,
    }

    impl Environment for Clock {
        fn now(&self) -> chrono::DateTime<chrono::Utc> {
            chrono::DateTime::UNIX_EPOCH
        }
        fn random(&self) -> [u8; 16] {
            [0; 16]
        }
        fn sleep_ms(&self, ms: u64) {
            self.slept.set(self.slept.get() + ms);
        }
    }

    /// Fails the first `failures` operations.
    struct Flaky {
        inner: MemoryStore,
        failures: Cell<u32>,
        calls: Cell<u32>,
    }

    impl Flaky {
        fn fail(&self) -> Result<(), StoreError> {
            self.calls.set(self.calls.get() + 1);
            if self.failures.get() > 0 {
                self.failures.set(self.failures.get() - 1);
                return Err(StoreError("connection refused".into()));
            }
            Ok(())
        }
    }

    impl KeyValue for Flaky {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.fail()?;
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.fail()?;
            self.inner.set(key, value)
        }
        fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
            self.fail()?;
            self.inner.increment(key, delta)
        }
    }

    fn flaky(failures: u32) -> Flaky {
        Flaky {
            inner: MemoryStore::new(CounterEncoding::AsciiDecimal),
            failures: Cell::new(failures),
            calls: Cell::new(0),
        }
    }

    #[test]
    fn repeatable_operations_ride_out_an_outage_within_the_budget() {
        let clock = Clock {
            slept: Cell::new(0),
        };
        let kv = flaky(3);
        let durable = Durable::new(&kv, &clock, Budget::default());
        durable.set("k", b"v").unwrap();
        assert_eq!(kv.calls.get(), 4);
        assert_eq!(clock.slept.get(), 50 + 100 + 200);
        assert_eq!(durable.counter("c").unwrap(), 0);
        // A long outage: gives up within the budget.
        kv.failures.set(1_000);
        assert!(durable.get("k").is_err());
        assert!(clock.slept.get() <= 350 + 10_000);
    }

    #[test]
    fn counter_changes_are_never_repeated() {
        let clock = Clock {
            slept: Cell::new(0),
        };
        let kv = flaky(1);
        let durable = Durable::new(&kv, &clock, Budget::default());
        assert!(durable.increment("c", 1).is_err());
        assert_eq!(kv.calls.get(), 1);
        assert_eq!(durable.increment("c", 1).unwrap(), 1);
    }
}
