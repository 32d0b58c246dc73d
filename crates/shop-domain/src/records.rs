//! Persisting orders and dead letters, and finding orders that still need work.
//!
//! An order is numbered by an atomic sequence counter before anything is reserved for
//! it, and `orders:at:<n>` holds its draft: the order exactly as it will be recorded.
//! Its request then reserves stock, wins the order's commit claim and records it. If the
//! request dies on the way, redrive finds the draft by its number and settles it: it
//! claims the commit itself and releases the stock (nobody had committed), or, if the
//! request had committed, records the order from the draft. Redrive walks the numbers
//! from a low-water mark (below which everything is settled) to the newest, so it never
//! lists keys and never loses an order to a race. A draft given up whose request stopped
//! in the middle of taking a line leaves that line's stock in doubt (see
//! [`crate::stock::Doubt`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::order::Order;
use crate::stock;
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

/// Applies `event` to the order as stored now (not to a copy read earlier) and stores
/// the result if it changed; `order` becomes that record. Handlers of different epochs
/// (a redrive overlapping a slow handler) may work on one order at once: writing an
/// earlier copy back would undo what the other recorded meanwhile (an email sent
/// becoming pending again, for ever). States only move forward, so applying to the
/// freshest record leaves only the read and the write a store call apart to race.
pub fn apply_to_stored(
    kv: &impl KeyValue,
    order: &mut Order,
    event: &crate::order::OrderEvent,
    at: &str,
) -> Result<bool, StoreError> {
    if let Some(stored) = load_order(kv, &order.id)? {
        *order = stored;
    }
    if !order.apply(event, at) {
        return Ok(false);
    }
    save_order(kv, order)?;
    Ok(true)
}

/// `orders:at:<n>`: the draft of order number `n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Draft {
    order: Order,
}

/// Numbers `order` and stores its draft; returns the order with its number. Called
/// before anything is reserved for it.
pub fn begin_order(kv: &impl KeyValue, mut order: Order) -> Result<Order, StoreError> {
    order.sequence = kv.increment(&keys::order_sequence(), 1)?;
    let draft = Draft {
        order: order.clone(),
    };
    kv.set(
        &keys::order_at(order.sequence),
        &serde_json::to_vec(&draft).unwrap_or_default(),
    )?;
    Ok(order)
}

/// What redrive adds to an order's commit counter to give it up; the request adds 1.
/// The counter thus records who decided first: 1 (+ any number of `ABANDON`) means the
/// request committed, a multiple of `ABANDON` that redrive gave it up, and a later
/// redrive reads that instead of deciding again. A request that comes too late adds the
/// rest of an `ABANDON` to its 1 (see [`commit_order`]), so that the sum still says so.
const ABANDON: i64 = 1 << 20;

/// Records `order` if its request still may: it wins the commit claim, unless redrive
/// won it first to give the order up for dead (then `false`, and the order must give
/// back what it holds).
pub fn commit_order(kv: &impl KeyValue, order: &Order) -> Result<bool, StoreError> {
    if kv.increment(&keys::order_commit(&order.id), 1)? != 1 {
        // Too late: additions do not keep their order, and this 1 on top of redrive's
        // `ABANDON` would read as "committed first" to the next redrive, which would
        // record an order whose stock is given back. Rounding it up to a whole
        // `ABANDON` keeps the counter saying "given up" before anything is released.
        kv.increment(&keys::order_commit(&order.id), ABANDON - 1)?;
        return Ok(false);
    }
    save_order(kv, order)?;
    Ok(true)
}

/// What redrive did with the orders it looked at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Recorded orders still unfinished and idle long enough: to publish again.
    pub unfinished: Vec<Order>,
    /// Drafts whose request died before recording them: their stock was released.
    pub abandoned: Vec<String>,
    /// Drafts whose request died after committing: recorded from the draft (and in
    /// `unfinished`, to publish).
    pub completed: Vec<String>,
}

