//! The per-instance host state and Spin's host interfaces: `fermyon:spin/key-value`,
//! `variables` and `redis` (2.0.0), and `wasi:keyvalue` store/atomics/batch (draft2).
//! WASI 0.2 itself comes from wasmtime-wasi, outbound HTTP from wasmtime-wasi-http.
//!
//! Each host call is implemented once, here, and logged through `tracing` with the
//! component id, which is where host spans will hang.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::kv::Backend;
use crate::outbound::{AllowedHosts, OutboundHooks};
use crate::redis_conn::{retrying, Repeat};

wasmtime::component::bindgen!({
    path: "wit",
    world: "spin-runner:host/host",
    imports: { default: async | trappable },
    with: {
        "fermyon:spin/key-value.store": KeyValueStore,
        "fermyon:spin/redis.connection": RedisConnection,
        "wasi:keyvalue/store.bucket": KeyValueStore,
        "wasi:keyvalue/atomics.cas": Cas,
    },
});

/// The Redis trigger's export, instantiated per message.
pub mod redis_trigger {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "spin-runner:host/redis-trigger",
        exports: { default: async },
        with: {
            "fermyon:spin/redis-types": super::fermyon::spin::redis_types,
        },
    });
}

use fermyon::spin::redis_types;
use fermyon::spin2_0_0::{key_value, redis as outbound_redis, variables};
use wasi::keyvalue::{atomics, batch, store as wasi_store};

/// An opened key-value store (Spin's `store` and wasi's `bucket` alike).
pub struct KeyValueStore {
    backend: Backend,
}

/// A compare-and-swap snapshot of one key.
pub struct Cas {
    backend: Backend,
    key: String,
    snapshot: Option<Vec<u8>>,
}

/// An outbound Redis connection (shared per address, reconnecting).
pub struct RedisConnection {
    connection: redis::aio::ConnectionManager,
}

/// What every instance of one component shares.
pub struct ComponentRuntime {
    pub id: String,
    pub variables: HashMap<String, String>,
    pub allowed_hosts: AllowedHosts,
    /// The stores this component may open, by label.
    pub stores: HashMap<String, Backend>,
    /// Every label the application knows (to tell `access-denied` from `no-such-store`).
    pub known_store_labels: Arc<std::collections::BTreeSet<String>>,
    pub redis_connections: Arc<RedisConnections>,
    pub environment: Vec<(String, String)>,
}

/// Outbound Redis connections of the whole app, one reconnecting manager per address.
#[derive(Default)]
pub struct RedisConnections(Mutex<HashMap<String, redis::aio::ConnectionManager>>);

impl RedisConnections {
    async fn get(&self, address: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let mut connections = self.0.lock().await;
        if let Some(c) = connections.get(address) {
            return Ok(c.clone());
        }
        let (_, manager) = crate::redis_conn::manager(address)?;
        connections.insert(address.to_owned(), manager.clone());
        Ok(manager)
    }
}

/// The state of one component instance (one request or one message).
pub struct InstanceState {
    pub component: Arc<ComponentRuntime>,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
}

impl InstanceState {
    pub fn new(component: Arc<ComponentRuntime>) -> InstanceState {
        let mut wasi = WasiCtx::builder();
        wasi.stdout(crate::logging::ComponentOutput::stdout(&component.id))
            .stderr(crate::logging::ComponentOutput::stderr(&component.id))
            .envs(&component.environment);
        InstanceState {
            hooks: OutboundHooks::new(component.id.clone(), component.allowed_hosts.clone()),
            component,
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        }
    }

