//! The runner as a library; `spin-runner` (main.rs) is its command line.
//!
//! One module per concern, as Spin's crates are laid out: the Wasmtime engine and
//! instances ([`engine`], [`instance`]), each host capability ([`capabilities`]), the
//! triggers ([`triggers`]); the manifest, runtime config, routes and allowed hosts come
//! from `crates/app-config`.

pub mod capabilities;
pub mod engine;
pub mod instance;
pub mod logging;
pub mod redis_conn;
pub mod triggers;

// The application's configuration lives in its own crate (no Wasm there, so it can be
// fuzzed alone); re-exported under the runner's names.
pub use spin_app_config::{app, manifest, routes};
