//! The saga definition language: a TOML file users edit, parsed into a
//! [`Definition`] that only exists once it is valid.
//!
//! Parsing keeps every value's byte span so that each problem can be
//! reported as `file:line:column: reason`, and all problems of a file are
//! reported at once rather than one per edit-run cycle.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::inputs::{self, InputSpec, RawInputs};
use crate::validate;

/// Event types the machine records on its own; user transitions may not reuse them.
pub const RESERVED_EVENTS: [&str; 5] = [
    crate::machine::ATTEMPT_TIMED_OUT,
    crate::machine::RETRIED,
    crate::machine::OPERATOR_RETRIED,
    crate::machine::OPERATOR_RESUMED,
    crate::machine::DEFINITION_MIGRATED,
];

/// Longest timeout or backoff a step may ask for: a typo like `2h` instead of
/// `2s` should be caught, not leave sagas hanging for a day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Most retries a step may ask for.
pub const MAX_RETRIES: u32 = 100;

/// A validated saga definition. Construct it with [`parse`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    pub name: String,
    pub version: u32,
    pub description: String,
    /// The state a new saga enters.
    pub initial: String,
    /// The event type recorded when a saga starts (e.g. `order_created`).
    pub started: String,
    /// The data a saga starts with, in file order (empty: not declared,
    /// not checked).
    pub inputs: Vec<InputSpec>,
    pub states: BTreeMap<String, State>,
    /// How sagas of older versions move onto this one (`[migrate.N]`), by
    /// the older version; checked against that version by
    /// [`crate::migration::check`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub migrations: BTreeMap<u32, crate::migration::Migration>,
    /// The `[[invariant]]` tables, in file order; checked by [`crate::verify`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invariants: Vec<crate::invariant::Invariant>,
    /// State names in the order the file lists them, for diagrams.
    #[serde(skip)]
    pub order: Vec<String>,
    #[serde(skip)]
    pub(crate) hash: String,
}

/// One state of a saga.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct State {
    pub name: String,
    /// What the saga's subject (the order) shows while in this state.
    pub status: String,
    pub terminal: bool,
    /// Whether ending here is a success or a failure (terminal states only;
    /// when absent, [`crate::verify::is_success`] decides by `status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Sent on entry; its replies, or its final timeout, move the saga on.
    pub command: Option<CommandSpec>,
    /// The earlier state whose effect this state's command undoes.
    pub compensates: Option<String>,
    /// Transitions by reply outcome (`confirmed`, `declined`, ...).
    pub on_reply: BTreeMap<String, Transition>,
    /// Taken when the command timed out after its last retry.
    pub on_timeout: Option<Transition>,
    /// Transitions on events sent to the saga from outside (signals).
    pub on_event: BTreeMap<String, Transition>,
    /// What an operator's cancel does in this state: a compensation path
    /// (`POST /sagas/{id}/actions/cancel`); none means cancel is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel: Option<Transition>,
    /// The states an operator may send a saga that ended here back to
    /// (`POST /sagas/{id}/actions/resume`); failed terminal states only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repair: Vec<String>,
}

/// How a saga that ends in a terminal state ended, as the definition says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    /// The outcome a definition names (`"success"`, `"failure"`), if it is one.
    pub fn from_name(name: &str) -> Option<Outcome> {
        match name {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            _ => None,
        }
    }
}

/// The command a state sends on entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandSpec {
    /// NATS subject, e.g. `eso.cmd.payment.process`.
    pub subject: String,
    /// Saga data fields copied into the payload; dotted paths reach into
    /// earlier replies (`payment.payment_id`).
    pub fields: Vec<String>,
    /// How long one attempt waits for a reply.
    pub timeout: Duration,
    /// Attempts after the first before `on_timeout` is taken.
    pub retries: u32,
    /// Wait before the first retry; doubled for each later one.
    pub backoff: Duration,
}

/// A move to another state, recording events on the way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// Event types recorded, in order; the last one carries the state change.
    pub record: Vec<String>,
    pub goto: String,
}

/// Identifies the exact definition a saga runs on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct DefinitionId {
    pub name: String,
    pub version: u32,
    pub hash: String,
}

impl fmt::Display for DefinitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{} ({})", self.name, self.version, &self.hash[..self.hash.len().min(12)])
    }
}

impl Definition {
    /// Content hash of the file's data (its TOML values with keys sorted):
    /// comments, whitespace and key order do not change it; any change to a
    /// value does. It depends only on the file, never on how this crate
    /// represents a definition, so an upgrade of eso cannot change the hash
    /// a running saga recorded.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn id(&self) -> DefinitionId {
        DefinitionId { name: self.name.clone(), version: self.version, hash: self.hash.clone() }
    }

    pub fn state(&self, name: &str) -> Option<&State> {
        self.states.get(name)
    }

    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Checks a saga's start data against the declared inputs, before
    /// starting it: `Err` lists, per field name, every problem (`"is
    /// required"`, `"must be an integer"`, `"is not an input of saga
    /// `trip`"`). `null` counts as absent. A definition that declares no
    /// inputs accepts any data.
    pub fn check_inputs(&self, data: &Map<String, Value>) -> Result<(), BTreeMap<String, Vec<String>>> {
        let problems = inputs::problems(&self.name, &self.inputs, data);
        if problems.is_empty() { Ok(()) } else { Err(inputs::grouped(problems)) }
    }
}

