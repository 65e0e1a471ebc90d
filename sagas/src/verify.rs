//! An exhaustive check of a definition: a breadth-first search over every
//! configuration a saga on it can reach, driving the real [`machine::step`]
//! (transitions are never re-implemented here). Pure: no I/O, no clock; time
//! is a synthetic `now` advanced to each deadline.
//!
//! In each configuration the environment may
//! - reply with each outcome the state declares (data `{}`) to the pending
//!   command,
//! - let the deadline pass (attempt timeout, backoff, retry, and after the
//!   last retry `on_timeout`),
//! - send each outside event the state accepts;
//!
//! and the machine must ignore a reply outcome the state does not declare,
//! a reply to a command the saga is not waiting on (duplicate or late), and
//! an event the state does not accept.
//!
//! A configuration is the state, the pending command's phase and attempt,
//! the number of state entries (`visits`) capped at [`Report::bound`]
//! (states + 2: every visit count beyond it is one configuration, so loops
//! terminate; the machine's moves do not depend on `visits`, only command
//! ids do), and the compensations owed (below).
//!
//! Properties, each reported with a shortest counterexample:
//! - **dead end**: a reachable non-terminal configuration from which no
//!   terminal one is reachable (computed backwards over the explored graph);
//! - **compensation coverage**: see [`is_success`] and [`owes`]: a saga must
//!   not end in a failure terminal while a step whose effect may have
//!   happened has not been undone by its compensating state;
//! - **must ignore**: the probes above were ignored, for the right reason;
//! - **invariants** the definition declares ([`crate::invariant`]): each
//!   configuration also carries the invariants triggered and not yet
//!   discharged (a bitset), and ending in a terminal state outside an open
//!   invariant's `ends_in` breaks it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::{self, Write};

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::definition::{Definition, Outcome, State};
use crate::inputs::InputKind;
use crate::machine::{self, Ignored, Input, Millis, Phase, Saga};

/// Statuses that mark a terminal state without a declared `outcome` as a failure.
pub const FAILURE_STATUSES: [&str; 2] = ["cancelled", "failed"];

/// Most configurations explored before giving up (a definition with many
/// compensations can owe many combinations).
pub const MAX_CONFIGURATIONS: usize = 1_000_000;

/// Whether ending in `state` (a terminal state) is a success: its declared
/// `outcome`, or else its `status` is not one of [`FAILURE_STATUSES`].
pub fn is_success(state: &State) -> bool {
    succeeds(state.outcome, &state.status)
}

/// [`is_success`] of a state with this `outcome` and `status`.
pub(crate) fn succeeds(outcome: Option<Outcome>, status: &str) -> bool {
    match outcome {
        Some(outcome) => outcome == Outcome::Success,
        None => !FAILURE_STATUSES.contains(&status),
    }
}

/// Whether leaving a compensated state `from` by `step` to `to` leaves its
/// command's effect possibly done, so that its compensation is owed: a reply
/// that does not end the saga in failure at once (`payment: confirmed` does;
/// `payment: declined → cancelled` is the participant saying nothing
/// happened), the final timeout (the effect is unknown), or an outside event
/// while the command is in flight (unknown too).
pub fn owes(step: &Step, to: &State) -> bool {
    match step {
        Step::Reply { .. } => !to.terminal || is_success(to),
        Step::Timeout { last, .. } => *last,
        Step::Event { .. } => true,
        Step::Start | Step::Migrated { .. } | Step::Retry { .. } => false,
    }
}

