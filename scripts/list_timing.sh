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
# Two definitions (3 orders to 1 trip), each saga in one of its definition's
# states: 1 in 100 live (with no deadline, so no timer wakes the stubs), 1 in 1000 failed, the rest finished one of two ways;
# created_at one millisecond apart. Half the live ones stepped just now, the
# other half long ago (stuck); live ones wait on attempt 1 to 4. The
# snapshot is a stub (lists never read it) holding the attempt migration
# 0004 reads.
psql "$url" -q <<SQL
INSERT INTO sagas (id, definition, definition_version, state, status, terminal, version, deadline, snapshot, trace, created_at, updated_at)
SELECT gen_random_uuid()::text, s.def, 2, s.state, s.status, s.terminal, 4, NULL,
       CASE WHEN s.terminal = 0 THEN '{"pending":{"attempt":' || (1 + (i / 100) % 4) || '}}' ELSE '{}' END, '{}',
       1700000000000000 + i * 1000,
       CASE WHEN s.terminal = 0 AND i % 200 = 1 THEN (extract(epoch FROM now()) * 1000000)::bigint ELSE 1700000000000000 + i * 1000 + 500 END
FROM generate_series(1, $n) AS i
JOIN (VALUES
    ('order', 0, 'payment', 'created', 0), ('order', 1, 'delivered', 'delivered', 1),
    ('order', 2, 'cancelled', 'cancelled', 1), ('order', 3, 'refund_failed', 'failed', 1),
    ('trip', 0, 'flight', 'booking', 0), ('trip', 1, 'booked', 'booked', 1),
    ('trip', 2, 'cancelled', 'cancelled', 1), ('trip', 3, 'cancel_failed', 'failed', 1)
  ) AS s(def, k, state, status, terminal)
  ON s.def = CASE WHEN i % 4 = 0 THEN 'trip' ELSE 'order' END
 AND s.k = CASE WHEN i % 100 = 1 THEN 0 WHEN i % 1000 = 2 THEN 3 WHEN i % 3 = 0 THEN 2 ELSE 1 END;
ANALYZE sagas;
SQL
echo "filled $n sagas in $(( $(date +%s) - start )) s"
# What migration 0003's index costs to build on a table this size (it
# blocks writes to sagas meanwhile).
psql "$url" -q -c "DROP INDEX sagas_by_status" -c '\timing on' -c "CREATE INDEX sagas_by_status ON sagas (definition, status, created_at, id)" | sed 's/^/index build: /'
# What migration 0004 costs: the column, then the live sagas' attempts.
psql "$url" -q -c "ALTER TABLE sagas DROP COLUMN attempt" -c '\timing on' -c "ALTER TABLE sagas ADD COLUMN attempt BIGINT" \
  -c "UPDATE sagas SET attempt = (snapshot::jsonb #>> '{pending,attempt}')::bigint WHERE terminal = 0" -c "ANALYZE sagas" | sed 's/^/0004: /'


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
  "/sagas?definition=trip&status=booked&limit=50" \
  "/sagas?status=cancelled&limit=50" \
  "/sagas?status=failed&limit=50" \
  "/sagas?definition=order&version=2&limit=50" \
  "/sagas?stuck_for=10m&limit=50" \
  "/sagas?definition=order&stuck_for=10m&limit=50" \
  "/sagas?min_attempt=3&limit=50" \
  "/sagas?definition=order&min_attempt=4&stuck_for=10m&limit=50" \
  "/sagas?started_after=2023-11-14T22:20:00Z&started_before=2023-11-14T22:21:40Z&limit=50" \
  "/sagas?status=cancelled&started_before=2023-11-14T22:14:00Z&limit=50" \
  "/sagas/counts" \
  "/sagas/counts?definition=order" \
  "/sagas/counts?definition=trip&version=2" \
  "/definitions"; do
  printf '%-90s %s s\n' "$path" "$(median "$path")"
done
kill $pid; wait $pid 2>/dev/null || true
[ -n "${KEEP:-}" ] || psql "$admin" -qc "drop database if exists $db with (force)"
