//! Draws a definition as a standalone SVG state diagram, laid out here so
//! the console needs no network, no script and no renderer of its own.
//!
//! The layout is a small layered (Sugiyama-style) one: states in layers by
//! their longest path from `initial` (edges that close a cycle, such as a
//! repair back into `refund`, are drawn upwards), long edges routed through
//! placeholder points in the layers they cross, and each layer ordered by
//! the average position of its neighbours to keep edges short. A crate such
//! as `layout-rs` lays out Graphviz graphs, but it renders through draw
//! calls (rectangles, text, arrows) that carry no identity, so it cannot
//! emit the `<g class="state" data-state="…">` groups and the edge classes
//! the console and its browser test rely on; saga graphs have a dozen states
//! at most, for which this is enough.
//!
//! Every state is a `<g class="state …" data-state="NAME">`; every
//! transition a `<g class="edge KIND …" data-from data-to data-on>` where
//! KIND is `reply`, `timeout`, `event`, `cancel` (dashed) or `repair`
//! (dotted). With a [`Path`], the current state has the class `current`,
//! the states the saga has been in and the transitions it took `visited`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::definition::{Definition, Transition};
use crate::saga::{Action, Cause, Change};

/// What makes a saga take a transition, as the diagram labels it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    Reply(String),
    Timeout,
    Event(String),
    Cancel,
    Repair,
}

impl Trigger {
    fn kind(&self) -> &'static str {
        match self {
            Trigger::Reply(_) => "reply",
            Trigger::Timeout => "timeout",
            Trigger::Event(_) => "event",
            Trigger::Cancel => "cancel",
            Trigger::Repair => "repair",
        }
    }

    fn label(&self) -> String {
        match self {
            Trigger::Reply(outcome) => outcome.clone(),
            Trigger::Timeout => "timeout".into(),
            Trigger::Event(name) => format!("event {name}"),
            Trigger::Cancel => "cancel".into(),
            Trigger::Repair => "repair".into(),
        }
    }

    /// The trigger of a recorded move; `None` for one no transition of
    /// the diagram stands for.
    fn of(cause: &Cause) -> Option<Trigger> {
        match cause {
            Cause::Reply { outcome, .. } => Some(Trigger::Reply(outcome.clone())),
            Cause::Timeout { .. } => Some(Trigger::Timeout),
            Cause::Event { name, .. } => Some(Trigger::Event(name.clone())),
            Cause::Operator(act) => match act.action {
                Action::Cancel => Some(Trigger::Cancel),
                Action::Resume { .. } => Some(Trigger::Repair),
                Action::Retry | Action::Migrate { .. } => None,
            },
        }
    }
}

/// One transition of the diagram.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub on: Trigger,
}

/// Every transition of a definition, in file order of their states.
pub fn edges(def: &Definition) -> Vec<Edge> {
    let mut out = Vec::new();
    for name in &def.order {
        let Some(state) = def.state(name) else { continue };
        let mut add = |t: &Transition, on: Trigger| out.push(Edge { from: name.clone(), to: t.goto.clone(), on });
        for (outcome, t) in &state.on_reply {
            add(t, Trigger::Reply(outcome.clone()));
        }
        if let Some(t) = &state.on_timeout {
            add(t, Trigger::Timeout);
        }
        for (event, t) in &state.on_event {
            add(t, Trigger::Event(event.clone()));
        }
        if let Some(t) = &state.cancel {
            add(t, Trigger::Cancel);
        }
        for target in &state.repair {
            out.push(Edge { from: name.clone(), to: target.clone(), on: Trigger::Repair });
        }
    }
    out
}

/// Where one saga has been: marked on its definition's diagram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path {
    pub current: Option<String>,
    pub visited: BTreeSet<String>,
    pub taken: BTreeSet<Edge>,
}