/// One input the environment gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Start,
    /// A saga of version `from` moved onto this version by its
    /// `[migrate.<from>]` mapping (its state's command sent afresh).
    Migrated {
        from: u32,
    },
    Reply {
        state: String,
        outcome: String,
    },
    /// An attempt's deadline passed; `last`: no retries were left, so
    /// `on_timeout` was taken.
    Timeout {
        state: String,
        attempt: u32,
        last: bool,
    },
    /// The backoff passed and the command was sent again.
    Retry {
        state: String,
        attempt: u32,
    },
    Event {
        state: String,
        name: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Start => write!(f, "start"),
            Step::Migrated { from } => write!(f, "migrated from v{from}"),
            Step::Reply { state, outcome } => write!(f, "reply {state}:{outcome}"),
            Step::Timeout { state, attempt, last: false } => write!(f, "timeout {state} (attempt {attempt})"),
            Step::Timeout { state, attempt, last: true } => write!(f, "timeout {state} (attempt {attempt}, last)"),
            Step::Retry { state, attempt } => write!(f, "retry {state} (attempt {attempt})"),
            Step::Event { state, name } => write!(f, "event {state}:{name}"),
        }
    }
}

/// A step and the state the saga was in after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub step: Step,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViolationKind {
    /// No terminal state is reachable from `state` in this configuration.
    DeadEnd { state: String },
    /// `state`'s command may have taken effect, and the saga ended in the
    /// failure terminal `terminal` without passing through `compensation`.
    Uncompensated { state: String, compensation: String, terminal: String },
    /// The machine did not ignore `input` in `state` as it must (`got`: what it did).
    NotIgnored { state: String, input: String, got: String },
    /// The declared invariant triggered by `after` was open when the saga
    /// ended in `terminal`, which its `ends_in` does not list.
    Invariant { after: String, ends_in: Vec<String>, unless_through: Vec<String>, terminal: String },
    /// The saga could not start on data holding every declared input.
    StartRefused(String),
    /// More than [`MAX_CONFIGURATIONS`] configurations: the search stopped.
    TooLarge,
}

/// A property that fails, with a shortest path that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub path: Vec<Hop>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub configurations: usize,
    /// Visit counts above this are folded into one configuration.
    pub bound: u32,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The path as `start → reply payment:confirmed → …`.
pub fn render_path(path: &[Hop]) -> String {
    path.iter().map(|h| h.step.to_string()).collect::<Vec<_>>().join(" → ")
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViolationKind::DeadEnd { state } => write!(f, "dead end: no terminal state can be reached from `{state}`"),
            ViolationKind::Uncompensated { state, compensation, terminal } => write!(
                f,
                "compensation skipped: `{state}` may have taken effect, and the saga ends in failure (`{terminal}`) without passing through `{compensation}`"
            ),
            ViolationKind::NotIgnored { state, input, got } => write!(f, "not ignored: in `{state}`, {input} must be ignored, but {got}"),
            ViolationKind::Invariant { after, ends_in, unless_through, terminal } => {
                let list = |names: &[String]| names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
                write!(f, "invariant broken: after `{after}` the saga ends in `{terminal}`")?;
                if !ends_in.is_empty() {
                    write!(f, " (ends_in: {})", list(ends_in))?;
                }
                if !unless_through.is_empty() {
                    write!(f, " without passing through {}", list(unless_through))?;
                }
                Ok(())
            }
            ViolationKind::StartRefused(why) => write!(f, "cannot start: {why}"),
            ViolationKind::TooLarge => write!(f, "more than {MAX_CONFIGURATIONS} configurations: not fully explored"),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(last) = self.path.last() {
            write!(f, "\n  counterexample: {} (in `{}`)", render_path(&self.path), last.to)?;
        }
        Ok(())
    }
}

impl Violation {
    /// The counterexample as a Mermaid `stateDiagram-v2` of the states it passed.
    pub fn mermaid(&self, def: &Definition) -> String {
        let mut out = format!("---\ntitle: {} v{}, {}\n---\nstateDiagram-v2\n", def.name, def.version, kind_name(&self.kind));
        let mut from = "[*]".to_string();
        for hop in &self.path {
            let label = match &hop.step {
                Step::Start => def.started.clone(),
                step => step.to_string(),
            };
            let _ = writeln!(out, "    {from} --> {}: {}. {label}", hop.to, out.matches("-->").count() + 1);
            from.clone_from(&hop.to);
        }
        if def.state(&from).is_some_and(|s| s.terminal) {
            let _ = writeln!(out, "    {from} --> [*]");
        }
        out
    }
}

