//! Spin's key-value stores, as Spin's `factor-key-value`: `fermyon:spin/key-value@2.0.0`
//! and `wasi:keyvalue` (store, atomics, batch; draft2) over the same stores.
//!
//! A component may open the stores its manifest lists in `key_value_stores`; any other
//! label is `access-denied`, as in Spin. Stores live on Redis or SQLite ([`Backend`]),
//! each keeping counters as Spin's backend of that kind does.

mod backend;
mod host;
mod redis;
mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};

pub use backend::Backend;

use super::otel::TraceScope;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "spin-shop:worlds/key-value",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/key-value.store": super::OpenStore,
            "wasi:keyvalue/store.bucket": super::OpenStore,
            "wasi:keyvalue/atomics.cas": super::host::Cas,
        },
    });
}

/// The stores one component may open, by label.
#[derive(Default)]
pub struct ComponentStores(pub HashMap<String, Backend>);

/// An opened store (Spin's `store` and wasi's `bucket` alike).
pub struct OpenStore {
    backend: Backend,
}

/// The key-value state of one instance.
pub struct KeyValue {
    component: String,
    stores: Arc<ComponentStores>,
    table: ResourceTable,
    trace: TraceScope,
}

impl KeyValue {
    pub fn new(component: &str, stores: Arc<ComponentStores>, trace: TraceScope) -> KeyValue {
        KeyValue {
            component: component.to_owned(),
            stores,
            table: ResourceTable::new(),
            trace,
        }
    }
}

/// Links both interfaces; `state` gives an instance's [`KeyValue`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    state: fn(&mut T) -> &mut KeyValue,
) -> anyhow::Result<()> {
    bindings::KeyValue::add_to_linker::<T, HasSelf<KeyValue>>(linker, state)?;
    Ok(())
}