impl Path {
    /// The path a saga's changes, oldest first, describe: every state it
    /// entered, every transition it took, and where it is now.
    pub fn of<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Path {
        let mut path = Path::default();
        for change in changes {
            match change {
                Change::Started { state, .. } => {
                    path.visited.insert(state.clone());
                    path.current = Some(state.clone());
                }
                Change::Moved { from, to, cause, .. } => {
                    if let Some(on) = Trigger::of(cause) {
                        path.taken.insert(Edge { from: from.clone(), to: to.clone(), on });
                    }
                    path.visited.insert(to.clone());
                    path.current = Some(to.clone());
                }
                // The states before were another version's: the path on
                // this version's diagram starts where the saga landed.
                Change::Migrated { to_state, .. } => {
                    path = Path::default();
                    path.visited.insert(to_state.clone());
                    path.current = Some(to_state.clone());
                }
                _ => {}
            }
        }
        path
    }
}

const NODE_H: f64 = 44.0;
const DUMMY_W: f64 = 10.0;
const MARGIN: f64 = 24.0;
const LABEL_H: f64 = 15.0;

/// A box in a layer: a state, or a point a long edge passes through.
#[derive(Debug, Clone)]
struct Slot {
    state: Option<String>,
    w: f64,
    x: f64,
}

#[derive(Debug, Clone, Copy)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Rect {
    fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }
}

