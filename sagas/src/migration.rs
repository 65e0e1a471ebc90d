//! Moving running sagas onto a new version of their definition.
//!
//! The new version's file says how (`[migrate.N]`: each state of version N
//! mapped onto one of its own, and whether a command in flight is kept or
//! sent again). [`check`] holds a mapping against the old version before
//! anything moves; [`migrate`] is the pure step that moves one saga, as a
//! `definition_migrated` event folded like any other, so a migrated saga
//! replays to what the step produced. A migration carries its job's key
//! ([`crate::Act::key`]) into the saga, so a job resumed after a crash never
//! moves a saga twice.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::definition::{Definition, DefinitionErrors, Located, Problem};
use crate::machine::{self, Act, Action, Change, DEFINITION_MIGRATED, Decision, Event, Ignored, InFlight, Millis, Saga};

/// How sagas of one older version move onto this one: `[migrate.<from>]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Migration {
    pub from: u32,
    /// By old state name.
    pub states: BTreeMap<String, Mapped>,
    /// The table's header, where a state left out is reported.
    #[serde(skip)]
    pub(crate) at: Position,
}

/// Where one old state goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mapped {
    /// The state of the new version.
    pub to: String,
    pub command: InFlight,
    /// Whether the file said `command = …` (a plain `old = "new"` keeps
    /// the command in flight, and must be able to).
    #[serde(skip)]
    pub(crate) explicit: bool,
    #[serde(skip)]
    pub(crate) key: Position,
    #[serde(skip)]
    pub(crate) value: Position,
}

/// A place in the new version's file, kept so that [`check`], run later
/// with the old version at hand, reports `file:line:column` like parsing does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Position {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl Position {
    pub(crate) fn of(located: Located) -> Position {
        Position { file: located.file, line: located.line, column: located.column }
    }

    fn problem(&self, problem: Problem) -> Located {
        Located { file: self.file.clone(), line: self.line, column: self.column, problem }
    }
}

/// One mapping entry as written: `"new"` or `{ to = "new", command = "keep" }`.
/// Deserialized by hand: an untagged enum would lose the spans.
pub(crate) enum RawMapped {
    Same(String),
    Table { to: Spanned<String>, command: Option<Spanned<String>> },
}

