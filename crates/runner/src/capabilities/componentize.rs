//! Core WebAssembly modules turned into components when they are loaded, as Spin's
//! `spin_componentize::componentize_if_necessary` does for every component source:
//! Spin's Rust templates for `wasm32-wasip1`, and many other toolchains, emit a core
//! module with wit-bindgen's `component-type` section and `wasi_snapshot_preview1`
//! imports, not a component.
//!
//! The encoding is `wit-component`'s [`ComponentEncoder`], with the WASI preview 1
//! adapter that Wasmtime publishes for its own release
//! (`wasi-preview1-component-adapter-provider`, Wasmtime 48 here), so preview 1 calls
//! land on the same WASI 0.2 host as components' own. Which adapter, and what is
//! refused, follows Spin:
//! - a module with wit-bindgen (0.5 or newer, below 1.0) metadata: the reactor adapter;
//! - a module without wit-bindgen metadata or a realloc export, exporting `_start` (a
//!   preview 1 command): the command adapter, after Spin's check for the wasi-libc
//!   allocation bug of wasi-sdk before 19;
//! - anything else (wit-bindgen 0.2 modules of Spin 1's SDKs, which Spin adapts with an
//!   adapter of its own that implements Spin 1's interfaces; other wit-bindgen
//!   versions): refused, saying why.
//!
//! The engine caches the compiled result (`engine::load_component`), keyed with
//! [`fingerprint`], so a module is encoded once, not at every start.

use std::borrow::Cow;

use anyhow::{anyhow, bail, Context, Result};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wasmparser::{Encoding, ExternalKind, Parser, Payload};
use wit_component::ComponentEncoder;

/// `wasm` itself if it is a component; the component made from it if it is a core
/// module.
pub fn componentize_if_necessary(wasm: &[u8]) -> Result<Cow<'_, [u8]>> {
    match encoding(wasm)? {
        Encoding::Component => Ok(Cow::Borrowed(wasm)),
        Encoding::Module => componentize(wasm).map(Cow::Owned),
    }
}

/// Whether `wasm` is a component or a core module (an error if it is neither).
pub fn encoding(wasm: &[u8]) -> Result<Encoding> {
    match Parser::new(0).parse_all(wasm).next() {
        Some(Ok(Payload::Version { encoding, .. })) => Ok(encoding),
        Some(Err(e)) => Err(anyhow!(e).context("not a WebAssembly module or component")),
        _ => bail!("not a WebAssembly module or component"),
    }
}

/// What identifies the encoding besides the module's bytes: the adapters (and so the
/// Wasmtime release they come from). Part of the compile cache's key, so a new adapter
/// re-encodes cached modules.
pub fn fingerprint() -> impl AsRef<[u8]> {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)
        .chain_update(WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER)
        .finalize()
}

/// The component for a core module, or why there is none.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    let info = ModuleInfo::read(module)?;
    let adapter = match info.wit_bindgen_version.as_deref() {
        Some(version) if supported_wit_bindgen(version) => WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        Some(version) => {
            bail!("cannot adapt modules created with wit-bindgen version {version}")
        }
        None if info.exports_start && !info.probably_uses_wit_bindgen() => {
            info.check_wasi_libc_allocation_bug()?;
            WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
        }
        None => bail!(
            "this core module has neither wit-bindgen 0.5+ metadata nor a preview 1 `_start`: \
             Spin takes such modules for wit-bindgen 0.2 ones (Spin 1.x SDKs) and adapts them \
             with an adapter of its own for Spin 1's interfaces, which this runner does not \
             have; rebuild it with a current Spin SDK"
        ),
    };
    ComponentEncoder::default()
        .validate(true)
        .module(module)
        .context("reading the core module's component metadata")?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)
        .context("loading the WASI preview 1 adapter")?
        .encode()
        .context("turning the core module into a component")
}

/// wit-bindgen from 0.5 on and below 1.0, as `major.minor` or `major.minor.patch`:
/// the versions whose modules need only the preview 1 adapter (Spin's rule).
fn supported_wit_bindgen(version: &str) -> bool {
    let parts: Vec<&str> = version.split('.').collect();
    if !(2..=3).contains(&parts.len()) {
        return false;
    }
    match (parts[0].parse::<u32>(), parts[1].parse::<u32>()) {
        (Ok(0), Ok(minor)) => minor >= 5,
        _ => false,
    }
}

