#!/usr/bin/env bash
# How fast a bulk operator action job runs: starts eso (Postgres and NATS,
# or embedded with `embedded`), N sagas that wait on a command nobody
# answers (eso/tests/fixtures/sagas/hold.toml), then one `retry` job over
# all of them at the highest rate a job allows, and prints sagas retried
# per second.
#
#   scripts/job_rate.sh target/release/eso [N] [postgres|embedded]
set -euo pipefail
eso=${1:?usage: scripts/job_rate.sh path/to/eso [N] [postgres|embedded]}
n=${2:-5000}
mode=${3:-postgres}
port=${PORT:-3918}
token=job-rate-operator-token-0123456789
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
env=(PORT=$port RUST_LOG=warn SAGAS_DIR="$(dirname "$0")/../eso/tests/fixtures/sagas" ESO_OPERATOR_TOKEN="bench:$token" ESO_EMBED_PARTICIPANTS=false ESO_SQLITE_PATH="$dir/eso.db")
if [ "$mode" = postgres ]; then
  admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  psql "$admin" -qc "drop database if exists eso_job_rate with (force)" -c "create database eso_job_rate"
  env+=(DATABASE_URL="${admin%/*}/eso_job_rate" NATS_URL=${NATS_URL:-nats://127.0.0.1:4222})
fi
env "${env[@]}" "$eso" & pid=$!
for _ in $(seq 100); do curl -sf "localhost:$port/healthz" >/dev/null && break; sleep 0.1; done
seq "$n" | xargs -P 32 -I% curl -sf -o /dev/null -X POST "localhost:$port/sagas/hold" -H 'Content-Type: application/json' -d '{}'
job=$(curl -sf -X POST "localhost:$port/actions" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"action": "retry", "reason": "job rate", "filter": {"definition": "hold", "state": "work"}, "rate": 1000}')
id=$(echo "$job" | sed 's/.*"job":"\([^"]*\)".*/\1/')
start=$(date +%s.%N)
while :; do
  state=$(curl -sf "localhost:$port/actions/$id" -H "Authorization: Bearer $token")
  case "$state" in *'"status":"finished"'*) break ;; esac
  sleep 0.2
done
end=$(date +%s.%N)
echo "$state" | grep -o '"matched":[0-9]*\|"done":[0-9]*\|"refused":[0-9]*\|"failed":[0-9]*' | tr '\n' ' '; echo
awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "%s: %d sagas retried in %.1f s: %.0f sagas/s\n", "'"$mode"'", n, e - s, n / (e - s) }'
