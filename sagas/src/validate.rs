//! Turns a parsed file into a [`Definition`], collecting every problem.
//!
//! The graph checks are what keep sagas from getting stuck at run time:
//! every state is reachable, every non-terminal state has a way out, every
//! command has a timeout path, and a terminal state is reachable from
//! everywhere.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

use toml::Spanned;

use crate::definition::{
    CommandSpec, Definition, DefinitionErrors, Located, MAX_RETRIES, Outcome, Problem, RESERVED_EVENTS, RawCommand, RawDefinition, RawState, RawTransition,
    State, Transition, parse_duration,
};
use crate::inputs::{InputKind, InputSpec, RawInput, RawInputs};

type At<'a> = dyn Fn(Range<usize>, Problem) -> Located + 'a;

struct Checker<'a> {
    at: &'a At<'a>,
    problems: Vec<Located>,
}

impl Checker<'_> {
    fn report(&mut self, span: Range<usize>, problem: Problem) {
        self.problems.push((self.at)(span, problem));
    }

    fn name(&mut self, name: &Spanned<String>) -> String {
        if !is_identifier(name.get_ref()) {
            self.report(name.span(), Problem::BadName(name.get_ref().clone()));
        }
        name.get_ref().clone()
    }

    fn event_type(&mut self, name: &Spanned<String>) -> String {
        if RESERVED_EVENTS.contains(&name.get_ref().as_str()) {
            self.report(name.span(), Problem::ReservedEvent(name.get_ref().clone()));
        }
        self.name(name)
    }

    fn duration(&mut self, text: &Spanned<String>) -> std::time::Duration {
        parse_duration(text.get_ref()).unwrap_or_else(|problem| {
            self.report(text.span(), problem);
            std::time::Duration::from_secs(1)
        })
    }

    fn transition(&mut self, raw: &Spanned<RawTransition>, states: &BTreeSet<String>) -> Transition {
        let t = raw.get_ref();
        if t.record.is_empty() {
            self.report(raw.span(), Problem::NothingRecorded);
        }
        let mut seen = BTreeSet::new();
        let mut record = Vec::new();
        for event in &t.record {
            if !seen.insert(event.get_ref().clone()) {
                self.report(event.span(), Problem::Duplicate(format!("event `{}` recorded twice", event.get_ref())));
            }
            record.push(self.event_type(event));
        }
        let goto = t.goto.get_ref().clone();
        if !states.contains(&goto) {
            let known = states.iter().cloned().collect();
            self.report(t.goto.span(), Problem::UnknownState { name: goto.clone(), known });
        }
        Transition { record, goto }
    }

    fn transitions(&mut self, raw: &BTreeMap<Spanned<String>, Spanned<RawTransition>>, states: &BTreeSet<String>) -> BTreeMap<String, Transition> {
        raw.iter().map(|(key, t)| (self.name(key), self.transition(t, states))).collect()
    }

    fn command(&mut self, raw: &Spanned<RawCommand>) -> CommandSpec {
        let c = raw.get_ref();
        if !is_subject(c.subject.get_ref()) {
            self.report(c.subject.span(), Problem::BadSubject(c.subject.get_ref().clone()));
        }
        let retries = match &c.retries {
            None => 0,
            Some(r) => match u32::try_from(*r.get_ref()) {
                Ok(n) if n <= MAX_RETRIES => n,
                _ => {
                    let why = format!("retries must be between 0 and {MAX_RETRIES}, not {}", r.get_ref());
                    self.report(r.span(), Problem::OutOfRange(why));
                    0
                }
            },
        };
        let backoff = match &c.backoff {
            Some(b) => self.duration(b),
            None => std::time::Duration::from_millis(100),
        };
        CommandSpec {
            subject: c.subject.get_ref().clone(),
            fields: c.fields.iter().map(|f| f.get_ref().clone()).collect(),
            timeout: self.duration(&c.timeout),
            retries,
            backoff,
        }
    }

    /// The declared inputs, in file order; see [`crate::inputs`].
    fn inputs(&mut self, raw: Option<&RawInputs>) -> Vec<InputSpec> {
        let mut inputs: Vec<InputSpec> = Vec::new();
        let mut add = |check: &mut Self, key: &Spanned<String>, kind: InputKind, required: bool| {
            let name = check.name(key);
            if inputs.iter().any(|i| i.name == name) {
                check.report(key.span(), Problem::Duplicate(format!("input `{name}` listed twice")));
            } else {
                inputs.push(InputSpec { name, kind, required });
            }
        };
        match raw {
            None => {}
            Some(RawInputs::List(names)) => {
                for key in names {
                    add(self, key, InputKind::Any, true);
                }
            }
            Some(RawInputs::Table(entries)) => {
                // toml hands a table over with its keys sorted; the file's
                // order is the one a reader (and the API) expects.
                let mut entries: Vec<_> = entries.iter().collect();
                entries.sort_by_key(|(key, _)| key.span().start);
                for (key, entry) in entries {
                    let (kind, span, required) = match entry.get_ref() {
                        RawInput::Kind(text) => (Some(text.as_str()), entry.span(), true),
                        RawInput::Table { kind: Some(text), optional } => (Some(text.get_ref().as_str()), text.span(), !optional),
                        RawInput::Table { kind: None, optional } => (None, entry.span(), !optional),
                    };
                    let kind = match kind {
                        None => InputKind::Any,
                        Some(text) => InputKind::from_name(text).unwrap_or_else(|| {
                            let problem = Problem::UnknownInputType { input: key.get_ref().clone(), kind: text.to_string() };
                            self.report(span, problem);
                            InputKind::Any
                        }),
                    };
                    add(self, key, kind, required);
                }
            }
        }
        inputs
    }

    fn state(&mut self, key: &Spanned<String>, raw: &Spanned<RawState>, states: &BTreeSet<String>) -> State {
        let name = self.name(key);
        let s = raw.get_ref();
        let status = match &s.status {
            Some(status) => self.name(status),
            None => {
                self.report(key.span(), Problem::MissingStatus(name.clone()));
                String::new()
            }
        };
        let command = s.command.as_ref().map(|c| self.command(c));
        let on_reply = self.transitions(&s.on, states);
        let on_timeout = s.on_timeout.as_ref().map(|t| self.transition(t, states));
        let on_event = self.transitions(&s.on_event, states);
        let cancel = s.cancel.as_ref().map(|t| self.transition(t, states));
        let has_exits = command.is_some() || !on_reply.is_empty() || on_timeout.is_some() || !on_event.is_empty() || cancel.is_some();
        if s.terminal && has_exits {
            self.report(key.span(), Problem::TerminalWithExits(name.clone()));
        } else if !s.terminal {
            if command.is_none() && (!on_reply.is_empty() || on_timeout.is_some()) {
                self.report(key.span(), Problem::RepliesWithoutCommand(name.clone()));
            } else if command.is_some() && on_timeout.is_none() {
                self.report(key.span(), Problem::NoTimeoutPath(name.clone()));
            } else if command.is_none() && on_event.is_empty() {
                self.report(key.span(), Problem::NoWayOut(name.clone()));
            }
        }
        let outcome = s.outcome.as_ref().and_then(|o| {
            let outcome = Outcome::from_name(o.get_ref());
            if outcome.is_none() {
                self.report(o.span(), Problem::BadOutcome(o.get_ref().clone()));
            } else if !s.terminal {
                self.report(o.span(), Problem::OutcomeNotTerminal(name.clone()));
            }
            outcome
        });
        let repair = self.repair(&name, s, outcome, &status, states);
        State {
            name,
            status,
            terminal: s.terminal,
            outcome,
            command,
            compensates: s.compensates.as_ref().map(|c| c.get_ref().clone()),
            on_reply,
            on_timeout,
            on_event,
            cancel,
            repair,
        }
    }

    /// A terminal state's repair targets; the targets' own kind (terminal
    /// or not) is checked once every state is known.
    fn repair(&mut self, name: &str, s: &RawState, outcome: Option<Outcome>, status: &str, states: &BTreeSet<String>) -> Vec<String> {
        let Some(first) = s.repair.first() else { return Vec::new() };
        if !s.terminal {
            self.report(first.span(), Problem::RepairNotTerminal(name.to_string()));
        } else if crate::verify::succeeds(outcome, status) {
            self.report(first.span(), Problem::RepairOfSuccess(name.to_string()));
        }
        let mut targets = Vec::new();
        for target in &s.repair {
            if !states.contains(target.get_ref()) {
                let known = states.iter().cloned().collect();
                self.report(target.span(), Problem::UnknownState { name: target.get_ref().clone(), known });
            } else if targets.contains(target.get_ref()) {
                self.report(target.span(), Problem::Duplicate(format!("repair target `{}` listed twice", target.get_ref())));
            } else {
                targets.push(target.get_ref().clone());
            }
        }
        targets
    }
}

