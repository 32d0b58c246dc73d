#!/usr/bin/env bash
# Runs every cargo-fuzz target (libFuzzer) for FUZZ_SECONDS (60) each, starting from its
# seed corpus in fuzz/corpus/<target>. New inputs and any crash go under target/fuzz/,
# so the committed corpus only changes by hand: a crash found here is fixed, and its
# input copied into fuzz/corpus/<target>/ so that `make test` replays it for ever.
#
# libFuzzer needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# take them. The targets are also run on stable, without coverage guidance, by the
# tests of tests/fuzz in `make test`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${FUZZ_SECONDS:-60}"
say() { printf '==> %s\n' "$*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
targets=(${FUZZ_TARGETS:-order_request event_envelope mail_response app_manifest runtime_config route})
say "building ${#targets[@]} fuzz targets"
cargo fuzz build --release --debug-assertions

failed=()
for target in "${targets[@]}"; do
    work="target/fuzz/corpus/$target"
    artifacts="target/fuzz/artifacts/$target"
    mkdir -p "$work" "$artifacts"
    say "fuzzing $target for ${seconds}s"
    if ! cargo fuzz run --release --debug-assertions "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -artifact_prefix="$artifacts/" -print_final_stats=1 \
        2>"target/fuzz/$target.log"; then
        failed+=("$target")
        say "$target FAILED: see target/fuzz/$target.log and $artifacts/"
    fi
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|cov: ' "target/fuzz/$target.log" | tail -n 3 || true
done

if [ "${#failed[@]}" -gt 0 ]; then
    say "crashes in: ${failed[*]}"
    exit 1
fi
say "no crash in ${#targets[@]} targets x ${seconds}s"
