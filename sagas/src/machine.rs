//! The pure saga step: `(saga, input, now) -> decision`.
//!
//! Every decision is a list of events; the new state is those events folded
//! onto the old one with [`Saga::apply`], the same function that rebuilds a
//! saga from its stored stream. So a saga recovered from the event store is,
//! by construction, the saga the step produced. No I/O, no clock, no
//! randomness: time arrives as `now`, and command ids are derived from the
//! saga id, the state and how often the saga has entered a state.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::definition::{Definition, DefinitionId, Transition};
use crate::inputs::{self, InputProblem};
pub use crate::saga::{Act, Action, Cause, Change, Command, Event, FoldError, InFlight, Millis, Pending, Phase, Saga};

/// Recorded when one attempt of a command timed out and a retry is due after backoff.
pub const ATTEMPT_TIMED_OUT: &str = "command_timed_out";
/// Recorded when a command is sent again (same command id) after a timeout.
pub const RETRIED: &str = "command_retried";
/// Recorded when an operator sends the pending command again (same command id) at once.
pub const OPERATOR_RETRIED: &str = "operator_retried";
/// Recorded when an operator sends a saga that ended in failure back into a repair state.
pub const OPERATOR_RESUMED: &str = "operator_resumed";
/// Recorded when a saga moves onto another version of its definition.
pub const DEFINITION_MIGRATED: &str = "definition_migrated";

/// What happens to a saga.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Begin a new saga with this data.
    Start { id: Uuid, data: Map<String, Value> },
    /// A participant answered a command.
    Reply { command_id: Uuid, outcome: String, data: Value },
    /// The saga's deadline may have passed (a timer fired).
    Deadline,
    /// A named event from outside (e.g. a cancellation request).
    Event { name: String, data: Value },
    /// An operator's repair: retry, cancel or resume, as the definition allows.
    Operator(Act),
}

/// The outcome of a step: events to append (in order), commands to send once
/// they are durable, and the saga as it will be.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub commands: Vec<Command>,
    pub saga: Saga,
}

impl Decision {
    /// When the runtime must wake this saga next, if ever.
    pub fn deadline(&self) -> Option<Millis> {
        self.saga.deadline()
    }
}

/// An input that does not apply to the saga in its current state. Not an
/// error: duplicate and late messages are normal in a distributed system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("the saga has not started")]
    NotStarted,
    #[error("the saga has already started")]
    AlreadyStarted,
    #[error("the saga cannot start without its inputs: {}", .0.join(", "))]
    MissingInputs(Vec<String>),
    /// Inputs of the wrong type, or fields the definition does not declare.
    #[error("the saga cannot start with these inputs: {}", describe(.0))]
    InvalidInputs(BTreeMap<String, Vec<String>>),
    #[error("the saga has finished in state `{0}`")]
    Finished(String),
    #[error("the saga runs on {saga}, not {given}")]
    WrongDefinition { saga: DefinitionId, given: DefinitionId },
    #[error("reply to command {0}, which the saga is not waiting on (duplicate or late)")]
    StaleReply(Uuid),
    #[error("state `{state}` has no transition for reply outcome `{outcome}`")]
    UnknownOutcome { state: String, outcome: String },
    #[error("state `{state}` has no transition for event `{name}`")]
    UnknownEvent { state: String, name: String },
    #[error("the saga has no deadline in state `{0}`")]
    NoDeadline(String),
    #[error("the deadline {deadline:?} has not passed at {now:?}")]
    NotDue { deadline: Millis, now: Millis },
    #[error("state `{0}` is not in the definition")]
    UnknownState(String),
    /// The saga already took an operator action with this key.
    #[error("an operator action with key `{0}` was already applied to this saga")]
    Repeated(String),
    #[error("state `{0}` is waiting on no command: there is nothing to retry")]
    NothingToRetry(String),
    #[error("state `{0}` declares no `cancel` transition: the definition does not say how to cancel here")]
    NoCancel(String),
    #[error("the saga is still running (in state `{0}`): only a saga that ended can be resumed; retry or cancel it instead")]
    StillRunning(String),
    #[error("`{to}` is not a repair target of state `{state}` ({})", targets(.allowed))]
    NotRepairable { state: String, to: String, allowed: Vec<String> },
    #[error("a migration needs both versions of the definition: run it as a migration job, not a saga action")]
    MigrationIsNotAnAction,
    #[error("the saga already runs on {0}")]
    AlreadyOn(DefinitionId),
    #[error("version {to} of `{name}` declares no `[migrate.{from}]` mapping")]
    NoMapping { name: String, from: u32, to: u32 },
    #[error("the `[migrate.{from}]` mapping of version {to} does not cover state `{state}`")]
    NotMapped { state: String, from: u32, to: u32 },
}