pub(crate) fn validate(raw: RawDefinition, hash: String, at: &At<'_>) -> Result<Definition, DefinitionErrors> {
    let mut check = Checker { at, problems: Vec::new() };
    let name = check.name(&raw.name);
    let version = match u32::try_from(*raw.version.get_ref()) {
        Ok(v) if v >= 1 => v,
        _ => {
            let why = format!("version must be a whole number from 1 up, not {}", raw.version.get_ref());
            check.report(raw.version.span(), Problem::OutOfRange(why));
            1
        }
    };
    let started = check.event_type(&raw.started);
    let names: BTreeSet<String> = raw.states.get_ref().keys().map(|k| k.get_ref().clone()).collect();
    let migrations = crate::migration::parse(&raw.migrate, version, &names, check.at, &mut check.problems);

    let mut order: Vec<&Spanned<String>> = raw.states.get_ref().keys().collect();
    order.sort_by_key(|k| k.span().start);
    let mut states = BTreeMap::new();
    for key in &order {
        if let Some(state) = raw.states.get_ref().get(*key) {
            states.insert(key.get_ref().clone(), check.state(key, state, &names));
        }
    }

    for s in raw.states.get_ref().values() {
        for target in &s.get_ref().repair {
            if states.get(target.get_ref()).is_some_and(|t| t.terminal) {
                check.report(target.span(), Problem::RepairTargetTerminal(target.get_ref().clone()));
            }
        }
    }

    for (key, s) in raw.states.get_ref() {
        if let Some(target) = &s.get_ref().compensates {
            // A compensation's payload names the undone state's last
            // command id, read after the saga entered the compensation; of
            // itself, that would be its own new id, not the one to undo.
            if target.get_ref() == key.get_ref() {
                check.report(target.span(), Problem::CompensatesItself(key.get_ref().clone()));
                continue;
            }
            match states.get(target.get_ref()) {
                None => {
                    let known = names.iter().cloned().collect();
                    check.report(target.span(), Problem::UnknownState { name: target.get_ref().clone(), known });
                }
                Some(t) if t.command.is_none() => {
                    check.report(target.span(), Problem::CompensatesNothing { state: key.get_ref().clone(), target: t.name.clone() })
                }
                Some(_) => {}
            }
        }
    }

    let initial = match &raw.initial {
        None => {
            check.report(0..0, Problem::MissingInitial);
            String::new()
        }
        Some(initial) if !names.contains(initial.get_ref()) => {
            let known = names.iter().cloned().collect();
            check.report(initial.span(), Problem::UnknownState { name: initial.get_ref().clone(), known });
            String::new()
        }
        Some(initial) if raw.states.get_ref().get(initial.get_ref().as_str()).is_some_and(|s| s.get_ref().terminal) => {
            check.report(initial.span(), Problem::TerminalInitial(initial.get_ref().clone()));
            String::new()
        }
        Some(initial) => initial.get_ref().clone(),
    };

    let invariants = crate::invariant::parse(&raw.invariant, &states, check.at, &mut check.problems);

    // Command fields must name something the saga will have: an input, the
    // saga id, or an earlier state's reply (`payment.payment_id`).
    let declared = check.inputs(raw.inputs.as_ref());
    let inputs: Vec<String> = declared.iter().map(|i| i.name.clone()).collect();
    for key in &order {
        if inputs.contains(key.get_ref()) || key.get_ref() == "saga_id" {
            check.report(key.span(), Problem::StateShadowsInput(key.get_ref().clone()));
        }
    }
    if !inputs.is_empty() {
        for state in raw.states.get_ref().values() {
            let Some(command) = &state.get_ref().command else { continue };
            for field in &command.get_ref().fields {
                let root = field.get_ref().split('.').next().unwrap_or_default();
                if !inputs.iter().any(|i| i == root) && !names.contains(root) && root != "saga_id" {
                    let states = names.iter().cloned().collect();
                    check.report(field.span(), Problem::UnknownField { field: field.get_ref().clone(), inputs: inputs.clone(), states });
                }
            }
        }
    }

    // Graph checks only make sense once every name resolves.
    if check.problems.is_empty() {
        // A state only an operator's cancel or resume leads to is still
        // part of the saga; finishing, below, must not need an operator.
        let reachable = reachable_from(&states, [initial.clone()]);
        for key in &order {
            if !reachable.contains(key.get_ref()) {
                check.report(key.span(), Problem::Unreachable(key.get_ref().clone()));
            }
        }
        let can_finish = can_reach_terminal(&states);
        for key in &order {
            if reachable.contains(key.get_ref()) && !can_finish.contains(key.get_ref()) {
                check.report(key.span(), Problem::NoTerminalReachable(key.get_ref().clone()));
            }
        }
    }

    if !check.problems.is_empty() {
        check.problems.sort_by_key(|p| (p.line, p.column));
        return Err(DefinitionErrors(check.problems));
    }
    let order = order.into_iter().map(|k| k.get_ref().clone()).collect();
    Ok(Definition { name, version, description: raw.description, initial, started, inputs: declared, states, migrations, invariants, order, hash })
}

