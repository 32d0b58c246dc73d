//! One component as the triggers run it: what all its instances share
//! ([`ComponentRuntime`]) and the state of one instance ([`InstanceState`]), a plain
//! struct of the capabilities' states. Spin makes a fresh instance per request or
//! message, and so does this runner.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry::trace::SpanContext;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities::allowed_hosts::AllowedHosts;
use crate::capabilities::key_value::{ComponentStores, KeyValue};
use crate::capabilities::otel::{Exporter, TraceScope};
use crate::capabilities::outbound_http::client::HttpClient;
use crate::capabilities::outbound_http::OutboundHttp;
use crate::capabilities::outbound_redis::OutboundRedis;
use crate::capabilities::variables::Variables;

/// What every instance of one component shares.
pub struct ComponentRuntime {
    pub id: String,
    pub environment: Vec<(String, String)>,
    pub variables: Arc<HashMap<String, String>>,
    pub stores: Arc<ComponentStores>,
    pub allowed_hosts: AllowedHosts,
    /// The app's outbound HTTP connections.
    pub http_client: HttpClient,
    pub exporter: Option<Arc<Exporter>>,
}

impl ComponentRuntime {
    /// The state of a new instance whose outer span (the trigger's) is `outer`.
    pub fn instance(&self, outer: SpanContext) -> InstanceState {
        let trace = TraceScope::new(&self.exporter, &self.id, outer);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(crate::logging::ComponentOutput::stdout(&self.id))
            .stderr(crate::logging::ComponentOutput::stderr(&self.id))
            .envs(&self.environment);
        InstanceState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound_http: OutboundHttp::new(
                &self.id,
                self.allowed_hosts.clone(),
                trace.clone(),
                self.http_client.clone(),
            ),
            key_value: KeyValue::new(&self.id, self.stores.clone(), trace.clone()),
            variables: Variables::new(&self.id, self.variables.clone()),
            outbound_redis: OutboundRedis::new(&self.id, self.allowed_hosts.clone(), trace.clone()),
            trace,
        }
    }
}

/// The state of one instance.
pub struct InstanceState {
    wasi: WasiCtx,
    /// WASI's and `wasi:http`'s resources (each capability keeps its own).
    table: ResourceTable,
    http: WasiHttpCtx,
    outbound_http: OutboundHttp,
    pub key_value: KeyValue,
    pub variables: Variables,
    pub outbound_redis: OutboundRedis,
    pub trace: TraceScope,
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
            hooks: &mut self.outbound_http,
        }
    }
}