fn targets(allowed: &[String]) -> String {
    if allowed.is_empty() { "it lists none under `repair`".into() } else { format!("its `repair` targets: {}", allowed.join(", ")) }
}

fn describe(problems: &BTreeMap<String, Vec<String>>) -> String {
    let each = problems.iter().flat_map(|(field, p)| p.iter().map(move |p| format!("`{field}` {p}")));
    each.collect::<Vec<_>>().join("; ")
}

/// Decides what `input` does to `saga` (None before it starts) at `now`.
pub fn step(def: &Definition, saga: Option<&Saga>, input: &Input, now: Millis) -> Result<Decision, Ignored> {
    let saga = match (saga, input) {
        (None, Input::Start { id, data }) => {
            // The same check callers run before starting; a start that
            // skipped it is refused here, so no saga starts on bad data.
            let problems = inputs::problems(&def.name, &def.inputs, data);
            let missing: Vec<String> = problems.iter().filter(|(_, p)| *p == InputProblem::Required).map(|(name, _)| name.clone()).collect();
            if !missing.is_empty() {
                return Err(Ignored::MissingInputs(missing));
            }
            if !problems.is_empty() {
                return Err(Ignored::InvalidInputs(inputs::grouped(problems)));
            }
            return Ok(start(def, *id, data, now));
        }
        (None, _) => return Err(Ignored::NotStarted),
        (Some(_), Input::Start { .. }) => return Err(Ignored::AlreadyStarted),
        (Some(saga), _) => saga,
    };
    if saga.definition != def.id() {
        return Err(Ignored::WrongDefinition { saga: saga.definition.clone(), given: def.id() });
    }
    if let Input::Operator(act) = input {
        return operate(def, saga, act, now).map(|events| decide(def, saga.clone(), events));
    }
    if saga.terminal {
        return Err(Ignored::Finished(saga.state.clone()));
    }
    let state = def.state(&saga.state).ok_or_else(|| Ignored::UnknownState(saga.state.clone()))?;
    let events = match input {
        Input::Start { .. } | Input::Operator(_) => return Err(Ignored::AlreadyStarted),
        Input::Reply { command_id, outcome, data } => {
            match &saga.pending {
                Some(p) if p.command_id == *command_id => {}
                _ => return Err(Ignored::StaleReply(*command_id)),
            }
            let transition = state.on_reply.get(outcome).ok_or_else(|| Ignored::UnknownOutcome { state: state.name.clone(), outcome: outcome.clone() })?;
            let cause = Cause::Reply { command_id: *command_id, outcome: outcome.clone(), data: data.clone() };
            take(def, saga, transition, cause, now)
        }
        Input::Event { name, data } => {
            let transition = state.on_event.get(name).ok_or_else(|| Ignored::UnknownEvent { state: state.name.clone(), name: name.clone() })?;
            take(def, saga, transition, Cause::Event { name: name.clone(), data: data.clone() }, now)
        }
        Input::Deadline => deadline(def, saga, now)?,
    };
    Ok(decide(def, saga.clone(), events))
}

fn start(def: &Definition, id: Uuid, data: &Map<String, Value>, now: Millis) -> Decision {
    let mut saga_data = data.clone();
    saga_data.insert("saga_id".into(), Value::String(id.to_string()));
    let status = def.state(&def.initial).map(|s| s.status.clone()).unwrap_or_default();
    let pending = enter(def, id, &def.initial, 1, now);
    let saga = Saga::begin(id, &def.id(), &saga_data, &def.initial, &status, &pending);
    let commands = command(def, &saga).into_iter().collect();
    let change = Change::Started { saga_id: id, definition: def.id(), data: saga_data, state: def.initial.clone(), status, pending };
    Decision { events: vec![Event { event_type: def.started.clone(), change }], commands, saga }
}

