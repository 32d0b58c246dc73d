//! What the two Spin components share: the domain's key-value port implemented on
//! Spin's key-value store, tracing ([`telemetry`]), the clock, random ids and typed
//! access to Spin variables.

pub mod telemetry;

use chrono::{DateTime, SecondsFormat, Utc};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::KeyValue as Attribute;
use shop_domain::store::{KeyValue, StoreError};
use spin_sdk::key_value::Store;
use spin_sdk::wit::wasi::keyvalue::{atomics, store as wasi_store};

/// The key-value store label both components declare in `spin.toml`.
pub const STORE_LABEL: &str = "default";

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
        let tracer = telemetry::tracer("shop-adapters");
        let span = tracer
            .span_builder("keyvalue.increment")
            .with_kind(SpanKind::Client)
            .with_attributes([
                Attribute::new("db.system.name", "spin-key-value"),
                Attribute::new("db.namespace", STORE_LABEL),
                Attribute::new("db.operation.name", "increment"),
                Attribute::new("shop.kv.key", key.to_owned()),
                Attribute::new("shop.kv.delta", delta),
            ])
            .start(&tracer);
        let cx = opentelemetry::Context::current_with_span(span);
        let result = atomics::increment(&self.bucket, key, delta)
            .map_err(|e| StoreError(format!("increment {key}: {e:?}")));
        match &result {
            Ok(value) => cx
                .span()
                .set_attribute(Attribute::new("shop.kv.value", *value)),
            Err(e) => telemetry::fail(&cx, e.to_string()),
        }
        result
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

/// A Spin variable, with its name in the error.
pub fn variable(name: &str) -> Result<String, String> {
    spin_sdk::variables::get(name).map_err(|e| format!("Spin variable {name}: {e}"))
}

/// Blocks this instance for `ms` milliseconds (backoff between retries, short waits).
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}