impl<'de> Deserialize<'de> for RawMapped {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            to: Spanned<String>,
            command: Option<Spanned<String>>,
        }
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = RawMapped;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a state name, or a table { to = \"state\", command = \"keep\" | \"resend\" }")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawMapped, E> {
                Ok(RawMapped::Same(text.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMapped, A::Error> {
                let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawMapped::Table { to: table.to, command: table.command })
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

/// Checks the `[migrate.<old.version>]` mapping of `new` against `old`
/// (none declared: nothing to check). Every non-terminal state of `old`
/// must be mapped, onto a non-terminal state of `new`; a kept command
/// needs the new state to send the same subject and accept every reply
/// outcome the old state accepts. Problems are located in `new`'s file.
pub fn check(old: &Definition, new: &Definition) -> Result<(), DefinitionErrors> {
    let Some(migration) = new.migrations.get(&old.version).filter(|_| old.name == new.name) else { return Ok(()) };
    let mut problems = Vec::new();
    for (name, mapped) in &migration.states {
        let Some(from) = old.state(name) else {
            let known = old.order.clone();
            problems.push(mapped.key.problem(Problem::UnknownOldState { name: name.clone(), from: old.version, known }));
            continue;
        };
        if from.terminal {
            problems.push(mapped.key.problem(Problem::MapsTerminal { state: name.clone(), from: old.version }));
            continue;
        }
        // Parsing checked that the target exists.
        let Some(to) = new.state(&mapped.to) else { continue };
        if to.terminal {
            problems.push(mapped.value.problem(Problem::OntoTerminal { old: name.clone(), new: to.name.clone() }));
            continue;
        }
        if mapped.command == InFlight::Keep
            && let Some(why) = keep_differs(from, to)
        {
            problems.push(mapped.value.problem(Problem::KeepDiffers { old: name.clone(), new: to.name.clone(), why }));
        }
    }
    for name in &old.order {
        if old.state(name).is_some_and(|s| !s.terminal) && !migration.states.contains_key(name) {
            problems.push(migration.at.problem(Problem::Unmapped { state: name.clone(), from: old.version }));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    problems.sort_by_key(|p| (p.line, p.column));
    Err(DefinitionErrors(problems))
}

/// Why `to` cannot keep waiting for the reply to `from`'s command, if it cannot.
fn keep_differs(from: &crate::definition::State, to: &crate::definition::State) -> Option<String> {
    match (&from.command, &to.command) {
        (None, None) => None,
        (None, Some(c)) => Some(format!("sends `{}` and nothing is in flight in `{}`", c.subject, from.name)),
        (Some(c), None) => Some(format!("sends no command, so the reply to `{}` would have nowhere to go", c.subject)),
        (Some(a), Some(b)) if a.subject != b.subject => Some(format!("sends `{}`, not `{}`", b.subject, a.subject)),
        (Some(_), Some(_)) => {
            let missing: Vec<&str> = from.on_reply.keys().filter(|o| !to.on_reply.contains_key(*o)).map(String::as_str).collect();
            if missing.is_empty() { None } else { Some(format!("does not accept the reply outcome(s) {}", missing.join(", "))) }
        }
    }
}

/// Moves `saga` from `old` onto `new` as `new`'s mapping says, recording
/// `act` (its action must be [`Action::Migrate`]). Refused: a saga that
/// already took `act`'s key (`Repeated`) or runs on `new` already, one not
/// on `old`, a finished one, and one whose state the mapping leaves out.
/// The mapping is trusted to have passed [`check`].
pub fn migrate(old: &Definition, new: &Definition, saga: &Saga, act: &Act, now: Millis) -> Result<Decision, Ignored> {
    if let Some(key) = act.key.as_ref().filter(|k| saga.acts.contains(*k)) {
        return Err(Ignored::Repeated(key.clone()));
    }
    if saga.definition == new.id() {
        return Err(Ignored::AlreadyOn(new.id()));
    }
    if saga.definition != old.id() {
        return Err(Ignored::WrongDefinition { saga: saga.definition.clone(), given: old.id() });
    }
    if saga.terminal {
        return Err(Ignored::Finished(saga.state.clone()));
    }
    let no_mapping = || Ignored::NoMapping { name: new.name.clone(), from: old.version, to: new.version };
    let migration = new.migrations.get(&old.version).filter(|_| old.name == new.name).ok_or_else(no_mapping)?;
    let mapped = migration.states.get(&saga.state).ok_or_else(|| Ignored::NotMapped { state: saga.state.clone(), from: old.version, to: new.version })?;
    let target = new.state(&mapped.to).ok_or_else(|| Ignored::UnknownState(mapped.to.clone()))?;
    let pending = match mapped.command {
        InFlight::Keep => saga.pending.clone(),
        InFlight::Resend => machine::enter(new, saga.id, &target.name, saga.visits + 1, now),
    };
    let by = Act { action: Action::Migrate { from: old.version, to: new.version }, ..act.clone() };
    let change = Change::Migrated {
        from: old.id(),
        to: new.id(),
        from_state: saga.state.clone(),
        to_state: target.name.clone(),
        status: target.status.clone(),
        command: mapped.command,
        pending,
        by,
    };
    Ok(machine::decide(new, saga.clone(), vec![Event { event_type: DEFINITION_MIGRATED.into(), change }]))
}

/// Parses the `[migrate.N]` tables of a file of version `version`: `N` must
/// be an older version, targets states of this file, `command` keep or resend.
pub(crate) fn parse(
    raw: &BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<RawMapped>>>,
    version: u32,
    states: &std::collections::BTreeSet<String>,
    at: &dyn Fn(std::ops::Range<usize>, Problem) -> Located,
    problems: &mut Vec<Located>,
) -> BTreeMap<u32, Migration> {
    let position = |span: std::ops::Range<usize>| Position::of(at(span, Problem::Syntax(String::new())));
    let mut migrations = BTreeMap::new();
    for (key, entries) in raw {
        let from = match key.get_ref().parse::<u32>() {
            Ok(from) if from >= 1 && from < version => from,
            _ => {
                let why = format!("`[migrate.{}]`: name an older version of this saga, from 1 to {}", key.get_ref(), version.saturating_sub(1));
                problems.push(at(key.span(), Problem::OutOfRange(why)));
                continue;
            }
        };
        let mut mapped = BTreeMap::new();
        for (old, entry) in entries {
            let (to, to_span, command) = match entry.get_ref() {
                RawMapped::Same(to) => (to.clone(), entry.span(), None),
                RawMapped::Table { to, command } => (to.get_ref().clone(), to.span(), command.as_ref()),
            };
            if !states.contains(&to) {
                let known = states.iter().cloned().collect();
                problems.push(at(to_span.clone(), Problem::UnknownState { name: to.clone(), known }));
            }
            let in_flight = match command.map(|c| c.get_ref().as_str()) {
                None | Some("keep") => InFlight::Keep,
                Some("resend") => InFlight::Resend,
                Some(other) => {
                    problems.push(at(command.map_or(to_span.clone(), |c| c.span()), Problem::BadInFlight(other.to_string())));
                    InFlight::Keep
                }
            };
            let value = command.map_or(to_span.clone(), |c| c.span());
            let entry = Mapped { to, command: in_flight, explicit: command.is_some(), key: position(old.span()), value: position(value) };
            mapped.insert(old.get_ref().clone(), entry);
        }
        migrations.insert(from, Migration { from, states: mapped, at: position(key.span()) });
    }
    migrations
}
