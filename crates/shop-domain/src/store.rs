//! The key-value port and every key the shop uses.
//!
//! Only three operations are needed, and all of them exist on every Spin key-value
//! backend: `get`, `set` and the atomic `increment` of `wasi:keyvalue/atomics`.
//! Compare-and-swap is deliberately not part of the port: on Spin's Redis backend it is
//! unusable (see `docs/spin-semantics.md`), so correctness rests on `increment` alone.
//!
//! Counters and plain values never share a key: Spin's backends encode counters
//! differently (Redis: ASCII decimal, SQLite: 8-byte little-endian), so a counter is only
//! ever read with `increment(key, 0)`.

use std::fmt;

/// A failure of the key-value backend (I/O, connection, permissions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key-value store error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// The key-value operations the shop relies on.
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Atomically adds `delta` to the counter at `key` (absent = 0) and returns the new value.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError>;

    /// Reads a counter portably (whatever the backend's encoding).
    fn counter(&self, key: &str) -> Result<i64, StoreError> {
        self.increment(key, 0)
    }

    /// Claims one-time work: true for exactly one caller per key, ever.
    fn claim(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.increment(key, 1)? == 1)
    }
}

impl<T: KeyValue + ?Sized> KeyValue for &T {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        (**self).set(key, value)
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        (**self).increment(key, delta)
    }
}

/// Key names, in one place. Versioned so a future layout can live beside this one.
pub mod keys {
    const PREFIX: &str = "shop:v1";

    /// Counter: units of `sku` still available.
    pub fn stock(sku: &str) -> String {
        format!("{PREFIX}:stock:{sku}")
    }
    /// Claim: who seeds the stock of `sku`.
    pub fn stock_seed_claim(sku: &str) -> String {
        format!("{PREFIX}:stock-seed:{sku}")
    }
    /// Counter (0/1): the stock of `sku` has been seeded.
    pub fn stock_seeded(sku: &str) -> String {
        format!("{PREFIX}:stock-seeded:{sku}")
    }
    /// Marker: the stock of `sku` for `order_id` was taken (set right after the
    /// decrement, so a release knows what to give back).
    pub fn held(order_id: &str, sku: &str) -> String {
        format!("{PREFIX}:held:{order_id}:{sku}")
    }
    /// Counter (> 0): the line `sku` of `order_id` is released; it may take no stock.
    pub fn release_claim(order_id: &str, sku: &str) -> String {
        format!("{PREFIX}:release:{order_id}:{sku}")
    }
    /// Claim: giving back the stock `order_id` holds for `sku` (at most once ever).
    pub fn returned(order_id: &str, sku: &str) -> String {
        format!("{PREFIX}:returned:{order_id}:{sku}")
    }
    /// Marker: the give-back claimed under [`returned`] reached the stock counter.
    pub fn returned_done(order_id: &str, sku: &str) -> String {
        format!("{PREFIX}:returned-done:{order_id}:{sku}")
    }
    /// Claim: the doubt about the stock of `order_id`'s line `sku` is recorded (once).
    pub fn stock_doubt_claim(order_id: &str, sku: &str) -> String {
        format!("{PREFIX}:stock-doubt:{order_id}:{sku}")
    }
    /// Marker: the give-back of `order_id`'s line `sku`, recorded in doubt by a caller
    /// that found it claimed, did reach the counter (see [`crate::stock::give_back`]).
    pub fn stock_doubt_settled(order_id: &str, sku: &str) -> String {
        format!("{PREFIX}:stock-doubt-settled:{order_id}:{sku}")
    }
    /// Counter: the number of the newest stock doubt.
    pub fn stock_doubt_sequence() -> String {
        format!("{PREFIX}:stock-doubts:seq")
    }
    /// JSON stock doubt number `seq` (see [`crate::stock::Doubt`]).
    pub fn stock_doubt(seq: i64) -> String {
        format!("{PREFIX}:stock-doubts:{seq}")
    }
    /// JSON order record.
    pub fn order(order_id: &str) -> String {
        format!("{PREFIX}:order:{order_id}")
    }
    /// Counter (0/1): the order-placed event reached Redis at least once.
    pub fn order_published(order_id: &str) -> String {
        format!("{PREFIX}:published:{order_id}")
    }
    /// Counter: the newest fulfilment epoch handed out for `order_id` (0 = first publish).
    pub fn fulfilment_epoch(order_id: &str) -> String {
        format!("{PREFIX}:epoch:{order_id}")
    }
    /// Claim: processing `order_id` in fulfilment epoch `epoch`.
    pub fn fulfilment_claim(order_id: &str, epoch: u64) -> String {
        format!("{PREFIX}:fulfil:{order_id}:{epoch}")
    }
    /// Counter: the sequence number of the newest order.
    pub fn order_sequence() -> String {
        format!("{PREFIX}:orders:seq")
    }
    /// JSON: the draft of the order numbered `seq` (see [`crate::records`]).
    pub fn order_at(seq: i64) -> String {
        format!("{PREFIX}:orders:at:{seq}")
    }
    /// When redrive first saw number `seq` without its draft (unix seconds).
    pub fn order_at_seen(seq: i64) -> String {
        format!("{PREFIX}:orders:at-seen:{seq}")
    }
    /// Claim: who decides `order_id`'s fate, its request (to record it) or redrive (to
    /// give it up for dead).
    pub fn order_commit(order_id: &str) -> String {
        format!("{PREFIX}:commit:{order_id}")
    }
    /// Counter: orders 1..=value are all finished (redrive's low-water mark).
    pub fn redrive_low_water() -> String {
        format!("{PREFIX}:orders:done-below")
    }
    /// Lease (see [`crate::lease`]) of the request that owns this idempotency key.
    pub fn idempotency_lease(key_hash: &str) -> String {
        format!("{PREFIX}:idem-lease:{key_hash}")
    }
    /// Lease of the handler sending `order_id`'s email about `outcome`.
    pub fn mail_lease(order_id: &str, outcome: &str) -> String {
        format!("{PREFIX}:mail-lease:{order_id}:{outcome}")
    }
    /// JSON idempotency record for this key (hashed).
    pub fn idempotency_record(key_hash: &str) -> String {
        format!("{PREFIX}:idem:{key_hash}")
    }
    /// Counter: the sequence number of the newest dead letter.
    pub fn dead_letter_sequence() -> String {
        format!("{PREFIX}:dead-letters:seq")
    }
    /// JSON dead letter number `seq`.
    pub fn dead_letter(seq: i64) -> String {
        format!("{PREFIX}:dead-letters:{seq}")
    }
}