/// The hash of a definition file's data; see [`Definition::hash`].
fn content_hash(source: &str) -> String {
    let canonical = toml::from_str::<toml::Table>(source).ok().and_then(|table| serde_json::to_vec(&table).ok()).unwrap_or_default();
    hex(&Sha256::digest(&canonical))
}

impl CommandSpec {
    /// Wait before attempt `attempt + 1`: `backoff`, doubling per retry, capped at [`MAX_DURATION`].
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff.checked_mul(factor).unwrap_or(MAX_DURATION).min(MAX_DURATION)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A problem found in a definition file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {problem}")]
pub struct Located {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub problem: Problem,
}

/// Everything wrong with one definition file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionErrors(pub Vec<Located>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Why a definition is refused. Callers (and tests) can match on these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{0}")]
    Syntax(String),
    #[error("duplicate name: {0}")]
    Duplicate(String),
    #[error("missing `initial`: say which state a new saga starts in")]
    MissingInitial,
    #[error("the initial state `{0}` is terminal: a saga would end before it began")]
    TerminalInitial(String),
    #[error("unknown state `{name}`{}", hint(.known))]
    UnknownState { name: String, known: Vec<String> },
    #[error("state `{0}` is unreachable from the initial state")]
    Unreachable(String),
    #[error("state `{0}` is not terminal but has no way out (add a command with transitions, `on_event`, or `terminal = true`)")]
    NoWayOut(String),
    #[error("state `{0}` sends a command but has no `on_timeout` transition: a command that never answers would hang the saga")]
    NoTimeoutPath(String),
    #[error("no terminal state can be reached from state `{0}`: sagas there could never finish")]
    NoTerminalReachable(String),
    #[error("bad duration `{value}`: {reason} (write e.g. `250ms`, `2s`, `1m`)")]
    BadDuration { value: String, reason: String },
    #[error("terminal state `{0}` must not send a command or have transitions")]
    TerminalWithExits(String),
    #[error("state `{0}` has reply transitions (`on`) or `on_timeout` but sends no command")]
    RepliesWithoutCommand(String),
    #[error("state `{0}` needs a `status` (what the order shows while in it)")]
    MissingStatus(String),
    #[error("`compensates = \"{target}\"` in state `{state}`: `{target}` sends no command, so there is nothing to undo")]
    CompensatesNothing { state: String, target: String },
    #[error("state `{0}` compensates itself: name the earlier state whose command it undoes")]
    CompensatesItself(String),
    #[error("bad name `{0}`: use lowercase letters, digits and `_`, starting with a letter")]
    BadName(String),
    #[error("bad subject `{0}`: a NATS subject is dot-separated tokens without spaces or wildcards")]
    BadSubject(String),
    #[error("event type `{0}` is reserved for the machine's own events")]
    ReservedEvent(String),
    #[error("a transition must record at least one event")]
    NothingRecorded,
    #[error("{0}")]
    OutOfRange(String),
    #[error("state `{0}` has an `outcome` but is not terminal: only a terminal state ends a saga in success or failure")]
    OutcomeNotTerminal(String),
    #[error("bad outcome `{0}`: write `outcome = \"success\"` or `outcome = \"failure\"`")]
    BadOutcome(String),
    #[error("field `{field}` is neither an input nor a state's reply (inputs: {}; states: {})", .inputs.join(", "), .states.join(", "))]
    UnknownField { field: String, inputs: Vec<String>, states: Vec<String> },
    #[error("state `{0}` has the name of an input: its reply would replace that input")]
    StateShadowsInput(String),
    #[error("unknown type `{kind}` for input `{input}` (types are: {})", crate::InputKind::ALL.map(|k| k.name()).join(", "))]
    UnknownInputType { input: String, kind: String },
    #[error("state `{0}` has `repair` but is not terminal: only a saga that ended can be resumed (a running one can be retried or cancelled)")]
    RepairNotTerminal(String),
    #[error("state `{0}` ends the saga in success, so there is nothing to repair: `repair` belongs on a failed terminal state")]
    RepairOfSuccess(String),
    #[error("`repair` target `{0}` is terminal: a resumed saga must have something left to do")]
    RepairTargetTerminal(String),
    #[error("bad `command = \"{0}\"`: write `\"keep\"` (wait for the reply in flight) or `\"resend\"` (send the new state's command)")]
    BadInFlight(String),
    #[error("state `{state}` of version {from} is not mapped: its running sagas would have nowhere to go (add `{state} = \"<state of this version>\"`)")]
    Unmapped { state: String, from: u32 },
    #[error("version {from} has no state `{name}` (its states are: {})", .known.join(", "))]
    UnknownOldState { name: String, from: u32, known: Vec<String> },
    #[error("state `{state}` of version {from} is terminal: finished sagas are never migrated; remove it from the mapping")]
    MapsTerminal { state: String, from: u32 },
    #[error("`{old}` is mapped onto terminal state `{new}`: a migration must not end a running saga")]
    OntoTerminal { old: String, new: String },
    #[error("`after = \"{after}\"`: {why}")]
    BadTrigger { after: String, why: String },
    #[error("the invariant after `{0}` needs `ends_in` or `unless_through`: with neither, no saga it applies to could ever end")]
    EmptyInvariant(String),
    #[error("{}", misplaced(.field, .state, *.terminal))]
    InvariantMisplaced { field: String, state: String, terminal: bool },
    #[error("`{old}` keeps its command in flight, but `{new}` {why}; say `command = \"resend\"` to send `{new}`'s command instead")]
    KeepDiffers { old: String, new: String, why: String },
}

