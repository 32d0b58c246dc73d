//! A Spin application's configuration, parsed and resolved as Spin does it: the manifest
//! (`spin.toml`, version 2) and runtime config ([`manifest`]), the application they
//! describe with its variables resolved ([`app`]), HTTP routes ([`routes`]) and
//! `allowed_outbound_hosts` ([`allowed_hosts`]).
//!
//! The runner (`crates/runner`) runs what this describes; this crate holds no Wasm, so
//! the fuzz targets in `fuzz/` drive it directly.

pub mod allowed_hosts;
pub mod app;
pub mod manifest;
pub mod routes;
