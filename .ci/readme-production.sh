#!/usr/bin/env bash
# README's "Running on Postgres and NATS", run literally: the commands of
# its first code block, each server in the background as the README's
# terminals would run them, then an order and a trip through them. Fails if
# any process dies (a port clash, say), or a saga does not end as it should.
# Needs PostgreSQL on 127.0.0.1:5432 and NATS (JetStream) on 4222, which
# .ci/run starts; uses the README's database as written.
#
#   bash .ci/readme-production.sh
set -euo pipefail
cd "$(dirname "$0")/.."

block=$(awk '/^## Running on Postgres and NATS/ { s = 1 } s && /^```sh/ { b = 1; next } b && /^```/ { exit } b { print }' README.md)
[ -n "$block" ] || { echo "README.md has no code block under 'Running on Postgres and NATS'" >&2; exit 1; }

cargo build -q --bins
logs=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill -- -"$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap stop EXIT

n=0
while IFS= read -r line; do
  command=${line%%#*}
  command=$(echo "$command" | sed 's/[[:space:]]*$//')
  [ -n "$command" ] || continue
  case "$command" in
    export\ *) echo "+ $command"; eval "$command" ;;
    *)
      n=$((n + 1))
      echo "+ $command &"
      setsid bash -c "exec $command" > "$logs/$n.log" 2>&1 &
      pids+=($!)
      ;;
  esac
done <<< "$block"

alive() {
  local i=0
  for pid in "${pids[@]}"; do
    i=$((i + 1))
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "process $i of the README's block died:" >&2
      tail -n 20 "$logs/$i.log" >&2
      return 1
    fi
  done
}

for port in 3000 8081 8082 8083; do
  for _ in $(seq 1 300); do
    curl -sf "localhost:$port/healthz" >/dev/null && break
    alive
    sleep 0.2
  done
  curl -sf "localhost:$port/healthz" >/dev/null || { echo "nothing answers on :$port" >&2; exit 1; }
done
alive

field() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }
id=$(curl -sf -XPOST localhost:3000 -H 'content-type: application/json' -d '{"amount": 207.00, "description": "test top up e wallet"}' | field '["id"]')
status=$(curl -sf "localhost:3000/?id=$id&wait=10s" | field '["status"]')
echo "order $id: $status"
[ "$status" = delivered ]

trip=$(curl -sf -XPOST localhost:3000/sagas/trip -H 'content-type: application/json' -d '{"traveller": "Ada", "from": "Lisbon", "to": "Porto", "nights": 3}' | field '["id"]')
state=$(curl -sf "localhost:3000/sagas/$trip?wait=10s" | field '["state"]')
echo "trip $trip: $state"
[ "$state" = booked ]
alive
echo "readme-production: ok"