    fn open_store(&mut self, label: &str) -> Result<Resource<KeyValueStore>, StoreOpenError> {
        let Some(backend) = self.component.stores.get(label) else {
            if !self.component.known_store_labels.contains(label) {
                tracing::warn!(component = %self.component.id, label, "key-value store open: no such store");
                return Err(StoreOpenError::NoSuchStore);
            }
            tracing::warn!(component = %self.component.id, label, "key-value store open: not in the component's key_value_stores");
            return Err(StoreOpenError::AccessDenied);
        };
        let store = KeyValueStore {
            backend: backend.clone(),
        };
        self.table
            .push(store)
            .map_err(|e| StoreOpenError::Other(e.to_string()))
    }

    fn store(&self, handle: &Resource<KeyValueStore>) -> wasmtime::Result<Backend> {
        Ok(self.table.get(handle)?.backend.clone())
    }
}

enum StoreOpenError {
    NoSuchStore,
    AccessDenied,
    Other(String),
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Adds Spin's interfaces (not WASI) to `linker`.
pub fn add_to_linker(
    linker: &mut wasmtime::component::Linker<InstanceState>,
) -> wasmtime::Result<()> {
    Host_::add_to_linker::<_, wasmtime::component::HasSelf<InstanceState>>(linker, |s| s)
}

// ---- fermyon:spin/key-value@2.0.0 -------------------------------------------------

impl key_value::Host for InstanceState {}

impl key_value::HostStore for InstanceState {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KeyValueStore>, key_value::Error>> {
        Ok(self.open_store(&label).map_err(|e| match e {
            StoreOpenError::NoSuchStore => key_value::Error::NoSuchStore,
            StoreOpenError::AccessDenied => key_value::Error::AccessDenied,
            StoreOpenError::Other(e) => key_value::Error::Other(e),
        }))
    }