/// Walks the orders from the low-water mark: recorded orders unfinished and idle for
/// `idle_secs` are returned (oldest first, at most `limit`), drafts older than
/// `idle_secs` whose request died are settled; moves the low-water mark past what is
/// settled.
pub fn sweep(
    kv: &impl KeyValue,
    now: DateTime<Utc>,
    idle_secs: i64,
    limit: usize,
) -> Result<Sweep, StoreError> {
    let newest = kv.counter(&keys::order_sequence())?;
    // Orders 1..=finished_prefix are all settled; sequence numbers start at 1.
    let finished_prefix = kv.counter(&keys::redrive_low_water())?;
    let low = finished_prefix + 1;
    let mut sweep = Sweep::default();
    let mut advance_to = low;
    let mut prefix_done = true;
    for seq in low..=newest {
        let done = settle(kv, seq, now, idle_secs, limit, &mut sweep)?;
        prefix_done &= done;
        if prefix_done {
            advance_to = seq + 1;
        }
        if sweep.unfinished.len() >= limit && !prefix_done {
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
    Ok(sweep)
}

/// The draft of order number `seq`, if stored.
pub fn load_draft(kv: &impl KeyValue, seq: i64) -> Result<Option<Order>, StoreError> {
    kv.get(&keys::order_at(seq))?
        .map(|bytes| {
            serde_json::from_slice::<Draft>(&bytes)
                .map(|draft| draft.order)
                .map_err(|e| StoreError(format!("corrupt draft {seq}: {e}")))
        })
        .transpose()
}

/// What became of a draft whose request has not recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// The request had committed and the record exists (it was only slow).
    Recorded(Order),
    /// The request had committed and died: recorded now, from the draft.
    Completed(Order),
    /// Given up (now, if `first`, or earlier): it is never recorded, and what it held
    /// went back.
    GivenUp { first: bool },
}

/// Decides, once and for everyone who asks (redrive, or a retry with the same
/// `Idempotency-Key`), the fate of `draft` whose request has not recorded it: one
/// counter decides between the request (to record it) and this call (to give it up),
/// and remembers it. Fences a request that is only slow: it can no longer commit.
pub fn settle_draft(kv: &impl KeyValue, draft: &Order) -> Result<Fate, StoreError> {
    let decided = kv.increment(&keys::order_commit(&draft.id), ABANDON)?;
    // Between a late request's two additions the counter reads "committed"; the stock
    // that the first redrive released right after giving the order up says otherwise.
    if decided % ABANDON != 1 || stock::any_released(kv, &draft.id, &draft.lines)? {
        // Given up: what it held goes back (once, however often this runs). The line its
        // request was taking when it stopped, if any, may or may not have reached the
        // counter: in doubt.
        if let Some(line) = stock::line_being_taken(kv, &draft.id, &draft.lines)? {
            stock::record_doubt(kv, &draft.id, line, stock::DoubtfulChange::Take)?;
        }
        stock::release(kv, &draft.id, &draft.lines)?;
        return Ok(Fate::GivenUp {
            first: decided == ABANDON,
        });
    }
    // It had committed: finish its work (the very record it was writing), unless the
    // record has appeared meanwhile (then the request was only slow, and the record
    // may have moved on since: it must not be written back).
    if let Some(order) = load_order(kv, &draft.id)? {
        return Ok(Fate::Recorded(order));
    }
    save_order(kv, draft)?;
    Ok(Fate::Completed(draft.clone()))
}

/// Looks at order number `seq`; true once nothing is left to do for it.
fn settle(
    kv: &impl KeyValue,
    seq: i64,
    now: DateTime<Utc>,
    idle_secs: i64,
    limit: usize,
    sweep: &mut Sweep,
) -> Result<bool, StoreError> {
    let Some(draft) = load_draft(kv, seq)? else {
        // Numbered by a request that has not stored the draft yet, or died first (it had
        // reserved nothing): done once it has been missing for `idle_secs`.
        let seen = crate::lease::first_seen(kv, &keys::order_at_seen(seq), now.timestamp())?;
        return Ok(now.timestamp() - seen >= idle_secs);
    };
    let order = match load_order(kv, &draft.id)? {
        Some(order) => order,
        None if !older_than(&draft.created_at, now, idle_secs) => return Ok(false),
        // Its request died, or is very slow, or refused the order (out of stock).
        None => match settle_draft(kv, &draft)? {
            Fate::GivenUp { first } => {
                if first {
                    sweep.abandoned.push(draft.id);
                }
                return Ok(true);
            }
            Fate::Recorded(order) => order,
            Fate::Completed(order) => {
                sweep.completed.push(order.id.clone());
                order
            }
        },
    };
    if order.is_finished() {
        return Ok(true);
    }
    if older_than(&order.updated_at, now, idle_secs) && sweep.unfinished.len() < limit {
        sweep.unfinished.push(order);
    }
    Ok(false)
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

    fn draft(kv: &MemoryStore, n: u8, when: &str) -> Order {
        let mut order = sample_order();
        order.id = format!("ord_{n:032}");
        order.created_at = when.into();
        order.updated_at = when.into();
        begin_order(kv, order).unwrap()
    }

    fn place(kv: &MemoryStore, n: u8, when: &str) -> Order {
        let order = draft(kv, n, when);
        crate::stock::reserve(kv, &order.id, &order.lines).unwrap();
        assert!(commit_order(kv, &order).unwrap());
        order
    }

    fn ids(orders: &[Order]) -> Vec<&str> {
        orders.iter().map(|o| o.id.as_str()).collect()
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
        let found = sweep(&kv, now, 60, 100).unwrap();
        assert_eq!(ids(&found.unfinished), [waiting.id.as_str()]);
        // The finished first order is below the low-water mark now.
        assert_eq!(kv.counter(&keys::redrive_low_water()).unwrap(), 1);
        // Later, the fresh one is idle too.
        let found = sweep(&kv, at("2026-11-24T10:10:00Z"), 60, 100).unwrap();
        assert_eq!(found.unfinished.len(), 2);
    }

    #[test]
    fn a_draft_whose_request_died_gives_its_stock_back_once() {
        let kv = MemoryStore::new(CounterEncoding::LittleEndian8);
        let stock = |kv: &MemoryStore| kv.counter(&keys::stock("SPIN-MUG")).unwrap();
        let order = draft(&kv, 1, "2026-11-24T10:00:00Z");
        crate::stock::reserve(&kv, &order.id, &order.lines).unwrap();
        let reserved = stock(&kv);
        // The request dies here. Too early to tell:
        let found = sweep(&kv, at("2026-11-24T10:00:10Z"), 60, 100).unwrap();
        assert_eq!(found, Sweep::default());
        assert_eq!(stock(&kv), reserved);
        // A minute on, it is given up for dead, once.
        let found = sweep(&kv, at("2026-11-24T10:01:00Z"), 60, 100).unwrap();
        assert_eq!(found.abandoned, std::slice::from_ref(&order.id));
        assert_eq!(stock(&kv), reserved + 2);
        assert_eq!(kv.counter(&keys::redrive_low_water()).unwrap(), 1);
        sweep(&kv, at("2026-11-24T10:02:00Z"), 60, 100).unwrap();
        assert_eq!(stock(&kv), reserved + 2);
        // Had it only been slow, it cannot record the order now, and what it holds is
        // already back.
        assert!(!commit_order(&kv, &order).unwrap());
        crate::stock::give_back(&kv, &order.id, &order.lines).unwrap();
        assert_eq!(stock(&kv), reserved + 2);
        assert_eq!(load_order(&kv, &order.id).unwrap(), None);
    }

    #[test]
    fn a_given_up_draft_stays_given_up_on_every_later_sweep() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        // An older order still unfinished keeps the low-water mark below the draft, so
        // every sweep looks at the draft again.
        let _unfinished = place(&kv, 1, "2026-11-24T10:00:00Z");
        let refused = draft(&kv, 2, "2026-11-24T10:00:00Z");
        for minute in 1..5 {
            let now = at(&format!("2026-11-24T10:0{minute}:00Z"));
            let found = sweep(&kv, now, 60, 100).unwrap();
            assert!(found.completed.is_empty(), "minute {minute}: {found:?}");
            assert_eq!(load_order(&kv, &refused.id).unwrap(), None);
        }
        assert!(!commit_order(&kv, &refused).unwrap());
        // Its request was only slow and tried to commit after all: still given up.
        let found = sweep(&kv, at("2026-11-24T10:09:00Z"), 60, 100).unwrap();
        assert!(found.completed.is_empty(), "after a late commit: {found:?}");
        assert_eq!(load_order(&kv, &refused.id).unwrap(), None);
    }

    #[test]
    fn a_late_commit_caught_halfway_does_not_revive_a_given_up_draft() {
        let kv = MemoryStore::new(CounterEncoding::LittleEndian8);
        let _unfinished = place(&kv, 1, "2026-11-24T10:00:00Z");
        let slow = draft(&kv, 2, "2026-11-24T10:00:00Z");
        crate::stock::reserve(&kv, &slow.id, &slow.lines).unwrap();
        let found = sweep(&kv, at("2026-11-24T10:01:00Z"), 60, 100).unwrap();
        assert_eq!(found.abandoned, std::slice::from_ref(&slow.id));
        let stock_after_release = kv.counter(&keys::stock("SPIN-MUG")).unwrap();
        // The slow request's first addition has landed, its second not yet, when the
        // next redrive looks.
        assert_eq!(
            kv.increment(&keys::order_commit(&slow.id), 1).unwrap(),
            ABANDON + 1
        );
        let found = sweep(&kv, at("2026-11-24T10:02:00Z"), 60, 100).unwrap();
        assert!(found.completed.is_empty(), "{found:?}");
        assert_eq!(load_order(&kv, &slow.id).unwrap(), None);
        assert_eq!(
            kv.counter(&keys::stock("SPIN-MUG")).unwrap(),
            stock_after_release
        );
    }

    #[test]
    fn a_draft_whose_request_died_after_committing_is_recorded_from_the_draft() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        let order = draft(&kv, 1, "2026-11-24T10:00:00Z");
        crate::stock::reserve(&kv, &order.id, &order.lines).unwrap();
        // Won the commit, died before writing the record.
        assert_eq!(kv.increment(&keys::order_commit(&order.id), 1).unwrap(), 1);
        let found = sweep(&kv, at("2026-11-24T10:01:00Z"), 60, 100).unwrap();
        assert_eq!(found.completed, std::slice::from_ref(&order.id));
        assert_eq!(ids(&found.unfinished), [order.id.as_str()]);
        assert_eq!(load_order(&kv, &order.id).unwrap(), Some(order));
    }

    #[test]
    fn a_number_without_its_draft_stops_holding_redrive_back_after_a_while() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        kv.increment(&keys::order_sequence(), 1).unwrap();
        let later = place(&kv, 2, "2026-11-24T10:00:00Z");
        sweep(&kv, at("2026-11-24T10:00:30Z"), 60, 100).unwrap();
        assert_eq!(kv.counter(&keys::redrive_low_water()).unwrap(), 0);
        let found = sweep(&kv, at("2026-11-24T10:01:30Z"), 60, 100).unwrap();
        assert_eq!(ids(&found.unfinished), [later.id.as_str()]);
        assert_eq!(kv.counter(&keys::redrive_low_water()).unwrap(), 1);
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
