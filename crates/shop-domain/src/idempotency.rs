//! `Idempotency-Key` handling for `POST /api/orders`.
//!
//! The first request with a key claims it (`increment == 1`) and stores the body's
//! fingerprint; when it has answered, it stores the answer. A later request with the same
//! key gets that same answer if its body means the same, a 422 if not, and a 409 while the
//! first one is still running. An internal failure (5xx) is not replayed: the next
//! request with the key takes over, through a claim numbered by attempt.

use serde::{Deserialize, Serialize};

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
    /// Which attempt owns the key; a failed attempt hands it to the next one.
    attempt: u32,
    response: Option<StoredResponse>,
    failed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// This request owns the key as `attempt`: do the work, then [`finish`] or [`abandon`].
    New { attempt: u32 },
    /// The key was used with the same body: answer this again.
    Replay(StoredResponse),
    /// The key was used with a different body.
    Mismatch,
    /// The request that owns this key has not answered yet.
    InProgress,
}

/// Starts a request with the hashed key `key_hash` and body `fingerprint`.
pub fn begin(kv: &impl KeyValue, key_hash: &str, fingerprint: &str) -> Result<Start, StoreError> {
    if kv.claim(&keys::idempotency_claim(key_hash, 0))? {
        write(kv, key_hash, fingerprint, 0, None, false)?;
        return Ok(Start::New { attempt: 0 });
    }
    let Some(bytes) = kv.get(&keys::idempotency_record(key_hash))? else {
        // The owner claimed the key but has not written its record yet.
        return Ok(Start::InProgress);
    };
    let record: Record = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError(format!("corrupt idempotency record: {e}")))?;
    if record.fingerprint != fingerprint {
        return Ok(Start::Mismatch);
    }
    if let Some(response) = record.response {
        return Ok(Start::Replay(response));
    }
    if record.failed {
        // The owner hit an internal error and answered 5xx: one retry takes over.
        let next = record.attempt + 1;
        if kv.claim(&keys::idempotency_claim(key_hash, next))? {
            write(kv, key_hash, fingerprint, next, None, false)?;
            return Ok(Start::New { attempt: next });
        }
    }
    Ok(Start::InProgress)
}

/// Stores the answer given by the request that owns the key; later requests replay it.
pub fn finish(
    kv: &impl KeyValue,
    key_hash: &str,
    fingerprint: &str,
    attempt: u32,
    response: &StoredResponse,
) -> Result<(), StoreError> {
    write(
        kv,
        key_hash,
        fingerprint,
        attempt,
        Some(response.clone()),
        false,
    )
}

/// Records that the owning request failed internally (and so answered 5xx): the next
/// request with this key and body may try again instead of replaying the failure.
pub fn abandon(
    kv: &impl KeyValue,
    key_hash: &str,
    fingerprint: &str,
    attempt: u32,
) -> Result<(), StoreError> {
    write(kv, key_hash, fingerprint, attempt, None, true)
}

fn write(
    kv: &impl KeyValue,
    key_hash: &str,
    fingerprint: &str,
    attempt: u32,
    response: Option<StoredResponse>,
    failed: bool,
) -> Result<(), StoreError> {
    let record = Record {
        fingerprint: fingerprint.to_owned(),
        attempt,
        response,
        failed,
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

    #[test]
    fn same_key_same_body_replays_different_body_mismatches() {
        let kv = MemoryStore::new(CounterEncoding::LittleEndian8);
        assert_eq!(begin(&kv, "k", "f1").unwrap(), Start::New { attempt: 0 });
        assert_eq!(begin(&kv, "k", "f1").unwrap(), Start::InProgress);
        let answer = StoredResponse {
            status: 202,
            body: serde_json::json!({"order_id": "ord_1", "status": "accepted"}),
            location: Some("/api/orders/ord_1".into()),
        };
        finish(&kv, "k", "f1", 0, &answer).unwrap();
        assert_eq!(begin(&kv, "k", "f1").unwrap(), Start::Replay(answer));
        assert_eq!(begin(&kv, "k", "f2").unwrap(), Start::Mismatch);
        assert_eq!(
            begin(&kv, "other", "f2").unwrap(),
            Start::New { attempt: 0 }
        );
    }

    #[test]
    fn a_failed_owner_hands_the_key_to_exactly_one_retry() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        assert_eq!(begin(&kv, "k", "f").unwrap(), Start::New { attempt: 0 });
        abandon(&kv, "k", "f", 0).unwrap();
        assert_eq!(begin(&kv, "k", "other body").unwrap(), Start::Mismatch);
        assert_eq!(begin(&kv, "k", "f").unwrap(), Start::New { attempt: 1 });
        assert_eq!(begin(&kv, "k", "f").unwrap(), Start::InProgress);
    }
}
