//! Bindings for `wasi:otel/tracing@0.2.0-rc.2`, generated from the project's vendored
//! copy of Spin's WIT (`wit/deps/otel@0.2.0-rc.2`).
#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    path: "../../wit",
    world: "spin-shop:worlds/otel",
    // `tracing` uses these interfaces' types; their bindings are generated here too.
    generate_all,
});
