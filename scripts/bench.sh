#!/usr/bin/env bash
# Throughput and latency of the shop under the local runner, printed, not asserted.
# Starts its own redis-server, devmail, trace viewer and runner on free loopback ports,
# drives them with wrk for a bounded time, and stops everything. Numbers depend on the
# machine; docs/performance.md has the project's figures.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
duration="${BENCH_SECONDS:-10}"
connections="${BENCH_CONNECTIONS:-32}"

say() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v wrk >/dev/null 2>&1; then
    say "installing wrk (Debian package)"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q wrk
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
mail_port=$(free_port)
http_port=$(free_port)
work=$(mktemp -d)
pids=()
cleanup() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

cargo build --bins --locked >&2
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=("$!")
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done

# Enough stock that every benchmarked order is accepted: counters on the Redis backend
# are ASCII decimal, and a seeded marker stops the app from seeding over it.
redis-cli -p "$redis_port" SET shop:v1:stock:STICKER-PACK 100000000 >/dev/null
redis-cli -p "$redis_port" SET shop:v1:stock-seeded:STICKER-PACK 1 >/dev/null

viewer_port=$(free_port)
target/debug/trace-viewer serve --listen "127.0.0.1:$viewer_port" >"$work/viewer.log" 2>&1 &
pids+=("$!")
target/debug/devmail --listen "127.0.0.1:$mail_port" >"$work/devmail.log" 2>&1 &
pids+=("$!")
printf '[key_value_store.default]\ntype = "redis"\nurl = "redis://127.0.0.1:%s"\n' "$redis_port" >"$work/runtime-config.toml"

# Starts the runner; with `export` its spans go to the trace viewer.
runner=""
start_runner() {
    local env=()
    [ "$1" = export ] && env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$viewer_port")
    env "${env[@]}" RUST_LOG=warn target/debug/spin-runner up --experimental-wasi-otel \
        --from spin.toml --listen "127.0.0.1:$http_port" \
        --runtime-config-file "$work/runtime-config.toml" \
        --variable "redis_address=redis://127.0.0.1:$redis_port" \
        --variable "mail_api_base_url=http://127.0.0.1:$mail_port" >>"$work/runner.log" 2>&1 &
    runner="$!"
    pids+=("$runner")
    until curl -fsS "http://127.0.0.1:$http_port/api/products" >/dev/null 2>&1; do sleep 0.2; done
}
stop_runner() {
    kill -TERM "$runner"
    wait "$runner" 2>/dev/null || true
}
start_runner no-export

cat >"$work/order.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"email":"bench@example.com","items":[{"sku":"STICKER-PACK","quantity":1}],"card":{"number":"4242 4242 4242 4242","expiry":"12/39","cvc":"123"}}'
EOF

echo
echo "## GET /api/products (key-value reads), ${duration}s, $connections connections"
wrk -t2 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:$http_port/api/products" | sed -n '/Latency Distribution/,$p'

echo
echo "## POST /api/orders (validate, reserve, record, publish; fulfilment and mail run meanwhile), ${duration}s, $connections connections"
wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/order.lua" "http://127.0.0.1:$http_port/api/orders" | sed -n '/Latency Distribution/,$p'

sleep 2
placed=$(redis-cli -p "$redis_port" GET shop:v1:orders:seq)
emails=$(curl -fsS "http://127.0.0.1:$mail_port/__devmail/messages" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo
echo "## Fulfilment"
echo "orders accepted: ${placed:-0}; confirmation emails delivered 2 s after the load stopped: $emails"

# The same load with every span exported (OTLP/HTTP protobuf to the trace viewer).
stop_runner
start_runner export
echo
echo "## POST /api/orders with spans exported to the trace viewer, ${duration}s, $connections connections"
wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/order.lua" "http://127.0.0.1:$http_port/api/orders" | sed -n '/Latency Distribution/,$p'
traces=$(curl -fsS "http://127.0.0.1:$viewer_port/api/traces" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["traces"]))')
echo "traces held by the viewer afterwards: $traces (it keeps the newest 1000)"
