#!/usr/bin/env bash
# Builds the Spin components (checkout, fulfilment, storefront) for wasm32-wasip2, twice:
#   - with tracing (`--features otel`, imports wasi:otel; run with
#     `spin up --experimental-wasi-otel`) where spin.toml expects them:
#     target/wasm32-wasip2/release/{checkout,fulfilment,storefront}.wasm
#     (storefront has no spans of its own: both of its builds are the same)
#   - without it (imports nothing of wasi:otel; for hosts that lack it: Fermyon Cloud,
#     SpinKube's Spin 3.6 shim) in target/wasm32-wasip2/release/plain/.
#
# Path 1 (a normal developer machine): rustup has the wasm32-wasip2 target -> plain
#   `cargo build --target wasm32-wasip2 --release`, exactly what `spin build` runs.
# Path 2 (machines where rustup cannot download targets, such as this project's CI):
#   Debian's rustc-web + rust-web-src build std from source (-Zbuild-std), linked by
#   wasm-component-ld, which calls lld-19's wasm-ld (see docs/toolchain.md). Its own
#   CARGO_TARGET_DIR keeps the two compilers from invalidating each other.
#
# With package names as arguments (`scripts/build-wasm.sh bench-empty`), builds just
# those, plain, into target/wasm32-wasip2/release/<name with _>.wasm: `make bench` builds
# its empty floor component this way.
#
# Idempotent: installs only what is missing, and says what it does.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
components=(checkout fulfilment storefront)
out_dir="$root/target/wasm32-wasip2/release"
packages=()
for c in "${components[@]}"; do packages+=(-p "$c"); done

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    say "rustup has wasm32-wasip2: cargo build --target wasm32-wasip2 --release"
    build_dir="$root/target"
    cargo_build() { cargo build --target wasm32-wasip2 --release "$@"; }
else
    say "rustup target wasm32-wasip2 not installed: using Debian rustc-web with -Zbuild-std"
    needed=()
    for pkg in rustc-web cargo-web rust-web-src lld-19 wasi-libc; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || needed+=("$pkg")
    done
    if [ "${#needed[@]}" -gt 0 ]; then
        say "installing Debian packages: ${needed[*]}"
        as_root apt-get update -q
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${needed[@]}"
    fi

    if ! command -v wasm-component-ld >/dev/null 2>&1; then
        say "installing wasm-component-ld (cargo install --locked)"
        cargo install --locked wasm-component-ld
    fi
    component_ld="$(command -v wasm-component-ld)"

    # wasm-component-ld runs `wasm-ld` from PATH; Debian names it wasm-ld-19.
    shim_dir="$root/target/wasm-toolchain/bin"
    mkdir -p "$shim_dir"
    ln -sf /usr/bin/wasm-ld-19 "$shim_dir/wasm-ld"

    build_dir="$root/target/wasm-fallback"
    say "building with /usr/bin/cargo ($(/usr/bin/rustc --version)) into $build_dir"
    cargo_build() {
        PATH="$shim_dir:/usr/bin:$PATH" \
        RUSTC=/usr/bin/rustc \
        RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_DIR="$build_dir" \
        RUSTFLAGS="-C linker=$component_ld -C link-self-contained=no -L native=/usr/lib/wasm32-wasi" \
            /usr/bin/cargo build --release -Zbuild-std=std,panic_abort --target wasm32-wasip2 "$@"
    }
fi

if [ "$#" -gt 0 ]; then
    extra=()
    for p in "$@"; do extra+=(-p "$p"); done
    say "building ${*} (plain) -> $out_dir/"
    cargo_build "${extra[@]}"
    mkdir -p "$out_dir"
    for p in "$@"; do
        file="${p//-/_}.wasm"
        if [ "$build_dir" != "$root/target" ]; then
            cp -f "$build_dir/wasm32-wasip2/release/$file" "$out_dir/$file"
        fi
        say "built $(du -h "$out_dir/$file" | cut -f1) $out_dir/$file"
    done
    exit 0
fi

# Cargo writes both variants to the same file names: build one, set it aside, then
# the other.
say "building without tracing (no wasi:otel import) -> $out_dir/plain/"
cargo_build "${packages[@]}"
mkdir -p "$out_dir/plain"
for c in "${components[@]}"; do
    cp -f "$build_dir/wasm32-wasip2/release/$c.wasm" "$out_dir/plain/$c.wasm"
done
say "building with tracing (--features otel) -> $out_dir/"
cargo_build "${packages[@]}" --features otel
for c in "${components[@]}"; do
    if [ "$build_dir" != "$root/target" ]; then
        cp -f "$build_dir/wasm32-wasip2/release/$c.wasm" "$out_dir/$c.wasm"
    fi
    say "built $(du -h "$out_dir/$c.wasm" | cut -f1) $out_dir/$c.wasm (plain: $(du -h "$out_dir/plain/$c.wasm" | cut -f1))"
done