fn kind_name(kind: &ViolationKind) -> &'static str {
    match kind {
        ViolationKind::DeadEnd { .. } => "dead end",
        ViolationKind::Uncompensated { .. } => "compensation skipped",
        ViolationKind::NotIgnored { .. } => "not ignored",
        ViolationKind::Invariant { .. } => "invariant broken",
        ViolationKind::StartRefused(_) => "cannot start",
        ViolationKind::TooLarge => "too large",
    }
}

/// A value each declared input accepts.
fn sample(kind: InputKind) -> Value {
    match kind {
        InputKind::Any | InputKind::String => json!("x"),
        InputKind::Integer | InputKind::Number => json!(1),
        InputKind::Boolean => json!(true),
        InputKind::Uuid => json!(Uuid::from_u128(1).to_string()),
        InputKind::Object => json!({}),
    }
}

/// What makes two sagas the same for the search.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    state: String,
    /// `(backing off, attempt)` of the pending command.
    pending: Option<(bool, u32)>,
    visits: u32,
    owed: BTreeSet<String>,
    /// Bit `i`: invariant `i` is triggered and not yet discharged.
    open: u64,
}

struct Node {
    saga: Saga,
    now: Millis,
    owed: BTreeSet<String>,
    open: u64,
    parent: Option<(usize, Hop)>,
}

