//! Stock levels, kept in the key-value store as counters changed only by atomic
//! `increment`, so that concurrent orders can never oversell.
//!
//! - Reserve: a read refuses at once when the stock is already short; otherwise
//!   `increment(stock, -qty)`, and a negative result means another order took the last
//!   units meanwhile, so the same amount is given back at once. Two clients racing for the last unit both
//!   decrement; exactly one sees a non-negative result. Right after a successful
//!   decrement a `held` marker is set (a plain, repeatable write), so whoever releases
//!   the order later knows what it took. Only the request that created an order id
//!   reserves for it, once: ids are never reused.
//! - Release (an order that failed, a partly reserved order, or one whose request died
//!   before recording it) marks each line released, so it can take no stock afterwards,
//!   and gives back what the line holds under a claim of its own
//!   (`increment(returned, 1) == 1`): stock comes back exactly once, whoever releases
//!   (fulfilment's failed capture, redrive's cleanup, the slow request itself).
//!
//! - In doubt: a change whose outcome nobody can know, because the store may have
//!   applied it and then failed before answering (a Redis crash), or the process making
//!   it died right after it. Increments cannot be repeated safely, so such a change is
//!   never retried nor guessed at: it is recorded as a [`Doubt`] (this line's units may
//!   be missing from the counter), listed for an operator by `GET /api/admin/stock`.
//!   Stock is never oversold by a doubt, only possibly short. Doubts are found where
//!   the evidence is: redrive, settling a draft whose request stopped, finds the one
//!   line it was taking (neither held nor released); a release finds a give-back that
//!   was claimed and never confirmed. That give-back may only be slow: its claimant,
//!   once it confirms, marks such a doubt settled, so two releasers racing (replicas
//!   handling one failed order) leave none.
//!
//! Seeding puts [`Product::initial_stock`] into an empty store once: one caller wins the
//! seed claim and adds the stock, then marks the SKU seeded. Until then other callers
//! see [`StockError::NotSeeded`] and retry shortly (the window is two key-value calls).
//! It happens on first use and costs nothing afterwards: only a counter at zero or
//! below (sold out, or never seeded) makes a reader or a reservation look at the
//! seeded marker, so the hot paths never do.

use serde::{Deserialize, Serialize};

use crate::catalogue::{Product, PRODUCTS};
use crate::order::OrderLine;
use crate::store::{keys, KeyValue, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockError {
    /// Not enough stock for one line; nothing is held for the order.
    OutOfStock {
        line: usize,
        sku: String,
        requested: u32,
        available: i64,
    },
    /// The order's stock was released (its request was given up for dead).
    Released {
        sku: String,
    },
    /// Another caller is seeding this SKU right now; retry in a moment.
    NotSeeded {
        sku: String,
    },
    Store(StoreError),
}

impl From<StoreError> for StockError {
    fn from(e: StoreError) -> Self {
        StockError::Store(e)
    }
}

/// What [`seed`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seeding {
    /// Seeded before this call: the counter is what it is.
    Already,
    /// Seeded by this call: the counter just received the initial stock.
    Now,
    /// Another caller is seeding it right now.
    InProgress,
}

/// Seeds the stock of `product` if nobody has.
fn seed(kv: &impl KeyValue, product: &Product) -> Result<Seeding, StoreError> {
    if kv.counter(&keys::stock_seeded(product.sku))? > 0 {
        return Ok(Seeding::Already);
    }
    if kv.claim(&keys::stock_seed_claim(product.sku))? {
        kv.increment(&keys::stock(product.sku), i64::from(product.initial_stock))?;
        kv.increment(&keys::stock_seeded(product.sku), 1)?;
        return Ok(Seeding::Now);
    }
    // Lost the claim: seeded once the winner, two store calls away, has marked it. This
    // happens once per SKU ever (a burst of first orders), so asking again a few times
    // beats failing the request.
    for _ in 0..SEED_WAIT_READS {
        if kv.counter(&keys::stock_seeded(product.sku))? > 0 {
            return Ok(Seeding::Now);
        }
    }
    Ok(Seeding::InProgress)
}

/// How many times a line is tried while a fresh read shows enough units (others taking
/// and giving back the last units at the same time).
const RESERVE_ATTEMPTS: usize = 3;

/// How many times a caller that lost the seed claim reads the seeded marker before it
/// gives up (the winner may have died between its claim and its marker).
const SEED_WAIT_READS: usize = 200;

/// Seeds the stock of `product` if nobody has. Returns true once seeded (by anyone).
pub fn ensure_seeded(kv: &impl KeyValue, product: &Product) -> Result<bool, StoreError> {
    Ok(seed(kv, product)? != Seeding::InProgress)
}

/// Seeds every product; false if some SKU is still being seeded by another caller.
pub fn ensure_catalogue_seeded(kv: &impl KeyValue) -> Result<bool, StoreError> {
    let mut all = true;
    for product in PRODUCTS {
        all &= ensure_seeded(kv, product)?;
    }
    Ok(all)
}

/// The most one adjustment may add or remove.
pub const MAX_ADJUSTMENT: i64 = 1_000_000;
/// The highest level an operator may set.
pub const MAX_LEVEL: i64 = 1_000_000_000;

