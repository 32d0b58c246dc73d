//! `Idempotency-Key` handling for `POST /api/orders`.
//!
//! The first request with a key takes the key's [`lease`] and records the body's
//! fingerprint, then the order id it chose, then its answer. A later request with the
//! same key gets that same answer if its body means the same, a 422 if not, and a 409
//! while the owner is still working. An owner that answered 5xx gives the key up at
//! once; one that died (crash, lost connection) loses it when its lease runs out, and
//! the next request with the key takes over: it adopts the order the dead owner had
//! numbered, if any (recording it from its draft if the owner had committed it, giving
//! it up otherwise; see [`crate::records::settle_draft`]), so one key never makes two
//! orders.
//!
//! The fingerprint covers the request with the card reduced to what the shop keeps
//! (brand, last four digits, expiry): never the card number or the CVC, which hashed
//! alongside the rest of the body could be recovered by guessing.

use serde::{Deserialize, Serialize};

use crate::lease::{self, Lease};
use crate::store::{keys, KeyValue, StoreError};

/// An answer as it will be replayed: status, JSON body and `Location`, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
    pub location: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    fingerprint: String,
    /// The order the owner created (set once it is numbered, before it takes stock),
    /// so a successor can adopt it.
    #[serde(default)]
    order_id: Option<String>,
    /// Its number, where its draft is (see [`crate::records`]).
    #[serde(default)]
    order_sequence: Option<i64>,
    response: Option<StoredResponse>,
}

/// The order an earlier owner of the key numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousOrder {
    pub id: String,
    /// Where its draft is; `None` in records written before drafts were numbered here.
    pub sequence: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// This request owns the key as `attempt`: do the work, then [`finish`] or
    /// [`abandon`]. `previous_order` is the order an earlier owner of the key numbered:
    /// if it was committed, answer with it instead of making another.
    New {
        attempt: u32,
        previous_order: Option<PreviousOrder>,
    },
    /// The key was used with the same body: answer this again.
    Replay(StoredResponse),
    /// The key was used with a different body.
    Mismatch,
    /// The request that owns this key has not answered yet; it may be taken over in at
    /// most `retry_after` seconds if it never does.
    InProgress { retry_after: i64 },
}

fn lease_name(key_hash: &str) -> String {
    keys::idempotency_lease(key_hash)
}

fn load(kv: &impl KeyValue, key_hash: &str) -> Result<Option<Record>, StoreError> {
    kv.get(&keys::idempotency_record(key_hash))?
        .map(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|e| StoreError(format!("corrupt idempotency record: {e}")))
        })
        .transpose()
}

/// Starts a request with the hashed key `key_hash` and body `fingerprint`, at `now`
/// (unix seconds); an owner keeps the key for `lease_secs` before others may take over.
pub fn begin(
    kv: &impl KeyValue,
    key_hash: &str,
    fingerprint: &str,
    now: i64,
    lease_secs: i64,
) -> Result<Start, StoreError> {
    let record = load(kv, key_hash)?;
    if let Some(record) = &record {
        if record.fingerprint != fingerprint {
            return Ok(Start::Mismatch);
        }
        if let Some(response) = &record.response {
            return Ok(Start::Replay(response.clone()));
        }
    }
    match lease::acquire(kv, &lease_name(key_hash), now, lease_secs)? {
        Lease::Held { retry_after } => Ok(Start::InProgress { retry_after }),
        // Never closed (an answer is kept in the record instead): busy, as if held.
        Lease::Done { .. } => Ok(Start::InProgress {
            retry_after: lease_secs,
        }),
        Lease::Acquired { attempt, .. } => {
            // Between our first read and the lease, an owner may have answered.
            let record = match load(kv, key_hash)? {
                Some(r) if r.fingerprint != fingerprint => return Ok(Start::Mismatch),
                Some(r) if r.response.is_some() => {
                    return Ok(Start::Replay(r.response.unwrap_or_else(|| unreachable!())))
                }
                other => other,
            };
            let previous_order = record.and_then(|r| {
                r.order_id.map(|id| PreviousOrder {
                    id,
                    sequence: r.order_sequence,
                })
            });
            write(kv, key_hash, fingerprint, previous_order.clone(), None)?;
            Ok(Start::New {
                attempt,
                previous_order,
            })
        }
    }
}

/// Records the order the owner numbered (its id and number), before it takes stock.
pub fn assign_order(
    kv: &impl KeyValue,
    key_hash: &str,
    fingerprint: &str,
    order_id: &str,
    sequence: i64,
) -> Result<(), StoreError> {
    let order = PreviousOrder {
        id: order_id.to_owned(),
        sequence: Some(sequence),
    };
    write(kv, key_hash, fingerprint, Some(order), None)
}

/// Whether a later request has taken this key over from `attempt`.
pub fn superseded(kv: &impl KeyValue, key_hash: &str, attempt: u32) -> Result<bool, StoreError> {
    lease::superseded(kv, &lease_name(key_hash), attempt)
}

