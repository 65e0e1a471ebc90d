#!/usr/bin/env python3
"""Draw `eso-bench --json` results as one SVG chart, with no dependencies.

    python3 scripts/plot_bench.py bench.json [more.json ...] -o docs/benchmarks.svg

Four panels: closed loop (sagas/s, then p50/p99 latency, against clients)
and open loop (completed/s, then p50/p99 latency, against the offered rate).
One colour per series: the spawn mode, plus the file's --label (e.g.
"tracing on") when there is one, so several runs can share one chart.
Standard library only: the SVG is written by hand.
"""

import argparse
import html
import json
import math
import sys

FORMAT_VERSION = 1
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
PANEL_W, PANEL_H = 430, 270
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 16, 34, 44
FONT = 'font-family="sans-serif"'


def load(paths):
    """Points from every file, each tagged with its series name."""
    points, meta = [], []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            sys.exit(f"{path}: format_version {version}, this script reads {FORMAT_VERSION}")
        label = data.get("label")
        for p in data["points"]:
            if p.get("hold"):
                continue  # paused participants: a memory test, not a load level
            name = p["mode"] + (f" ({label})" if label else (" (tracing on)" if p.get("tracing") else ""))
            points.append(dict(p, series=name))
        meta.append(data)
    return points, meta


def nice_step(span, ticks=5):
    raw = span / ticks if span > 0 else 1
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt(v):
    if v >= 1000 and v == int(v):
        return f"{int(v):,}"
    if v == int(v):
        return str(int(v))
    return f"{v:g}"


