# The two commands a fresh Debian machine needs:
#   make up     set up, build and run the shop (Redis, dev mail API, Spin or the local runner)
#   make test   set up, build and run every test (domain, runner, dev mail, end to end)
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help setup build test lint up bench chaos fuzz screenshots clean

help:
	@echo "make up     - run the shop on http://127.0.0.1:3000 (installs what is missing)"
	@echo "make test   - install what is missing, build, and run all tests"
	@echo "make build  - build checkout.wasm, fulfilment.wasm and storefront.wasm"
	@echo "make lint   - cargo fmt --check and cargo clippy -D warnings"
	@echo "make bench  - the shop's throughput and latency beside the platform's floor (docs/performance.md)"
	@echo "make chaos  - the fault soak (CHAOS_SECONDS=120): load, Redis and replica kills, mail faults; prints invariants"
	@echo "make fuzz   - every cargo-fuzz target for FUZZ_SECONDS=60 (libFuzzer)"
	@echo "make screenshots - refresh docs/images from the browser tests"

setup:
	./scripts/setup.sh

build:
	./scripts/build-wasm.sh

# The end-to-end tests start the runner and dev mail binaries: build them first, and
# the benchmark's empty component for its smoke run (tests/e2e/tests/bench.rs).
test: setup build
	./scripts/build-wasm.sh bench-empty
	cargo build --bins --locked
	cargo test --locked

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

up: setup build
	./scripts/up.sh

bench: setup build
	./scripts/bench.sh

# The soak of docs/reliability.md; `make test` runs it for 20 s.
CHAOS_SECONDS ?= 120
chaos: setup build
	cargo build --bins --locked
	CHAOS_SECONDS=$(CHAOS_SECONDS) cargo test --locked -p e2e --test chaos -- --nocapture

fuzz: setup
	./scripts/fuzz.sh

# The browser tests save their screenshots under target/screenshots; this refreshes the
# ones the docs show.
screenshots: setup build
	cargo build --bins --locked
	SCREENSHOT_DIR=$(CURDIR)/docs/images cargo test --locked -p e2e --test trace_page --test storefront

clean:
	cargo clean
	rm -rf .spin