/// What an operator asks of a product's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockChange {
    /// Add (negative: remove) units.
    Add(i64),
    /// Make the level this many units, less whatever orders take meanwhile.
    Set(i64),
}

/// Changes the stock of `product` with the same atomic counter orders take from, so it
/// is safe under load: an order placed meanwhile keeps its units (a `Set` counts them
/// as taken from the new level). Never below zero: a change that would leave orders
/// holding more than exists is undone and refused. Returns the new level. A store
/// failure leaves the change in doubt: read the level before retrying.
pub fn adjust(
    kv: &impl KeyValue,
    product: &Product,
    change: StockChange,
) -> Result<i64, StockError> {
    if seed(kv, product)? == Seeding::InProgress {
        // A seeder that died between its claim and its marker would leave the SKU
        // unsold for ever: the operator's change decides the level, so it marks it.
        kv.increment(&keys::stock_seeded(product.sku), 1)?;
    }
    let key = keys::stock(product.sku);
    let delta = match change {
        StockChange::Add(delta) => delta,
        StockChange::Set(target) => {
            let current = kv.counter(&key)?;
            if current == target {
                return Ok(current);
            }
            target - current
        }
    };
    let level = kv.increment(&key, delta)?;
    if level < 0 {
        // Orders hold what is missing: put it back and refuse, as a reservation would.
        kv.increment(&key, -delta)?;
        return Err(StockError::OutOfStock {
            line: 0,
            sku: product.sku.to_owned(),
            requested: u32::try_from(-delta).unwrap_or(u32::MAX),
            available: (level - delta).max(0),
        });
    }
    Ok(level)
}

/// Units of `product` available right now (never negative), seeding its stock on
/// first use. One counter read unless the product is sold out or new.
pub fn available(kv: &impl KeyValue, product: &Product) -> Result<i64, StockError> {
    let key = keys::stock(product.sku);
    let level = kv.counter(&key)?;
    if level > 0 {
        return Ok(level);
    }
    match seed(kv, product)? {
        Seeding::Already => Ok(level.max(0)),
        Seeding::Now => Ok(kv.counter(&key)?.max(0)),
        Seeding::InProgress => Err(StockError::NotSeeded {
            sku: product.sku.to_owned(),
        }),
    }
}

/// Takes stock for every line of `order_id`, or nothing at all.
pub fn reserve(kv: &impl KeyValue, order_id: &str, lines: &[OrderLine]) -> Result<(), StockError> {
    for (i, line) in lines.iter().enumerate() {
        match reserve_line(kv, order_id, i, line) {
            Ok(()) => {}
            Err(LineFailure::Refused(e)) => {
                // Give back what this order already holds; the failing line holds nothing.
                // Releasing every line also marks the failing one, so nothing takes it later.
                release(kv, order_id, &lines[..=i])?;
                return Err(e);
            }
            Err(LineFailure::Unsure(e)) => {
                // This line's change may have reached the counter. It stays unmarked, so
                // that redrive, settling the order, records the doubt; nothing else can
                // take it for this order (the order is never recorded).
                release(kv, order_id, &lines[..i])?;
                return Err(StockError::Store(e));
            }
        }
    }
    Ok(())
}

/// Why one line could not be reserved.
enum LineFailure {
    /// Nothing was taken for the line.
    Refused(StockError),
    /// The store failed while changing the counter: it may or may not have applied it.
    Unsure(StoreError),
}

impl From<StoreError> for LineFailure {
    fn from(e: StoreError) -> Self {
        LineFailure::Refused(StockError::Store(e))
    }
}

fn reserve_line(
    kv: &impl KeyValue,
    order_id: &str,
    index: usize,
    line: &OrderLine,
) -> Result<(), LineFailure> {
    // Released already: redrive gave this order up for dead while it was slow.
    if kv.counter(&keys::release_claim(order_id, &line.sku))? > 0 {
        return Err(LineFailure::Refused(StockError::Released {
            sku: line.sku.clone(),
        }));
    }
    let qty = i64::from(line.quantity);
    let stock_key = keys::stock(&line.sku);
    // Take first, ask later: only a short counter can mean the SKU was never seeded (it
    // is then seeded, and taken again). A decrement that raced the first seeding, or a
    // restock, may have seen the counter short although it no longer is: the line is
    // refused only if a fresh read still shows too few units.
    for attempt in 1.. {
        let left = kv
            .increment(&stock_key, -qty)
            .map_err(LineFailure::Unsure)?;
        if left >= 0 {
            break;
        }
        kv.increment(&stock_key, qty).map_err(LineFailure::Unsure)?;
        let seeding = match crate::catalogue::find(&line.sku) {
            Some(product) => seed(kv, product)?,
            None => Seeding::Already,
        };
        let available = match seeding {
            Seeding::InProgress => {
                return Err(LineFailure::Refused(StockError::NotSeeded {
                    sku: line.sku.clone(),
                }))
            }
            Seeding::Now | Seeding::Already => kv.counter(&stock_key)?.max(0),
        };
        if available < qty || attempt == RESERVE_ATTEMPTS {
            return Err(LineFailure::Refused(StockError::OutOfStock {
                line: index,
                sku: line.sku.clone(),
                requested: line.quantity,
                available,
            }));
        }
    }
    // The units are taken: a marker that cannot be written leaves the line neither held
    // nor released, for redrive to record in doubt (releasing it here would mark it
    // released while nobody gives the units back, and nothing would say so).
    kv.set(
        &keys::held(order_id, &line.sku),
        line.quantity.to_string().as_bytes(),
    )
    .map_err(LineFailure::Unsure)?;
    Ok(())
}

