//! Persisting orders and dead letters, and finding orders that still need fulfilment.
//!
//! Orders are numbered by an atomic sequence counter; `orders:at:<n>` maps a number to
//! its order. Redrive walks the numbers from a low-water mark (below which every order is
//! finished) to the newest, so it never lists keys and never loses an order to a race.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::order::Order;
use crate::store::{keys, KeyValue, StoreError};

/// Loads an order; a corrupt record is an error, never a panic.
pub fn load_order(kv: &impl KeyValue, order_id: &str) -> Result<Option<Order>, StoreError> {
    match kv.get(&keys::order(order_id))? {
        None => Ok(None),
        Some(bytes) => Order::from_json(&bytes)
            .map(Some)
            .map_err(|e| StoreError(format!("corrupt order record {order_id}: {e}"))),
    }
}

pub fn save_order(kv: &impl KeyValue, order: &Order) -> Result<(), StoreError> {
    kv.set(&keys::order(&order.id), &order.to_json())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SequenceEntry {
    order_id: String,
    at: String,
}

/// Gives the next order its sequence number and remembers which order has it. Called
/// before the order record is written, so redrive can tell "not written yet" apart.
pub fn assign_sequence(kv: &impl KeyValue, order_id: &str, at: &str) -> Result<i64, StoreError> {
    let seq = kv.increment(&keys::order_sequence(), 1)?;
    let entry = SequenceEntry {
        order_id: order_id.to_owned(),
        at: at.to_owned(),
    };
    kv.set(
        &keys::order_at(seq),
        &serde_json::to_vec(&entry).unwrap_or_default(),
    )?;
    Ok(seq)
}

/// An entry whose order record never appeared after this long belongs to a request that
/// died between numbering and writing its order; redrive stops waiting for it.
const ABANDONED_AFTER_SECS: i64 = 600;

/// Unfinished orders not updated for `idle_secs`, oldest first, at most `limit`; moves
/// the low-water mark past the finished (or abandoned) prefix.
pub fn unfinished_orders(
    kv: &impl KeyValue,
    now: DateTime<Utc>,
    idle_secs: i64,
    limit: usize,
) -> Result<Vec<Order>, StoreError> {
    let newest = kv.counter(&keys::order_sequence())?;
    // Orders 1..=finished_prefix are all finished; sequence numbers start at 1.
    let finished_prefix = kv.counter(&keys::redrive_low_water())?;
    let low = finished_prefix + 1;
    let mut found = Vec::new();
    let mut advance_to = low;
    let mut prefix_done = true;
    for seq in low..=newest {
        let done = match kv.get(&keys::order_at(seq))? {
            // Numbered a moment ago (or by a request that died): look again next time.
            None => false,
            Some(bytes) => {
                let entry: SequenceEntry = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError(format!("corrupt sequence entry {seq}: {e}")))?;
                match load_order(kv, &entry.order_id)? {
                    None => older_than(&entry.at, now, ABANDONED_AFTER_SECS),
                    Some(order) if order.is_finished() => true,
                    Some(order) => {
                        if older_than(&order.updated_at, now, idle_secs) && found.len() < limit {
                            found.push(order);
                        }
                        false
                    }
                }
            }
        };
        prefix_done &= done;
        if prefix_done {
            advance_to = seq + 1;
        }
        if found.len() >= limit && !prefix_done {
            break;
        }
    }
    if advance_to > low {
        // Only an atomic increment moves the mark. If another redrive moved it meanwhile,
        // leave it: adding our distance on top could skip unfinished orders.
        if kv.counter(&keys::redrive_low_water())? == finished_prefix {
            kv.increment(&keys::redrive_low_water(), advance_to - low)?;
        }
    }
    Ok(found)
}

/// True if the RFC 3339 time `at` is at least `secs` before `now`; an unreadable time
/// counts as old, so a bad record cannot stall redrive forever.
fn older_than(at: &str, now: DateTime<Utc>, secs: i64) -> bool {
    DateTime::parse_from_rfc3339(at)
        .map(|at| (now - at.with_timezone(&Utc)).num_seconds() >= secs)
        .unwrap_or(true)
}

/// A message fulfilment could not use, kept for a person to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub received_at: String,
    pub reason: String,
    /// The payload as text (lossy), cut at [`DEAD_LETTER_MAX_BYTES`].
    pub payload: String,
    pub payload_bytes: usize,
}

