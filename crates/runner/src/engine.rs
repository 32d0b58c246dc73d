//! The Wasmtime engine, the linker with every capability, and compiled components
//! cached on disk (keyed by the wasm's hash and the Wasmtime version). A core module is
//! made into a component first, as Spin does ([`componentize`]); the cache holds the
//! compiled result, so that happens once.

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::capabilities::componentize;
use crate::capabilities::{key_value, otel, outbound_redis, variables};
use crate::instance::InstanceState;

/// Wasmtime as Spin sets it up (its `crates/core`): the pooling instance allocator,
/// which keeps a slot per concurrent instance reserved and reuses it, instead of
/// mapping and unmapping memory for every request (under load, the page-table work and
/// TLB shootdowns of that cost more than the guest itself). Sized as Spin sizes it, with
/// Spin's own settings: `SPIN_MAX_INSTANCE_COUNT` (1000 instances at once),
/// `SPIN_WASMTIME_LINEAR_MEMORY_KEEP_RESIDENT` and `SPIN_WASMTIME_TABLE_KEEP_RESIDENT`
/// (bytes reset in place rather than decommitted), and `SPIN_WASMTIME_POOLING=0` to
/// allocate per instance. Where the address space cannot be reserved, the runner says
/// so and allocates per instance, as Spin does.
pub fn engine() -> Result<Engine> {
    let pooling = match std::env::var("SPIN_WASMTIME_POOLING").as_deref() {
        Ok("0") => false,
        Ok("1") | Err(_) => true,
        Ok(other) => anyhow::bail!("SPIN_WASMTIME_POOLING={other}: only 0 or 1"),
    };
    if pooling {
        let instances = env_number("SPIN_MAX_INSTANCE_COUNT", 1_000)?;
        let keep_resident = KeepResident {
            memory: env_number("SPIN_WASMTIME_LINEAR_MEMORY_KEEP_RESIDENT", 2 * MIB)?,
            table: env_number("SPIN_WASMTIME_TABLE_KEEP_RESIDENT", MIB / 2)?,
        };
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(
            instances,
            keep_resident,
        )));
        match Engine::new(&config) {
            Ok(engine) => return Ok(engine),
            Err(e) => tracing::warn!(
                "the pooling allocator is unavailable here ({e}); allocating per instance"
            ),
        }
    }
    Engine::new(&Config::new())
        .map_err(anyhow::Error::from)
        .context("creating the Wasmtime engine")
}

const MIB: usize = 1 << 20;

/// A number from the environment, or `default` when it is unset.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={value} is not a number")),
        Err(_) => Ok(default),
    }
}

/// How much of a slot's memory and table is reset in place for its next instance.
#[derive(Default)]
struct KeepResident {
    memory: usize,
    table: usize,
}

/// The pool for `instances` concurrent instances, with the per-instance limits Spin
/// sets (generous: a component of this shop uses one memory and a few tables).
fn pool(instances: u32, keep_resident: KeepResident) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_memories(instances)
        .total_tables(2 * instances)
        .total_stacks(instances)
        .total_core_instances(4 * instances)
        .table_elements(100_000)
        .max_component_instance_size(10 * MIB)
        .max_core_instance_size(10 * MIB)
        .max_core_instances_per_component(200)
        .max_tables_per_component(64)
        .max_memories_per_component(32)
        .max_tables_per_module(2)
        .max_memories_per_module(2)
        .max_memory_size(4 << 30)
        .linear_memory_keep_resident(keep_resident.memory)
        .table_keep_resident(keep_resident.table)
        // Where Linux has PAGEMAP_SCAN (6.7+), reset only the pages an instance dirtied
        // instead of the whole kept-resident region: the same fresh memory for the
        // next instance, for less work (Spin leaves this off; under `POST /api/orders`
        // memset had been 15% of the runner's time, and it is 1.5% with the scan).
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

/// WASI 0.2, outbound `wasi:http`, and Spin's interfaces: every capability, listed once.
/// `wasi:otel` only with `--experimental-wasi-otel`, as Spin links it: without the flag
/// a component importing it is refused at startup.
pub fn linker(engine: &Engine, experimental_wasi_otel: bool) -> Result<Linker<InstanceState>> {
    let mut linker = Linker::<InstanceState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    key_value::add_to_linker(&mut linker, |s| &mut s.key_value)?;
    variables::add_to_linker(&mut linker, |s| &mut s.variables)?;
    outbound_redis::add_to_linker(&mut linker, |s| &mut s.outbound_redis)?;
    if experimental_wasi_otel {
        otel::add_to_linker(&mut linker, |s| &mut s.trace)?;
    }
    crate::triggers::redis::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Compiles `source` once (a component, or a core module made into one): later runs
/// load the machine code from `cache_dir`.
pub fn load_component(
    engine: &Engine,
    id: &str,
    source: &Path,
    cache_dir: &Path,
) -> Result<Component> {
    let wasm = std::fs::read(source).with_context(|| {
        format!(
            "component {id:?}: reading {} (built yet? `make build`)",
            source.display()
        )
    })?;
    let encoding = componentize::encoding(&wasm)
        .with_context(|| format!("component {id:?}: {}", source.display()))?;
    let mut key = Sha256::new()
        .chain_update(&wasm)
        .chain_update(engine_fingerprint(engine).to_le_bytes());
    if encoding == wasmparser::Encoding::Module {
        key.update(componentize::fingerprint());
    }
    let key = hex::encode(key.finalize());
    let cached = cache_dir.join(format!("{key}.cwasm"));
    if cached.exists() {
        // SAFETY: the file was written by `Component::serialize` of a compatible engine
        // (its fingerprint is part of the name), in a directory this runner owns.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(component) => {
                tracing::info!(component = id, "loaded compiled component from cache");
                return Ok(component);
            }
            Err(e) => tracing::warn!(component = id, "ignoring unusable cache entry: {e:#}"),
        }
    }
    let started = std::time::Instant::now();
    let wasm = componentize::componentize_if_necessary(&wasm)
        .with_context(|| format!("component {id:?}: {}", source.display()))?;
    if encoding == wasmparser::Encoding::Module {
        tracing::info!(
            component = id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "made a component of the core module {}",
            source.display()
        );
    }
    let component = Component::new(engine, &*wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling component {id:?}"))?;
    tracing::info!(
        component = id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compiled component"
    );
    if let Err(e) = store_in_cache(&component, cache_dir, &cached) {
        tracing::warn!(
            component = id,
            "could not cache the compiled component: {e:#}"
        );
    }
    Ok(component)
}