    async fn get(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, key_value::Error>> {
        let backend = self.store(&store)?;
        Ok(backend.get(&key).await.map_err(key_value::Error::Other))
    }

    async fn set(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        let backend = self.store(&store)?;
        Ok(backend
            .set(&key, &value)
            .await
            .map_err(key_value::Error::Other))
    }

    async fn delete(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        let backend = self.store(&store)?;
        Ok(backend.delete(&key).await.map_err(key_value::Error::Other))
    }

    async fn exists(
        &mut self,
        store: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, key_value::Error>> {
        let backend = self.store(&store)?;
        Ok(backend.exists(&key).await.map_err(key_value::Error::Other))
    }

    async fn get_keys(
        &mut self,
        store: Resource<KeyValueStore>,
    ) -> wasmtime::Result<Result<Vec<String>, key_value::Error>> {
        let backend = self.store(&store)?;
        Ok(backend.keys().await.map_err(key_value::Error::Other))
    }

    async fn drop(&mut self, store: Resource<KeyValueStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

// ---- wasi:keyvalue@0.2.0-draft2 ---------------------------------------------------

impl wasi_store::Host for InstanceState {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<KeyValueStore>, wasi_store::Error>> {
        Ok(self.open_store(&identifier).map_err(|e| match e {
            StoreOpenError::NoSuchStore => wasi_store::Error::NoSuchStore,
            StoreOpenError::AccessDenied => wasi_store::Error::AccessDenied,
            StoreOpenError::Other(e) => wasi_store::Error::Other(e),
        }))
    }
}

impl wasi_store::HostBucket for InstanceState {
    async fn get(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_store::Error>> {
        let backend = self.store(&bucket)?;
        Ok(backend.get(&key).await.map_err(wasi_store::Error::Other))
    }

    async fn set(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let backend = self.store(&bucket)?;
        Ok(backend
            .set(&key, &value)
            .await
            .map_err(wasi_store::Error::Other))
    }

    async fn delete(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let backend = self.store(&bucket)?;
        Ok(backend.delete(&key).await.map_err(wasi_store::Error::Other))
    }

    async fn exists(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wasi_store::Error>> {
        let backend = self.store(&bucket)?;
        Ok(backend.exists(&key).await.map_err(wasi_store::Error::Other))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<KeyValueStore>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<wasi_store::KeyResponse, wasi_store::Error>> {
        // One page holds every key, as Spin's backends answer.
        let backend = self.store(&bucket)?;
        Ok(backend
            .keys()
            .await
            .map(|keys| wasi_store::KeyResponse { keys, cursor: None })
            .map_err(wasi_store::Error::Other))
    }

    async fn drop(&mut self, bucket: Resource<KeyValueStore>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for InstanceState {
    async fn increment(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wasi_store::Error>> {
        let backend = self.store(&bucket)?;
        let result = backend.increment(&key, delta).await;
        tracing::debug!(component = %self.component.id, key, delta, ?result, "wasi:keyvalue increment");
        Ok(result.map_err(wasi_store::Error::Other))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        match cas
            .backend
            .compare_and_swap(&cas.key, cas.snapshot.as_deref(), &value)
            .await
        {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Hand back a fresh snapshot, so the guest can retry from the new value.
                let current = cas.backend.get(&cas.key).await;
                match current {
                    Ok(snapshot) => {
                        let retry = self.table.push(Cas { snapshot, ..cas })?;
                        Ok(Err(atomics::CasError::CasFailed(retry)))
                    }
                    Err(e) => Ok(Err(atomics::CasError::StoreError(
                        wasi_store::Error::Other(e),
                    ))),
                }
            }
            Err(e) => Ok(Err(atomics::CasError::StoreError(
                wasi_store::Error::Other(e),
            ))),
        }
    }
}

impl atomics::HostCas for InstanceState {
    async fn new(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, wasi_store::Error>> {
        let backend = self.store(&bucket)?;
        match backend.get(&key).await {
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
        Ok(Ok(self.table.get(&cas)?.snapshot.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for InstanceState {
    async fn get_many(
        &mut self,
        bucket: Resource<KeyValueStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, wasi_store::Error>> {
        let backend = self.store(&bucket)?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            match backend.get(&key).await {
                Ok(value) => values.push((key, value)),
                Err(e) => return Ok(Err(wasi_store::Error::Other(e))),
            }
        }
        Ok(Ok(values))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<KeyValueStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let backend = self.store(&bucket)?;
        for (key, value) in key_values {
            if let Err(e) = backend.set(&key, &value).await {
                return Ok(Err(wasi_store::Error::Other(e)));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<KeyValueStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let backend = self.store(&bucket)?;
        for key in keys {
            if let Err(e) = backend.delete(&key).await {
                return Ok(Err(wasi_store::Error::Other(e)));
            }
        }
        Ok(Ok(()))
    }
}

// ---- fermyon:spin/variables@2.0.0 -------------------------------------------------

impl variables::Host for InstanceState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, variables::Error>> {
        if !crate::manifest::is_variable_name(&name) {
            return Ok(Err(variables::Error::InvalidName(name)));
        }
        Ok(match self.component.variables.get(&name) {
            Some(value) => Ok(value.clone()),
            None => Err(variables::Error::Undefined(format!(
                "component {:?} has no variable {name:?}",
                self.component.id
            ))),
        })
    }
}

// ---- fermyon:spin/redis@2.0.0 (outbound) -------------------------------------------

impl InstanceState {
    fn redis(
        &self,
        conn: &Resource<RedisConnection>,
    ) -> wasmtime::Result<redis::aio::ConnectionManager> {
        Ok(self.table.get(conn)?.connection.clone())
    }
}

/// Sends one outbound Redis command on the connection's shared, reconnecting link.
/// The one place every outbound Redis command goes through (and its host span).
async fn redis_query<T: redis::FromRedisValue>(
    connection: redis::aio::ConnectionManager,
    repeat: Repeat,
    cmd: redis::Cmd,
) -> redis::RedisResult<T> {
    use tracing::Instrument;
    let command = cmd
        .args_iter()
        .next()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => String::new(),
        })
        .unwrap_or_default();
    retrying(repeat, || {
        let mut connection = connection.clone();
        let cmd = cmd.clone();
        async move { cmd.query_async(&mut connection).await }
    })
    .instrument(tracing::debug_span!("outbound_redis", command))
    .await
}

impl redis_types::Host for InstanceState {}

impl outbound_redis::Host for InstanceState {}

impl outbound_redis::HostConnection for InstanceState {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<RedisConnection>, outbound_redis::Error>> {
        if !self.component.allowed_hosts.allows_url(&address) {
            tracing::warn!(
                component = %self.component.id,
                address = crate::redis_conn::redact(&address),
                "outbound Redis denied: not in allowed_outbound_hosts"
            );
            return Ok(Err(outbound_redis::Error::InvalidAddress));
        }
        match self.component.redis_connections.get(&address).await {
            Ok(connection) => Ok(Ok(self.table.push(RedisConnection { connection })?)),
            Err(_) => Ok(Err(outbound_redis::Error::InvalidAddress)),
        }
    }

    async fn publish(
        &mut self,
        conn: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), outbound_redis::Error>> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&channel).arg(payload);
        let result = redis_query::<i64>(self.redis(&conn)?, Repeat::Once, cmd).await;
        tracing::debug!(component = %self.component.id, channel, ?result, "outbound Redis PUBLISH");
        Ok(result.map(drop).map_err(other))
    }

    async fn get(
        &mut self,
        conn: Resource<RedisConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, outbound_redis::Error>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        Ok(redis_query(self.redis(&conn)?, Repeat::Idempotent, cmd)
            .await
            .map_err(other))
    }

    async fn set(
        &mut self,
        conn: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), outbound_redis::Error>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        Ok(
            redis_query::<()>(self.redis(&conn)?, Repeat::Idempotent, cmd)
                .await
                .map_err(other),
        )
    }

    async fn incr(
        &mut self,
        conn: Resource<RedisConnection>,
        key: String,
    ) -> wasmtime::Result<Result<i64, outbound_redis::Error>> {
        let mut cmd = redis::cmd("INCR");
        cmd.arg(key);
        Ok(redis_query(self.redis(&conn)?, Repeat::Once, cmd)
            .await
            .map_err(|e| {
                if e.kind() == redis::ErrorKind::UnexpectedReturnType
                    || e.to_string().contains("not an integer")
                {
                    outbound_redis::Error::TypeError
                } else {
                    other(e)
                }
            }))
    }

    async fn del(
        &mut self,
        conn: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, outbound_redis::Error>> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(keys);
        Ok(redis_query(self.redis(&conn)?, Repeat::Once, cmd)
            .await
            .map_err(other))
    }

    async fn sadd(
        &mut self,
        conn: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, outbound_redis::Error>> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(key).arg(values);
        Ok(redis_query(self.redis(&conn)?, Repeat::Once, cmd)
            .await
            .map_err(other))
    }

    async fn smembers(
        &mut self,
        conn: Resource<RedisConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, outbound_redis::Error>> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(key);
        Ok(redis_query(self.redis(&conn)?, Repeat::Idempotent, cmd)
            .await
            .map_err(other))
    }

    async fn srem(
        &mut self,
        conn: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, outbound_redis::Error>> {
        let mut cmd = redis::cmd("SREM");
        cmd.arg(key).arg(values);
        Ok(redis_query(self.redis(&conn)?, Repeat::Once, cmd)
            .await
            .map_err(other))
    }

    async fn execute(
        &mut self,
        conn: Resource<RedisConnection>,
        command: String,
        arguments: Vec<outbound_redis::RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<outbound_redis::RedisResult>, outbound_redis::Error>> {
        let mut cmd = redis::cmd(&command);
        for argument in arguments {
            match argument {
                outbound_redis::RedisParameter::Int64(i) => cmd.arg(i),
                outbound_redis::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        Ok(
            redis_query::<redis::Value>(self.redis(&conn)?, Repeat::Once, cmd)
                .await
                .map(|value| {
                    let mut results = Vec::new();
                    flatten_reply(value, &mut results);
                    results
                })
                .map_err(other),
        )
    }

    async fn drop(&mut self, conn: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

fn other(e: redis::RedisError) -> outbound_redis::Error {
    outbound_redis::Error::Other(e.to_string())
}

/// A Redis reply as the flat list `execute` returns (arrays are spread out).
fn flatten_reply(value: redis::Value, out: &mut Vec<outbound_redis::RedisResult>) {
    use outbound_redis::RedisResult as R;
    match value {
        redis::Value::Nil => out.push(R::Nil),
        redis::Value::Int(i) => out.push(R::Int64(i)),
        redis::Value::BulkString(b) => out.push(R::Binary(b)),
        redis::Value::SimpleString(s) => out.push(R::Status(s)),
        redis::Value::Okay => out.push(R::Status("OK".to_owned())),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for item in items {
                flatten_reply(item, out);
            }
        }
        // RESP3 replies, given back as RESP2 would have given them.
        redis::Value::Map(pairs) => {
            for (k, v) in pairs {
                flatten_reply(k, out);
                flatten_reply(v, out);
            }
        }
        redis::Value::Attribute { data, .. } => flatten_reply(*data, out),
        redis::Value::Double(d) => out.push(R::Binary(d.to_string().into_bytes())),
        redis::Value::Boolean(b) => out.push(R::Int64(b.into())),
        redis::Value::VerbatimString { text, .. } => out.push(R::Binary(text.into_bytes())),
        other => out.push(R::Binary(format!("{other:?}").into_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(stores: &[&str], known: &[&str]) -> InstanceState {
        let db = std::env::temp_dir().join(format!("spin-runner-host-{}.db", std::process::id()));
        let backend = Backend::sqlite(&db, "default").unwrap();
        InstanceState::new(Arc::new(ComponentRuntime {
            id: "c".into(),
            variables: HashMap::from([("api_base".to_owned(), "http://x".to_owned())]),
            allowed_hosts: AllowedHosts::default(),
            stores: stores
                .iter()
                .map(|s| (s.to_string(), backend.clone()))
                .collect(),
            known_store_labels: Arc::new(known.iter().map(|s| s.to_string()).collect()),
            redis_connections: Arc::default(),
            environment: Vec::new(),
        }))
    }

    #[tokio::test]
    async fn variables_are_the_components_own() {
        let mut state = instance(&[], &[]);
        let get = |s: &mut InstanceState, n: &str| {
            let n = n.to_owned();
            let fut = variables::Host::get(s, n);
            futures::executor::block_on(fut).unwrap()
        };
        assert_eq!(get(&mut state, "api_base").unwrap(), "http://x");
        assert!(matches!(
            get(&mut state, "other"),
            Err(variables::Error::Undefined(_))
        ));
        assert!(matches!(
            get(&mut state, "API_BASE"),
            Err(variables::Error::InvalidName(_))
        ));
    }

    #[tokio::test]
    async fn opening_stores_checks_the_components_list() {
        let mut state = instance(&["default"], &["default", "cache"]);
        assert!(key_value::HostStore::open(&mut state, "default".into())
            .await
            .unwrap()
            .is_ok());
        assert!(matches!(
            key_value::HostStore::open(&mut state, "cache".into())
                .await
                .unwrap(),
            Err(key_value::Error::AccessDenied)
        ));
        assert!(matches!(
            key_value::HostStore::open(&mut state, "nope".into())
                .await
                .unwrap(),
            Err(key_value::Error::NoSuchStore)
        ));
        assert!(matches!(
            wasi_store::Host::open(&mut state, "cache".into())
                .await
                .unwrap(),
            Err(wasi_store::Error::AccessDenied)
        ));
        assert!(wasi_store::Host::open(&mut state, "default".into())
            .await
            .unwrap()
            .is_ok());
    }
}