fn misplaced(field: &str, state: &str, terminal: bool) -> String {
    if terminal {
        format!("`{field}` lists `{state}`, a terminal state: a saga that enters it has ended; list it in `ends_in`")
    } else {
        format!("`{field}` lists `{state}`, which is not terminal: `ends_in` names where a saga may end; a state to pass through goes in `unless_through`")
    }
}

fn hint(known: &[String]) -> String {
    if known.is_empty() { String::new() } else { format!(" (states are: {})", known.join(", ")) }
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefinition {
    pub name: Spanned<String>,
    pub version: Spanned<i64>,
    #[serde(default)]
    pub description: String,
    pub initial: Option<Spanned<String>>,
    pub started: Spanned<String>,
    pub inputs: Option<RawInputs>,
    pub states: Spanned<BTreeMap<Spanned<String>, Spanned<RawState>>>,
    #[serde(default)]
    pub migrate: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<crate::migration::RawMapped>>>,
    // Absent from a file, it adds nothing to the TOML data the hash is
    // taken over, so files written before invariants keep their hash.
    #[serde(default)]
    pub invariant: Vec<Spanned<crate::invariant::RawInvariant>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawState {
    pub status: Option<Spanned<String>>,
    #[serde(default)]
    pub terminal: bool,
    pub outcome: Option<Spanned<String>>,
    pub command: Option<Spanned<RawCommand>>,
    pub compensates: Option<Spanned<String>>,
    #[serde(default)]
    pub on: BTreeMap<Spanned<String>, Spanned<RawTransition>>,
    pub on_timeout: Option<Spanned<RawTransition>>,
    #[serde(default)]
    pub on_event: BTreeMap<Spanned<String>, Spanned<RawTransition>>,
    pub cancel: Option<Spanned<RawTransition>>,
    #[serde(default)]
    pub repair: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCommand {
    pub subject: Spanned<String>,
    #[serde(default)]
    pub fields: Vec<Spanned<String>>,
    pub timeout: Spanned<String>,
    #[serde(default)]
    pub retries: Option<Spanned<i64>>,
    pub backoff: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTransition {
    pub record: Vec<Spanned<String>>,
    pub goto: Spanned<String>,
}

/// Parses and validates a definition. `file` names the source in error
/// messages; `source` is the file's text.
pub fn parse(file: &str, source: &str) -> Result<Definition, DefinitionErrors> {
    let at = |span: std::ops::Range<usize>, problem: Problem| locate(file, source, span.start, problem);
    let raw: RawDefinition = toml::from_str(source).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        let problem = if message.contains("duplicate key") {
            Problem::Duplicate(message)
        } else if message.contains("missing field `initial`") {
            Problem::MissingInitial
        } else {
            Problem::Syntax(message)
        };
        DefinitionErrors(vec![at(span, problem)])
    })?;
    validate::validate(raw, content_hash(source), &at)
}

/// Turns a byte offset into a 1-based line and column (in characters).
fn locate(file: &str, source: &str, offset: usize, problem: Problem) -> Located {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Located { file: file.to_string(), line, column, problem }
}

/// Parses `250ms`, `2s`, `1m30s`; refuses zero and anything over [`MAX_DURATION`].
pub(crate) fn parse_duration(text: &str) -> Result<Duration, Problem> {
    let bad = |reason: &str| Problem::BadDuration { value: text.to_string(), reason: reason.to_string() };
    let d = humantime::parse_duration(text.trim()).map_err(|e| bad(&e.to_string()))?;
    if d.is_zero() {
        return Err(bad("must be longer than zero"));
    }
    if d > MAX_DURATION {
        return Err(bad("longer than 24h"));
    }
    Ok(d)
}