fn store_in_cache(component: &Component, cache_dir: &Path, path: &Path) -> Result<()> {
    std::fs::create_dir_all(cache_dir)?;
    // Write then rename, so a concurrent runner never reads half a file.
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temp, component.serialize()?)?;
    std::fs::rename(&temp, path)?;
    Ok(())
}

/// Changes whenever the engine (Wasmtime version, settings, CPU features) would
/// produce incompatible machine code.
fn engine_fingerprint(engine: &Engine) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

pub fn instance_pre(
    linker: &Linker<InstanceState>,
    component: &Component,
    id: &str,
) -> Result<InstancePre<InstanceState>> {
    linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            let imports: Vec<String> = component
                .component_type()
                .imports(linker.engine())
                .map(|(name, _)| name.to_owned())
                .collect();
            if imports.iter().any(|name| name.starts_with("wasi:otel/")) {
                return format!("component {id:?} imports wasi:otel: run with --experimental-wasi-otel (as `spin up` needs), or build it without tracing");
            }
            let refused: Vec<&str> = imports
                .iter()
                .filter_map(|name| unsupported_capability(name))
                .collect();
            if refused.is_empty() {
                format!("component {id:?} imports something this runner does not provide")
            } else {
                format!(
                    "component {id:?} uses {}, which Spin provides and this runner does not",
                    refused.join(", ")
                )
            }
        })
}

/// Spin's capabilities this runner does not implement, by the interfaces that use
/// them (every version: `fermyon:spin/...@2.0.0`, `spin:...@3.0.0`, unversioned).
fn unsupported_capability(import: &str) -> Option<&'static str> {
    const REFUSED: [(&str, &str); 8] = [
        ("sqlite", "SQLite (sqlite_databases)"),
        ("mqtt", "outbound MQTT"),
        ("postgres", "outbound PostgreSQL"),
        ("mysql", "outbound MySQL"),
        ("llm", "the LLM interface (ai_models)"),
        ("wasi:config/", "wasi:config"),
        ("wasi:http/types@0.3", "WASI 0.3 (spin-sdk 6 and later)"),
        ("fermyon:spin/http", "Spin 1's outbound HTTP"),
    ];
    let spin_or_wasi = import.starts_with("fermyon:spin/")
        || import.starts_with("spin:")
        || import.starts_with("wasi:");
    REFUSED
        .iter()
        .find(|(word, _)| spin_or_wasi && import.contains(word))
        .map(|(_, what)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_holds_as_many_instances_at_once_as_it_is_sized_for_and_reuses_their_slots() {
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(
            2,
            KeepResident::default(),
        )));
        let engine = Engine::new(&config).unwrap();
        let bytes = wat::parse_str(
            r#"(component (core module (memory 1)) (core instance (instantiate 0)))"#,
        )
        .unwrap();
        let component = Component::new(&engine, &bytes).unwrap();
        let linker = Linker::<()>::new(&engine);
        let instantiate = |store: &mut wasmtime::Store<()>| linker.instantiate(store, &component);
        let mut live: Vec<_> = (0..2).map(|_| wasmtime::Store::new(&engine, ())).collect();
        for store in &mut live {
            instantiate(store).unwrap();
        }
        // A third at once is refused, as Spin refuses one over SPIN_MAX_INSTANCE_COUNT.
        let mut third = wasmtime::Store::new(&engine, ());
        assert!(instantiate(&mut third).is_err());
        // One ends: its slot serves the next.
        live.pop();
        let mut next = wasmtime::Store::new(&engine, ());
        instantiate(&mut next).unwrap();
    }

    #[test]
    fn a_spin_capability_the_runner_lacks_is_named() {
        let engine = engine().unwrap();
        let linker = linker(&engine, false).unwrap();
        let sqlite = wat::parse_str(
            r#"(component
                 (import "fermyon:spin/sqlite@2.0.0" (instance
                   (export "open" (func (param "database" string))))))"#,
        )
        .unwrap();
        let component = Component::new(&engine, &sqlite).unwrap();
        let err = format!(
            "{:#}",
            instance_pre(&linker, &component, "db").err().unwrap()
        );
        assert!(
            err.contains("component \"db\" uses SQLite (sqlite_databases), which Spin provides and this runner does not"),
            "{err}"
        );
        assert_eq!(
            unsupported_capability("spin:postgres/postgres@4.0.0"),
            Some("outbound PostgreSQL")
        );
        assert_eq!(
            unsupported_capability("fermyon:spin/llm@2.0.0"),
            Some("the LLM interface (ai_models)")
        );
        assert_eq!(unsupported_capability("fermyon:spin/key-value@2.0.0"), None);
        assert_eq!(unsupported_capability("acme:mysql-tools/x"), None);
    }
}