/// The wasi-libc allocation fix (wasi-libc PR 377) shipped in wasi-sdk 19, whose clang
/// is 15.0.7: command modules processed by an older clang are refused, as Spin does.
const EARLIEST_SAFE_CLANG: (u32, u32, u32) = (15, 0, 7);

/// What decides how a module is adapted.
#[derive(Debug, Default)]
struct ModuleInfo {
    /// `processed-by` version of wit-bindgen in the `component-type` metadata.
    wit_bindgen_version: Option<String>,
    has_bindgen_metadata: bool,
    /// `cabi_realloc` (or the older `canonical_abi_realloc`): wit-bindgen's allocator.
    exports_realloc: bool,
    exports_start: bool,
    /// `processed-by` version of clang in the module's `producers` section.
    clang_version: Option<String>,
}

impl ModuleInfo {
    fn read(module: &[u8]) -> Result<ModuleInfo> {
        let mut info = ModuleInfo::default();
        for payload in Parser::new(0).parse_all(module) {
            match payload.context("parsing the core module")? {
                Payload::ExportSection(exports) => {
                    for export in exports {
                        let export = export?;
                        if export.kind != ExternalKind::Func {
                            continue;
                        }
                        match export.name {
                            "cabi_realloc" | "canonical_abi_realloc" => info.exports_realloc = true,
                            "_start" => info.exports_start = true,
                            _ => {}
                        }
                    }
                }
                Payload::CustomSection(section) if section.name() == "producers" => {
                    let producers = wasm_metadata::Producers::from_bytes(
                        section.data(),
                        section.data_offset(),
                    )?;
                    info.clang_version = producers
                        .get("processed-by")
                        .and_then(|field| field.get("clang").cloned());
                }
                _ => {}
            }
        }
        // wit-bindgen's metadata (with its own `processed-by` producers) is in the
        // `component-type*` custom sections, which wit-component decodes.
        match wit_component::metadata::decode(module) {
            Ok((stripped, bindgen)) => {
                info.has_bindgen_metadata = stripped.is_some();
                info.wit_bindgen_version = bindgen.producers.as_ref().and_then(|producers| {
                    producers.get("processed-by").and_then(|field| {
                        field
                            .iter()
                            .find(|(tool, _)| tool.starts_with("wit-bindgen"))
                            .map(|(_, version)| version.clone())
                    })
                });
            }
            Err(e) => tracing::warn!("ignoring unreadable component-type metadata: {e:#}"),
        }
        Ok(info)
    }

    fn probably_uses_wit_bindgen(&self) -> bool {
        self.has_bindgen_metadata || self.exports_realloc
    }

