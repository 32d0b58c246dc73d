//! The key-value interfaces on a [`KeyValue`] instance state, with Spin's host spans:
//! `spin_key_value.*` for `fermyon:spin/key-value` (under the guest's active span, as
//! Spin reparents them) and `wasi_key_value.*` / `spin_key_value.increment` for
//! `wasi:keyvalue` (left under the instance's outer span, as Spin leaves them).

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue as Attribute;
use wasmtime::component::Resource;

use super::bindings::fermyon::spin2_0_0::key_value;
use super::bindings::wasi::keyvalue::{atomics, batch, store as wasi_store};
use super::{Backend, KeyValue, OpenStore};
use crate::capabilities::otel::{HostSpan, Parent};

/// A compare-and-swap snapshot of one key.
pub struct Cas {
    backend: Backend,
    key: String,
    snapshot: Option<Vec<u8>>,
}

/// Why a store could not be opened, before it maps to either interface's error.
enum OpenError {
    AccessDenied,
    Other(String),
}

impl KeyValue {
    fn span(&self, name: &'static str, parent: Parent) -> HostSpan {
        self.trace.span(
            name,
            SpanKind::Client,
            parent,
            vec![Attribute::new("db.system.name", "spin_key_value")],
        )
    }

    /// As Spin: a label missing from the component's `key_value_stores` is denied,
    /// whether or not the app has such a store; a granted one is opened with its
    /// backend's `open` (a Redis store connects if it has not yet, then sends a `PING`).
    async fn open_store(&mut self, label: &str) -> Result<Resource<OpenStore>, OpenError> {
        let Some(backend) = self.stores.0.get(label).cloned() else {
            tracing::warn!(component = %self.component, label, "key-value store open denied: not in the component's key_value_stores");
            return Err(OpenError::AccessDenied);
        };
        backend.open().await.map_err(|e| {
            tracing::warn!(component = %self.component, label, "key-value store open failed: {e}");
            OpenError::Other(e)
        })?;
        let store = OpenStore { backend };
        self.table
            .push(store)
            .map_err(|e| OpenError::Other(e.to_string()))
    }

    fn backend(&self, handle: &Resource<OpenStore>) -> wasmtime::Result<Backend> {
        Ok(self.table.get(handle)?.backend.clone())
    }
}

/// Marks `span` failed when `result` is an error, and passes `result` on.
fn traced<T>(mut span: HostSpan, result: Result<T, String>) -> Result<T, String> {
    if let Err(e) = &result {
        span.fail(e.clone());
    }
    result
}

// ---- fermyon:spin/key-value@2.0.0 -------------------------------------------------

impl key_value::Host for KeyValue {}

impl key_value::HostStore for KeyValue {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, key_value::Error>> {
        let mut span = self.span("spin_key_value.open", Parent::ActiveGuestSpan);
        if let Some(backend) = self.stores.0.get(&label) {
            span.set_attribute(Attribute::new("kv.backend", backend.describe()));
        }
        let opened = self.open_store(&label).await;
        Ok(opened.map_err(|e| {
            let error = match e {
                OpenError::AccessDenied => key_value::Error::AccessDenied,
                OpenError::Other(e) => key_value::Error::Other(e),
            };
            span.fail(format!("{error:?}"));
            error
        }))
    }