/// Explores every configuration of `def` and checks the properties.
pub fn verify(def: &Definition) -> Report {
    let bound = u32::try_from(def.states.len()).unwrap_or(u32::MAX).saturating_add(2);
    let mut report = Report { configurations: 0, bound, violations: Vec::new() };
    // compensating state -> the state it undoes
    let undoes: BTreeMap<&str, &str> = def.states.values().filter_map(|s| Some((s.name.as_str(), s.compensates.as_deref()?))).collect();
    let compensated: BTreeMap<&str, &str> = undoes.iter().map(|(c, s)| (*s, *c)).collect();

    let id = Uuid::from_u128(0x5a6a);
    let data: Map<String, Value> = def.inputs.iter().map(|i| (i.name.clone(), sample(i.kind))).collect();
    let start = match machine::step(def, None, &Input::Start { id, data }, Millis(0)) {
        Ok(d) => d.saga,
        Err(e) => {
            report.violations.push(Violation { kind: ViolationKind::StartRefused(e.to_string()), path: Vec::new() });
            return report;
        }
    };
    let key_of = |saga: &Saga, owed: &BTreeSet<String>, open: u64| Key {
        state: saga.state.clone(),
        pending: saga.pending.as_ref().map(|p| (p.phase == Phase::BackingOff, p.attempt)),
        visits: saga.visits.min(bound),
        owed: owed.clone(),
        open,
    };
    let open = advance(def, 0, &Step::Start, Some(&start.state));
    let mut nodes = vec![Node {
        saga: start.clone(),
        now: Millis(0),
        owed: BTreeSet::new(),
        open,
        parent: Some((usize::MAX, Hop { step: Step::Start, to: start.state.clone() })),
    }];
    let mut index: HashMap<Key, usize> = HashMap::from([(key_of(&start, &BTreeSet::new(), open), 0)]);
    let mut edges: Vec<Vec<usize>> = vec![Vec::new()];
    let mut queue = VecDeque::from([0usize]);
    // A migration puts sagas where the regular execution may never take
    // them: every state a mapping targets is a starting point too.
    for (from, to) in migrated_into(def) {
        let Some(state) = def.state(&to) else { continue };
        let mut saga = start.clone();
        saga.state.clone_from(&state.name);
        saga.status.clone_from(&state.status);
        saga.visits = 2;
        saga.pending = machine::enter(def, id, &state.name, saga.visits, Millis(0));
        let owed = owed_on_arrival(def, &compensated, &undoes, &state.name);
        let open = bits(def.invariants.iter().map(|i| i.open_on_arrival(&def.states, &state.name)));
        let open = advance(def, open, &Step::Migrated { from }, Some(&state.name));
        let key = key_of(&saga, &owed, open);
        if index.contains_key(&key) {
            continue;
        }
        index.insert(key, nodes.len());
        queue.push_back(nodes.len());
        edges.push(Vec::new());
        nodes.push(Node { saga, now: Millis(0), owed, open, parent: Some((usize::MAX, Hop { step: Step::Migrated { from }, to })) });
    }
    let mut uncompensated: BTreeSet<(String, String)> = BTreeSet::new();
    let mut not_ignored: BTreeSet<(String, String)> = BTreeSet::new();
    let mut broken: BTreeSet<(usize, String)> = BTreeSet::new();

    while let Some(at) = queue.pop_front() {
        if nodes.len() > MAX_CONFIGURATIONS {
            report.violations.push(Violation { kind: ViolationKind::TooLarge, path: Vec::new() });
            break;
        }
        let (saga, now) = (nodes[at].saga.clone(), nodes[at].now);
        let Some(state) = def.state(&saga.state) else { continue };
        for (input, expected) in probes(state, &saga) {
            let result = machine::step(def, Some(&saga), &input, now);
            if let Some(got) = misjudged(&result, expected)
                && not_ignored.insert((saga.state.clone(), expected.to_string()))
            {
                let kind = ViolationKind::NotIgnored { state: saga.state.clone(), input: describe(&input), got };
                report.violations.push(Violation { kind, path: path_to(&nodes, at) });
            }
        }
        if saga.terminal {
            continue;
        }
        for (step, input, when) in moves(state, &saga, now) {
            let Ok(decision) = machine::step(def, Some(&saga), &input, when) else {
                let kind = ViolationKind::NotIgnored { state: saga.state.clone(), input: describe(&input), got: "it was ignored".into() };
                if not_ignored.insert((saga.state.clone(), describe(&input))) {
                    report.violations.push(Violation { kind, path: path_to(&nodes, at) });
                }
                continue;
            };
            let next = decision.saga;
            let Some(to) = def.state(&next.state) else { continue };
            let mut owed = nodes[at].owed.clone();
            if next.visits > saga.visits && compensated.contains_key(saga.state.as_str()) && owes(&step, to) {
                owed.insert(saga.state.clone());
            }
            if let Some(undone) = undoes.get(next.state.as_str()) {
                owed.remove(*undone);
            }
            let entered = (next.visits > saga.visits).then_some(next.state.as_str());
            let open = advance(def, nodes[at].open, &step, entered);
            let key = key_of(&next, &owed, open);
            let target = match index.get(&key) {
                Some(&seen) => seen,
                None => {
                    let fresh = nodes.len();
                    let ends_badly = to.terminal && !is_success(to);
                    let hop = Hop { step, to: next.state.clone() };
                    nodes.push(Node { saga: next, now: when, owed: owed.clone(), open, parent: Some((at, hop)) });
                    edges.push(Vec::new());
                    index.insert(key, fresh);
                    queue.push_back(fresh);
                    if ends_badly {
                        for s in &owed {
                            if uncompensated.insert((s.clone(), to.name.clone())) {
                                let compensation = compensated.get(s.as_str()).map(|c| c.to_string()).unwrap_or_default();
                                let kind = ViolationKind::Uncompensated { state: s.clone(), compensation, terminal: to.name.clone() };
                                report.violations.push(Violation { kind, path: path_to(&nodes, fresh) });
                            }
                        }
                    }
                    if to.terminal {
                        for (i, inv) in def.invariants.iter().enumerate() {
                            if open & (1 << i) != 0 && !inv.ends_in.contains(&to.name) && broken.insert((i, to.name.clone())) {
                                let kind = ViolationKind::Invariant {
                                    after: inv.after.to_string(),
                                    ends_in: inv.ends_in.clone(),
                                    unless_through: inv.unless_through.clone(),
                                    terminal: to.name.clone(),
                                };
                                report.violations.push(Violation { kind, path: path_to(&nodes, fresh) });
                            }
                        }
                    }
                    fresh
                }
            };
            edges[at].push(target);
        }
    }
    report.configurations = nodes.len();

    // Dead ends: configurations no terminal one can be reached from.
    let mut back: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (from, tos) in edges.iter().enumerate() {
        for &to in tos {
            back[to].push(from);
        }
    }
    let mut finishes = vec![false; nodes.len()];
    let mut queue: VecDeque<usize> = nodes.iter().enumerate().filter(|(_, n)| n.saga.terminal).map(|(i, _)| i).collect();
    for &i in &queue {
        finishes[i] = true;
    }
    while let Some(i) = queue.pop_front() {
        for &p in &back[i] {
            if !finishes[p] {
                finishes[p] = true;
                queue.push_back(p);
            }
        }
    }
    let complete = !report.violations.iter().any(|v| v.kind == ViolationKind::TooLarge);
    let mut dead: BTreeSet<&str> = BTreeSet::new();
    for (i, node) in nodes.iter().enumerate() {
        if complete && !finishes[i] && dead.insert(node.saga.state.as_str()) {
            report.violations.push(Violation { kind: ViolationKind::DeadEnd { state: node.saga.state.clone() }, path: path_to(&nodes, i) });
        }
    }
    report
}

