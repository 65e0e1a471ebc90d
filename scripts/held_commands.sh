#!/usr/bin/env bash
# eso's memory with N commands waiting, and when they are all answered at once.
#
#   scripts/held_commands.sh [ESO_BINARY] [RATE] [SAGAS]
#   scripts/held_commands.sh target/release/eso 1000 10000
#
# Runs eso on Postgres (a fresh database `held`) and a private nats-server,
# with the payment and delivery participants as processes, on a copy of
# sagas/definitions/order.toml whose commands wait 120 s (so nothing times out or
# retries). Pauses both participants (SIGSTOP), POSTs SAGAS orders at RATE
# per second with `eso-bench --url` (ESO_BENCH, default the eso-bench beside
# ESO_BINARY: cargo build --release -p eso -p eso-bench), prints eso's RSS once every order is in,
# resumes the participants and prints the peak after they answered.
# HEAPTRACK=1 runs eso under heaptrack (build it without mimalloc first).
set -euo pipefail

eso=$(realpath "${1:-target/release/eso}")
eso_bench=${ESO_BENCH:-$(dirname "$eso")/eso-bench}
[[ -x $eso_bench ]] || { echo "no eso-bench at $eso_bench: cargo build --release -p eso -p eso-bench, or set ESO_BENCH" >&2; exit 1; }
rate=${2:-1000}
sagas=${3:-10000}
pg=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
work=$(mktemp -d)
pids=()
cleanup() {
    kill -CONT "${pids[@]}" 2>/dev/null || true
    kill -TERM "${pids[@]}" 2>/dev/null || true
    sleep 3
    rm -rf "$work"
}
trap cleanup EXIT

sed 's/timeout = "2s"/timeout = "120s"/g' "$(dirname "$0")/../sagas/definitions/order.toml" > "$work/order.toml"
mkdir "$work/sagas" && mv "$work/order.toml" "$work/sagas/"
psql "$pg" -qc "DROP DATABASE IF EXISTS held" -c "CREATE DATABASE held"
nats-server -a 127.0.0.1 -p 4333 -js -sd "$work/nats" > "$work/nats.log" 2>&1 &
pids+=($!)
sleep 1

export DATABASE_URL=${pg%/*}/held NATS_URL=nats://127.0.0.1:4333 ESO_EMBED_PARTICIPANTS=false
export RUST_LOG=warn SAGAS_DIR=$work/sagas BIND=127.0.0.1
if [[ ${HEAPTRACK:-0} == 1 ]]; then
    PORT=3999 heaptrack -o "$work/eso" "$eso" > "$work/eso.log" 2>&1 &
else
    PORT=3999 "$eso" > "$work/eso.log" 2>&1 &
fi
pids+=($!)
sleep 3
eso_pid=$(pgrep -f "^$eso$" | head -1)
PORT=3998 "$eso" participant payment > "$work/payment.log" 2>&1 &
payment=$!
PORT=3997 "$eso" participant delivery > "$work/delivery.log" 2>&1 &
delivery=$!
pids+=("$payment" "$delivery")
sleep 2
rss() { grep -E '^(VmRSS|VmHWM)' "/proc/$eso_pid/status" | tr -s ' \t\n' ' '; }
echo "idle: $(rss)"

kill -STOP "$payment" "$delivery"
"$eso_bench" --url http://127.0.0.1:3999 --rate "$rate" --sagas "$sagas" --max-posts 64 --warmup 0 --no-ceiling --drain-timeout 300s > "$work/bench.log" 2>&1 &
bench=$!
until [[ $(psql "${pg%/*}/held" -tAc 'SELECT count(*) FROM orders') -ge $sagas ]]; do sleep 1; done
sleep 2
echo "$sagas commands waiting: $(rss)"
kill -CONT "$payment" "$delivery"
wait "$bench"
echo "after the participants answered: $(rss)"
grep -A1 '^  open' "$work/bench.log"
[[ ${HEAPTRACK:-0} == 1 ]] && cp "$work"/eso*.zst . && echo "heaptrack data copied here"
exit 0
