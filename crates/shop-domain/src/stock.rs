//! Stock levels, kept in the key-value store as counters changed only by atomic
//! `increment`, so that concurrent orders can never oversell.
//!
//! - Reserve: `increment(stock, -qty)`; a negative result means there was not enough, so
//!   the same amount is given back at once. Two clients racing for the last unit both
//!   decrement; exactly one sees a non-negative result.
//! - Each (order, SKU) pair first claims `increment(reserve-claim, 1) == 1`: a retried
//!   reservation for the same order takes nothing again.
//! - Release (an order that failed, or the rollback of a partly reserved order) claims
//!   `increment(release-claim, 1) == 1`, so stock comes back exactly once.
//!
//! Seeding puts [`Product::initial_stock`] into an empty store once: one caller wins the
//! seed claim and adds the stock, then marks the SKU seeded. Until then other callers
//! see [`StockError::NotSeeded`] and retry shortly (the window is two key-value calls).

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
    /// A previous attempt for this order already failed and released its stock.
    PreviouslyReleased {
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

/// Seeds the stock of `product` if nobody has. Returns true once seeded (by anyone).
pub fn ensure_seeded(kv: &impl KeyValue, product: &Product) -> Result<bool, StoreError> {
    if kv.counter(&keys::stock_seeded(product.sku))? > 0 {
        return Ok(true);
    }
    if kv.claim(&keys::stock_seed_claim(product.sku))? {
        kv.increment(&keys::stock(product.sku), i64::from(product.initial_stock))?;
        kv.increment(&keys::stock_seeded(product.sku), 1)?;
        return Ok(true);
    }
    // Lost the claim: seeded only once the winner has marked it.
    Ok(kv.counter(&keys::stock_seeded(product.sku))? > 0)
}

/// Seeds every product; false if some SKU is still being seeded by another caller.
pub fn ensure_catalogue_seeded(kv: &impl KeyValue) -> Result<bool, StoreError> {
    let mut all = true;
    for product in PRODUCTS {
        all &= ensure_seeded(kv, product)?;
    }
    Ok(all)
}

/// Units of `sku` available right now (never negative).
pub fn available(kv: &impl KeyValue, sku: &str) -> Result<i64, StoreError> {
    Ok(kv.counter(&keys::stock(sku))?.max(0))
}

/// Takes stock for every line of `order_id`, or nothing at all.
pub fn reserve(kv: &impl KeyValue, order_id: &str, lines: &[OrderLine]) -> Result<(), StockError> {
    for (i, line) in lines.iter().enumerate() {
        if let Err(e) = reserve_line(kv, order_id, i, line) {
            // Give back what this order already holds; the failing line holds nothing.
            release(kv, order_id, &lines[..i])?;
            if matches!(e, StockError::OutOfStock { .. }) {
                // Mark the failing line too, so a retry of this order sees it failed.
                kv.claim(&keys::release_claim(order_id, &line.sku))?;
            }
            return Err(e);
        }
    }
    Ok(())
}

fn reserve_line(
    kv: &impl KeyValue,
    order_id: &str,
    index: usize,
    line: &OrderLine,
) -> Result<(), StockError> {
    let product = crate::catalogue::find(&line.sku);
    if let Some(product) = product {
        if !ensure_seeded(kv, product)? {
            return Err(StockError::NotSeeded {
                sku: line.sku.clone(),
            });
        }
    }
    if !kv.claim(&keys::reservation_claim(order_id, &line.sku))? {
        // An earlier attempt for this order got here first: it holds the stock, unless it
        // failed and released it.
        if kv.counter(&keys::release_claim(order_id, &line.sku))? > 0 {
            return Err(StockError::PreviouslyReleased {
                sku: line.sku.clone(),
            });
        }
        return Ok(());
    }
    let qty = i64::from(line.quantity);
    let stock_key = keys::stock(&line.sku);
    let left = kv.increment(&stock_key, -qty)?;
    if left < 0 {
        kv.increment(&stock_key, qty)?;
        return Err(StockError::OutOfStock {
            line: index,
            sku: line.sku.clone(),
            requested: line.quantity,
            available: (left + qty).max(0),
        });
    }
    Ok(())
}

/// Gives back the stock `order_id` holds for `lines`, each line at most once ever.
/// Precondition: these lines were reserved for this order.
pub fn release(kv: &impl KeyValue, order_id: &str, lines: &[OrderLine]) -> Result<(), StoreError> {
    for line in lines {
        if kv.claim(&keys::release_claim(order_id, &line.sku))? {
            kv.increment(&keys::stock(&line.sku), i64::from(line.quantity))?;
        }
    }
    Ok(())
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
            // A retry of the same order does not suddenly succeed.
            assert!(reserve(&kv, "o1", &lines).is_err());
            assert_eq!(stock_of(&kv, "SPIN-MUG"), 100);
        }
    }

    #[test]
    fn retried_reservation_and_release_act_once() {
        for enc in ENCODINGS {
            let kv = MemoryStore::new(enc);
            let lines = [line("LIMITED-PRINT", 2)];
            reserve(&kv, "o1", &lines).unwrap();
            reserve(&kv, "o1", &lines).unwrap();
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 1);
            release(&kv, "o1", &lines).unwrap();
            release(&kv, "o1", &lines).unwrap();
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 3);
            // After a release the order cannot take the stock back by retrying.
            assert_eq!(
                reserve(&kv, "o1", &lines).unwrap_err(),
                StockError::PreviouslyReleased {
                    sku: "LIMITED-PRINT".into()
                }
            );
            assert_eq!(stock_of(&kv, "LIMITED-PRINT"), 3);
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Concurrent clients, each retrying some of its orders, under random interleavings
        /// and both counter encodings: stock never goes below zero, each order holds
        /// stock at most once, and stock taken equals what successful orders requested.
        #[test]
        fn concurrent_reservations_never_oversell(
            clients in prop::collection::vec(prop::collection::vec(attempt(), 1..3), 2..5),
            schedule in prop::collection::vec(0usize..8, 1..64),
            sqlite in any::<bool>(),
        ) {
            let encoding = if sqlite { CounterEncoding::LittleEndian8 } else { CounterEncoding::AsciiDecimal };
            // An order id belongs to one client (checkout's idempotency claim sees to it);
            // that client may retry it, always with the same lines.
            let clients: Vec<Vec<(String, Vec<OrderLine>)>> = clients
                .into_iter()
                .enumerate()
                .map(|(client, attempts)| {
                    let mut canonical: std::collections::HashMap<String, Vec<OrderLine>> =
                        Default::default();
                    attempts
                        .into_iter()
                        .map(|(id, lines)| {
                            let lines = canonical.entry(id.clone()).or_insert(lines).clone();
                            (format!("client{client}-{id}"), lines)
                        })
                        .collect()
                })
                .collect();

            let (store, results) = run_interleaved(encoding, clients.clone(), &schedule);

            // An order holds its lines iff some attempt for it succeeded.
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
