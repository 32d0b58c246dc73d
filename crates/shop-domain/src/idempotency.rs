//! `Idempotency-Key` handling for `POST /api/orders`.
//!
//! The first request with a key claims it (`increment == 1`) and stores the body's
//! fingerprint; when it has answered, it stores the answer. A later request with the same
//! key gets that same answer if its body means the same, a 422 if not, and a 409 while the
//! first one is still running.

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
    response: Option<StoredResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// This request owns the key: do the work, then call [`finish`].
    New,
    /// The key was used with the same body: answer this again.
    Replay(StoredResponse),
    /// The key was used with a different body.
    Mismatch,
    /// The first request with this key has not answered yet.
    InProgress,
}

/// Starts a request with the hashed key `key_hash` and body `fingerprint`.
pub fn begin(kv: &impl KeyValue, key_hash: &str, fingerprint: &str) -> Result<Start, StoreError> {
    if kv.claim(&keys::idempotency_claim(key_hash))? {
        let record = Record {
            fingerprint: fingerprint.to_owned(),
            response: None,
        };
        kv.set(&keys::idempotency_record(key_hash), &to_json(&record))?;
        return Ok(Start::New);
    }
    let Some(bytes) = kv.get(&keys::idempotency_record(key_hash))? else {
        // The winner claimed the key but has not written its record yet.
        return Ok(Start::InProgress);
    };
    let record: Record = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError(format!("corrupt idempotency record: {e}")))?;
    Ok(if record.fingerprint != fingerprint {
        Start::Mismatch
    } else {
        match record.response {
            Some(response) => Start::Replay(response),
            None => Start::InProgress,
        }
    })
}

/// Stores the answer given to the request that owns the key.
pub fn finish(
    kv: &impl KeyValue,
    key_hash: &str,
    fingerprint: &str,
    response: &StoredResponse,
) -> Result<(), StoreError> {
    let record = Record {
        fingerprint: fingerprint.to_owned(),
        response: Some(response.clone()),
    };
    kv.set(&keys::idempotency_record(key_hash), &to_json(&record))
}

fn to_json(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::{CounterEncoding, MemoryStore};

    #[test]
    fn same_key_same_body_replays_different_body_mismatches() {
        let kv = MemoryStore::new(CounterEncoding::LittleEndian8);
        assert_eq!(begin(&kv, "k", "f1").unwrap(), Start::New);
        assert_eq!(begin(&kv, "k", "f1").unwrap(), Start::InProgress);
        let answer = StoredResponse {
            status: 202,
            body: serde_json::json!({"order_id": "ord_1", "status": "accepted"}),
            location: Some("/api/orders/ord_1".into()),
        };
        finish(&kv, "k", "f1", &answer).unwrap();
        assert_eq!(begin(&kv, "k", "f1").unwrap(), Start::Replay(answer));
        assert_eq!(begin(&kv, "k", "f2").unwrap(), Start::Mismatch);
        assert_eq!(begin(&kv, "other", "f2").unwrap(), Start::New);
    }
}