    fn check_wasi_libc_allocation_bug(&self) -> Result<()> {
        let Some(clang) = &self.clang_version else {
            return Ok(());
        };
        // "15.0.6", "15.0.6-wasi-sdk", "15.0.6 (https://github.com/llvm/...)".
        let version = clang.split(' ').next().unwrap_or_default();
        let version = version.strip_suffix("-wasi-sdk").unwrap_or(version);
        let numbers: Vec<u32> = version
            .split('.')
            .map_while(|part| part.parse().ok())
            .collect();
        if let [major, minor, patch] = numbers[..] {
            if (major, minor, patch) < EARLIEST_SAFE_CLANG {
                bail!(
                    "this module was compiled with wasi-sdk older than 19 (clang {clang}), whose \
                     wasi-libc has a memory safety bug in allocation (fixed by wasi-libc PR 377); \
                     rebuild it with a newer wasi-sdk"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Config, Engine, Store};
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
    use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

    /// The WIT world of the test modules: one exported function.
    const WORLD: &str = "package conformance:probe;\nworld probe { export greet: func() -> u32; }";

    /// A core module as a wasm32-wasip1 toolchain with wit-bindgen emits it: linear
    /// memory, wit-bindgen's `cabi_realloc`, the world's export under its core name, a
    /// `wasi_snapshot_preview1` import it calls (`fd_write` of "hello from p1\n" to
    /// stdout), and wit-bindgen's `component-type` section naming the producer.
    fn reactor_module(wit_bindgen: Option<&str>, uses_wasi: bool) -> Vec<u8> {
        let wasi_import = if uses_wasi {
            r#"(import "wasi_snapshot_preview1" "fd_write"
                 (func $fd_write (param i32 i32 i32 i32) (result i32)))"#
        } else {
            ""
        };
        let body = if uses_wasi {
            // iovec at 16: (ptr 64, len 14); bytes written go to 32.
            r#"(i32.store (i32.const 16) (i32.const 64))
               (i32.store (i32.const 20) (i32.const 14))
               (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 32)))
               (i32.const 42)"#
        } else {
            "(i32.const 42)"
        };
        let mut module = wat::parse_str(format!(
            r#"(module
                 {wasi_import}
                 (memory (export "memory") 1)
                 (data (i32.const 64) "hello from p1\n")
                 ;; A bump allocator that grows memory as needed (the adapter asks it
                 ;; for its state).
                 (global $next (mut i32) (i32.const 1024))
                 (func (export "cabi_realloc")
                   (param $old i32) (param $old_size i32) (param $align i32) (param $size i32)
                   (result i32)
                   (local $at i32) (local $end i32) (local $limit i32)
                   (local.set $at
                     (i32.and
                       (i32.add (global.get $next) (i32.sub (local.get $align) (i32.const 1)))
                       (i32.sub (i32.const 0) (local.get $align))))
                   (local.set $end (i32.add (local.get $at) (local.get $size)))
                   (local.set $limit (i32.mul (memory.size) (i32.const 65536)))
                   (if (i32.gt_u (local.get $end) (local.get $limit))
                     (then
                       (drop (memory.grow
                         (i32.add
                           (i32.shr_u (i32.sub (local.get $end) (local.get $limit)) (i32.const 16))
                           (i32.const 1))))))
                   (global.set $next (local.get $end))
                   (local.get $at))
                 (func (export "greet") (result i32) {body}))"#
        ))
        .unwrap();
        let mut resolve = wit_parser::Resolve::default();
        let package = resolve.push_str("probe.wit", WORLD).unwrap();
        let world = resolve.select_world(&[package], Some("probe")).unwrap();
        let mut producers = wasm_metadata::Producers::empty();
        if let Some(version) = wit_bindgen {
            producers.add("processed-by", "wit-bindgen-rust", version);
        }
        let section = wit_component::metadata::encode(
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
            Some(&producers),
        )
        .unwrap();
        append_custom_section(&mut module, "component-type:wit-bindgen:probe", &section);
        module
    }

    /// Custom section: id 0, then its size, the name's length and bytes, the data.
    fn append_custom_section(module: &mut Vec<u8>, name: &str, data: &[u8]) {
        fn leb128(mut n: usize, out: &mut Vec<u8>) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    return;
                }
                out.push(byte | 0x80);
            }
        }
        let mut contents = Vec::new();
        leb128(name.len(), &mut contents);
        contents.extend_from_slice(name.as_bytes());
        contents.extend_from_slice(data);
        module.push(0);
        leb128(contents.len(), module);
        module.extend_from_slice(&contents);
    }

    /// A preview 1 command (what `wasm32-wasip1` binaries are): `_start` prints.
    fn command_module(clang: Option<&str>) -> Vec<u8> {
        let mut module = wat::parse_str(
            r#"(module
                 (import "wasi_snapshot_preview1" "fd_write"
                   (func $fd_write (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (data (i32.const 64) "hello from p1\n")
                 (func (export "_start")
                   (i32.store (i32.const 16) (i32.const 64))
                   (i32.store (i32.const 20) (i32.const 14))
                   (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 32)))))"#,
        )
        .unwrap();
        if let Some(clang) = clang {
            let mut producers = wasm_metadata::Producers::empty();
            producers.add("processed-by", "clang", clang);
            module = producers.add_to_wasm(&module).unwrap();
        }
        module
    }

    struct Host {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for Host {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    /// An engine, a WASI 0.2 linker and a store whose stdout is captured.
    fn host() -> (Engine, Linker<Host>, Store<Host>, MemoryOutputPipe) {
        let engine = Engine::new(&Config::new()).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
        let stdout = MemoryOutputPipe::new(1024);
        let wasi = WasiCtx::builder().stdout(stdout.clone()).build();
        let store = Store::new(
            &engine,
            Host {
                wasi,
                table: ResourceTable::new(),
            },
        );
        (engine, linker, store, stdout)
    }

    fn import_names(engine: &Engine, component: &Component) -> Vec<String> {
        component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    #[test]
    fn a_component_is_left_as_it_is() {
        let component = wat::parse_str("(component)").unwrap();
        let out = componentize_if_necessary(&component).unwrap();
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(&*out, &component[..]);
    }

    #[test]
    fn a_wasip1_module_with_wit_bindgen_metadata_runs_through_the_reactor_adapter() {
        let module = reactor_module(Some("0.51.0"), true);
        assert_eq!(encoding(&module).unwrap(), Encoding::Module);
        let wasm = componentize_if_necessary(&module).unwrap();
        assert_eq!(encoding(&wasm).unwrap(), Encoding::Component);

        let (engine, linker, mut store, stdout) = host();
        let component = Component::new(&engine, &*wasm).unwrap();
        let imports = import_names(&engine, &component);
        // fd_write went through the adapter to WASI 0.2's stdout.
        assert!(
            imports.iter().any(|i| i.starts_with("wasi:cli/stdout@0.2")),
            "{imports:?}"
        );
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let greet = instance
            .get_typed_func::<(), (u32,)>(&mut store, "greet")
            .unwrap();
        assert_eq!(greet.call(&mut store, ()).unwrap(), (42,));
        assert_eq!(&stdout.contents()[..], b"hello from p1\n");
    }

    #[test]
    fn a_module_without_wasi_imports_gets_no_wasi_imports() {
        // As wasm32-unknown-unknown with wit-bindgen builds (Spin's conformance tests).
        let wasm = componentize(&reactor_module(Some("0.26.0"), false)).unwrap();
        let (engine, linker, mut store, _) = host();
        let component = Component::new(&engine, &wasm).unwrap();
        assert_eq!(import_names(&engine, &component), Vec::<String>::new());
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let greet = instance
            .get_typed_func::<(), (u32,)>(&mut store, "greet")
            .unwrap();
        assert_eq!(greet.call(&mut store, ()).unwrap(), (42,));
    }

    #[test]
    fn a_wasip1_command_runs_through_the_command_adapter() {
        let wasm = componentize(&command_module(Some("17.0.6"))).unwrap();
        let (engine, linker, mut store, stdout) = host();
        let component = Component::new(&engine, &wasm).unwrap();
        let command = wasmtime_wasi::p2::bindings::sync::Command::instantiate(
            &mut store, &component, &linker,
        )
        .unwrap();
        assert_eq!(command.wasi_cli_run().call_run(&mut store).unwrap(), Ok(()));
        assert_eq!(&stdout.contents()[..], b"hello from p1\n");
    }

    #[test]
    fn refusals_say_why() {
        let refusal = |module: &[u8]| format!("{:#}", componentize(module).unwrap_err());
        let err = refusal(&reactor_module(Some("0.4.0"), true));
        assert!(err.contains("wit-bindgen version 0.4.0"), "{err}");
        let err = refusal(&reactor_module(Some("1.2.0"), true));
        assert!(err.contains("wit-bindgen version 1.2.0"), "{err}");
        let err = refusal(&command_module(Some("15.0.6")));
        assert!(err.contains("wasi-sdk older than 19"), "{err}");
        // Spin 1's SDKs: wit-bindgen 0.2, no metadata, its own export names.
        let spin1 = wat::parse_str(
            r#"(module
                 (memory (export "memory") 1)
                 (func (export "canonical_abi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)
                 (func (export "handle-http-request") (param i32) (result i32) i32.const 0))"#,
        )
        .unwrap();
        let err = refusal(&spin1);
        assert!(err.contains("wit-bindgen 0.2"), "{err}");
        let err = format!(
            "{:#}",
            componentize_if_necessary(b"not wasm at all").unwrap_err()
        );
        assert!(
            err.contains("not a WebAssembly module or component"),
            "{err}"
        );
    }

    #[test]
    fn wit_bindgen_versions_as_spin_reads_them() {
        for supported in ["0.5", "0.5.0", "0.26.0", "0.51.0"] {
            assert!(supported_wit_bindgen(supported), "{supported}");
        }
        for refused in ["0.2.0", "0.4.9", "1.0.0", "0.51.0.1", "0", "x.y"] {
            assert!(!supported_wit_bindgen(refused), "{refused}");
        }
    }
}
