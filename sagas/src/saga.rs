//! A saga as its events make it: the state, the events that change it, and
//! the fold ([`Saga::apply`]) that rebuilds a saga from its stream. The
//! step in `machine.rs` produces events and uses the same fold for the new
//! state, so a saga recovered from the store is the saga the step produced.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::definition::DefinitionId;

/// Milliseconds since the Unix epoch; the only notion of time the machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub fn after(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }
}

/// A saga instance, as folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub id: Uuid,
    pub definition: DefinitionId,
    /// The data the saga started with, plus each reply's data under the
    /// name of the state that received it.
    pub data: Map<String, Value>,
    pub state: String,
    pub status: String,
    pub terminal: bool,
    /// The command the current state is waiting on, if any.
    pub pending: Option<Pending>,
    /// Last command id sent by each state, so compensations can name what they undo.
    pub commands: BTreeMap<String, Uuid>,
    /// How many times the saga has entered a state; names command ids.
    pub visits: u32,
    /// Number of events in the saga's stream.
    pub version: u64,
    /// Keys of the operator actions taken, so a repeated one is not taken again.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub acts: std::collections::BTreeSet<String>,
}

/// A command in flight and the deadline that moves it on if no reply comes.
///
/// Only what the fold cannot recompute: the command's id (a repair sends
/// an old one again), its attempt, phase and deadline. Its subject,
/// payload and timeout follow from the definition and the saga's data
/// (`machine::command`), so they are not written into every event and
/// snapshot that enters a state; until issue 18 they were, the payload
/// repeating the saga's inputs. Stored sagas of that time still read:
/// their `command` object gives its id (and the rest is recomputed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredPending")]
pub struct Pending {
    pub command_id: Uuid,
    pub attempt: u32,
    pub phase: Phase,
    pub deadline: Millis,
}

/// A [`Pending`] as written now or as written before issue 18.
#[derive(Deserialize)]
struct StoredPending {
    #[serde(default)]
    command_id: Option<Uuid>,
    #[serde(default)]
    command: Option<CommandId>,
    attempt: u32,
    phase: Phase,
    deadline: Millis,
}

#[derive(Deserialize)]
struct CommandId {
    id: Uuid,
}

impl TryFrom<StoredPending> for Pending {
    type Error = &'static str;

    fn try_from(p: StoredPending) -> Result<Pending, Self::Error> {
        let command_id = p.command_id.or(p.command.map(|c| c.id)).ok_or("a pending command without `command_id`")?;
        Ok(Pending { command_id, attempt: p.attempt, phase: p.phase, deadline: p.deadline })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Sent; waiting for a reply until the deadline.
    AwaitingReply,
    /// Timed out; the next attempt is sent at the deadline.
    BackingOff,
}

/// A command to send to a participant. The id is the same on every retry, so
/// participants can answer a repeat with what they answered first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: Uuid,
    pub saga_id: Uuid,
    pub subject: String,
    pub payload: Value,
    pub attempt: u32,
    /// How long this attempt waits for a reply.
    pub timeout_ms: u64,
}

/// A recorded event: its type name as users see it, and what it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_type: String,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Started {
        saga_id: Uuid,
        definition: DefinitionId,
        data: Map<String, Value>,
        state: String,
        status: String,
        pending: Option<Pending>,
    },
    /// An event of a transition that precedes the one that moves the saga
    /// (e.g. `payment_confirmed` before `order_confirmed`).
    Noted {
        state: String,
        /// Written before issue 18; the step's `Moved`, the event after
        /// this one, carries the same cause, so it is no longer repeated.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<Cause>,
    },
    Moved {
        from: String,
        to: String,
        status: String,
        terminal: bool,
        cause: Cause,
        pending: Option<Pending>,
    },
    AttemptTimedOut {
        state: String,
        attempt: u32,
        pending: Pending,
    },
    Retried {
        state: String,
        attempt: u32,
        pending: Pending,
        /// The operator who sent it again; none for the backoff's retry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<Act>,
    },
    /// The saga moved onto another version of its definition
    /// (`crate::migration`): from here on it runs on `to`.
    Migrated {
        from: DefinitionId,
        to: DefinitionId,
        from_state: String,
        to_state: String,
        status: String,
        /// Whether the command in flight was kept or the new state's sent.
        command: InFlight,
        pending: Option<Pending>,
        by: Act,
    },
}

/// What a migration does with a command in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InFlight {
    /// Keep waiting for the reply to the command already sent.
    Keep,
    /// Send the new state's command, under a new command id.
    Resend,
}

/// Why a transition was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Cause {
    Reply {
        command_id: Uuid,
        outcome: String,
        data: Value,
    },
    Timeout {
        command_id: Uuid,
        attempts: u32,
    },
    Event {
        name: String,
        data: Value,
    },
    /// An operator acted (cancel, resume); the event is the audit record.
    Operator(Act),
}