/// The definition as an SVG document, with `path` marked when given.
pub fn svg(def: &Definition, path: Option<&Path>) -> String {
    let edges = edges(def);
    let layer = layers(def, &edges);
    let depth = layer.values().copied().max().unwrap_or(0) + 1;

    // Slots per layer: the states, then one placeholder per layer a long
    // forward edge crosses (keyed by edge index).
    let mut rows: Vec<Vec<Slot>> = vec![Vec::new(); depth];
    for name in &def.order {
        let Some(&l) = layer.get(name) else { continue };
        let w = state_width(def, name);
        rows[l].push(Slot { state: Some(name.clone()), w, x: 0.0 });
    }
    let mut via: Vec<Vec<(usize, usize)>> = vec![Vec::new(); edges.len()];
    for (i, e) in edges.iter().enumerate() {
        let (Some(&a), Some(&b)) = (layer.get(&e.from), layer.get(&e.to)) else { continue };
        for (l, row) in rows.iter_mut().enumerate().take(b).skip(a + 1) {
            via[i].push((l, row.len()));
            row.push(Slot { state: None, w: DUMMY_W, x: 0.0 });
        }
    }
    // Neighbours of each slot in the layers above and below, for ordering.
    let mut up: BTreeMap<(usize, usize), Vec<(usize, usize)>> = BTreeMap::new();
    let mut down: BTreeMap<(usize, usize), Vec<(usize, usize)>> = BTreeMap::new();
    let index = |rows: &Vec<Vec<Slot>>, name: &str| -> Option<(usize, usize)> {
        rows.iter().enumerate().find_map(|(l, row)| row.iter().position(|s| s.state.as_deref() == Some(name)).map(|i| (l, i)))
    };
    for (i, e) in edges.iter().enumerate() {
        let (Some(a), Some(b)) = (index(&rows, &e.from), index(&rows, &e.to)) else { continue };
        if b.0 <= a.0 {
            continue;
        }
        let chain: Vec<(usize, usize)> = std::iter::once(a).chain(via[i].iter().copied()).chain(std::iter::once(b)).collect();
        for pair in chain.windows(2) {
            down.entry(pair[0]).or_default().push(pair[1]);
            up.entry(pair[1]).or_default().push(pair[0]);
        }
    }
    // Order: a few sweeps of the barycenter heuristic, down then up, on
    // slot ranks; `perm[l][k]` is the slot at rank k of layer l.
    let mut perm: Vec<Vec<usize>> = rows.iter().map(|r| (0..r.len()).collect()).collect();
    for sweep in 0..4 {
        let downward = sweep % 2 == 0;
        let order: Vec<usize> = if downward { (1..depth).collect() } else { (0..depth.saturating_sub(1)).rev().collect() };
        for l in order {
            let rank_of = |perm: &Vec<Vec<usize>>, (ll, i): (usize, usize)| perm[ll].iter().position(|&s| s == i).unwrap_or(0) as f64;
            let neighbours = if downward { &up } else { &down };
            let mut keyed: Vec<(f64, usize)> = perm[l]
                .iter()
                .enumerate()
                .map(|(rank, &i)| {
                    let ns = neighbours.get(&(l, i)).map(Vec::as_slice).unwrap_or(&[]);
                    let key = if ns.is_empty() { rank as f64 } else { ns.iter().map(|&n| rank_of(&perm, n)).sum::<f64>() / ns.len() as f64 };
                    (key, i)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            perm[l] = keyed.into_iter().map(|(_, i)| i).collect();
        }
    }
    // Positions: each slot at the average of its neighbours above (then
    // below), pushed apart where they would overlap.
    let gap = |a: &Slot, b: &Slot| if a.state.is_none() && b.state.is_none() { 6.0 } else { 28.0 };
    for l in 0..depth {
        let mut x = 0.0;
        for &i in &perm[l] {
            rows[l][i].x = x + rows[l][i].w / 2.0;
            x += rows[l][i].w + 28.0;
        }
    }
    for sweep in 0..4 {
        let downward = sweep % 2 == 0;
        let order: Vec<usize> = if downward { (1..depth).collect() } else { (0..depth.saturating_sub(1)).rev().collect() };
        let neighbours = if downward { &up } else { &down };
        for l in order {
            let desired: Vec<f64> = perm[l]
                .iter()
                .map(|&i| match neighbours.get(&(l, i)) {
                    Some(ns) if !ns.is_empty() => ns.iter().map(|&(ll, j)| rows[ll][j].x).sum::<f64>() / ns.len() as f64,
                    _ => rows[l][i].x,
                })
                .collect();
            let mut placed: Vec<f64> = Vec::with_capacity(desired.len());
            for (k, &i) in perm[l].iter().enumerate() {
                let x = match k.checked_sub(1) {
                    None => desired[k],
                    Some(p) => {
                        let prev = &rows[l][perm[l][p]];
                        desired[k].max(placed[p] + prev.w / 2.0 + gap(prev, &rows[l][i]) + rows[l][i].w / 2.0)
                    }
                };
                placed.push(x);
            }
            let shift = desired.iter().zip(&placed).map(|(d, p)| d - p).sum::<f64>() / placed.len().max(1) as f64;
            for (k, &i) in perm[l].iter().enumerate() {
                rows[l][i].x = placed[k] + shift;
            }
        }
    }
    let left = rows.iter().flatten().map(|s| s.x - s.w / 2.0).fold(f64::INFINITY, f64::min);
    let left = if left.is_finite() { left } else { 0.0 };
    for slot in rows.iter_mut().flatten() {
        slot.x += MARGIN - left + 40.0;
    }

    // Layer heights: room under each layer for the labels of the edges
    // that leave it.
    let mut ys = vec![MARGIN + 36.0; depth];
    for l in 1..depth {
        let leaving = edges.iter().filter(|e| layer.get(&e.from) == Some(&(l - 1))).count();
        ys[l] = ys[l - 1] + NODE_H + 40.0 + 14.0 * leaving.min(6) as f64;
    }
    let state_box = |name: &str| -> Option<Rect> {
        let (l, i) = index(&rows, name)?;
        let s = &rows[l][i];
        Some(Rect { x: s.x - s.w / 2.0, y: ys[l], w: s.w, h: NODE_H })
    };

    let mut body = String::new();
    let mut labels: Vec<Rect> = def.order.iter().filter_map(|n| state_box(n)).collect();
    let mut right = rows.iter().flatten().map(|s| s.x + s.w / 2.0).fold(0.0, f64::max);
    let mut bottom = ys.last().copied().unwrap_or(0.0) + NODE_H;
    let id = format!("eso-{}-{}", ident(&def.name), def.version);

    // The start marker and its arrow into `initial`.
    let _ = writeln!(body, "<g class=\"edges\">");
    if let Some(b) = state_box(&def.initial) {
        let (cx, cy) = (b.x + b.w / 2.0, MARGIN + 6.0);
        let _ = writeln!(
            body,
            "<g class=\"edge start\"><circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"6\"/><path d=\"M{cx:.1},{:.1} L{cx:.1},{:.1}\" marker-end=\"url(#{id}-arrow)\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            cy + 6.0,
            b.y - 2.0,
            cx + 10.0,
            cy + 18.0,
            xml(&def.started)
        );
    }
    // Where each forward edge leaves its state's bottom and enters its
    // target's top: spread along the box in the order of where the edge
    // goes next, so edges out of one state do not cross right under it.
    let mut outs: BTreeMap<&str, Vec<(f64, usize)>> = BTreeMap::new();
    let mut ins: BTreeMap<&str, Vec<(f64, usize)>> = BTreeMap::new();
    let mut ups: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, e) in edges.iter().enumerate() {
        let (Some(a), Some(b)) = (state_box(&e.from), state_box(&e.to)) else { continue };
        if b.y <= a.y {
            continue;
        }
        let next = via[i].first().map(|&(l, j)| rows[l][j].x).unwrap_or(b.x + b.w / 2.0);
        let prev = via[i].last().map(|&(l, j)| rows[l][j].x).unwrap_or(a.x + a.w / 2.0);
        outs.entry(e.from.as_str()).or_default().push((next, i));
        ins.entry(e.to.as_str()).or_default().push((prev, i));
    }
    let mut port: BTreeMap<(usize, bool), f64> = BTreeMap::new();
    for (ports, leaving) in [(&mut outs, true), (&mut ins, false)] {
        for (name, list) in ports.iter_mut() {
            let Some(b) = state_box(name) else { continue };
            list.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            let n = list.len() as f64;
            for (k, &(_, i)) in list.iter().enumerate() {
                let used = b.w * (0.3 + 0.5 * (n - 1.0) / n).min(0.8);
                port.insert((i, leaving), b.x + (b.w - used) / 2.0 + used * (k as f64 + 0.5) / n);
            }
        }
    }
    for (i, e) in edges.iter().enumerate() {
        let (Some(a), Some(b)) = (state_box(&e.from), state_box(&e.to)) else { continue };
        let forward = b.y > a.y;
        let (d, candidates): (String, Vec<(f64, f64)>) = if forward {
            let mut points = vec![(port.get(&(i, true)).copied().unwrap_or(a.x + a.w / 2.0), a.y + a.h)];
            for &(l, j) in &via[i] {
                let x = rows[l][j].x;
                points.push((x, ys[l]));
                points.push((x, ys[l] + NODE_H));
            }
            points.push((port.get(&(i, false)).copied().unwrap_or(b.x + b.w / 2.0), b.y - 2.0));
            let mut d = format!("M{:.1},{:.1}", points[0].0, points[0].1);
            let mut samples = Vec::new();
            for pair in points.windows(2) {
                let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
                let ym = (y0 + y1) / 2.0;
                if (x0 - x1).abs() < 0.5 {
                    let _ = write!(d, " L{x1:.1},{y1:.1}");
                } else {
                    let _ = write!(d, " C{x0:.1},{ym:.1} {x1:.1},{ym:.1} {x1:.1},{y1:.1}");
                }
                for t in [0.5, 0.3, 0.7, 0.15, 0.85] {
                    samples.push(cubic((x0, y0), (x0, ym), (x1, ym), (x1, y1), t));
                }
            }
            (d, samples)
        } else {
            // Upwards (a repair) or within a layer: from the source's top
            // right to the target's bottom right, bowing out to the right.
            let k = ups.entry(e.to.as_str()).or_default();
            *k += 1;
            let (x0, y0) = (a.x + a.w * 0.85, a.y);
            let (x1, y1) = (b.x + b.w * (0.9 - 0.08 * *k as f64).max(0.5), b.y + b.h + 2.0);
            let bow = 36.0 + 14.0 * *k as f64;
            let (c0, c1) = ((x0 + bow, y0 - 30.0), (x1 + bow, y1 + 30.0));
            let d = format!("M{x0:.1},{y0:.1} C{:.1},{:.1} {:.1},{:.1} {x1:.1},{y1:.1}", c0.0, c0.1, c1.0, c1.1);
            let samples = [0.5, 0.35, 0.65].iter().map(|&t| cubic((x0, y0), c0, c1, (x1, y1), t)).collect();
            (d, samples)
        };
        let text = e.on.label();
        let w = text.chars().count() as f64 * 6.1 + 8.0;
        let place = |(x, y): (f64, f64)| Rect { x: x - w / 2.0, y: y - LABEL_H / 2.0, w, h: LABEL_H };
        let spot = candidates.iter().map(|&p| place(p)).find(|r| !labels.iter().any(|o| o.overlaps(r)));
        let spot = spot.unwrap_or_else(|| {
            // Every spot along the edge is taken: stack below the first.
            let mut r = place(candidates.first().copied().unwrap_or((a.x, a.y)));
            while labels.iter().any(|o| o.overlaps(&r)) {
                r.y += LABEL_H + 1.0;
            }
            r
        });
        labels.push(spot);
        right = right.max(spot.x + spot.w).max(d_right(&d));
        bottom = bottom.max(spot.y + spot.h);
        let marked = path.is_some_and(|p| p.taken.contains(e));
        let _ = writeln!(
            body,
            "<g class=\"edge {}{}\" data-from=\"{}\" data-to=\"{}\" data-on=\"{}\"><path d=\"{d}\" marker-end=\"url(#{id}-{})\"/><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{LABEL_H}\" rx=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            e.on.kind(),
            if marked { " visited" } else { "" },
            xml(&e.from),
            xml(&e.to),
            xml(&text),
            if marked { "arrow-visited" } else { "arrow" },
            spot.x,
            spot.y,
            spot.w,
            spot.x + spot.w / 2.0,
            spot.y + 11.0,
            xml(&text)
        );
    }
    let _ = writeln!(body, "</g>\n<g class=\"states\">");
    for name in &def.order {
        let (Some(state), Some(b)) = (def.state(name), state_box(name)) else { continue };
        let mut class = String::from("state");
        if state.compensates.is_some() {
            class.push_str(" compensation");
        }
        if state.terminal {
            class.push_str(if crate::verify::is_success(state) { " terminal success" } else { " terminal failure" });
        }
        match path {
            Some(p) if p.current.as_deref() == Some(name) => class.push_str(" current"),
            Some(p) if p.visited.contains(name) => class.push_str(" visited"),
            _ => {}
        }
        let mut tip = format!("{name}: status {}", state.status);
        if let Some(c) = &state.command {
            let _ = write!(tip, "; sends {} (timeout {:?}, retries {})", c.subject, c.timeout, c.retries);
        }
        if let Some(undone) = &state.compensates {
            let _ = write!(tip, "; undoes {undone}");
        }
        let cx = b.x + b.w / 2.0;
        let _ = writeln!(
            body,
            "<g class=\"{class}\" data-state=\"{}\"><title>{}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{NODE_H}\" rx=\"10\"/><text class=\"name\" x=\"{cx:.1}\" y=\"{:.1}\">{}</text><text class=\"status\" x=\"{cx:.1}\" y=\"{:.1}\">{}</text></g>",
            xml(name),
            xml(&tip),
            b.x,
            b.y,
            b.w,
            b.y + 19.0,
            xml(name),
            b.y + 35.0,
            xml(&state.status)
        );
    }
    let _ = writeln!(body, "</g>");

    let (w, h) = (right + MARGIN, bottom + MARGIN);
    let title = format!("{} v{}", def.name, def.version);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"saga-diagram\" viewBox=\"0 0 {w:.0} {h:.0}\" width=\"{w:.0}\" height=\"{h:.0}\" role=\"img\" aria-label=\"{}\">",
        xml(&title)
    );
    let _ = writeln!(out, "<title>{}</title>", xml(&title));
    let _ = writeln!(
        out,
        "<defs><marker id=\"{id}-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#6b7280\"/></marker><marker id=\"{id}-arrow-visited\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#2563eb\"/></marker></defs>"
    );
    out.push_str(STYLE);
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

/// Scoped to `.saga-diagram`: the console inlines several diagrams in one
/// page, where an SVG's `<style>` applies to the whole document.
const STYLE: &str = "<style>\
.saga-diagram{font-family:system-ui,sans-serif}\
.saga-diagram .state rect{fill:#fff;stroke:#4b5563;stroke-width:1.5}\
.saga-diagram .state .name{font-size:13px;font-weight:600;text-anchor:middle;fill:#111827}\
.saga-diagram .state .status{font-size:11px;text-anchor:middle;fill:#6b7280}\
.saga-diagram .state.compensation rect{fill:#fde2e1;stroke:#c0392b}\
.saga-diagram .state.terminal rect{stroke-width:3}\
.saga-diagram .state.failure rect{stroke:#b91c1c}\
.saga-diagram .state.visited rect{stroke:#2563eb;fill:#eff6ff}\
.saga-diagram .state.current rect{stroke:#2563eb;stroke-width:3;fill:#dbeafe}\
.saga-diagram .edge path{fill:none;stroke:#6b7280;stroke-width:1.4}\
.saga-diagram .edge.cancel path{stroke-dasharray:6 4}\
.saga-diagram .edge.repair path{stroke-dasharray:2 3}\
.saga-diagram .edge.visited path{stroke:#2563eb;stroke-width:2.4}\
.saga-diagram .edge rect{fill:#fff;opacity:.85}\
.saga-diagram .edge text{font-size:10.5px;text-anchor:middle;fill:#374151}\
.saga-diagram .edge.start circle{fill:#111827}\
.saga-diagram .edge.start text{text-anchor:start}\
</style>\n";

/// Each state's layer: its longest path from `initial` over the edges that
/// do not close a cycle; states `initial` cannot reach go below the rest.
fn layers(def: &Definition, edges: &[Edge]) -> BTreeMap<String, usize> {
    let mut out_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in edges {
        out_of.entry(e.from.as_str()).or_default().push(e.to.as_str());
    }
    // Back edges: those a depth-first walk from `initial` (then from each
    // unreached state, in file order) finds pointing into its own stack.
    let mut back: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let roots = std::iter::once(def.initial.as_str()).chain(def.order.iter().map(String::as_str));
    for root in roots {
        if done.contains(root) {
            continue;
        }
        let mut on_stack: Vec<&str> = vec![root];
        let mut cursor: Vec<usize> = vec![0];
        done.insert(root);
        while let (Some(&node), Some(next)) = (on_stack.last(), cursor.last_mut()) {
            let targets = out_of.get(node).map(Vec::as_slice).unwrap_or(&[]);
            let Some(&to) = targets.get(*next) else {
                on_stack.pop();
                cursor.pop();
                continue;
            };
            *next += 1;
            if on_stack.contains(&to) {
                back.insert((node, to));
            } else if done.insert(to) {
                on_stack.push(to);
                cursor.push(0);
            }
        }
    }
    // Longest path on what is left, a DAG: relax in rounds (a dozen states).
    let mut layer: BTreeMap<String, usize> = BTreeMap::new();
    layer.insert(def.initial.clone(), 0);
    for _ in 0..def.order.len() {
        let mut changed = false;
        for e in edges {
            if back.contains(&(e.from.as_str(), e.to.as_str())) || e.from == e.to {
                continue;
            }
            let Some(&l) = layer.get(&e.from) else { continue };
            if layer.get(&e.to).is_none_or(|&m| m < l + 1) {
                layer.insert(e.to.clone(), l + 1);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let below = layer.values().copied().max().unwrap_or(0) + 1;
    for name in &def.order {
        layer.entry(name.clone()).or_insert(below);
    }
    layer
}

fn state_width(def: &Definition, name: &str) -> f64 {
    let status = def.state(name).map(|s| s.status.chars().count()).unwrap_or(0) as f64;
    (name.chars().count() as f64 * 8.0).max(status * 6.6).max(72.0) + 28.0
}

fn cubic(p0: (f64, f64), p1: (f64, f64), p2: (f64, f64), p3: (f64, f64), t: f64) -> (f64, f64) {
    let u = 1.0 - t;
    let (a, b, c, d) = (u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t);
    (a * p0.0 + b * p1.0 + c * p2.0 + d * p3.0, a * p0.1 + b * p1.1 + c * p2.1 + d * p3.1)
}

/// The largest x a path's coordinates name (control points included).
fn d_right(d: &str) -> f64 {
    d.split(|c: char| c.is_ascii_alphabetic() || c == ' ').filter_map(|p| p.split(',').next()?.parse::<f64>().ok()).fold(0.0, f64::max)
}

/// Text as XML character data or an attribute value.
pub fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A name as the part of an XML id: letters, digits, `-` and `_` only.
fn ident(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = include_str!("../definitions/order.toml");
    const TRIP: &str = include_str!("../definitions/trip.toml");

    fn parse(source: &str) -> Definition {
        crate::parse("test.toml", source).unwrap_or_else(|e| panic!("{e}"))
    }

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    #[test]
    fn every_state_and_transition_is_drawn_once() {
        for source in [ORDER, TRIP] {
            let def = parse(source);
            let svg = svg(&def, None);
            assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
            for name in &def.order {
                assert_eq!(count(&svg, &format!("data-state=\"{name}\"")), 1, "{name} in {svg}");
            }
            assert_eq!(count(&svg, "data-state="), def.order.len());
            let edges = edges(&def);
            assert_eq!(count(&svg, "<g class=\"edge ") - 1, edges.len(), "one group per transition, plus the start");
            for e in &edges {
                let group = format!("data-from=\"{}\" data-to=\"{}\" data-on=\"{}\"", e.from, e.to, e.on.label());
                assert_eq!(count(&svg, &group), 1, "{group}");
            }
        }
    }

    #[test]
    fn edges_are_classed_by_what_takes_them() {
        let def = parse(ORDER);
        let svg = svg(&def, None);
        assert!(svg.contains("<g class=\"edge reply\" data-from=\"payment\" data-to=\"delivery\" data-on=\"confirmed\">"), "{svg}");
        assert!(svg.contains("<g class=\"edge timeout\" data-from=\"payment\" data-to=\"refund\" data-on=\"timeout\">"));
        assert!(svg.contains("<g class=\"edge event\" data-from=\"payment\" data-to=\"refund\" data-on=\"event cancel_requested\">"));
        assert!(svg.contains("<g class=\"edge cancel\" data-from=\"delivery\" data-to=\"refund\" data-on=\"cancel\">"));
        assert!(svg.contains("<g class=\"edge repair\" data-from=\"refund_failed\" data-to=\"refund\" data-on=\"repair\">"));
        assert!(svg.contains("<g class=\"state compensation\" data-state=\"refund\">"), "{svg}");
        assert!(svg.contains("<g class=\"state terminal failure\" data-state=\"refund_failed\">"));
        assert!(svg.contains("<g class=\"state terminal success\" data-state=\"delivered\">"));
        assert!(svg.contains(">order_created</text>"), "the start arrow names the start event");
    }

    #[test]
    fn layers_follow_the_longest_path_and_cycles_point_up() {
        let def = parse(ORDER);
        let layer = layers(&def, &edges(&def));
        let of = |n: &str| layer[n];
        assert_eq!((of("payment"), of("delivery"), of("refund")), (0, 1, 2));
        assert_eq!((of("delivered"), of("cancelled"), of("refund_failed")), (2, 3, 3));
    }

    #[test]
    fn states_do_not_overlap() {
        for source in [ORDER, TRIP] {
            let svg = svg(&parse(source), None);
            let boxes: Vec<Rect> = svg
                .lines()
                .filter(|l| l.contains("data-state="))
                .map(|l| {
                    let attr = |name: &str| -> f64 {
                        let start = l.find("<rect x=\"").unwrap_or(0);
                        let rest = &l[start..];
                        let at = rest.find(&format!(" {name}=\"")).map(|i| i + name.len() + 3).unwrap_or(0);
                        rest[at..].split('"').next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
                    };
                    Rect { x: attr("x"), y: attr("y"), w: attr("width"), h: attr("height") }
                })
                .collect();
            for (i, a) in boxes.iter().enumerate() {
                assert!(a.x.is_finite() && a.y.is_finite() && a.w > 0.0, "{a:?}");
                for b in &boxes[i + 1..] {
                    assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
                }
            }
        }
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(xml("a<b & \"c\" 'd'>"), "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;");
        // The language only takes plain names, but the drawing must not
        // depend on that: a status is text like any other.
        let mut def = parse(ORDER);
        if let Some(state) = def.states.get_mut("payment") {
            state.status = "<b>&\"q\"".into();
        }
        let svg = svg(&def, None);
        assert!(svg.contains(">&lt;b&gt;&amp;&quot;q&quot;</text>"), "{svg}");
        assert!(!svg.contains("<b>"), "{svg}");
    }

    #[test]
    fn a_path_lights_the_current_state_and_marks_what_was_taken() {
        let def = parse(ORDER);
        let path = Path {
            current: Some("refund".into()),
            visited: ["payment", "delivery", "refund"].map(String::from).into(),
            taken: [
                Edge { from: "payment".into(), to: "delivery".into(), on: Trigger::Reply("confirmed".into()) },
                Edge { from: "delivery".into(), to: "refund".into(), on: Trigger::Timeout },
            ]
            .into(),
        };
        let svg = svg(&def, Some(&path));
        assert!(svg.contains("<g class=\"state compensation current\" data-state=\"refund\">"), "{svg}");
        assert!(svg.contains("<g class=\"state visited\" data-state=\"payment\">"));
        assert!(svg.contains("<g class=\"state visited\" data-state=\"delivery\">"));
        assert!(svg.contains("<g class=\"state terminal success\" data-state=\"delivered\">"), "not visited");
        assert!(svg.contains("<g class=\"edge reply visited\" data-from=\"payment\" data-to=\"delivery\""));
        assert!(svg.contains("<g class=\"edge timeout visited\" data-from=\"delivery\" data-to=\"refund\""));
        assert!(svg.contains("<g class=\"edge reply\" data-from=\"delivery\" data-to=\"refund\" data-on=\"failed\">"), "the other way in is not");
        assert_eq!(count(&svg, " current\""), 1);
    }

    #[test]
    fn the_path_comes_from_the_moves_of_a_stream() {
        let changes: Vec<Change> = serde_json::from_value(serde_json::json!([
            {"kind": "started", "saga_id": uuid::Uuid::nil(), "definition": {"name": "order", "version": 2, "hash": "h"},
             "data": {}, "state": "payment", "status": "created", "pending": null},
            {"kind": "noted", "state": "payment", "cause": {"by": "reply", "command_id": uuid::Uuid::nil(), "outcome": "confirmed", "data": {}}},
            {"kind": "moved", "from": "payment", "to": "delivery", "status": "confirmed", "terminal": false, "pending": null,
             "cause": {"by": "reply", "command_id": uuid::Uuid::nil(), "outcome": "confirmed", "data": {}}},
            {"kind": "moved", "from": "delivery", "to": "refund", "status": "cancelling", "terminal": false, "pending": null,
             "cause": {"by": "operator", "action": "cancel", "reason": "stuck", "operator": "ada"}},
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        let path = Path::of(&changes);
        assert_eq!(path.current.as_deref(), Some("refund"));
        assert_eq!(path.visited, ["delivery", "payment", "refund"].map(String::from).into());
        assert!(path.taken.contains(&Edge { from: "delivery".into(), to: "refund".into(), on: Trigger::Cancel }));
        assert!(path.taken.contains(&Edge { from: "payment".into(), to: "delivery".into(), on: Trigger::Reply("confirmed".into()) }));
        assert_eq!(path.taken.len(), 2);
    }
}
