#!/usr/bin/env bash
# `make bench`: builds the benchmark's empty floor component and the harness
# (bench/, `shop-bench`), then runs it: the figures of docs/performance.md, printed as
# tables and written to target/bench/ (results.json, latency.svg). It starts its own
# redis-server, dev mail API and runners on free loopback ports, and stops them.
#
# Settings (environment): BENCH_SECONDS (10) per step, BENCH_KEEP_UP_STEPS (3)
# bisection steps end to end, BENCH_SLOW_MAIL_RATE (400) the second rate offered with
# the mail API answering in 150 ms (the first is 120), BENCH_HEAD_TO_HEAD_ROUNDS (2)
# rounds per placement at one connection taking the hosts in turn (with spin on PATH),
# BENCH_DRAIN_SECONDS (120), BENCH_OUT (target/bench), BENCH_RUNNER
# (target/host-release/spin-runner) the runner measured. `scripts/bench.sh --smoke`
# runs every step for a moment.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

./scripts/build-wasm.sh bench-empty
cargo build --bins --locked >&2
# Measure the runner `make up` runs (the host-release profile), not the test build; the
# results say which (`program`). The smoke run in `make test` uses the test build.
if [ -z "${BENCH_RUNNER:-}" ]; then
    cargo build --profile host-release --locked -p spin-runner --bin spin-runner >&2
    export BENCH_RUNNER="$root/target/host-release/spin-runner"
fi
exec target/debug/shop-bench "$@"