/// Whether `order_id` holds the stock of `sku` (its decrement completed).
pub fn holds(kv: &impl KeyValue, order_id: &str, sku: &str) -> Result<bool, StoreError> {
    Ok(kv.get(&keys::held(order_id, sku))?.is_some())
}

/// Marks `lines` of `order_id` released (they can take no stock afterwards) and gives
/// back what they hold, each line at most once ever.
pub fn release(kv: &impl KeyValue, order_id: &str, lines: &[OrderLine]) -> Result<(), StoreError> {
    for line in lines {
        kv.increment(&keys::release_claim(order_id, &line.sku), 1)?;
    }
    give_back(kv, order_id, lines)
}

/// Gives back what `lines` of `order_id` hold, each line at most once ever, whoever
/// calls it and however often. A give-back whose outcome is unknown is recorded as a
/// [`Doubt`], by the caller that saw the store fail or by a later one that finds it
/// claimed and never confirmed.
pub fn give_back(
    kv: &impl KeyValue,
    order_id: &str,
    lines: &[OrderLine],
) -> Result<(), StoreError> {
    for line in lines {
        if !holds(kv, order_id, &line.sku)? {
            continue;
        }
        if kv.claim(&keys::returned(order_id, &line.sku))? {
            finish_give_back(kv, order_id, line)?;
        } else if !give_back_done(kv, order_id, line)? {
            // Claimed by a caller that died, whose store failed, or that is giving back
            // right now: in doubt until someone counts.
            record_doubt(kv, order_id, line, DoubtfulChange::GiveBack)?;
            // The claimant may have finished meanwhile. It looks for this doubt after
            // confirming, and this looks for its confirmation after recording, so one
            // of the two sees the other and the doubt does not outlive the answer.
            if give_back_done(kv, order_id, line)? {
                settle_give_back_doubt(kv, order_id, line)?;
            }
        }
    }
    Ok(())
}

/// The claimant's part of a give-back: the increment, its confirmation, and settling a
/// doubt that another caller recorded while this one was giving back.
fn finish_give_back(
    kv: &impl KeyValue,
    order_id: &str,
    line: &OrderLine,
) -> Result<(), StoreError> {
    if let Err(e) = kv.increment(&keys::stock(&line.sku), i64::from(line.quantity)) {
        let _ = record_doubt(kv, order_id, line, DoubtfulChange::GiveBack);
        return Err(e);
    }
    kv.set(&keys::returned_done(order_id, &line.sku), b"1")?;
    if kv.counter(&keys::stock_doubt_claim(order_id, &line.sku))? > 0 {
        settle_give_back_doubt(kv, order_id, line)?;
    }
    Ok(())
}

fn give_back_done(
    kv: &impl KeyValue,
    order_id: &str,
    line: &OrderLine,
) -> Result<bool, StoreError> {
    Ok(kv.get(&keys::returned_done(order_id, &line.sku))?.is_some())
}

/// Marks a give-back doubt about `line` as answered: the units did go back. A repeatable
/// write, kept beside the doubt (which stays numbered) and honoured by [`doubts`].
fn settle_give_back_doubt(
    kv: &impl KeyValue,
    order_id: &str,
    line: &OrderLine,
) -> Result<(), StoreError> {
    kv.set(&keys::stock_doubt_settled(order_id, &line.sku), b"1")
}

/// The stock change a [`Doubt`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DoubtfulChange {
    /// Taking the line's units (or giving them back at once when short).
    Take,
    /// Giving the units of a released line back.
    GiveBack,
}

/// A stock change whose outcome is unknown: the counter of `sku` may be short by
/// `quantity` units (never over: stock is not oversold by a doubt). An operator counts
/// and corrects the level; nothing guesses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doubt {
    pub order_id: String,
    pub sku: String,
    pub quantity: u32,
    pub change: DoubtfulChange,
}

/// Records that the stock of `line` of `order_id` is in doubt, once however often it is
/// found.
pub fn record_doubt(
    kv: &impl KeyValue,
    order_id: &str,
    line: &OrderLine,
    change: DoubtfulChange,
) -> Result<(), StoreError> {
    if !kv.claim(&keys::stock_doubt_claim(order_id, &line.sku))? {
        return Ok(());
    }
    let doubt = Doubt {
        order_id: order_id.to_owned(),
        sku: line.sku.clone(),
        quantity: line.quantity,
        change,
    };
    let seq = kv.increment(&keys::stock_doubt_sequence(), 1)?;
    kv.set(
        &keys::stock_doubt(seq),
        &serde_json::to_vec(&doubt).unwrap_or_default(),
    )
}

