//! eso's wire protocol, the Rust mirror of `docs/protocol.md`: what travels
//! on the command subjects the definitions name (a command in the request body, an outcome in the
//! reply), the [`Participant`] trait a service implements to answer them,
//! and a NATS queue-group responder that runs one ([`serve`]).
//!
//! Both the orchestrator and the participants depend on this crate and
//! neither on the other, so it holds no database and no web framework:
//! a participant in any language needs only `docs/protocol.md`.
//!
//! Trace context, command id and saga id also travel as headers, for tools
//! that read headers only.

pub mod serve;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use serve::{answer, serve_nats};

pub const HEADER_COMMAND_ID: &str = "Eso-Command-Id";
pub const HEADER_SAGA_ID: &str = "Eso-Saga-Id";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandMessage {
    /// The same on every retry of one step.
    pub command_id: Uuid,
    pub saga_id: Uuid,
    pub attempt: u32,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyMessage {
    /// The outcome the saga definition branches on (`confirmed`, `declined`, ...).
    pub outcome: String,
    #[serde(default)]
    pub data: Value,
}

/// Sent instead of a reply when a participant could not decide (e.g. its
/// database is down); the orchestrator treats it as no answer and retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

impl CommandMessage {
    /// A string field of the payload, or a clear error naming it.
    pub fn field(&self, name: &str) -> Result<&str, Error> {
        self.payload.get(name).and_then(Value::as_str).ok_or_else(|| Error::BadCommand(format!("payload field `{name}` is missing or not a string")))
    }
}

/// A service that answers commands on some subjects.
pub trait Participant: Send + Sync + 'static {
    /// A name for logs, spans and the queue group.
    fn name(&self) -> &'static str;
    /// The subjects it answers.
    fn subjects(&self) -> &'static [&'static str];
    /// Decides and records the answer to `command`. An error means nothing
    /// was recorded and no answer should be sent: the orchestrator retries.
    fn handle<'a>(&'a self, subject: &'a str, command: CommandMessage) -> BoxFuture<'a, Result<ReplyMessage, Error>>;
}

/// Why a participant gave no answer. Every variant travels as an
/// [`ErrorReply`] and means the same to the orchestrator (retry later); the
/// kinds are for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no handler for subject {0}")]
    UnknownSubject(String),
    #[error("bad command: {0}")]
    BadCommand(String),
    /// The participant's own trouble (its database, its shutdown). Boxed, so
    /// this crate names no participant's storage.
    #[error("{0}")]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// A [`Error::Failed`] from any error, or from a message.
    pub fn failed(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Failed(error.into())
    }
}