    async fn get(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, key_value::Error>> {
        let span = self.span("spin_key_value.get", Parent::ActiveGuestSpan);
        let backend = self.backend(&store)?;
        Ok(traced(span, backend.get(&key).await).map_err(key_value::Error::Other))
    }

    async fn set(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        let span = self.span("spin_key_value.set", Parent::ActiveGuestSpan);
        let backend = self.backend(&store)?;
        Ok(traced(span, backend.set(&key, &value).await).map_err(key_value::Error::Other))
    }

    async fn delete(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        let span = self.span("spin_key_value.delete", Parent::ActiveGuestSpan);
        let backend = self.backend(&store)?;
        Ok(traced(span, backend.delete(&key).await).map_err(key_value::Error::Other))
    }

    async fn exists(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, key_value::Error>> {
        let span = self.span("spin_key_value.exists", Parent::ActiveGuestSpan);
        let backend = self.backend(&store)?;
        Ok(traced(span, backend.exists(&key).await).map_err(key_value::Error::Other))
    }

    async fn get_keys(
        &mut self,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<Result<Vec<String>, key_value::Error>> {
        let span = self.span("spin_key_value.get_keys", Parent::ActiveGuestSpan);
        let backend = self.backend(&store)?;
        Ok(traced(span, backend.keys().await).map_err(key_value::Error::Other))
    }

    async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

// ---- wasi:keyvalue@0.2.0-draft2 ---------------------------------------------------

impl wasi_store::Host for KeyValue {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, wasi_store::Error>> {
        let mut span = self.span("wasi_key_value.open", Parent::Outer);
        let opened = self.open_store(&identifier).await;
        Ok(opened.map_err(|e| {
            let error = match e {
                OpenError::AccessDenied => wasi_store::Error::AccessDenied,
                OpenError::Other(e) => wasi_store::Error::Other(e),
            };
            span.fail(format!("{error:?}"));
            error
        }))
    }
}

impl wasi_store::HostBucket for KeyValue {
    async fn get(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_store::Error>> {
        let span = self.span("wasi_key_value.get", Parent::Outer);
        let backend = self.backend(&bucket)?;
        Ok(traced(span, backend.get(&key).await).map_err(wasi_store::Error::Other))
    }

    async fn set(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let span = self.span("wasi_key_value.set", Parent::Outer);
        let backend = self.backend(&bucket)?;
        Ok(traced(span, backend.set(&key, &value).await).map_err(wasi_store::Error::Other))
    }

    async fn delete(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let span = self.span("wasi_key_value.delete", Parent::Outer);
        let backend = self.backend(&bucket)?;
        Ok(traced(span, backend.delete(&key).await).map_err(wasi_store::Error::Other))
    }

    async fn exists(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wasi_store::Error>> {
        let span = self.span("wasi_key_value.exists", Parent::Outer);
        let backend = self.backend(&bucket)?;
        Ok(traced(span, backend.exists(&key).await).map_err(wasi_store::Error::Other))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<OpenStore>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<wasi_store::KeyResponse, wasi_store::Error>> {
        // One page holds every key, as Spin's backends answer.
        let span = self.span("wasi_key_value.list_keys", Parent::Outer);
        let backend = self.backend(&bucket)?;
        Ok(traced(span, backend.keys().await)
            .map(|keys| wasi_store::KeyResponse { keys, cursor: None })
            .map_err(wasi_store::Error::Other))
    }

    async fn drop(&mut self, bucket: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValue {
    async fn increment(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wasi_store::Error>> {
        let span = self.span("spin_key_value.increment", Parent::Outer);
        let backend = self.backend(&bucket)?;
        let result = traced(span, backend.increment(&key, delta).await);
        tracing::debug!(component = %self.component, key, delta, ?result, "wasi:keyvalue increment");
        Ok(result.map_err(wasi_store::Error::Other))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let mut span = self.span("spin_key_value.swap", Parent::Outer);
        let cas = self.table.delete(cas)?;
        let swapped = cas
            .backend
            .compare_and_swap(&cas.key, cas.snapshot.as_deref(), &value)
            .await;
        match swapped {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                span.fail("cas-failed");
                // Hand back a fresh snapshot, so the guest can retry from the new value.
                match cas.backend.get(&cas.key).await {
                    Ok(snapshot) => {
                        let retry = self.table.push(Cas { snapshot, ..cas })?;
                        Ok(Err(atomics::CasError::CasFailed(retry)))
                    }
                    Err(e) => Ok(Err(atomics::CasError::StoreError(
                        wasi_store::Error::Other(e),
                    ))),
                }
            }
            Err(e) => {
                span.fail(e.clone());
                Ok(Err(atomics::CasError::StoreError(
                    wasi_store::Error::Other(e),
                )))
            }
        }
    }
}

impl atomics::HostCas for KeyValue {
    async fn new(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, wasi_store::Error>> {
        let span = self.span("wasi_key_value_cas.new", Parent::Outer);
        let backend = self.backend(&bucket)?;
        match traced(span, backend.get(&key).await) {
            Ok(snapshot) => Ok(Ok(self.table.push(Cas {
                backend,
                key,
                snapshot,
            })?)),
            Err(e) => Ok(Err(wasi_store::Error::Other(e))),
        }
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_store::Error>> {
        let _span = self.span("wasi_key_value_cas.current", Parent::Outer);
        Ok(Ok(self.table.get(&cas)?.snapshot.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KeyValue {
    /// Each backend answers as Spin's of its kind does; on Redis that is a refusal
    /// (see [`super::redis::RedisStore::get_many`]).
    async fn get_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, wasi_store::Error>> {
        let span = self.span("spin_key_value.get_many", Parent::Outer);
        let backend = self.backend(&bucket)?;
        let result = backend.get_many(keys).await;
        Ok(traced(span, result).map_err(wasi_store::Error::Other))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let span = self.span("spin_key_value.set_many", Parent::Outer);
        let backend = self.backend(&bucket)?;
        let result = backend.set_many(key_values).await;
        Ok(traced(span, result).map_err(wasi_store::Error::Other))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let span = self.span("spin_key_value.delete_many", Parent::Outer);
        let backend = self.backend(&bucket)?;
        let result = backend.delete_many(keys).await;
        Ok(traced(span, result).map_err(wasi_store::Error::Other))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::capabilities::key_value::ComponentStores;
    use crate::capabilities::otel::TraceScope;

    fn instance(stores: &[&str]) -> KeyValue {
        let db = std::env::temp_dir().join(format!("spin-runner-host-{}.db", std::process::id()));
        let backend = Backend::sqlite(&db, "default").unwrap();
        let stores: HashMap<String, Backend> = stores
            .iter()
            .map(|s| (s.to_string(), backend.clone()))
            .collect();
        KeyValue::new(
            "c",
            Arc::new(ComponentStores(stores)),
            TraceScope::disabled(),
        )
    }

    /// As Spin's `factor-key-value`: a label not in the component's `key_value_stores`
    /// is `access-denied` through both interfaces, whether the app has it or not.
    #[tokio::test]
    async fn only_the_components_own_stores_open() {
        let mut state = instance(&["default"]);
        let store = key_value::HostStore::open(&mut state, "default".into())
            .await
            .unwrap()
            .unwrap();
        key_value::HostStore::set(&mut state, store, "k".into(), b"v".to_vec())
            .await
            .unwrap()
            .unwrap();
        let bucket = wasi_store::Host::open(&mut state, "default".into())
            .await
            .unwrap()
            .unwrap();
        // Both interfaces see the same store.
        assert_eq!(
            wasi_store::HostBucket::get(&mut state, bucket, "k".into())
                .await
                .unwrap()
                .unwrap(),
            Some(b"v".to_vec())
        );
        for label in ["other", "cache", ""] {
            assert!(
                matches!(
                    key_value::HostStore::open(&mut state, label.into())
                        .await
                        .unwrap(),
                    Err(key_value::Error::AccessDenied)
                ),
                "{label:?}"
            );
            assert!(
                matches!(
                    wasi_store::Host::open(&mut state, label.into())
                        .await
                        .unwrap(),
                    Err(wasi_store::Error::AccessDenied)
                ),
                "{label:?}"
            );
        }
    }
}
