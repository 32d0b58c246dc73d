//! Identifiers: order ids, event ids, and hashed idempotency keys.

use sha2::{Digest, Sha256};

const ORDER_PREFIX: &str = "ord_";
const EVENT_PREFIX: &str = "evt_";

/// A new order id from 16 random bytes (the component takes them from `wasi:random`).
pub fn new_order_id(random: [u8; 16]) -> String {
    format!("{ORDER_PREFIX}{}", hex::encode(random))
}

/// A new event id from 16 random bytes.
pub fn new_event_id(random: [u8; 16]) -> String {
    format!("{EVENT_PREFIX}{}", hex::encode(random))
}

/// True if `id` has the shape of an order id; anything else is rejected before it is
/// used in a key-value key.
pub fn is_order_id(id: &str) -> bool {
    id.strip_prefix(ORDER_PREFIX).is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Longest `Idempotency-Key` accepted (as Resend and Stripe do).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Checks a client's `Idempotency-Key`: 1..=255 visible ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!(
            "must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters long"
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must contain only visible ASCII characters".into());
    }
    Ok(())
}

/// Client keys are hashed before use in key names: bounded length, no separators.
pub fn hash_idempotency_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Fingerprint of a request body, independent of key order and whitespace, so that the
/// "same body" check of an idempotent retry compares meaning, not bytes.
pub fn body_fingerprint(body: &serde_json::Value) -> String {
    // serde_json's Map is ordered by key (no `preserve_order` feature): canonical output.
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_ids_round_trip_their_shape() {
        let id = new_order_id([0xab; 16]);
        assert!(is_order_id(&id), "{id}");
        assert!(!is_order_id("ord_../../etc"));
        assert!(!is_order_id(&id.to_uppercase()));
        assert!(!is_order_id(&new_event_id([1; 16])));
        assert!(!is_order_id(&format!("{id}0")));
    }

    #[test]
    fn idempotency_keys_are_bounded_and_visible() {
        assert!(validate_idempotency_key("abc-123").is_ok());
        assert!(validate_idempotency_key("").is_err());
        assert!(validate_idempotency_key(&"k".repeat(256)).is_err());
        assert!(validate_idempotency_key(&"k".repeat(255)).is_ok());
        assert!(validate_idempotency_key("has space").is_err());
        assert_eq!(hash_idempotency_key("a").len(), 64);
    }

    #[test]
    fn fingerprint_ignores_key_order_but_not_values() {
        let a = json!({"email": "a@b.co", "items": [{"sku": "X", "quantity": 1}]});
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "items":[{"quantity":1,"sku":"X"}],"email":"a@b.co" }"#)
                .unwrap();
        let c = json!({"email": "a@b.co", "items": [{"sku": "X", "quantity": 2}]});
        assert_eq!(body_fingerprint(&a), body_fingerprint(&b));
        assert_ne!(body_fingerprint(&a), body_fingerprint(&c));
    }
}
