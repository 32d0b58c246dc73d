#!/usr/bin/env bash
# Runs the shop locally: Redis (started here unless one already answers on :6379), the
# dev mail API on :8025 (a mail catcher speaking the Mailpit, Resend, Postmark and
# SendGrid APIs, with an inbox page), the trace viewer on :4318 (unless
# OTEL_EXPORTER_OTLP_ENDPOINT already names a collector), and the app itself: under
# real `spin up --experimental-wasi-otel` when `spin` is on PATH, otherwise under this
# project's Spin-compatible runner. Ctrl-C stops everything this script started.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

listen="${LISTEN:-127.0.0.1:3000}"
redis_port=6379 # runtime-config.toml points the key-value store here
mail_port="${MAIL_PORT:-8025}"
viewer_port="${VIEWER_PORT:-4318}"
admin_token="${ADMIN_TOKEN:-dev-admin-token}"

say() { printf '==> %s\n' "$*" >&2; }

pids=()
cleanup() {
    trap - EXIT INT TERM
    if [ "${#pids[@]}" -gt 0 ]; then
        say "stopping ${#pids[@]} process(es)"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM

if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    say "using the Redis already answering on 127.0.0.1:$redis_port"
else
    say "starting redis-server on 127.0.0.1:$redis_port (no persistence)"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --loglevel warning &
    pids+=("$!")
    for _ in $(seq 100); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

say "building the dev mail API, the trace viewer and the local runner"
# The same selection as `make test`, so Cargo reuses one build of everything.
cargo build --bins --locked

# Traces: to the collector OTEL_EXPORTER_OTLP_ENDPOINT names (e.g. Jaeger from
# `spin otel setup`), or else to the project's own trace viewer started here.
if [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
    say "exporting spans to OTEL_EXPORTER_OTLP_ENDPOINT=$OTEL_EXPORTER_OTLP_ENDPOINT"
    viewer_url="${TRACE_VIEWER_URL:-}"
else
    target/debug/trace-viewer serve --listen "127.0.0.1:$viewer_port" &
    pids+=("$!")
    export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$viewer_port"
    viewer_url="${TRACE_VIEWER_URL:-http://127.0.0.1:$viewer_port}"
fi
# Spans reach the viewer within 1 s rather than the default 5 s.
export OTEL_BSP_SCHEDULE_DELAY="${OTEL_BSP_SCHEDULE_DELAY:-1000}"

target/debug/devmail --listen "127.0.0.1:$mail_port" --verified-domain example.test &
pids+=("$!")

# Variables reach Spin and the runner alike through SPIN_VARIABLE_* (Spin's env provider).
export SPIN_VARIABLE_ADMIN_TOKEN="$admin_token"
export SPIN_VARIABLE_MAIL_API_BASE_URL="http://127.0.0.1:$mail_port"
export SPIN_VARIABLE_TRACE_VIEWER_URL="$viewer_url"

# The components are built with tracing (wasi:otel): Spin and the runner both need
# --experimental-wasi-otel to run them.
if command -v spin >/dev/null 2>&1; then
    say "spin found: spin up --experimental-wasi-otel --listen $listen --runtime-config-file runtime-config.toml"
    spin up --experimental-wasi-otel --listen "$listen" --runtime-config-file runtime-config.toml &
else
    say "spin not found: running spin.toml with the project's runner (crates/runner)"
    target/debug/spin-runner up --experimental-wasi-otel --from spin.toml --listen "$listen" \
        --runtime-config-file runtime-config.toml &
fi
app="$!"
pids+=("$app")

for _ in $(seq 600); do
    curl -fsS "http://$listen/api/products" >/dev/null 2>&1 && break
    kill -0 "$app" 2>/dev/null || { say "the app exited"; exit 1; }
    sleep 0.2
done

cat <<EOF

  Shop API      http://$listen/api/products
  Mail inbox    http://127.0.0.1:$mail_port/
  Traces        ${viewer_url:-(sent to $OTEL_EXPORTER_OTLP_ENDPOINT)}
  Admin token   $admin_token

  Place an order:
    curl -i -X POST http://$listen/api/orders -H 'content-type: application/json' \\
      -d '{"email":"ada@example.com","items":[{"sku":"SPIN-MUG","quantity":2}],"card":{"number":"4242 4242 4242 4242","expiry":"12/30","cvc":"123"}}'
  Then follow the Location header: curl http://$listen/api/orders/<order_id>
  and its trace: the order's trace_url, or
    target/debug/trace-viewer trace <order_id> --from $OTEL_EXPORTER_OTLP_ENDPOINT

  Ctrl-C stops everything started here.
EOF
wait "$app"