/// The open invariants after `step`, which entered `entered` (None: the
/// saga stayed where it was): a trigger opens its invariant (again, after a
/// loop), and entering an `unless_through` state closes it, also when the
/// triggering step itself enters it.
fn advance(def: &Definition, mut open: u64, step: &Step, entered: Option<&str>) -> u64 {
    for (i, inv) in def.invariants.iter().enumerate().take(crate::invariant::MAX_INVARIANTS) {
        if inv.after.fired_by(step, entered) {
            open |= 1 << i;
        }
        if entered.is_some_and(|s| inv.unless_through.iter().any(|t| t == s)) {
            open &= !(1 << i);
        }
    }
    open
}

fn bits(flags: impl Iterator<Item = bool>) -> u64 {
    flags.take(crate::invariant::MAX_INVARIANTS).enumerate().filter(|(_, on)| *on).fold(0, |acc, (i, _)| acc | 1 << i)
}

/// `(old version, state)` for every non-terminal state a `[migrate.N]`
/// mapping of `def` moves sagas into.
fn migrated_into(def: &Definition) -> BTreeSet<(u32, String)> {
    let targets = def.migrations.values().flat_map(|m| m.states.values().map(move |to| (m.from, to.to.clone())));
    targets.filter(|(_, to)| def.state(to).is_some_and(|s| !s.terminal)).collect()
}

/// The compensations a saga migrated into `target` may owe: those of every
/// compensated state a saga passes on its way to `target` (a saga that
/// reaches `delivery` was charged, whichever version charged it), less the
/// one `target` itself undoes.
fn owed_on_arrival(def: &Definition, compensated: &BTreeMap<&str, &str>, undoes: &BTreeMap<&str, &str>, target: &str) -> BTreeSet<String> {
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([from.to_string()]);
        while let Some(name) = queue.pop_front() {
            if let Some(state) = def.state(&name) {
                for next in crate::validate::successors(state) {
                    if seen.insert(next.to_string()) {
                        queue.push_back(next.to_string());
                    }
                }
            }
        }
        seen.contains(target)
    };
    compensated.keys().filter(|c| **c != target && undoes.get(target) != Some(*c) && reaches(c)).map(|c| c.to_string()).collect()
}

/// The shortest path to node `at` (BFS parents).
fn path_to(nodes: &[Node], mut at: usize) -> Vec<Hop> {
    let mut path = Vec::new();
    while let Some(Some((parent, hop))) = nodes.get(at).map(|n| n.parent.as_ref()) {
        path.push(hop.clone());
        at = *parent;
    }
    path.reverse();
    path
}