/// An operator's action on one saga, as recorded in its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    #[serde(flatten)]
    pub action: Action,
    /// Why, in the operator's words.
    pub reason: String,
    /// Who acted: the name of the token the request carried.
    pub operator: String,
    /// Identifies the request (an `Idempotency-Key`, a bulk job): the
    /// saga takes an action with a given key once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What an operator can do to a saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Send the pending command again now, with the same command id.
    Retry,
    /// Take the state's `cancel` transition.
    Cancel,
    /// Send a saga that ended in failure back into one of its state's `repair` targets.
    Resume { to: String },
    /// Move the saga from version `from` of its definition onto version
    /// `to`, as `to`'s `[migrate.<from>]` mapping says (`crate::migration`).
    Migrate { from: u32, to: u32 },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Cancel => "cancel",
            Action::Resume { .. } => "resume",
            Action::Migrate { .. } => "migrate",
        }
    }
}

/// A stream that cannot be folded into a saga.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("the stream does not begin with a start event")]
    NotStarted,
    #[error("the stream starts twice")]
    StartedTwice,
}

impl Saga {
    pub fn deadline(&self) -> Option<Millis> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// The saga a start event creates.
    pub(crate) fn begin(saga_id: Uuid, definition: &DefinitionId, data: &Map<String, Value>, state: &str, status: &str, pending: &Option<Pending>) -> Saga {
        let commands = pending.iter().map(|p| (state.to_string(), p.command_id)).collect();
        Saga {
            id: saga_id,
            definition: definition.clone(),
            data: data.clone(),
            state: state.to_string(),
            status: status.to_string(),
            terminal: false,
            pending: pending.clone(),
            commands,
            visits: 1,
            version: 1,
            acts: Default::default(),
        }
    }

    /// Applies one recorded event. Used both by [`step`] and to rebuild a
    /// saga from its stream.
    pub fn apply(saga: Option<Saga>, event: &Event) -> Result<Saga, FoldError> {
        let mut saga = match (saga, &event.change) {
            (None, Change::Started { saga_id, definition, data, state, status, pending }) => {
                return Ok(Saga::begin(*saga_id, definition, data, state, status, pending));
            }
            (None, _) => return Err(FoldError::NotStarted),
            (Some(_), Change::Started { .. }) => return Err(FoldError::StartedTwice),
            (Some(saga), _) => saga,
        };
        if let Some(key) = event.change.act().and_then(|a| a.key.as_ref()) {
            saga.acts.insert(key.clone());
        }
        match &event.change {
            Change::Started { .. } | Change::Noted { .. } => {}
            Change::Moved { from, to, status, terminal, cause, pending } => {
                if let Cause::Reply { data: reply @ Value::Object(fields), .. } = cause
                    && !fields.is_empty()
                {
                    saga.data.insert(from.clone(), reply.clone());
                }
                saga.state = to.clone();
                saga.status = status.clone();
                saga.terminal = *terminal;
                saga.pending = pending.clone();
                saga.visits += 1;
                if let Some(p) = pending {
                    saga.commands.insert(to.clone(), p.command_id);
                }
            }
            Change::AttemptTimedOut { pending, .. } | Change::Retried { pending, .. } => {
                saga.pending = Some(pending.clone());
            }
            Change::Migrated { to, to_state, status, pending, .. } => {
                saga.definition = to.clone();
                saga.state = to_state.clone();
                saga.status = status.clone();
                saga.terminal = false;
                saga.pending = pending.clone();
                // A new entry: a resent command gets an id of its own.
                saga.visits += 1;
                if let Some(p) = pending {
                    saga.commands.insert(to_state.clone(), p.command_id);
                }
            }
        }
        saga.version += 1;
        Ok(saga)
    }

    /// Rebuilds a saga from its stream; `None` for an empty stream.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<Option<Saga>, FoldError> {
        events.into_iter().try_fold(None, |saga, e| Saga::apply(saga, e).map(Some))
    }
}

impl Change {
    /// The operator action this change records, if an operator caused it.
    pub fn act(&self) -> Option<&Act> {
        match self {
            Change::Noted { cause: Some(Cause::Operator(act)), .. }
            | Change::Moved { cause: Cause::Operator(act), .. }
            | Change::Retried { by: Some(act), .. }
            | Change::Migrated { by: act, .. } => Some(act),
            _ => None,
        }
    }

    /// Whether this change puts its pending command on the wire (a start
    /// or a move into a state that sends one, a retry, a migration that
    /// resends): `machine::decide` builds the command from the saga after it.
    pub fn sends(&self) -> bool {
        matches!(
            self,
            Change::Started { pending: Some(_), .. }
                | Change::Moved { pending: Some(_), .. }
                | Change::Retried { .. }
                | Change::Migrated { command: InFlight::Resend, pending: Some(_), .. }
        )
    }
}
