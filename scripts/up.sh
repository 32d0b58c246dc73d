#!/usr/bin/env bash
# Runs the shop locally: Redis (started here unless one already answers on :6379), the
# dev mail API on :8025 (a mail catcher speaking the Mailpit, Resend, Postmark and
# SendGrid APIs, with an inbox page), and the app itself: under real `spin up` when
# `spin` is on PATH, otherwise under this project's Spin-compatible runner.
# Ctrl-C stops everything this script started.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

listen="${LISTEN:-127.0.0.1:3000}"
redis_port=6379 # runtime-config.toml points the key-value store here
mail_port="${MAIL_PORT:-8025}"
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

say "building the dev mail API and the local runner"
cargo build --bins --locked -p devmail -p spin-runner
target/debug/devmail --listen "127.0.0.1:$mail_port" --verified-domain example.test &
pids+=("$!")

# Variables reach Spin and the runner alike through SPIN_VARIABLE_* (Spin's env provider).
export SPIN_VARIABLE_ADMIN_TOKEN="$admin_token"
export SPIN_VARIABLE_MAIL_API_BASE_URL="http://127.0.0.1:$mail_port"

if command -v spin >/dev/null 2>&1; then
    say "spin found: spin up --listen $listen --runtime-config-file runtime-config.toml"
    spin up --listen "$listen" --runtime-config-file runtime-config.toml &
else
    say "spin not found: running spin.toml with the project's runner (crates/runner)"
    target/debug/spin-runner up --from spin.toml --listen "$listen" \
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
  Admin token   $admin_token

  Place an order:
    curl -i -X POST http://$listen/api/orders -H 'content-type: application/json' \\
      -d '{"email":"ada@example.com","items":[{"sku":"SPIN-MUG","quantity":2}],"card":{"number":"4242 4242 4242 4242","expiry":"12/30","cvc":"123"}}'
  Then follow the Location header: curl http://$listen/api/orders/<order_id>

  Ctrl-C stops everything started here.
EOF
wait "$app"