/// The environment's moves: declared replies, the deadline, declared events.
fn moves(state: &State, saga: &Saga, now: Millis) -> Vec<(Step, Input, Millis)> {
    let mut moves = Vec::new();
    let name = || state.name.clone();
    if let Some(p) = &saga.pending {
        for outcome in state.on_reply.keys() {
            let input = Input::Reply { command_id: p.command_id, outcome: outcome.clone(), data: json!({}) };
            moves.push((Step::Reply { state: name(), outcome: outcome.clone() }, input, now));
        }
        let retries = state.command.as_ref().map_or(0, |c| c.retries);
        let step = match p.phase {
            Phase::BackingOff => Step::Retry { state: name(), attempt: p.attempt + 1 },
            Phase::AwaitingReply => Step::Timeout { state: name(), attempt: p.attempt, last: p.attempt > retries },
        };
        moves.push((step, Input::Deadline, p.deadline.max(now)));
    }
    for event in state.on_event.keys() {
        moves.push((Step::Event { state: name(), name: event.clone() }, Input::Event { name: event.clone(), data: json!({}) }, now));
    }
    moves
}

/// What the machine must ignore, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    UnknownOutcome,
    StaleReply,
    UnknownEvent,
    Finished,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::UnknownOutcome => "an undeclared reply outcome",
            Expect::StaleReply => "a reply to a command it is not waiting on",
            Expect::UnknownEvent => "an undeclared event",
            Expect::Finished => "any input after the end",
        })
    }
}

/// Inputs the machine must ignore in this configuration.
fn probes(state: &State, saga: &Saga) -> Vec<(Input, Expect)> {
    let reply = |command_id: Uuid, outcome: &str| Input::Reply { command_id, outcome: outcome.to_string(), data: json!({}) };
    if saga.terminal {
        return vec![(reply(Uuid::from_u128(1), "late"), Expect::Finished), (Input::Deadline, Expect::Finished)];
    }
    let mut probes = Vec::new();
    let mut undeclared = "undeclared".to_string();
    while state.on_reply.contains_key(&undeclared) || state.on_event.contains_key(&undeclared) {
        undeclared.push('_');
    }
    let waiting = saga.pending.as_ref().map(|p| p.command_id);
    if let Some(id) = waiting {
        probes.push((reply(id, &undeclared), Expect::UnknownOutcome));
    }
    let outcome = state.on_reply.keys().next().map_or(undeclared.as_str(), String::as_str);
    // A duplicate of an earlier step's reply, and one to a command never sent.
    let stale = saga.commands.values().copied().filter(|id| Some(*id) != waiting).chain([Uuid::new_v5(&saga.id, b"never sent")]);
    for id in stale.collect::<BTreeSet<_>>() {
        probes.push((reply(id, outcome), Expect::StaleReply));
    }
    probes.push((Input::Event { name: undeclared, data: json!({}) }, Expect::UnknownEvent));
    probes
}

/// `None` when `result` ignored the input for the `expected` reason; else what happened.
fn misjudged(result: &Result<machine::Decision, Ignored>, expected: Expect) -> Option<String> {
    let right = matches!(
        (result, expected),
        (Err(Ignored::UnknownOutcome { .. }), Expect::UnknownOutcome)
            | (Err(Ignored::StaleReply(_)), Expect::StaleReply)
            | (Err(Ignored::UnknownEvent { .. }), Expect::UnknownEvent)
            | (Err(Ignored::Finished(_)), Expect::Finished)
    );
    match result {
        _ if right => None,
        Ok(d) => Some(format!("it moved the saga to `{}` ({} events)", d.saga.state, d.events.len())),
        Err(e) => Some(format!("it was ignored for another reason: {e}")),
    }
}

fn describe(input: &Input) -> String {
    match input {
        Input::Start { .. } => "start".into(),
        Input::Reply { command_id, outcome, .. } => format!("reply `{outcome}` to command {command_id}"),
        Input::Deadline => "the deadline".into(),
        Input::Event { name, .. } => format!("event `{name}`"),
        Input::Operator(act) => format!("operator {}", act.action.name()),
    }
}
