//! Declared invariants (`[[invariant]]`): what a definition promises about
//! how a saga ends once something happened, checked by [`crate::verify`].
//!
//! ```toml
//! [[invariant]]
//! after = "payment.confirmed"   # the trigger
//! ends_in = ["delivered"]       # the terminal states the saga may then end in…
//! unless_through = ["refund"]   # …unless it entered one of these afterwards
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::definition::{Located, Problem, State};
use crate::verify::Step;

/// Most invariants one definition may declare: verify keeps the open ones
/// as bits of a `u64` in each configuration.
pub const MAX_INVARIANTS: usize = 64;

/// A validated invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invariant {
    pub after: Trigger,
    /// Terminal states the saga may end in once triggered (empty: none).
    pub ends_in: Vec<String>,
    /// Non-terminal states whose entry, after the trigger, lifts the rule.
    pub unless_through: Vec<String>,
}

/// What sets an invariant off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Trigger {
    /// `state`: the saga entered it (also at the start, or by a migration).
    Enter(String),
    /// `state.outcome`: the state's command replied with it.
    Reply { state: String, outcome: String },
    /// `state.timeout`: the state's command timed out after its last retry.
    Timeout(String),
    /// `state.event.name`: the outside event `name` arrived in the state.
    Event { state: String, name: String },
}

impl From<Trigger> for String {
    fn from(t: Trigger) -> String {
        t.to_string()
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Enter(state) => write!(f, "{state}"),
            Trigger::Reply { state, outcome } => write!(f, "{state}.{outcome}"),
            Trigger::Timeout(state) => write!(f, "{state}.timeout"),
            Trigger::Event { state, name } => write!(f, "{state}.event.{name}"),
        }
    }
}

impl Trigger {
    /// Whether `step`, which entered `entered` (None: the saga stayed in its
    /// state, as on a retry), sets this trigger off.
    pub fn fired_by(&self, step: &Step, entered: Option<&str>) -> bool {
        match (self, step) {
            (Trigger::Enter(s), _) => entered == Some(s.as_str()),
            (Trigger::Reply { state, outcome }, Step::Reply { state: st, outcome: o }) => st == state && o == outcome,
            (Trigger::Timeout(s), Step::Timeout { state, last: true, .. }) => state == s,
            (Trigger::Event { state, name }, Step::Event { state: st, name: n }) => st == state && n == name,
            _ => false,
        }
    }

    /// The state a saga is in right after the trigger.
    pub fn lands_in<'a>(&'a self, states: &'a BTreeMap<String, State>) -> Option<&'a str> {
        match self {
            Trigger::Enter(s) => Some(s),
            Trigger::Reply { state, outcome } => states.get(state)?.on_reply.get(outcome).map(|t| t.goto.as_str()),
            Trigger::Timeout(state) => states.get(state)?.on_timeout.as_ref().map(|t| t.goto.as_str()),
            Trigger::Event { state, name } => states.get(state)?.on_event.get(name).map(|t| t.goto.as_str()),
        }
    }
}