/// Stores the answer given by the request that owns the key; later requests replay it.
pub fn finish(
    kv: &impl KeyValue,
    key_hash: &str,
    fingerprint: &str,
    order_id: Option<&str>,
    response: &StoredResponse,
) -> Result<(), StoreError> {
    let order = order_id.map(|id| PreviousOrder {
        id: id.to_owned(),
        sequence: None,
    });
    write(kv, key_hash, fingerprint, order, Some(response.clone()))
}

/// The owner failed internally (and so answered 5xx): the next request with this key
/// and body takes over at once instead of replaying the failure.
pub fn abandon(kv: &impl KeyValue, key_hash: &str, attempt: u32) -> Result<(), StoreError> {
    lease::give_up(kv, &lease_name(key_hash), attempt)
}

fn write(
    kv: &impl KeyValue,
    key_hash: &str,
    fingerprint: &str,
    order: Option<PreviousOrder>,
    response: Option<StoredResponse>,
) -> Result<(), StoreError> {
    let (order_id, order_sequence) = match order {
        Some(order) => (Some(order.id), order.sequence),
        None => (None, None),
    };
    let record = Record {
        fingerprint: fingerprint.to_owned(),
        order_id,
        order_sequence,
        response,
    };
    kv.set(
        &keys::idempotency_record(key_hash),
        &serde_json::to_vec(&record).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::{CounterEncoding, MemoryStore};

    const LEASE: i64 = 30;

    fn new(attempt: u32, previous_order: Option<(&str, i64)>) -> Start {
        Start::New {
            attempt,
            previous_order: previous_order.map(|(id, seq)| PreviousOrder {
                id: id.to_owned(),
                sequence: Some(seq),
            }),
        }
    }

    #[test]
    fn same_key_same_body_replays_different_body_mismatches() {
        let kv = MemoryStore::new(CounterEncoding::LittleEndian8);
        assert_eq!(begin(&kv, "k", "f1", 0, LEASE).unwrap(), new(0, None));
        assert_eq!(
            begin(&kv, "k", "f1", 1, LEASE).unwrap(),
            Start::InProgress { retry_after: 29 }
        );
        let answer = StoredResponse {
            status: 202,
            body: serde_json::json!({"order_id": "ord_1", "status": "accepted"}),
            location: Some("/api/orders/ord_1".into()),
        };
        finish(&kv, "k", "f1", Some("ord_1"), &answer).unwrap();
        assert_eq!(
            begin(&kv, "k", "f1", 2, LEASE).unwrap(),
            Start::Replay(answer)
        );
        assert_eq!(begin(&kv, "k", "f2", 2, LEASE).unwrap(), Start::Mismatch);
        assert_eq!(begin(&kv, "other", "f2", 2, LEASE).unwrap(), new(0, None));
    }

    #[test]
    fn a_failed_owner_hands_the_key_to_exactly_one_retry() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        assert_eq!(begin(&kv, "k", "f", 0, LEASE).unwrap(), new(0, None));
        abandon(&kv, "k", 0).unwrap();
        assert_eq!(
            begin(&kv, "k", "other body", 1, LEASE).unwrap(),
            Start::Mismatch
        );
        assert_eq!(begin(&kv, "k", "f", 1, LEASE).unwrap(), new(1, None));
        assert!(matches!(
            begin(&kv, "k", "f", 2, LEASE).unwrap(),
            Start::InProgress { .. }
        ));
    }

    #[test]
    fn an_owner_that_died_is_taken_over_after_its_lease_and_its_order_adopted() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        assert_eq!(begin(&kv, "k", "f", 100, LEASE).unwrap(), new(0, None));
        assert_eq!(
            begin(&kv, "k", "f", 110, LEASE).unwrap(),
            Start::InProgress { retry_after: 20 }
        );
        // The owner chose its order, then died.
        assign_order(&kv, "k", "f", "ord_a", 7).unwrap();
        assert!(!superseded(&kv, "k", 0).unwrap());
        assert_eq!(
            begin(&kv, "k", "f", 130, LEASE).unwrap(),
            new(1, Some(("ord_a", 7)))
        );
        // The dead owner, had it only been slow, now knows not to commit.
        assert!(superseded(&kv, "k", 0).unwrap());
    }

    #[test]
    fn a_key_claimed_by_a_request_that_died_at_once_is_free_after_a_lease() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        // The state a request leaves when it dies right after claiming: a claim, no record.
        assert!(kv.claim(&format!("{}:claim:0", lease_name("k"))).unwrap());
        assert!(matches!(
            begin(&kv, "k", "f", 500, LEASE).unwrap(),
            Start::InProgress { .. }
        ));
        assert_eq!(begin(&kv, "k", "f", 530, LEASE).unwrap(), new(1, None));
    }
}
