//! The key-value backend's Redis connection (outbound Redis opens its own per `open`, as
//! Spin does; see `capabilities::outbound_redis`).
//!
//! As Spin's Redis key-value backend (`crates/key-value-redis`, redis 0.32): one
//! `ConnectionManager` shared by every instance, made by the first `open` that can
//! connect (one that cannot fails, and the next `open` tries again), with redis-rs
//! 0.32's defaults: six connection retries from 100 ms, doubling, with jitter, and no
//! connect or response timeout. The URL's protocol as given (RESP2 unless it says
//! otherwise), each command sent once. When Redis has dropped the connection, the next
//! command fails and the manager reconnects in the background; the `PING` Spin sends on
//! every `open` of the store (`Backend::open`) is what usually meets that failure.
//! Observed on Spin 4.1.0-pre0: a `get` after Redis closed the idle connection answered
//! `other("broken pipe")`, and the next request's calls worked.

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

/// The configuration `Client::get_connection_manager` gives Spin's backend: redis-rs
/// 0.32's defaults, spelled out because redis-rs 1 changed them (it added a 1 s connect
/// and a 500 ms response timeout, which would fail commands Spin waits for).
pub fn spin_manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(6)
        .set_min_delay(Duration::from_millis(100))
        .set_exponent_base(2.0)
        .set_connection_timeout(None)
        .set_response_timeout(None)
}

/// A Redis URL without its password, for logs and messages.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            super::redact("redis://:secret@host:6379"),
            "redis://***@host:6379"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
