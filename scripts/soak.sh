#!/usr/bin/env bash
# The fault tests (eso/tests/faults.rs) over and over with fresh seeds, for
# a given time, then one table per fault.
#
#   scripts/soak.sh DURATION          e.g. scripts/soak.sh 30m   (s, m or h; plain seconds too)
#
# Builds the faults test binary once (release; SOAK_PROFILE=debug for the
# debug build CI uses), then runs it whole (every fault, two at a time, as
# `cargo test` does, each posting SOAK_RATE orders a second: default 150 in
# release, 40 in debug as in CI) until DURATION is up: the run that is
# going when the time is up is finished, not cut. Each test prints one `SOAK fault=… seed=…`
# line, pass or fail; the table sums them per fault and names the seeds of
# failed runs (rerun one: ESO_FAULT_SEED=<seed> cargo test -p eso --test
# faults <fault>). Every run's full output stays in SOAK_DIR (default
# target/soak/<time>). Needs what the tests need: PostgreSQL on DATABASE_URL
# (default the local server, user postgres), nats-server, root for the
# private Postgres. Exits non-zero if any run failed. Not part of
# `cargo test`: CI runs each fault once.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/soak.sh DURATION   (e.g. 30m, 5m, 90s, 1h)" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
case $1 in
  *h) seconds=$(( ${1%h} * 3600 )) ;;
  *m) seconds=$(( ${1%m} * 60 )) ;;
  *s) seconds=${1%s} ;;
  *) seconds=$1 ;;
esac
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage

profile=${SOAK_PROFILE:-release}
# A release build ends a saga in milliseconds: posted at the debug build's
# 40 a second, a kill would find one or two in flight.
case $profile in
  release) build=(cargo test --release -p eso --test faults --no-run); rate=${SOAK_RATE:-150} ;;
  debug) build=(cargo test -p eso --test faults --no-run); rate=${SOAK_RATE:-40} ;;
  *) echo "SOAK_PROFILE must be release or debug" >&2; exit 2 ;;
esac
dir=${SOAK_DIR:-target/soak/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$dir"

echo "building the fault tests (${build[*]})" >&2
"${build[@]}" 2>"$dir/build.log" || { cat "$dir/build.log" >&2; exit 1; }
binary=$(sed -n 's/.*Executable tests\/faults\.rs (\(.*\))$/\1/p' "$dir/build.log" | tail -n1)
[[ -x $binary ]] || { echo "no faults test binary in the build's output ($dir/build.log)" >&2; exit 1; }
binary=$(realpath "$binary")

# A run that hangs must not hold the soak past its time by much: the whole
# binary takes a minute or two.
per_run_limit=${SOAK_RUN_LIMIT:-900}
deadline=$(( $(date +%s) + seconds ))
started=$(date +%s)
runs=0
bad_runs=()
: >"$dir/soak.lines"
echo "soaking for $1 ($seconds s) at $rate orders a second per fault, logs in $dir" >&2
while (( $(date +%s) < deadline )); do
  runs=$(( runs + 1 ))
  log="$dir/run-$runs.log"
  # Fresh seeds: ESO_FAULT_SEED from the caller's shell would repeat one.
  # The tests read paths from their build; their working directory is
  # eso/, as under cargo test.
  (cd eso && env -u ESO_FAULT_SEED ESO_FAULT_RATE="$rate" timeout "$per_run_limit" "$binary" --nocapture) >"$log" 2>&1 && status=0 || status=$?
  grep -a '^SOAK ' "$log" >>"$dir/soak.lines" || true
  printf 'run %d: exit %d, %d faults, %d failed (%d s of %d)\n' "$runs" "$status" \
    "$(grep -ac '^SOAK ' "$log" || true)" "$(grep -ac '^SOAK .*result=fail' "$log" || true)" \
    "$(( $(date +%s) - started ))" "$seconds" >&2
  if (( status == 124 )); then
    echo "run $runs did not finish within ${per_run_limit} s: see $log" >&2
  fi
  (( status == 0 )) || bad_runs+=("$runs")
done

# One row per fault. A field the fault does not measure is `-` and adds
# nothing; takeover is the slowest takeover seen.
awk -v runs="$runs" -v elapsed="$(( $(date +%s) - started ))" '
function field(line, key,    n, parts, i, kv) {
  n = split(line, parts, " ")
  for (i = 2; i <= n; i++) { split(parts[i], kv, "="); if (kv[1] == key) return kv[2] }
  return "-"
}
function num(v) { return v == "-" ? 0 : v + 0 }
{
  f = field($0, "fault")
  if (!(f in seen)) { seen[f] = 1; order[++faults] = f }
  n[f]++
  if (field($0, "result") == "pass") passed[f]++
  else failed[f] = failed[f] (failed[f] == "" ? "" : " ") field($0, "seed")
  kills[f] += num(field($0, "kills"))
  split(field($0, "sagas_in_flight_at_kills"), k, ",")
  for (i in k) if (k[i] != "-" && (!(f in low) || k[i] + 0 < low[f])) low[f] = k[i] + 0
  sagas[f] += num(field($0, "sagas")); accepted[f] += num(field($0, "accepted"))
  terminal[f] += num(field($0, "terminal")); doubled_pay[f] += num(field($0, "double_payments"))
  lost[f] += num(field($0, "lost_events")); doubled_ev[f] += num(field($0, "doubled_events"))
  if (field($0, "lost_events") != "-") streamed[f] = 1
  split(field($0, "takeover_ms"), t, ",")
  for (i in t) if (t[i] != "-" && t[i] + 0 > takeover[f]) takeover[f] = t[i] + 0
}
END {
  printf "soak: %d runs of the faults binary in %d s\n\n", runs, elapsed
  fmt = "| %-20s | %4s | %6s | %5s | %12s | %6s | %8s | %8s | %15s | %11s | %14s | %17s | %s\n"
  printf fmt, "fault", "runs", "passed", "kills", "min in flight", "sagas", "accepted", "terminal", "double payments", "lost events", "doubled events", "max takeover (ms)", "failed seeds |"
  printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---"
  for (j = 1; j <= faults; j++) {
    f = order[j]
    printf fmt, f, n[f], passed[f] + 0, kills[f], (f in low ? low[f] : "-"), sagas[f], accepted[f], terminal[f], doubled_pay[f],
      (f in streamed ? lost[f] : "-"), (f in streamed ? doubled_ev[f] : "-"), (f in takeover ? takeover[f] : "-"), (failed[f] == "" ? "-" : failed[f]) " |"
  }
}' "$dir/soak.lines" | tee "$dir/summary.md"

if (( ${#bad_runs[@]} > 0 )) || grep -q 'result=fail' "$dir/soak.lines"; then
  echo "runs that failed: ${bad_runs[*]:-see result=fail in $dir/soak.lines}; their output is in $dir/run-<n>.log" >&2
  exit 1
fi
