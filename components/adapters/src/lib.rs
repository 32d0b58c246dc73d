//! What the two Spin components share: the domain's key-value port implemented on
//! Spin's key-value store or on a Redis through outbound Redis ([`redis_store`]), chosen
//! by the `store` variable ([`ShopStore`]); tracing ([`telemetry`]), the clock, random
//! ids, typed access to Spin variables, and HTTP responses handed to the host whole
//! ([`http_response`]).

pub mod http_response;
pub mod redis_store;
pub mod telemetry;

use chrono::{DateTime, SecondsFormat, Utc};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::KeyValue as Attribute;
use shop_domain::store::{KeyValue, StoreError};
use spin_sdk::key_value::Store;
use spin_sdk::wit::wasi::keyvalue::{atomics, store as wasi_store};

pub use redis_store::RedisKeyValue;

/// The key-value store label both components declare in `spin.toml`.
pub const STORE_LABEL: &str = "default";

/// Where the shop keeps its state, by the `store` variable: `key-value` (the default)
/// is Spin's key-value store `default`, whatever the runtime config maps it to; `redis`
/// is the Redis at `redis_address`, through outbound Redis, with the same keys and
/// counter encoding as Spin's Redis key-value backend. The second is for managed
/// platforms, whose key-value stores a fulfilment running elsewhere cannot reach.
pub enum ShopStore {
    KeyValue(SpinKeyValue),
    Redis(RedisKeyValue),
}

impl ShopStore {
    /// Opens the store the component's variables choose; a component that does not
    /// declare `store` (a manifest written before it existed) gets the key-value store.
    pub fn open() -> Result<Self, StoreError> {
        let kind = match spin_sdk::variables::get("store") {
            Ok(choice) => StoreKind::parse(&choice)?,
            Err(spin_sdk::variables::Error::Undefined(_)) => StoreKind::KeyValue,
            Err(e) => return Err(StoreError(format!("Spin variable store: {e}"))),
        };
        match kind {
            StoreKind::KeyValue => SpinKeyValue::open().map(ShopStore::KeyValue),
            StoreKind::Redis => {
                let address = variable("redis_address").map_err(StoreError)?;
                RedisKeyValue::open(&address).map(ShopStore::Redis)
            }
        }
    }
}

/// The values of the `store` variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    KeyValue,
    Redis,
}

impl StoreKind {
    /// `key-value` or `redis` (surrounding spaces ignored); anything else is a
    /// configuration error that names the value.
    pub fn parse(value: &str) -> Result<StoreKind, StoreError> {
        match value.trim() {
            "key-value" => Ok(StoreKind::KeyValue),
            "redis" => Ok(StoreKind::Redis),
            other => Err(StoreError(format!(
                "the store variable is {other:?}; it must be \"key-value\" or \"redis\""
            ))),
        }
    }
}

impl KeyValue for ShopStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            ShopStore::KeyValue(kv) => kv.get(key),
            ShopStore::Redis(redis) => redis.get(key),
        }
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        match self {
            ShopStore::KeyValue(kv) => kv.set(key, value),
            ShopStore::Redis(redis) => redis.set(key, value),
        }
    }

    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        match self {
            ShopStore::KeyValue(kv) => kv.increment(key, delta),
            ShopStore::Redis(redis) => redis.increment(key, delta),
        }
    }
}

/// The shop's key-value port on one Spin store.
///
/// `get`/`set` go through `fermyon:spin/key-value` (Spin traces these under the guest's
/// span); `increment` uses `wasi:keyvalue/atomics`, the only atomic counter Spin offers.
/// Both interfaces open the same store by label. Spin leaves its spans for
/// `wasi:keyvalue` calls in the trigger's trace, so each increment gets a span of the
/// component's own, in the trace of the work it belongs to.
pub struct SpinKeyValue {
    store: Store,
    bucket: wasi_store::Bucket,
}

impl SpinKeyValue {
    pub fn open() -> Result<Self, StoreError> {
        let store = Store::open(STORE_LABEL)
            .map_err(|e| StoreError(format!("opening store {STORE_LABEL:?}: {e}")))?;
        let bucket = wasi_store::open(STORE_LABEL)
            .map_err(|e| StoreError(format!("opening bucket {STORE_LABEL:?}: {e:?}")))?;
        Ok(Self { store, bucket })
    }
}

impl KeyValue for SpinKeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store
            .get(key)
            .map_err(|e| StoreError(format!("get {key}: {e}")))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.store
            .set(key, value)
            .map_err(|e| StoreError(format!("set {key}: {e}")))
    }

    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        traced_increment("spin-key-value", STORE_LABEL, key, delta, || {
            atomics::increment(&self.bucket, key, delta)
                .map_err(|e| StoreError(format!("increment {key}: {e:?}")))
        })
    }
}