/// The line `order_id`'s request was taking when it stopped, if any: the first line
/// neither held nor released (lines are taken in order, and a refused or given-up line
/// is released). Read before the order is released by whoever settles it.
pub fn line_being_taken<'a>(
    kv: &impl KeyValue,
    order_id: &str,
    lines: &'a [OrderLine],
) -> Result<Option<&'a OrderLine>, StoreError> {
    for line in lines {
        if holds(kv, order_id, &line.sku)? {
            continue;
        }
        if kv.counter(&keys::release_claim(order_id, &line.sku))? > 0 {
            return Ok(None);
        }
        return Ok(Some(line));
    }
    Ok(None)
}

/// Every recorded doubt still unanswered, oldest first (there are few: each needs a
/// crash or a lost answer).
pub fn doubts(kv: &impl KeyValue) -> Result<Vec<Doubt>, StoreError> {
    let newest = kv.counter(&keys::stock_doubt_sequence())?;
    let mut found = Vec::new();
    for seq in 1..=newest {
        let Some(bytes) = kv.get(&keys::stock_doubt(seq))? else {
            continue;
        };
        let Ok(doubt) = serde_json::from_slice::<Doubt>(&bytes) else {
            continue;
        };
        let settled = doubt.change == DoubtfulChange::GiveBack
            && kv
                .get(&keys::stock_doubt_settled(&doubt.order_id, &doubt.sku))?
                .is_some();
        if !settled {
            found.push(doubt);
        }
    }
    Ok(found)
}

/// A product's stock as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Level {
    pub sku: String,
    pub available: i64,
    /// Units possibly missing from `available` because of changes in doubt.
    pub in_doubt: i64,
}

/// The stock of every product, with what is in doubt.
pub fn levels(kv: &impl KeyValue, doubts: &[Doubt]) -> Result<Vec<Level>, StockError> {
    PRODUCTS
        .iter()
        .map(|product| {
            Ok(Level {
                sku: product.sku.to_owned(),
                available: available(kv, product)?,
                in_doubt: doubts
                    .iter()
                    .filter(|d| d.sku == product.sku)
                    .map(|d| i64::from(d.quantity))
                    .sum(),
            })
        })
        .collect()
}