class Panel:
    """One chart: axes, ticks, grid, and the series drawn on them."""

    def __init__(self, x0, y0, title, xlabel, ylabel, xs, ys, xlog=False, ylog=False, xticks=None):
        self.x0, self.y0, self.xlog, self.ylog = x0, y0, xlog, ylog
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        xs = [x for x in xs if x > 0] or [1]
        ys = [y for y in ys if y > 0] or [1]
        if xlog:
            self.xmin, self.xmax = min(xs) / 1.3, max(xs) * 1.3
        else:
            step = nice_step(max(xs))
            self.xmin, self.xmax = 0, math.ceil(max(xs) * 1.05 / step) * step
        if ylog:
            self.ymin = 10 ** math.floor(math.log10(min(ys)))
            self.ymax = 10 ** math.ceil(math.log10(max(ys) * 1.01))
        else:
            step = nice_step(max(ys))
            self.ymin, self.ymax = 0, math.ceil(max(ys) * 1.08 / step) * step
        self.xticks = xticks
        self.out = []

    def px(self, x):
        lo, hi, v = (self.xmin, self.xmax, x)
        if self.xlog:
            lo, hi, v = math.log(lo), math.log(hi), math.log(max(x, 1e-9))
        return self.x0 + MARGIN_L + (v - lo) / (hi - lo) * (PANEL_W - MARGIN_L - MARGIN_R)

    def py(self, y):
        lo, hi, v = (self.ymin, self.ymax, y)
        if self.ylog:
            lo, hi, v = math.log(lo), math.log(hi), math.log(max(y, self.ymin))
        return self.y0 + PANEL_H - MARGIN_B - (v - lo) / (hi - lo) * (PANEL_H - MARGIN_T - MARGIN_B)

    def axes(self):
        left, right = self.x0 + MARGIN_L, self.x0 + PANEL_W - MARGIN_R
        top, bottom = self.y0 + MARGIN_T, self.y0 + PANEL_H - MARGIN_B
        o = self.out
        o.append(f'<text x="{self.x0 + PANEL_W / 2}" y="{self.y0 + 20}" text-anchor="middle" font-size="14" font-weight="bold" {FONT}>{html.escape(self.title)}</text>')
        if self.ylog:
            yt = []
            decade = self.ymin
            while decade <= self.ymax * 1.0001:
                yt += [decade * m for m in (1, 2, 5) if decade * m <= self.ymax * 1.0001]
                decade *= 10
        else:
            step = nice_step(self.ymax)
            yt = [i * step for i in range(int(self.ymax / step + 1.0001))]
        for y in yt:
            py = self.py(y)
            o.append(f'<line x1="{left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="#ddd"/>')
            o.append(f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end" font-size="11" {FONT}>{fmt(y)}</text>')
        if self.xticks is not None:
            xt = self.xticks
        else:
            step = nice_step(self.xmax)
            xt = [i * step for i in range(int(self.xmax / step + 1.0001))]
        for x in xt:
            px = self.px(x)
            o.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{bottom}" stroke="#eee"/>')
            o.append(f'<text x="{px:.1f}" y="{bottom + 15}" text-anchor="middle" font-size="11" {FONT}>{fmt(x)}</text>')
        o.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#888"/>')
        o.append(f'<text x="{(left + right) / 2}" y="{bottom + 33}" text-anchor="middle" font-size="12" {FONT}>{html.escape(self.xlabel)}</text>')
        cy = (top + bottom) / 2
        o.append(f'<text x="{self.x0 + 16}" y="{cy}" text-anchor="middle" font-size="12" transform="rotate(-90 {self.x0 + 16} {cy})" {FONT}>{html.escape(self.ylabel)}</text>')

    def line(self, pts, colour, dashed=False, marker=True):
        pts = sorted(pts)
        if not pts:
            return
        path = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        self.out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        if marker:
            for x, y in pts:
                shape = "rect" if dashed else "circle"
                if shape == "circle":
                    self.out.append(f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="3" fill="{colour}"/>')
                else:
                    self.out.append(f'<rect x="{self.px(x) - 2.5:.1f}" y="{self.py(y) - 2.5:.1f}" width="5" height="5" fill="white" stroke="{colour}"/>')


def chart(points, meta, title):
    series = sorted({p["series"] for p in points})
    colour = {s: COLOURS[i % len(COLOURS)] for i, s in enumerate(series)}
    closed = [p for p in points if p["kind"] == "closed"]
    opened = [p for p in points if p["kind"] == "open"]
    panels = []

    def by_series(pts, key_x, key_y):
        out = {}
        for p in pts:
            out.setdefault(p["series"], []).append((key_x(p), key_y(p)))
        return out

    row = 0
    if closed:
        cs = sorted({p["concurrency"] for p in closed})
        y0 = 40 + row * PANEL_H
        a = Panel(0, y0, "Closed loop: throughput", "clients (concurrency)", "completed sagas/s", cs, [p["completed_per_s"] for p in closed], xlog=True, xticks=cs)
        a.axes()
        for s, pts in by_series(closed, lambda p: p["concurrency"], lambda p: p["completed_per_s"]).items():
            a.line(pts, colour[s])
        lat = [p["latency_ms"][k] for p in closed for k in ("p50", "p99")]
        b = Panel(PANEL_W, y0, "Closed loop: POST→terminal latency", "clients (concurrency)", "ms (p99 solid, p50 dashed)", cs, lat, xlog=True, ylog=True, xticks=cs)
        b.axes()
        for s, pts in by_series(closed, lambda p: p["concurrency"], lambda p: p["latency_ms"]["p99"]).items():
            b.line(pts, colour[s])
        for s, pts in by_series(closed, lambda p: p["concurrency"], lambda p: p["latency_ms"]["p50"]).items():
            b.line(pts, colour[s], dashed=True)
        panels += [a, b]
        row += 1
    if opened:
        rs = [p["rate"] for p in opened]
        y0 = 40 + row * PANEL_H
        top = max(rs + [p["completed_per_s"] for p in opened])
        c = Panel(0, y0, "Open loop: completed vs offered", "offered sagas/s", "completed sagas/s", rs, [top])
        c.axes()
        c.out.append(f'<line x1="{c.px(0):.1f}" y1="{c.py(0):.1f}" x2="{c.px(c.xmax):.1f}" y2="{c.py(min(c.xmax, c.ymax)):.1f}" stroke="#aaa" stroke-dasharray="2,3"/>')
        for s, pts in by_series(opened, lambda p: p["rate"], lambda p: p["completed_per_s"]).items():
            c.line(pts, colour[s])
        lat = [p["latency_ms"][k] for p in opened for k in ("p50", "p99")]
        d = Panel(PANEL_W, y0, "Open loop: POST→terminal latency", "offered sagas/s", "ms (p99 solid, p50 dashed)", rs, lat, ylog=True)
        d.axes()
        for s, pts in by_series(opened, lambda p: p["rate"], lambda p: p["latency_ms"]["p99"]).items():
            d.line(pts, colour[s])
        for s, pts in by_series(opened, lambda p: p["rate"], lambda p: p["latency_ms"]["p50"]).items():
            d.line(pts, colour[s], dashed=True)
        panels += [c, d]
        row += 1

    width, height = 2 * PANEL_W, 40 + row * PANEL_H + 24 + 18 * len(series)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold" {FONT}>{html.escape(title)}</text>']
    for p in panels:
        out += p.out
    y = 40 + row * PANEL_H + 16
    for s in series:
        out.append(f'<line x1="{MARGIN_L}" y1="{y - 4}" x2="{MARGIN_L + 24}" y2="{y - 4}" stroke="{colour[s]}" stroke-width="3"/>')
        out.append(f'<text x="{MARGIN_L + 32}" y="{y}" font-size="12" {FONT}>{html.escape(s)}</text>')
        y += 18
    m = meta[0]["machine"] if meta else {}
    machine = f'{m.get("nproc", "?")} CPUs, {m.get("cpu_model", "?")}, {m.get("memory_mib", "?")} MiB; {m.get("postgres") or "no Postgres"}; {m.get("nats_server") or "no NATS"}'
    out.append(f'<text x="{width - MARGIN_R}" y="{40 + row * PANEL_H + 16}" text-anchor="end" font-size="11" fill="#555" {FONT}>{html.escape(machine)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="files written by `eso-bench --json`")
    parser.add_argument("-o", "--out", default="benchmarks.svg", help="SVG file to write")
    parser.add_argument("--title", default="eso-bench", help="chart title")
    args = parser.parse_args()
    points, meta = load(args.json)
    if not points:
        sys.exit("no points in the input")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(chart(points, meta, args.title))
    print(f"wrote {args.out} ({len(points)} points)")


if __name__ == "__main__":
    main()