/// Runs `increment` in a `keyvalue.increment` span of the component's own, the same for
/// both backends, so a trace shows every stock and claim change whichever store holds
/// it (Spin's own spans for `wasi:keyvalue` calls stay in the trigger's trace; those for
/// outbound Redis hang under this one).
fn traced_increment(
    system: &'static str,
    namespace: &str,
    key: &str,
    delta: i64,
    increment: impl FnOnce() -> Result<i64, StoreError>,
) -> Result<i64, StoreError> {
    let tracer = telemetry::tracer("shop-adapters");
    let span = tracer
        .span_builder("keyvalue.increment")
        .with_kind(SpanKind::Client)
        .with_attributes([
            Attribute::new("db.system.name", system),
            Attribute::new("db.namespace", namespace.to_owned()),
            Attribute::new("db.operation.name", "increment"),
            Attribute::new("shop.kv.key", key.to_owned()),
            Attribute::new("shop.kv.delta", delta),
        ])
        .start(&tracer);
    let cx = opentelemetry::Context::current_with_span(span);
    let _active = cx.clone().attach();
    let result = increment();
    match &result {
        Ok(value) => cx
            .span()
            .set_attribute(Attribute::new("shop.kv.value", *value)),
        Err(e) => telemetry::fail(&cx, e.to_string()),
    }
    result
}

/// `url` with the password of its userinfo (`redis://user:secret@host`) replaced by
/// `***`, fit for errors and spans.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let user = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Time, randomness and waiting, from the host (`wasi:clocks`, `wasi:random`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SpinEnv;

impl shop_domain::ports::Environment for SpinEnv {
    fn now(&self) -> DateTime<Utc> {
        now()
    }
    fn random(&self) -> [u8; 16] {
        random_bytes()
    }
    fn sleep_ms(&self, ms: u64) {
        sleep_ms(ms);
    }
    async fn pause_ms(&self, ms: u64) {
        pause_ms(ms).await;
    }
}

/// A Spin variable as a number of seconds, or `default` if unset or not a number.
pub fn seconds_variable(name: &str, default: i64) -> i64 {
    variable(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n: &i64| *n > 0)
        .unwrap_or(default)
}

/// Now, in UTC.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// An RFC 3339 UTC timestamp with millisecond precision.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// 16 bytes from the host's secure random source (`wasi:random`).
pub fn random_bytes() -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, byte) in out
        .iter_mut()
        .zip(wasi::random::random::get_random_bytes(16))
    {
        *slot = byte;
    }
    out
}

/// `eprintln!` that writes its line to stderr in one write. `eprintln!` writes a line
/// piece by piece (each literal and each argument), and Spin copies every write a
/// component makes to its log file and terminal as it comes: a line of seven pieces
/// costs fourteen writes there, and lines of instances running at the same time
/// interleave mid-line.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::write_log_line(::std::format_args!($($arg)*))
    };
}

/// What [`log_line!`] calls: the formatted line and its newline in one write.
pub fn write_log_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut line = args.to_string();
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// A Spin variable, with its name in the error.
pub fn variable(name: &str) -> Result<String, String> {
    spin_sdk::variables::get(name).map_err(|e| format!("Spin variable {name}: {e}"))
}

/// Blocks this instance for `ms` milliseconds (backoff between retries, short waits).
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// Waits `ms` milliseconds without blocking the instance: the instance's other futures
/// (its outbound requests) run meanwhile.
pub async fn pause_ms(ms: u64) {
    use wasi::clocks::monotonic_clock;
    let deadline = monotonic_clock::now().saturating_add(ms.saturating_mul(1_000_000));
    wait_for(
        || (monotonic_clock::now() >= deadline).then_some(()),
        || monotonic_clock::subscribe_instant(deadline),
    )
    .await
}

/// The value `ready` gives, once it gives one. Until then the pollable from `subscribe`
/// is registered with spin-sdk's executor, which polls it together with the instance's
/// other futures, so they run while this one waits. Dropped half-way, the future
/// unregisters its pollable.
pub async fn wait_for<T>(
    mut ready: impl FnMut() -> Option<T>,
    subscribe: impl Fn() -> wasi::io::poll::Pollable,
) -> T {
    // The registration of the latest poll; replacing it cancels the one before.
    let mut _registered: Option<spin_executor::CancelOnDropToken> = None;
    std::future::poll_fn(|cx| match ready() {
        Some(value) => std::task::Poll::Ready(value),
        None => {
            let token = spin_executor::push_waker_and_get_token(subscribe(), cx.waker().clone());
            _registered = Some(token.into());
            std::task::Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_variable_names_one_of_two_backends() {
        assert_eq!(StoreKind::parse("key-value"), Ok(StoreKind::KeyValue));
        assert_eq!(StoreKind::parse(" redis "), Ok(StoreKind::Redis));
        for bad in ["", "Redis", "kv", "sqlite"] {
            let err = StoreKind::parse(bad).unwrap_err();
            assert!(err.0.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn passwords_never_reach_errors_or_spans() {
        assert_eq!(
            redact_url("redis://default:s3cret@redis.example.com:6379/0"),
            "redis://default:***@redis.example.com:6379/0"
        );
        assert_eq!(
            redact_url("rediss://s3cret@host:6380"),
            "rediss://***@host:6380"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