/// The events of taking `transition` from the saga's current state.
fn take(def: &Definition, saga: &Saga, transition: &Transition, cause: Cause, now: Millis) -> Vec<Event> {
    let target = def.state(&transition.goto);
    let pending = enter(def, saga.id, &transition.goto, saga.visits + 1, now);
    let (last, noted) = match transition.record.split_last() {
        Some((last, noted)) => (last.clone(), noted),
        None => (transition.goto.clone(), &[][..]),
    };
    let mut events: Vec<Event> =
        noted.iter().map(|t| Event { event_type: t.clone(), change: Change::Noted { state: saga.state.clone(), cause: None } }).collect();
    events.push(Event {
        event_type: last,
        change: Change::Moved {
            from: saga.state.clone(),
            to: transition.goto.clone(),
            status: target.map(|s| s.status.clone()).unwrap_or_default(),
            terminal: target.is_some_and(|s| s.terminal),
            cause,
            pending,
        },
    });
    events
}

/// A timer fired: back off, retry, or give up and take `on_timeout`.
fn deadline(def: &Definition, saga: &Saga, now: Millis) -> Result<Vec<Event>, Ignored> {
    let pending = saga.pending.as_ref().ok_or_else(|| Ignored::NoDeadline(saga.state.clone()))?;
    if now < pending.deadline {
        return Err(Ignored::NotDue { deadline: pending.deadline, now });
    }
    let state = def.state(&saga.state).ok_or_else(|| Ignored::UnknownState(saga.state.clone()))?;
    let spec = state.command.as_ref().ok_or_else(|| Ignored::NoDeadline(saga.state.clone()))?;
    let event = match pending.phase {
        Phase::BackingOff => {
            let attempt = pending.attempt + 1;
            let next = Pending { command_id: pending.command_id, attempt, phase: Phase::AwaitingReply, deadline: now.after(spec.timeout) };
            Event { event_type: RETRIED.into(), change: Change::Retried { state: saga.state.clone(), attempt, pending: next, by: None } }
        }
        Phase::AwaitingReply if pending.attempt <= spec.retries => {
            let next = Pending { phase: Phase::BackingOff, deadline: now.after(spec.backoff_after(pending.attempt)), ..pending.clone() };
            let change = Change::AttemptTimedOut { state: saga.state.clone(), attempt: pending.attempt, pending: next };
            Event { event_type: ATTEMPT_TIMED_OUT.into(), change }
        }
        Phase::AwaitingReply => {
            let transition = state.on_timeout.as_ref().ok_or_else(|| Ignored::NoDeadline(saga.state.clone()))?;
            let cause = Cause::Timeout { command_id: pending.command_id, attempts: pending.attempt };
            return Ok(take(def, saga, transition, cause, now));
        }
    };
    Ok(vec![event])
}

/// An operator's action, where the definition allows it. A repeated act
/// (same key) changes nothing, so a client's retry of the request, or a
/// bulk job that resumes after a crash, does not act twice.
fn operate(def: &Definition, saga: &Saga, act: &Act, now: Millis) -> Result<Vec<Event>, Ignored> {
    if let Some(key) = act.key.as_ref().filter(|k| saga.acts.contains(*k)) {
        return Err(Ignored::Repeated(key.clone()));
    }
    let state = def.state(&saga.state).ok_or_else(|| Ignored::UnknownState(saga.state.clone()))?;
    let cause = Cause::Operator(act.clone());
    match &act.action {
        Action::Migrate { .. } => Err(Ignored::MigrationIsNotAnAction),
        Action::Retry | Action::Cancel if saga.terminal => Err(Ignored::Finished(saga.state.clone())),
        Action::Retry => {
            let (Some(pending), Some(spec)) = (&saga.pending, &state.command) else { return Err(Ignored::NothingToRetry(saga.state.clone())) };
            // One more attempt, sent now: it counts against the state's
            // retries like any other, so a retried step still gives up.
            let attempt = pending.attempt + 1;
            let next = Pending { command_id: pending.command_id, attempt, phase: Phase::AwaitingReply, deadline: now.after(spec.timeout) };
            let change = Change::Retried { state: saga.state.clone(), attempt, pending: next, by: Some(act.clone()) };
            Ok(vec![Event { event_type: OPERATOR_RETRIED.into(), change }])
        }
        Action::Cancel => {
            let transition = state.cancel.as_ref().ok_or_else(|| Ignored::NoCancel(saga.state.clone()))?;
            Ok(take(def, saga, transition, cause, now))
        }
        Action::Resume { .. } if !saga.terminal => Err(Ignored::StillRunning(saga.state.clone())),
        Action::Resume { to } if !state.repair.contains(to) => {
            Err(Ignored::NotRepairable { state: saga.state.clone(), to: to.clone(), allowed: state.repair.clone() })
        }
        Action::Resume { to } => {
            let transition = Transition { record: vec![OPERATOR_RESUMED.into()], goto: to.clone() };
            let mut events = take(def, saga, &transition, cause, now);
            // The repair state's command goes out with the id it had last
            // time: a participant that did act then answers as it did,
            // instead of acting twice on a new id.
            if let (Some(Event { change: Change::Moved { pending: Some(p), .. }, .. }), Some(id)) = (events.last_mut(), saga.commands.get(to)) {
                p.command_id = *id;
            }
            Ok(events)
        }
    }
}