pub const DEAD_LETTER_MAX_BYTES: usize = 16 * 1024;

/// Appends a dead letter; returns its number.
pub fn dead_letter(
    kv: &impl KeyValue,
    payload: &[u8],
    reason: &str,
    at: &str,
) -> Result<i64, StoreError> {
    let kept = &payload[..payload.len().min(DEAD_LETTER_MAX_BYTES)];
    let letter = DeadLetter {
        received_at: at.to_owned(),
        reason: reason.to_owned(),
        payload: String::from_utf8_lossy(kept).into_owned(),
        payload_bytes: payload.len(),
    };
    let seq = kv.increment(&keys::dead_letter_sequence(), 1)?;
    kv.set(
        &keys::dead_letter(seq),
        &serde_json::to_vec(&letter).unwrap_or_default(),
    )?;
    Ok(seq)
}

/// The newest `limit` dead letters, newest first.
pub fn recent_dead_letters(
    kv: &impl KeyValue,
    limit: usize,
) -> Result<Vec<(i64, DeadLetter)>, StoreError> {
    let newest = kv.counter(&keys::dead_letter_sequence())?;
    let mut letters = Vec::new();
    let mut seq = newest;
    while seq >= 1 && letters.len() < limit {
        if let Some(bytes) = kv.get(&keys::dead_letter(seq))? {
            if let Ok(letter) = serde_json::from_slice(&bytes) {
                letters.push((seq, letter));
            }
        }
        seq -= 1;
    }
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::{CounterEncoding, MemoryStore};
    use crate::order::tests::sample_order;
    use crate::order::OrderEvent;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn place(kv: &MemoryStore, n: u8, when: &str) -> Order {
        let mut order = sample_order();
        order.id = format!("ord_{n:032}");
        order.sequence = assign_sequence(kv, &order.id, when).unwrap();
        order.created_at = when.into();
        order.updated_at = when.into();
        save_order(kv, &order).unwrap();
        order
    }

    #[test]
    fn finds_idle_unfinished_orders_and_skips_finished_ones() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        let mut done = place(&kv, 1, "2026-11-24T10:00:00Z");
        done.apply(&OrderEvent::Confirmed, "2026-11-24T10:00:01Z");
        done.apply(
            &OrderEvent::NotificationSent {
                provider: "mailpit".into(),
                message_id: None,
            },
            "2026-11-24T10:00:01Z",
        );
        save_order(&kv, &done).unwrap();
        let waiting = place(&kv, 2, "2026-11-24T10:00:00Z");
        let _fresh = place(&kv, 3, "2026-11-24T10:04:50Z");

        let now = at("2026-11-24T10:05:00Z");
        let found = unfinished_orders(&kv, now, 60, 100).unwrap();
        let ids: Vec<&str> = found.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, [waiting.id.as_str()]);
        // The finished first order is below the low-water mark now.
        assert_eq!(kv.counter(&keys::redrive_low_water()).unwrap(), 1);
        // Later, the fresh one is idle too.
        let found = unfinished_orders(&kv, at("2026-11-24T10:10:00Z"), 60, 100).unwrap();
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn dead_letters_keep_the_payload_bounded() {
        let kv = MemoryStore::new(CounterEncoding::LittleEndian8);
        let big = vec![b'x'; DEAD_LETTER_MAX_BYTES + 10];
        assert_eq!(
            dead_letter(&kv, b"\xff{not json", "malformed", "t").unwrap(),
            1
        );
        assert_eq!(dead_letter(&kv, &big, "too big", "t").unwrap(), 2);
        let letters = recent_dead_letters(&kv, 10).unwrap();
        assert_eq!(letters[0].0, 2);
        assert_eq!(letters[0].1.payload.len(), DEAD_LETTER_MAX_BYTES);
        assert_eq!(letters[0].1.payload_bytes, DEAD_LETTER_MAX_BYTES + 10);
        assert_eq!(letters[1].1.reason, "malformed");
    }

    #[test]
    fn corrupt_records_are_errors() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        kv.set(&keys::order("ord_x"), b"{").unwrap();
        assert!(load_order(&kv, "ord_x").is_err());
        assert_eq!(load_order(&kv, "ord_y").unwrap(), None);
    }
}
