#!/usr/bin/env bash
# Installs the system packages the shop and its tests use, if missing (Debian/Ubuntu).
# The wasm toolchain is handled by build-wasm.sh. Idempotent; says what it does.
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

needed=()
command -v redis-server >/dev/null 2>&1 || needed+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || needed+=(redis-tools)
command -v curl >/dev/null 2>&1 || needed+=(curl)
command -v cc >/dev/null 2>&1 || needed+=(build-essential)
# The browser tests drive headless Chromium through its WebDriver.
command -v chromium >/dev/null 2>&1 || needed+=(chromium)
command -v chromedriver >/dev/null 2>&1 || needed+=(chromium-driver)

if [ "${#needed[@]}" -gt 0 ]; then
    say "installing Debian packages: ${needed[*]}"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${needed[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install Rust with rustup (https://rustup.rs) and run this again"
    exit 1
fi
# The benchmark's load generator (`make bench`, and its smoke run in `make test`).
if ! command -v oha >/dev/null 2>&1; then
    say "installing oha, the HTTP load generator (cargo install --locked oha)"
    cargo install --locked oha
fi
say "system packages present: redis-server $(redis-server --version | awk '{print $3}'), $(oha --version)"
