//! The triggers: each routes events (HTTP requests, Redis messages) to fresh instances.

pub mod http;
pub mod redis;
