//! What components may use, one module per capability, shaped like Spin's factors:
//! each owns its configuration, its per-instance state, its WIT host traits (generated
//! from the vendored `wit/`) and its tests. [`crate::instance::InstanceState`] is a
//! plain struct of their states, and [`crate::engine::linker`] lists them once, so
//! adding a capability touches its module and that list.

pub use spin_app_config::allowed_hosts;
pub mod componentize;
pub mod key_value;
pub mod otel;
pub mod outbound_http;
pub mod outbound_redis;
pub mod variables;
