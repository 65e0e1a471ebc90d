#!/usr/bin/env bash
# Benchmark smoke run: a tiny `eso-bench` run in each mode, to show the bench
# works and print figures. No thresholds (a debug build on a shared CI box
# says nothing about speed); fails only if the bench itself fails: a saga
# never finishes, a POST fails, a spawned process dies, or the JSON it
# writes cannot be charted. Needs PostgreSQL on 127.0.0.1:5432 and
# nats-server installed (.ci/run starts both). Under two minutes.
#
#   bash .ci/bench-smoke.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Debug build, as `cargo test --workspace` left it; eso-bench spawns the
# eso binary beside it (target/debug/eso), so that is built first.
cargo build -q -p eso -p eso-bench
bench() { timeout 100 cargo run -q -p eso-bench -- --warmup 20 --drain-timeout 30s "$@"; }

echo "--- embedded (SQLite, in-process bus), closed loop"
bench --spawn embedded --sagas 200 --concurrency 8 --no-ceiling --json "$out/embedded.json"

echo "--- postgres + NATS (participants as processes), closed and open loop, with the ceiling"
bench --spawn postgres --sagas 200 --concurrency 8 --rate 100 --ceiling-duration 1s --json "$out/postgres.json"

python3 scripts/plot_bench.py "$out/embedded.json" "$out/postgres.json" -o "$out/bench.svg"
echo "bench-smoke: ok"
