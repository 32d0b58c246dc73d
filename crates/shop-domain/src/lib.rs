//! The shop's business rules, free of any Spin dependency so they are tested natively.
//!
//! The two Spin components (`checkout`, `fulfilment`) are thin adapters: they turn HTTP
//! requests, Redis messages, key-value calls and outbound HTTP into calls on this crate.
//!
//! - [`catalogue`]: products, prices and initial stock.
//! - [`validation`] and [`payment`]: turning an order request into a valid order or into
//!   field errors ([`problem`] renders them as RFC 9457 problem details).
//! - [`order`]: the order record and its idempotent state machine.
//! - [`store`]: the key-value port (get/set/atomic increment) and every key name.
//! - [`stock`]: seeding and reserving stock with atomic increments only (no CAS).
//! - [`idempotency`]: `Idempotency-Key` replay; [`ids`]: order and event ids.
//! - [`records`]: order and dead-letter persistence, and finding orders to redrive.
//! - [`event`]: the order-placed envelope carried over Redis pub/sub.
//! - [`mail`]: provider requests and classification of provider responses.
//! - [`memory_store`]: an in-memory [`store::KeyValue`] with either Spin counter encoding, for tests.

pub mod catalogue;
pub mod checkout;
pub mod durable;
pub mod event;
pub mod fulfilment;
pub mod idempotency;
pub mod ids;
pub mod lease;
pub mod mail;
pub mod memory_store;
pub mod order;
pub mod payment;
pub mod ports;
pub mod problem;
pub mod records;
pub mod stock;
pub mod store;
pub mod validation;
