#!/usr/bin/env bash
# GET /sagas at a million stored sagas on Postgres: fills a fresh database
# with N saga rows (default 1,000,000; SQL, about a minute), starts eso on it,
# and prints the median of 20 requests for each list query.
#
#   scripts/list_timing.sh target/release/eso [N]
set -euo pipefail
eso=${1:?usage: scripts/list_timing.sh path/to/eso [N]}
n=${2:-1000000}
admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=eso_list_timing
port=${PORT:-3917}
psql "$admin" -qc "drop database if exists $db with (force)" -c "create database $db"
url="${admin%/*}/$db"

# Migrate by starting eso once on the empty database.
DATABASE_URL=$url PORT=$port RUST_LOG=warn "$eso" & pid=$!
for _ in $(seq 100); do curl -sf "localhost:$port/healthz" >/dev/null && break; sleep 0.1; done
kill "$pid"; wait "$pid" || true

start=$(date +%s)
# Two definitions; 1 in 100 live, the rest spread over the order's terminal
# statuses; created_at one millisecond apart. The snapshot is a stub: lists
# never read it.
psql "$url" -q <<SQL
INSERT INTO sagas (id, definition, definition_version, state, status, terminal, version, deadline, snapshot, trace, created_at, updated_at)
SELECT gen_random_uuid()::text,
       CASE WHEN i % 4 = 0 THEN 'trip' ELSE 'order' END, 1,
       s.state, s.status, s.terminal, 4, CASE WHEN s.terminal = 0 THEN 1 END, '{}', '{}',
       1700000000000000 + i * 1000, 1700000000000000 + i * 1000 + 500
FROM generate_series(1, $n) AS i,
LATERAL (SELECT * FROM (VALUES
    (0, 'payment', 'created', 0), (1, 'delivered', 'delivered', 1), (2, 'cancelled', 'cancelled', 1), (3, 'refund_failed', 'failed', 1)
  ) AS v(k, state, status, terminal)
  WHERE v.k = CASE WHEN i % 100 = 0 THEN 0 WHEN i % 1000 = 1 THEN 3 WHEN i % 3 = 0 THEN 2 ELSE 1 END) AS s;
ANALYZE sagas;
SQL
echo "filled $n sagas in $(( $(date +%s) - start )) s"

DATABASE_URL=$url PORT=$port RUST_LOG=warn "$eso" & pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "localhost:$port/healthz" >/dev/null && break; sleep 0.1; done

median() {
  local path=$1
  for _ in $(seq 20); do curl -s -o /dev/null -w '%{time_total}\n' "localhost:$port$path"; done | sort -n | sed -n 10p
}
next=$(curl -s "localhost:$port/sagas?definition=order&limit=50" | python3 -c 'import json,sys; print(json.load(sys.stdin)["next"])')
for path in \
  "/sagas?limit=50" \
  "/sagas?definition=order&limit=50" \
  "/sagas?definition=order&limit=50&after=$next" \
  "/sagas?definition=order&status=failed&limit=50" \
  "/sagas?definition=order&state=payment&terminal=false&limit=50" \
  "/sagas?definition=order&terminal=false&limit=50" \
  "/sagas?status=cancelled&limit=50" \
  "/definitions"; do
  printf '%-70s %s s\n' "$path" "$(median "$path")"
done
kill $pid; wait $pid 2>/dev/null || true
psql "$admin" -qc "drop database if exists $db with (force)"