/// Whether any line of `order_id` has been released (checked before an order is
/// recorded: a released order must not be).
pub fn any_released(
    kv: &impl KeyValue,
    order_id: &str,
    lines: &[OrderLine],
) -> Result<bool, StoreError> {
    for line in lines {
        if kv.counter(&keys::release_claim(order_id, &line.sku))? > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::{CounterEncoding, MemoryStore};
    use crate::store::StoreError;
    use proptest::prelude::*;
    use std::sync::{Arc, Condvar, Mutex};

    const ENCODINGS: [CounterEncoding; 2] = [
        CounterEncoding::AsciiDecimal,
        CounterEncoding::LittleEndian8,
    ];

    fn line(sku: &str, quantity: u32) -> OrderLine {
        let p = crate::catalogue::find(sku).unwrap();
        OrderLine {
            sku: sku.into(),
            name: p.name.into(),
            quantity,
            unit_price_minor: p.price_minor,
        }
    }

    fn stock_of(kv: &impl KeyValue, sku: &str) -> i64 {
        kv.counter(&keys::stock(sku)).unwrap()
    }

    #[test]
    fn seeding_happens_once() {
        for enc in ENCODINGS {
            let kv = MemoryStore::new(enc);
            assert!(ensure_catalogue_seeded(&kv).unwrap());
            assert!(ensure_catalogue_seeded(&kv).unwrap());
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 3);
        }
    }

    #[test]
    fn out_of_stock_takes_nothing_and_reports_what_is_left() {
        for enc in ENCODINGS {
            let kv = MemoryStore::new(enc);
            let lines = [line("SPIN-MUG", 2), line("LIMITED-PRINT", 4)];
            let err = reserve(&kv, "o1", &lines).unwrap_err();
            assert_eq!(
                err,
                StockError::OutOfStock {
                    line: 1,
                    sku: "LIMITED-PRINT".into(),
                    requested: 4,
                    available: 3
                }
            );
            assert_eq!(stock_of(&kv, "SPIN-MUG"), 100);
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 3);
            // Its lines are released: the same order id can never take them later.
            assert_eq!(
                reserve(&kv, "o1", &lines).unwrap_err(),
                StockError::Released {
                    sku: "SPIN-MUG".into()
                }
            );
            assert_eq!(stock_of(&kv, "SPIN-MUG"), 100);
        }
    }

    #[test]
    fn release_gives_back_what_was_held_once() {
        for enc in ENCODINGS {
            let kv = MemoryStore::new(enc);
            let lines = [line("LIMITED-PRINT", 2)];
            reserve(&kv, "o1", &lines).unwrap();
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 1);
            assert!(holds(&kv, "o1", "LIMITED-PRINT").unwrap());
            release(&kv, "o1", &lines).unwrap();
            release(&kv, "o1", &lines).unwrap();
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 3);
            // After a release the order cannot take the stock back.
            assert_eq!(
                reserve(&kv, "o1", &lines).unwrap_err(),
                StockError::Released {
                    sku: "LIMITED-PRINT".into()
                }
            );
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 3);
            // Releasing an order that never took anything gives nothing back.
            release(&kv, "o2", &lines).unwrap();
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 3);
            assert!(reserve(&kv, "o2", &lines).is_err());
        }
    }

    #[test]
    fn store_errors_surface() {
        struct Broken;
        impl KeyValue for Broken {
            fn get(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
                Err(StoreError("down".into()))
            }
            fn set(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
                Err(StoreError("down".into()))
            }
            fn increment(&self, _: &str, _: i64) -> Result<i64, StoreError> {
                Err(StoreError("down".into()))
            }
        }
        assert!(matches!(
            reserve(&Broken, "o", &[line("SPIN-MUG", 1)]),
            Err(StockError::Store(_))
        ));
    }

    /// How [`FailsOn`] fails at its key.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// Applies an increment and then fails to answer, as Redis does when it is
        /// killed between the two.
        LosesAnswer,
        /// Refuses every write (Redis gone between two calls).
        RefusesSet,
    }

    /// A store that fails as `fault` says on `key`, and works on every other key.
    struct FailsOn<'a> {
        inner: &'a MemoryStore,
        key: String,
        fault: Fault,
    }

    impl KeyValue for FailsOn<'_> {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            if key == self.key && self.fault == Fault::RefusesSet {
                return Err(StoreError("connection refused".into()));
            }
            self.inner.set(key, value)
        }
        fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
            let value = self.inner.increment(key, delta)?;
            if key == self.key && self.fault == Fault::LosesAnswer {
                return Err(StoreError("connection reset".into()));
            }
            Ok(value)
        }
    }

    #[test]
    fn a_change_whose_answer_was_lost_is_recorded_in_doubt_never_guessed() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        ensure_catalogue_seeded(&kv).unwrap();
        let lines = [line("SPIN-MUG", 1), line("LIMITED-PRINT", 2)];
        let lossy = FailsOn {
            inner: &kv,
            key: keys::stock("LIMITED-PRINT"),
            fault: Fault::LosesAnswer,
        };
        assert!(matches!(
            reserve(&lossy, "o1", &lines),
            Err(StockError::Store(_))
        ));
        // The first line went back; the second was taken, unknown to the request.
        assert_eq!(stock_of(&kv, "SPIN-MUG"), 100);
        assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 1);
        assert_eq!(
            line_being_taken(&kv, "o1", &lines).unwrap(),
            Some(&lines[1])
        );
        record_doubt(&kv, "o1", &lines[1], DoubtfulChange::Take).unwrap();
        record_doubt(&kv, "o1", &lines[1], DoubtfulChange::Take).unwrap();
        release(&kv, "o1", &lines).unwrap();
        // Nothing guessed: still short by 2, and the two units are listed as in doubt.
        assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 1);
        let doubts = doubts(&kv).unwrap();
        assert_eq!(
            doubts,
            vec![Doubt {
                order_id: "o1".into(),
                sku: "LIMITED-PRINT".into(),
                quantity: 2,
                change: DoubtfulChange::Take,
            }]
        );
        let print = levels(&kv, &doubts)
            .unwrap()
            .into_iter()
            .find(|l| l.sku == "LIMITED-PRINT")
            .unwrap();
        assert_eq!((print.available, print.in_doubt), (1, 2));

        // A give-back whose answer is lost: recorded by the caller that saw it fail.
        reserve(&kv, "o2", &[line("SPIN-MUG", 3)]).unwrap();
        let lossy = FailsOn {
            inner: &kv,
            key: keys::stock("SPIN-MUG"),
            fault: Fault::LosesAnswer,
        };
        assert!(release(&lossy, "o2", &[line("SPIN-MUG", 3)]).is_err());
        release(&kv, "o2", &[line("SPIN-MUG", 3)]).unwrap();
        assert_eq!(stock_of(&kv, "SPIN-MUG"), 100);
        assert_eq!(super::doubts(&kv).unwrap().len(), 2);
    }

    #[test]
    fn units_taken_whose_held_marker_failed_are_left_for_the_doubt_not_lost() {
        let kv = MemoryStore::new(CounterEncoding::LittleEndian8);
        ensure_catalogue_seeded(&kv).unwrap();
        let lines = [line("SPIN-MUG", 1), line("LIMITED-PRINT", 2)];
        let failing = FailsOn {
            inner: &kv,
            key: keys::held("o1", "LIMITED-PRINT"),
            fault: Fault::RefusesSet,
        };
        assert!(matches!(
            reserve(&failing, "o1", &lines),
            Err(StockError::Store(_))
        ));
        assert_eq!(stock_of(&kv, "SPIN-MUG"), 100);
        assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 1);
        // Whoever settles the order finds the line whose units went missing.
        assert_eq!(
            line_being_taken(&kv, "o1", &lines).unwrap(),
            Some(&lines[1])
        );
    }

    /// A store through which one caller works while another acts at one exact point:
    /// `meanwhile` runs once, just before this caller's first operation on `key`.
    struct Meanwhile<'a, F: Fn()> {
        inner: &'a MemoryStore,
        key: String,
        meanwhile: F,
        ran: std::cell::Cell<bool>,
    }

    impl<F: Fn()> Meanwhile<'_, F> {
        fn before(&self, key: &str) {
            if key == self.key && !self.ran.replace(true) {
                (self.meanwhile)();
            }
        }
    }

    impl<F: Fn()> KeyValue for Meanwhile<'_, F> {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.before(key);
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.before(key);
            self.inner.set(key, value)
        }
        fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
            self.before(key);
            self.inner.increment(key, delta)
        }
    }

    #[test]
    fn a_give_back_seen_half_done_by_a_second_releaser_is_not_left_in_doubt() {
        // Found by four fulfilment replicas releasing one failed order at once: the
        // second found the give-back claimed and unconfirmed, and its doubt outlived
        // the first's confirmation.
        let mug = [line("SPIN-MUG", 3)];
        let second_releaser = |kv: &MemoryStore| release(kv, "o1", &mug).unwrap();

        // The second releaser comes between the first's claim and its increment.
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        reserve(&kv, "o1", &mug).unwrap();
        let first = Meanwhile {
            inner: &kv,
            key: keys::stock("SPIN-MUG"),
            meanwhile: || second_releaser(&kv),
            ran: Default::default(),
        };
        release(&first, "o1", &mug).unwrap();
        assert!(first.ran.get());
        assert_eq!(stock_of(&kv, "SPIN-MUG"), 100);
        assert_eq!(doubts(&kv).unwrap(), vec![]);

        // The first confirms after the second found it unconfirmed and before the
        // second recorded its doubt.
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        reserve(&kv, "o1", &mug).unwrap();
        assert!(kv.claim(&keys::returned("o1", "SPIN-MUG")).unwrap());
        let second = Meanwhile {
            inner: &kv,
            key: keys::stock_doubt_claim("o1", "SPIN-MUG"),
            meanwhile: || finish_give_back(&kv, "o1", &mug[0]).unwrap(),
            ran: Default::default(),
        };
        release(&second, "o1", &mug).unwrap();
        assert!(second.ran.get());
        assert_eq!(stock_of(&kv, "SPIN-MUG"), 100);
        assert_eq!(doubts(&kv).unwrap(), vec![]);

        // A claimant that died before confirming stays in doubt: nobody can know.
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        reserve(&kv, "o1", &mug).unwrap();
        assert!(kv.claim(&keys::returned("o1", "SPIN-MUG")).unwrap());
        second_releaser(&kv);
        second_releaser(&kv);
        assert_eq!(stock_of(&kv, "SPIN-MUG"), 97);
        assert_eq!(
            doubts(&kv).unwrap(),
            vec![Doubt {
                order_id: "o1".into(),
                sku: "SPIN-MUG".into(),
                quantity: 3,
                change: DoubtfulChange::GiveBack,
            }]
        );
    }

    #[test]
    fn adjusting_adds_and_removes_but_never_below_what_is_left() {
        for enc in ENCODINGS {
            let kv = MemoryStore::new(enc);
            let print = crate::catalogue::find("LIMITED-PRINT").unwrap();
            // Seeds first: the initial stock is not added on top later.
            assert_eq!(adjust(&kv, print, StockChange::Add(10)).unwrap(), 13);
            assert!(ensure_catalogue_seeded(&kv).unwrap());
            reserve(&kv, "o1", &[line("LIMITED-PRINT", 3)]).unwrap();
            assert_eq!(adjust(&kv, print, StockChange::Add(-4)).unwrap(), 6);
            assert_eq!(
                adjust(&kv, print, StockChange::Add(-7)).unwrap_err(),
                StockError::OutOfStock {
                    line: 0,
                    sku: "LIMITED-PRINT".into(),
                    requested: 7,
                    available: 6
                }
            );
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 6);
            assert_eq!(adjust(&kv, print, StockChange::Add(-6)).unwrap(), 0);
        }
    }

    #[test]
    fn setting_a_level_keeps_what_orders_took_and_seeds_first() {
        for enc in ENCODINGS {
            let kv = MemoryStore::new(enc);
            let mug = crate::catalogue::find("SPIN-MUG").unwrap();
            // Never seeded: the level set is the level, the initial stock is not added later.
            assert_eq!(adjust(&kv, mug, StockChange::Set(7)).unwrap(), 7);
            assert_eq!(available(&kv, mug).unwrap(), 7);
            reserve(&kv, "o1", &[line("SPIN-MUG", 2)]).unwrap();
            assert_eq!(adjust(&kv, mug, StockChange::Set(5)).unwrap(), 5);
            assert_eq!(adjust(&kv, mug, StockChange::Set(5)).unwrap(), 5);
            assert_eq!(adjust(&kv, mug, StockChange::Set(0)).unwrap(), 0);
            // The order's units come back on top of the level set.
            release(&kv, "o1", &[line("SPIN-MUG", 2)]).unwrap();
            assert_eq!(available(&kv, mug).unwrap(), 2);
        }
    }

    /// A store where another caller seeds `sku` right after this caller's first
    /// decrement came back short (it saw the counter before the seeding).
    struct SeededMeanwhile<'a> {
        inner: &'a MemoryStore,
        sku: &'static str,
        done: std::cell::Cell<bool>,
    }

    impl KeyValue for SeededMeanwhile<'_> {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.inner.set(key, value)
        }
        fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
            let value = self.inner.increment(key, delta)?;
            if key == keys::stock(self.sku) && value < 0 && !self.done.replace(true) {
                let product = crate::catalogue::find(self.sku).unwrap();
                assert!(ensure_seeded(self.inner, product).unwrap());
            }
            Ok(value)
        }
    }

    #[test]
    fn a_first_order_racing_the_first_seeding_is_not_refused() {
        for enc in ENCODINGS {
            let kv = MemoryStore::new(enc);
            let racing = SeededMeanwhile {
                inner: &kv,
                sku: "SPIN-MUG",
                done: std::cell::Cell::new(false),
            };
            reserve(&racing, "o1", &[line("SPIN-MUG", 2)]).unwrap();
            assert_eq!(stock_of(&kv, "SPIN-MUG"), 98);
        }
    }

    #[test]
    fn an_operator_unblocks_a_sku_whose_seeder_died() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        let mug = crate::catalogue::find("SPIN-MUG").unwrap();
        // The seeder won its claim and died before adding the stock or marking it.
        assert!(kv.claim(&keys::stock_seed_claim("SPIN-MUG")).unwrap());
        assert_eq!(
            reserve(&kv, "o1", &[line("SPIN-MUG", 1)]).unwrap_err(),
            StockError::NotSeeded {
                sku: "SPIN-MUG".into()
            }
        );
        assert_eq!(adjust(&kv, mug, StockChange::Set(5)).unwrap(), 5);
        reserve(&kv, "o2", &[line("SPIN-MUG", 1)]).unwrap();
        assert_eq!(available(&kv, mug).unwrap(), 4);
    }

    #[test]
    fn reading_and_reserving_seed_on_first_use_only() {
        for enc in ENCODINGS {
            let kv = MemoryStore::new(enc);
            let print = crate::catalogue::find("LIMITED-PRINT").unwrap();
            assert_eq!(available(&kv, print).unwrap(), 3);
            reserve(&kv, "o1", &[line("LIMITED-PRINT", 3)]).unwrap();
            // Sold out is not unseeded: no second seeding.
            assert_eq!(available(&kv, print).unwrap(), 0);
            assert!(matches!(
                reserve(&kv, "o2", &[line("LIMITED-PRINT", 1)]),
                Err(StockError::OutOfStock { available: 0, .. })
            ));
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 0);
            // A reservation is the first use of another SKU: seeded, then taken.
            reserve(&kv, "o3", &[line("WASM-TEE-M", 4)]).unwrap();
            assert_eq!(stock_of(&kv, "WASM-TEE-M"), 46);
        }
    }

    /// Which clients wait at an operation, which have finished, and whose turn it is.
    struct Gate {
        waiting: Vec<bool>,
        done: Vec<bool>,
        turn: Option<usize>,
    }

    /// Runs `clients` (each a list of order attempts: (order id, lines)) concurrently,
    /// interleaving their key-value operations as `schedule` picks.
    fn run_interleaved(
        encoding: CounterEncoding,
        clients: Vec<Vec<(String, Vec<OrderLine>)>>,
        schedule: &[usize],
    ) -> (MemoryStore, Vec<Vec<Result<(), StockError>>>) {
        let n = clients.len();
        let gate = Arc::new((
            Mutex::new(Gate {
                waiting: vec![false; n],
                done: vec![false; n],
                turn: None,
            }),
            Condvar::new(),
        ));
        let store = Arc::new(MemoryStore::new(encoding));
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(client, attempts)| {
                let gate = gate.clone();
                let store = store.clone();
                std::thread::spawn(move || {
                    let view = SharedView {
                        store,
                        gate: gate.clone(),
                        client,
                    };
                    let results: Vec<_> = attempts
                        .iter()
                        .map(|(order, lines)| reserve(&view, order, lines))
                        .collect();
                    let (lock, cv) = &*gate;
                    lock.lock().unwrap().done[client] = true;
                    cv.notify_all();
                    results
                })
            })
            .collect();

        // Scheduler: wait until every unfinished client is blocked on an operation, then
        // let the one the schedule names (among those) run one operation.
        let (lock, cv) = &*gate;
        let mut pick = schedule.iter().cycle();
        loop {
            let mut g = lock.lock().unwrap();
            loop {
                let settled = (0..n).all(|c| g.done[c] || g.waiting[c]) && g.turn.is_none();
                if settled {
                    break;
                }
                g = cv.wait(g).unwrap();
            }
            let ready: Vec<usize> = (0..n).filter(|&c| !g.done[c] && g.waiting[c]).collect();
            if ready.is_empty() {
                break;
            }
            let chosen = ready[pick.next().copied().unwrap_or(0) % ready.len()];
            g.turn = Some(chosen);
            cv.notify_all();
            // Wait for that client to finish its step before choosing again.
            while g.turn.is_some() {
                g = cv.wait(g).unwrap();
            }
        }
        let results = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let store = Arc::try_unwrap(store).unwrap();
        (store, results)
    }

    /// A view of one shared store whose every operation waits for the scheduler to let
    /// its client go, so a test can run clients through a chosen interleaving.
    struct SharedView {
        store: Arc<MemoryStore>,
        gate: Arc<(Mutex<Gate>, Condvar)>,
        client: usize,
    }

    impl SharedView {
        fn step<T>(&self, op: impl FnOnce(&MemoryStore) -> T) -> T {
            let (lock, cv) = &*self.gate;
            let mut g = lock.lock().unwrap();
            g.waiting[self.client] = true;
            cv.notify_all();
            while g.turn != Some(self.client) {
                g = cv.wait(g).unwrap();
            }
            let out = op(&self.store);
            g.waiting[self.client] = false;
            g.turn = None;
            cv.notify_all();
            out
        }
    }

    impl KeyValue for SharedView {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.step(|s| s.get(key))
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.step(|s| s.set(key, value))
        }
        fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
            self.step(|s| s.increment(key, delta))
        }
    }

    fn attempt() -> impl Strategy<Value = (String, Vec<OrderLine>)> {
        (
            0u8..3,
            prop::collection::vec(
                (
                    prop::sample::select(vec!["LIMITED-PRINT", "SPIN-MUG"]),
                    1u32..3,
                ),
                1..3,
            ),
        )
            .prop_map(|(order, mut lines)| {
                lines.sort_by_key(|(sku, _)| *sku);
                lines.dedup_by_key(|(sku, _)| *sku);
                (
                    format!("order-{order}"),
                    lines.into_iter().map(|(sku, q)| line(sku, q)).collect(),
                )
            })
    }

    /// A failed capture, redrive's cleanup and the slow request itself may all release or
    /// give back the same order at once: the stock comes back exactly once.
    #[test]
    fn racing_releases_give_back_exactly_once() {
        for round in 0..200 {
            let kv = Arc::new(MemoryStore::new(ENCODINGS[round % 2]));
            let lines = vec![line("SPIN-MUG", 3), line("LIMITED-PRINT", 1)];
            reserve(&*kv, "o", &lines).unwrap();
            let threads: Vec<_> = (0..6)
                .map(|t| {
                    let (kv, lines) = (kv.clone(), lines.clone());
                    std::thread::spawn(move || {
                        if t % 2 == 0 {
                            release(&*kv, "o", &lines).unwrap()
                        } else {
                            give_back(&*kv, "o", &lines).unwrap()
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(stock_of(&*kv, "SPIN-MUG"), 100, "round {round}");
            assert_eq!(stock_of(&*kv, "LIMITED-PRINT"), 3, "round {round}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Concurrent clients placing orders, under random interleavings and both counter
        /// encodings: stock never goes below zero, and stock taken equals what successful
        /// orders requested.
        #[test]
        fn concurrent_reservations_never_oversell(
            clients in prop::collection::vec(prop::collection::vec(attempt(), 1..3), 2..5),
            schedule in prop::collection::vec(0usize..8, 1..64),
            sqlite in any::<bool>(),
        ) {
            let encoding = if sqlite { CounterEncoding::LittleEndian8 } else { CounterEncoding::AsciiDecimal };
            // Every attempt has an order id of its own: ids are never reused.
            let clients: Vec<Vec<(String, Vec<OrderLine>)>> = clients
                .into_iter()
                .enumerate()
                .map(|(client, attempts)| {
                    attempts
                        .into_iter()
                        .enumerate()
                        .map(|(n, (id, lines))| (format!("client{client}-{id}-{n}"), lines))
                        .collect()
                })
                .collect();

            let (store, results) = run_interleaved(encoding, clients.clone(), &schedule);

            // An order holds its lines iff its reservation succeeded.
            let mut held: std::collections::BTreeMap<String, &Vec<OrderLine>> = Default::default();
            for (attempts, outcomes) in clients.iter().zip(&results) {
                for ((id, lines), outcome) in attempts.iter().zip(outcomes) {
                    if outcome.is_ok() {
                        held.insert(id.clone(), lines);
                    }
                }
            }
            for sku in ["LIMITED-PRINT", "SPIN-MUG"] {
                let seeded = store.counter(&keys::stock_seeded(sku)).unwrap() > 0;
                let initial = if seeded {
                    i64::from(crate::catalogue::find(sku).unwrap().initial_stock)
                } else {
                    0
                };
                let left = store.counter(&keys::stock(sku)).unwrap();
                prop_assert!(left >= 0, "{sku} oversold: {left}");
                let taken: i64 = held
                    .values()
                    .flat_map(|lines| lines.iter())
                    .filter(|l| l.sku == sku)
                    .map(|l| i64::from(l.quantity))
                    .sum();
                prop_assert_eq!(initial - left, taken, "{} stock accounting", sku);
            }
        }
    }

    #[test]
    fn two_hundred_threads_race_for_fifty_units() {
        for enc in ENCODINGS {
            let kv = Arc::new(MemoryStore::new(enc));
            let handles: Vec<_> = (0..200)
                .map(|i| {
                    let kv = kv.clone();
                    std::thread::spawn(move || {
                        // Seeding may be in progress in another thread: retry as the
                        // component does.
                        loop {
                            match reserve(&*kv, &format!("o{i}"), &[line("WASM-TEE-M", 1)]) {
                                Err(StockError::NotSeeded { .. }) => std::thread::yield_now(),
                                other => return other.is_ok(),
                            }
                        }
                    })
                })
                .collect();
            let accepted = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|ok| *ok)
                .count();
            assert_eq!(accepted, 50);
            assert_eq!(kv.counter(&keys::stock("WASM-TEE-M")).unwrap(), 0);
        }
    }
}