impl Invariant {
    /// Whether a saga migrated into `target` may arrive with this invariant
    /// open: `target` is reachable from where the trigger lands without
    /// entering an `unless_through` state (entering `target` itself is
    /// applied on arrival). The saga's real history is unknown, so this
    /// assumes the worst, as compensations owed on arrival do.
    pub fn open_on_arrival(&self, states: &BTreeMap<String, State>, target: &str) -> bool {
        let Some(start) = self.after.lands_in(states) else { return false };
        let through = |s: &str| self.unless_through.iter().any(|t| t == s);
        let mut seen = BTreeSet::from([start]);
        let mut queue = VecDeque::from([start]);
        while let Some(name) = queue.pop_front() {
            if name == target {
                return !through(target);
            }
            if through(name) {
                continue;
            }
            if let Some(state) = states.get(name) {
                for next in crate::validate::successors(state) {
                    if seen.insert(next) {
                        queue.push_back(next);
                    }
                }
            }
        }
        false
    }
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInvariant {
    pub after: Spanned<String>,
    #[serde(default)]
    pub ends_in: Vec<Spanned<String>>,
    #[serde(default)]
    pub unless_through: Vec<Spanned<String>>,
}

/// Validates the `[[invariant]]` tables against the (already built) states.
pub(crate) fn parse(
    raw: &[Spanned<RawInvariant>],
    states: &BTreeMap<String, State>,
    at: &dyn Fn(std::ops::Range<usize>, Problem) -> Located,
    problems: &mut Vec<Located>,
) -> Vec<Invariant> {
    if let Some(extra) = raw.get(MAX_INVARIANTS) {
        let why = format!("at most {MAX_INVARIANTS} invariants, not {}", raw.len());
        problems.push(at(extra.span(), Problem::OutOfRange(why)));
    }
    let mut report = |span: std::ops::Range<usize>, problem: Problem| problems.push(at(span, problem));
    let known = || states.keys().cloned().collect::<Vec<_>>();
    let mut invariants = Vec::new();
    for table in raw.iter().take(MAX_INVARIANTS) {
        let r = table.get_ref();
        let after = trigger(&r.after, states, &known, &mut report);
        if r.ends_in.is_empty() && r.unless_through.is_empty() {
            report(table.span(), Problem::EmptyInvariant(r.after.get_ref().clone()));
        }
        let names = |list: &[Spanned<String>], field: &str, terminal: bool, report: &mut dyn FnMut(std::ops::Range<usize>, Problem)| {
            let mut out: Vec<String> = Vec::new();
            for name in list {
                let text = name.get_ref();
                match states.get(text) {
                    None => report(name.span(), Problem::UnknownState { name: text.clone(), known: known() }),
                    Some(_) if out.contains(text) => report(name.span(), Problem::Duplicate(format!("state `{text}` listed twice in `{field}`"))),
                    Some(s) if s.terminal != terminal => {
                        report(name.span(), Problem::InvariantMisplaced { field: field.to_string(), state: text.clone(), terminal: s.terminal })
                    }
                    Some(_) => out.push(text.clone()),
                }
            }
            out
        };
        let ends_in = names(&r.ends_in, "ends_in", true, &mut report);
        let unless_through = names(&r.unless_through, "unless_through", false, &mut report);
        if let Some(after) = after {
            invariants.push(Invariant { after, ends_in, unless_through });
        }
    }
    invariants
}

fn trigger(
    raw: &Spanned<String>,
    states: &BTreeMap<String, State>,
    known: &dyn Fn() -> Vec<String>,
    report: &mut dyn FnMut(std::ops::Range<usize>, Problem),
) -> Option<Trigger> {
    let text = raw.get_ref();
    let bad = |why: String| Problem::BadTrigger { after: text.clone(), why };
    let parts: Vec<&str> = text.split('.').collect();
    let Some(state) = parts.first().and_then(|name| states.get(*name)) else {
        let name = parts.first().copied().unwrap_or_default().to_string();
        report(raw.span(), Problem::UnknownState { name, known: known() });
        return None;
    };
    let list = |names: Vec<&String>| if names.is_empty() { "none".to_string() } else { names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ") };
    let found = match parts.as_slice() {
        [_] if state.terminal => Err(format!("`{}` is terminal: nothing happens after the saga enters it", state.name)),
        [_] => Ok(Trigger::Enter(state.name.clone())),
        [_, "timeout"] if state.on_timeout.is_none() => Err(format!("state `{}` sends no command, so it never times out", state.name)),
        [_, "timeout"] => Ok(Trigger::Timeout(state.name.clone())),
        [_, outcome] if state.on_reply.contains_key(*outcome) => Ok(Trigger::Reply { state: state.name.clone(), outcome: outcome.to_string() }),
        [_, outcome] => Err(format!("state `{}` has no reply outcome `{outcome}` (its outcomes: {})", state.name, list(state.on_reply.keys().collect()))),
        [_, "event", name] if state.on_event.contains_key(*name) => Ok(Trigger::Event { state: state.name.clone(), name: name.to_string() }),
        [_, "event", name] => Err(format!("state `{}` accepts no event `{name}` (its events: {})", state.name, list(state.on_event.keys().collect()))),
        _ => Err("write `state`, `state.outcome`, `state.timeout` or `state.event.name`".to_string()),
    };
    found.map_err(|why| report(raw.span(), bad(why))).ok()
}
