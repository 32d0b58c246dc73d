//! The built components import only what Spin provides and export the right trigger.
//!
//! A component that imports anything else fails to start on Spin ("component imports
//! instance ..."), so this is checked on the real `.wasm` files: the traced build that
//! `spin.toml` names, and the plain build (no `otel` feature) for hosts without
//! `wasi:otel` (Fermyon Cloud, SpinKube's Spin 3.6 shim).

use std::path::PathBuf;

use wasmparser::{Parser, Payload};

/// Which build of a component.
#[derive(Clone, Copy)]
enum Build {
    /// `--features otel`, as `make build` and `spin build` make it.
    Traced,
    /// Without tracing: imports nothing of `wasi:otel`.
    Plain,
}

fn component_path(name: &str, build: Build) -> PathBuf {
    let release =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip2/release");
    match build {
        Build::Traced => release.join(format!("{name}.wasm")),
        Build::Plain => release.join("plain").join(format!("{name}.wasm")),
    }
}

/// Top-level import and export names of a component.
fn interfaces(name: &str, build: Build) -> (Vec<String>, Vec<String>) {
    let path = component_path(name, build);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the components first (make build)",
            path.display()
        )
    });
    assert!(
        wasmparser::Parser::is_component(&bytes),
        "{name}.wasm is not a component"
    );
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(&bytes) {
        match payload.expect("valid wasm") {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) if depth > 0 => depth -= 1,
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    imports.push(import.expect("import").name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.expect("export").name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    (imports, exports)
}

/// What a Spin 3.x/4.x host links for a spin-sdk 5.2 component; `wasi:otel` only
/// where Spin 4 runs with `--experimental-wasi-otel`.
fn provided_by_spin(import: &str, experimental_wasi_otel: bool) -> bool {
    let Some((package, version)) = import.split_once('@') else {
        // The unversioned Spin 1 types interface used by the Redis trigger's export.
        return import == "fermyon:spin/redis-types";
    };
    let Some((namespace_package, interface)) = package.split_once('/') else {
        return false;
    };
    match namespace_package {
        "wasi:cli" | "wasi:clocks" | "wasi:filesystem" | "wasi:io" | "wasi:random"
        | "wasi:sockets" | "wasi:http" => {
            version.starts_with("0.2.") && version[4..].chars().all(|c| c.is_ascii_digit())
        }
        "fermyon:spin" => {
            version == "2.0.0"
                && matches!(
                    interface,
                    "key-value"
                        | "redis"
                        | "variables"
                        | "llm"
                        | "mqtt"
                        | "postgres"
                        | "mysql"
                        | "sqlite"
                )
        }
        "wasi:keyvalue" => {
            version == "0.2.0-draft2" && matches!(interface, "store" | "atomics" | "batch")
        }
        "wasi:otel" => {
            experimental_wasi_otel
                && version == "0.2.0-rc.2"
                && matches!(interface, "tracing" | "types")
        }
        _ => false,
    }
}

fn assert_only_spin_imports(name: &str, imports: &[String], experimental_wasi_otel: bool) {
    let foreign: Vec<&String> = imports
        .iter()
        .filter(|i| !provided_by_spin(i, experimental_wasi_otel))
        .collect();
    assert!(
        foreign.is_empty(),
        "{name} imports interfaces Spin does not provide: {foreign:?}"
    );
}

#[test]
fn traced_builds_import_wasi_otel_tracing_and_plain_builds_nothing_of_it() {
    for name in ["checkout", "fulfilment"] {
        let (traced, _) = interfaces(name, Build::Traced);
        assert!(
            traced.iter().any(|i| i == "wasi:otel/tracing@0.2.0-rc.2"),
            "{name} (traced) does not import wasi:otel tracing: {traced:?}"
        );
        assert_only_spin_imports(name, &traced, true);
        let (plain, plain_exports) = interfaces(name, Build::Plain);
        assert!(
            !plain.iter().any(|i| i.starts_with("wasi:otel")),
            "{name} (plain) imports wasi:otel: {plain:?}"
        );
        assert_only_spin_imports(name, &plain, false);
        assert_eq!(plain_exports, interfaces(name, Build::Traced).1);
    }
}

#[test]
fn checkout_is_an_http_component_using_key_value_and_redis() {
    let (imports, exports) = interfaces("checkout", Build::Plain);
    assert_only_spin_imports("checkout", &imports, false);
    assert_eq!(exports, ["wasi:http/incoming-handler@0.2.0"]);
    for needed in [
        "fermyon:spin/key-value@2.0.0",
        "fermyon:spin/redis@2.0.0",
        "fermyon:spin/variables@2.0.0",
        "wasi:keyvalue/atomics@0.2.0-draft2",
    ] {
        assert!(
            imports.iter().any(|i| i == needed),
            "checkout lacks {needed}: {imports:?}"
        );
    }
}

#[test]
fn fulfilment_is_a_redis_component_using_key_value_and_outbound_http() {
    let (imports, exports) = interfaces("fulfilment", Build::Plain);
    assert_only_spin_imports("fulfilment", &imports, false);
    assert_eq!(exports, ["fermyon:spin/inbound-redis"]);
    for needed in [
        "fermyon:spin/key-value@2.0.0",
        "fermyon:spin/variables@2.0.0",
        "wasi:keyvalue/atomics@0.2.0-draft2",
    ] {
        assert!(
            imports.iter().any(|i| i == needed),
            "fulfilment lacks {needed}: {imports:?}"
        );
    }
    assert!(
        imports
            .iter()
            .any(|i| i.starts_with("wasi:http/outgoing-handler@0.2.")),
        "fulfilment cannot send mail: {imports:?}"
    );
}

/// The page must run wherever the app does, Fermyon Cloud included: it needs the HTTP
/// trigger and nothing else (no store, no variables, no outbound calls, no wasi:otel).
#[test]
fn storefront_is_an_http_component_that_needs_nothing_but_the_trigger() {
    for build in [Build::Plain, Build::Traced] {
        let (imports, exports) = interfaces("storefront", build);
        assert_only_spin_imports("storefront", &imports, false);
        assert_eq!(exports, ["wasi:http/incoming-handler@0.2.0"]);
        let capabilities: Vec<&String> = imports
            .iter()
            .filter(|i| {
                i.starts_with("fermyon:")
                    || i.starts_with("wasi:keyvalue")
                    || i.starts_with("wasi:otel")
                    || i.starts_with("wasi:http/outgoing-handler")
                    || i.starts_with("wasi:sockets")
            })
            .collect();
        assert!(
            capabilities.is_empty(),
            "storefront imports more than it needs: {capabilities:?}"
        );
        assert!(imports
            .iter()
            .any(|i| i.starts_with("wasi:http/types@0.2.")));
    }
}

#[test]
fn the_import_check_rejects_what_spin_lacks() {
    // Guard against a check that accepts everything.
    assert!(!provided_by_spin("wasi:otel/tracing@0.2.0-rc.2", false));
    assert!(provided_by_spin("wasi:otel/tracing@0.2.0-rc.2", true));
    assert!(!provided_by_spin("wasi:otel/tracing@0.2.0-draft", true));
    for foreign in [
        "wasi:http/types@0.3.0-rc-2026-01-06",
        "spin:redis/inbound-redis@3.0.0",
        "fermyon:spin/key-value@3.0.0",
        "wasi:keyvalue/store@0.2.0-draft",
        "wasi:cli/environment@0.2.x",
    ] {
        assert!(!provided_by_spin(foreign, true), "{foreign}");
    }
    assert!(provided_by_spin("wasi:cli/environment@0.2.12", false));
}
