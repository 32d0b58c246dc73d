//! The key-value backend's reconnecting Redis connection (outbound Redis opens its own per
//! `open`, as Spin does; see `capabilities::outbound_redis`).
//!
//! RESP3 is used so the connection manager hears about a dropped connection (a Redis
//! restart) at once and reconnects in the background, instead of failing the next
//! command with a stale socket. A command that certainly never reached Redis
//! (connection refused) is retried once; one that may have reached it is retried only
//! when repeating it is harmless.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, RedisResult};

/// A lazily connecting, self-healing connection to the Redis at `url`.
pub fn manager(url: &str) -> RedisResult<(redis::Client, ConnectionManager)> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone();
    let info = if url.contains("protocol=") {
        info
    } else {
        info.set_redis_settings(settings.set_protocol(ProtocolVersion::RESP3))
    };
    let client = redis::Client::open(info)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
    Ok((client, manager))
}

/// Whether a command is safe to send twice.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// GET, SET, DEL, EXISTS, KEYS, INCRBY 0...: the same outcome if sent twice.
    Idempotent,
    /// PUBLISH, INCRBY n, a CAS script...: retried only if it certainly was not sent.
    Once,
}

/// Runs `command`, once more if the connection failed in a way that makes that safe.
pub async fn retrying<T, F, Fut>(repeat: Repeat, mut command: F) -> RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    match command().await {
        Err(e)
            if e.is_connection_refusal()
                || (repeat == Repeat::Idempotent && e.is_connection_dropped()) =>
        {
            tracing::debug!("redis: {e}; retrying once on a new connection");
            command().await
        }
        result => result,
    }
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
