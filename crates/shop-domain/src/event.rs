//! The order-placed event published on the Redis channel.
//!
//! Redis pub/sub has no headers, so the envelope itself carries the W3C trace context
//! (`traceparent`, `tracestate`) that lets fulfilment continue the checkout trace.
//!
//! ```json
//! {"schema_version":1,"type":"order.placed","event_id":"evt_…","order_id":"ord_…",
//!  "sequence":42,"epoch":0,"occurred_at":"2026-11-24T10:00:00Z",
//!  "traceparent":"00-…-…-01","tracestate":null}
//! ```
//!
//! `epoch` is 0 when checkout publishes and grows with each redrive, so a redrive can take
//! over an order whose earlier handler died while holding the claim for its epoch.
//! `sequence` is the order's number ([`crate::records`]): it picks the order's shard of
//! the channel, and tells fulfilment where the next orders of that shard are. It was
//! added within version 1 (an event without it reads as 0, no order's number).

use serde::{Deserialize, Serialize};

use crate::ids::is_order_id;

pub const SCHEMA_VERSION: u64 = 1;
pub const ORDER_PLACED: &str = "order.placed";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub schema_version: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub event_id: String,
    pub order_id: String,
    #[serde(default)]
    pub sequence: i64,
    pub epoch: u64,
    pub occurred_at: String,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl OrderPlaced {
    pub fn new(event_id: String, order_id: String, epoch: u64, occurred_at: String) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            kind: ORDER_PLACED.to_owned(),
            event_id,
            order_id,
            sequence: 0,
            epoch,
            occurred_at,
            traceparent: None,
            tracestate: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The most shards the order channel may be split into.
pub const MAX_SHARDS: u32 = 256;

/// The shard of the order numbered `sequence` among `shards`: consecutive orders take
/// the shards in turn, so they spread evenly, and the next order of a shard is
/// `shards` numbers on.
pub fn shard(sequence: i64, shards: u32) -> u32 {
    sequence.rem_euclid(i64::from(shards.clamp(1, MAX_SHARDS))) as u32
}

/// The channel every event of the order numbered `sequence` goes to: `<base>.<shard>`.
/// Spin's Redis trigger handles one subscriber's messages one at a time, so the stream
/// is split over `shards` channels, each with a subscriber of its own (`spin.toml` lists
/// one trigger per shard), which Spin runs concurrently; one order's events stay on one
/// channel, in order.
pub fn order_channel(base: &str, sequence: i64, shards: u32) -> String {
    format!("{base}.{}", shard(sequence, shards))
}

/// Parses the `order_shards` setting: an integer from 1 to [`MAX_SHARDS`].
pub fn parse_shards(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_SHARDS).contains(&n) => Ok(n),
        _ => Err(format!(
            "order_shards must be an integer from 1 to {MAX_SHARDS}, not {value:?}"
        )),
    }
}

/// Why a message cannot be processed. Each is dead-lettered, never retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    NotJson(String),
    UnsupportedVersion(String),
    Invalid(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotJson(e) => write!(f, "not a JSON event: {e}"),
            DecodeError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported schema_version {v} (this handler reads {SCHEMA_VERSION})"
                )
            }
            DecodeError::Invalid(e) => write!(f, "invalid event: {e}"),
        }
    }
}

/// Decodes a message. The schema version is checked first, so a future version is
/// reported as such rather than as a shape error. Unknown extra fields are allowed
/// (additive changes keep version 1); an invalid `traceparent` is dropped, as W3C Trace
/// Context says, rather than failing the order.
pub fn decode(payload: &[u8]) -> Result<OrderPlaced, DecodeError> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    match value.get("schema_version") {
        Some(v) if v.as_u64() == Some(SCHEMA_VERSION) => {}
        Some(v) => return Err(DecodeError::UnsupportedVersion(v.to_string())),
        None => return Err(DecodeError::Invalid("schema_version is missing".into())),
    }
    let mut event: OrderPlaced =
        serde_json::from_value(value).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if event.kind != ORDER_PLACED {
        return Err(DecodeError::Invalid(format!(
            "unknown type {:?}",
            event.kind
        )));
    }
    if !is_order_id(&event.order_id) {
        return Err(DecodeError::Invalid(format!(
            "order_id {:?} is not an order id",
            event.order_id
        )));
    }
    if event
        .traceparent
        .as_deref()
        .is_some_and(|tp| !is_traceparent(tp))
    {
        event.traceparent = None;
        event.tracestate = None;
    }
    Ok(event)
}

/// W3C Trace Context `traceparent`, version 00: `00-<32 hex>-<16 hex>-<2 hex>`, with
/// non-zero trace and parent ids.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if *version == "00" && hex(trace, 32) && hex(parent, 16) && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{new_event_id, new_order_id};
    use proptest::prelude::*;

    #[test]
    fn consecutive_orders_take_the_shards_in_turn() {
        let channels: Vec<String> = (1..=5).map(|seq| order_channel("c", seq, 4)).collect();
        assert_eq!(channels, ["c.1", "c.2", "c.3", "c.0", "c.1"]);
        assert_eq!(shard(17, 16), shard(17 + 16, 16));
        assert_eq!(order_channel("c", 7, 1), "c.0");
        assert_eq!(order_channel("c", 7, 0), "c.0");
        // An event from before `sequence` existed.
        assert_eq!(order_channel("c", 0, 16), "c.0");
    }

    #[test]
    fn an_event_without_a_sequence_reads_as_zero() {
        let mut json: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        json.as_object_mut().unwrap().remove("sequence");
        let event = decode(json.to_string().as_bytes()).unwrap();
        assert_eq!(event.sequence, 0);
    }

    #[test]
    fn shard_counts_are_checked() {
        assert_eq!(parse_shards(" 16 "), Ok(16));
        assert_eq!(parse_shards("1"), Ok(1));
        for bad in ["0", "-1", "257", "many", ""] {
            assert!(
                parse_shards(bad).unwrap_err().contains("order_shards"),
                "{bad}"
            );
        }
    }

    fn sample() -> OrderPlaced {
        let mut e = OrderPlaced::new(
            new_event_id([1; 16]),
            new_order_id([2; 16]),
            0,
            "2026-11-24T10:00:00Z".into(),
        );
        e.sequence = 42;
        e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        e
    }

    #[test]
    fn round_trips() {
        let e = sample();
        assert_eq!(decode(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn versions_and_shapes_are_checked() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["schema_version"] = 2.into();
        assert!(matches!(
            decode(v.to_string().as_bytes()),
            Err(DecodeError::UnsupportedVersion(_))
        ));
        v["schema_version"] = 1.into();
        v["order_id"] = "ord_../../x".into();
        assert!(matches!(
            decode(v.to_string().as_bytes()),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(decode(b"hello"), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode(b"{}"), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn a_bad_traceparent_is_dropped_not_fatal() {
        let mut e = sample();
        e.traceparent = Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01".into());
        e.tracestate = Some("k=v".into());
        let decoded = decode(&e.to_json()).unwrap();
        assert_eq!(decoded.traceparent, None);
        assert_eq!(decoded.tracestate, None);
        assert!(!is_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&payload);
        }
    }
}