/// The states a saga can move to directly from `state` on its own (replies,
/// timeouts, outside events), without an operator.
pub(crate) fn successors(state: &State) -> impl Iterator<Item = &str> {
    state.on_reply.values().chain(state.on_timeout.iter()).chain(state.on_event.values()).map(|t| t.goto.as_str())
}

/// The states an operator can move a saga to from `state` (cancel, resume).
pub(crate) fn operator_successors(state: &State) -> impl Iterator<Item = &str> {
    state.cancel.iter().map(|t| t.goto.as_str()).chain(state.repair.iter().map(String::as_str))
}

fn reachable_from(states: &BTreeMap<String, State>, start: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue: VecDeque<String> = start.into_iter().collect();
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(state) = states.get(&name) {
            queue.extend(successors(state).chain(operator_successors(state)).map(str::to_string));
        }
    }
    seen
}

/// States from which some path leads to a terminal state (a fixpoint over
/// reversed edges).
fn can_reach_terminal(states: &BTreeMap<String, State>) -> BTreeSet<String> {
    let mut good: BTreeSet<String> = states.values().filter(|s| s.terminal).map(|s| s.name.clone()).collect();
    loop {
        let before = good.len();
        for s in states.values() {
            if !good.contains(&s.name) && successors(s).any(|n| good.contains(n)) {
                good.insert(s.name.clone());
            }
        }
        if good.len() == before {
            return good;
        }
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_subject(subject: &str) -> bool {
    !subject.is_empty() && subject.split('.').all(|token| !token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}