/// What entering `state` for the `visit`-th state entry waits on: a new
/// command id, its first attempt and that attempt's deadline.
pub(crate) fn enter(def: &Definition, saga_id: Uuid, state: &str, visit: u32, now: Millis) -> Option<Pending> {
    let state = def.state(state)?;
    let spec = state.command.as_ref()?;
    let command_id = Uuid::new_v5(&saga_id, format!("{}/{visit}", state.name).as_bytes());
    Some(Pending { command_id, attempt: 1, phase: Phase::AwaitingReply, deadline: now.after(spec.timeout) })
}

/// The command `saga` waits on, as `def` says to send it from where the
/// saga stands: its state's subject and timeout, and a payload of the
/// state's fields taken from the saga's data. The data changes only when
/// the saga moves, so every attempt of one entry sends the same payload;
/// a saga migrated keeping its command in flight sends the new version's
/// fields on its next attempt (the same id: a participant that acted on
/// the first answers as it did).
pub fn command(def: &Definition, saga: &Saga) -> Option<Command> {
    let pending = saga.pending.as_ref()?;
    let state = def.state(&saga.state)?;
    let spec = state.command.as_ref()?;
    let mut payload = Map::new();
    for field in &spec.fields {
        if let Some(value) = lookup(&saga.data, field) {
            payload.insert(field.clone(), value.clone());
        }
    }
    payload.insert("saga_id".into(), Value::String(saga.id.to_string()));
    if let Some(undone) = &state.compensates {
        let command_id = saga.commands.get(undone).map(|id| Value::String(id.to_string())).unwrap_or(Value::Null);
        payload.insert("compensates".into(), serde_json::json!({ "state": undone, "command_id": command_id }));
    }
    let timeout_ms = u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX);
    Some(Command {
        id: pending.command_id,
        saga_id: saga.id,
        subject: spec.subject.clone(),
        payload: Value::Object(payload),
        attempt: pending.attempt,
        timeout_ms,
    })
}

/// Follows a dotted path (`payment.payment_id`) through nested objects.
fn lookup<'a>(data: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = data.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Folds `events` onto `saga` and collects the commands they send, each
/// built (by [`command`], on `def`, the definition the saga runs on after
/// them) from the saga as the event that sends it leaves it.
pub(crate) fn decide(def: &Definition, mut saga: Saga, events: Vec<Event>) -> Decision {
    let mut commands = Vec::new();
    for event in &events {
        // Only a start event fails to fold onto a started saga, and `take`
        // and `deadline` never build one.
        if let Ok(next) = Saga::apply(Some(saga.clone()), event) {
            saga = next;
        }
        if event.change.sends() {
            commands.extend(command(def, &saga));
        }
    }
    Decision { events, commands, saga }
}

/// What an operator may do to a saga where it stands now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Allowed {
    /// Send the pending command again now.
    pub retry: bool,
    /// Where a cancel takes the saga: the state's `cancel` transition.
    pub cancel: Option<String>,
    /// Where a resume may send a saga that ended: the state's `repair` targets.
    pub resume: Vec<String>,
}

/// The operator actions [`step`] takes for `saga` on `def`, so that what
/// the API offers is what the machine does; `sagas/tests/allowed_actions.rs`
/// holds the two to each other for every state of the shipped definitions.
/// A saga on another definition, or in a state it does not name, may do
/// nothing. A repeated key is refused whatever this says: it depends on the
/// request, not on the saga.
pub fn allowed_actions(def: &Definition, saga: &Saga) -> Allowed {
    let Some(state) = def.state(&saga.state).filter(|_| saga.definition == def.id()) else { return Allowed::default() };
    if saga.terminal {
        return Allowed { resume: state.repair.clone(), ..Allowed::default() };
    }
    Allowed { retry: saga.pending.is_some() && state.command.is_some(), cancel: state.cancel.as_ref().map(|t| t.goto.clone()), resume: Vec::new() }
}
