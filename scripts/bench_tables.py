#!/usr/bin/env python3
"""Markdown tables for docs/benchmarks.md from `eso-bench --json` files.

    python3 scripts/bench_tables.py docs/bench/closed.json docs/bench/open.json ...

Prints one table per (file, kind): throughput, latency, POST latency, memory
and CPU per saga for each mode side by side, so the figures in the docs are
copied from the JSON rather than retyped.
"""
import json
import sys
from collections import defaultdict


def fmt(x, digits=1):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}"


def cpu(point):
    parts = [f"{p['name'].replace('eso participant ', '')} {p['cpu_ms_per_saga']:.2f}" for p in point["processes"] if p.get("cpu_ms_per_saga") is not None]
    parts += [f"{k} {v:.2f}" for k, v in (point.get("other_cpu_ms_per_saga") or {}).items()]
    return ", ".join(parts)


def rss(point):
    return ", ".join(f"{p['name'].replace('eso participant ', '')} {p.get('peak_rss_mib') or p.get('vm_hwm_mib')}" for p in point["processes"])


def load(point):
    return f"c={point['concurrency']}" if point["kind"] == "closed" else f"{point['rate']}/s"


def table(path):
    data = json.load(open(path))
    c = data["ceiling"]
    print(f"### {path}\n")
    print(f"`{data['command']}`  \nsource {data['machine']['source']}, started {data['started_at']}")
    if c:
        print(f"ceiling: postgres {c['pg_inserts_per_s']:,.0f} inserts/s, sqlite {c['sqlite_inserts_per_s']:,.0f}, nats {c['nats_round_trips_per_s']:,.0f} round trips/s")
    for t in data["targets"]:
        print(f"{t['mode']}: " + ", ".join(f"{p['name']} VmHWM {p['vm_hwm_mib']} MiB" for p in t["processes"]) + (f"; spans received {t['spans_received']}" if t.get("spans_received") else ""))
    print()
    rows = defaultdict(dict)
    for p in data["points"]:
        rows[(p["kind"], p["concurrency"] or 0, p["rate"] or 0)][p["mode"]] = p
    print("| load | mode | sagas | done/s | p50 / p90 / p99 / max ms | POST p50 / p99 ms | errors | unfinished | in flight | commits/saga, appends/commit, commit ms | CPU ms/saga | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows):
        for mode, p in rows[key].items():
            lat, post, s = p["latency_ms"], p["post_ms"], p.get("server") or {}
            errors = p["errors"]["post"] + p["errors"]["poll"]
            print(
                f"| {load(p)} | {mode} | {p['completed']:,} | {fmt(p['completed_per_s'])} "
                f"| {fmt(lat['p50'])} / {fmt(lat['p90'])} / {fmt(lat['p99'])} / {fmt(lat['max'])} "
                f"| {fmt(post['p50'])} / {fmt(post['p99'])} | {errors} | {p['unfinished']} | {p['peak_in_flight']} "
                f"| {fmt(s.get('commits_per_saga'), 3)}, {fmt(s.get('appends_per_commit'))}, {fmt(s.get('commit_ms_mean'))} "
                f"| {cpu(p)} | {rss(p)} |"
            )
    print()


for path in sys.argv[1:]:
    table(path)
