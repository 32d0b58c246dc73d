//! Build script of the `checkout` and `fulfilment` components (their `Cargo.toml`s name
//! it): starts a component's linear memory at what one request or message uses, so that
//! handling it does not grow the memory. On a host with the pooling allocator (Spin, the
//! runner) each growth, and the shrink when the slot is reused, is an `mprotect` whose
//! TLB shootdown interrupts every core. Measured with the runner: 3 per checkout request
//! and 7 per fulfilled order at the default size, 0 and 0.2 with 4 MiB. Only for wasm:
//! `cargo clippy` and other host builds of these crates link nothing special.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        // 64 pages of 64 KiB.
        println!("cargo:rustc-link-arg-cdylib=--initial-memory=4194304");
    }
}
