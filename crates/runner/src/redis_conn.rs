//! The key-value backend's Redis connection (outbound Redis opens its own per `open`, as
//! Spin does; see `capabilities::outbound_redis`).
//!
//! As Spin's Redis key-value backend (`crates/key-value-redis`): one `ConnectionManager`
//! shared by every instance, the URL's protocol as given (RESP2 unless it says
//! otherwise), each command sent once. When Redis has dropped the connection, the next
//! command fails and the manager reconnects in the background; the `PING` Spin sends on
//! every `open` of the store (`Backend::after_open`) is what usually meets that failure.
//! Observed on Spin 4.1.0-pre0: a `get` after Redis closed the idle connection answered
//! `other("broken pipe")`, and the next request's calls worked.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;

/// A lazily connecting connection to the Redis at `url` that reconnects after a failure.
pub fn manager(url: &str) -> RedisResult<(redis::Client, ConnectionManager)> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, manager))
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
