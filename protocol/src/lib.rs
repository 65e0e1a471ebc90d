//! What travels on `eso.cmd.*` subjects: a command in the request body and
//! an outcome in the reply. Trace context, command id and saga id also
//! travel as headers, for tools that read headers only.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

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
    pub fn field(&self, name: &str) -> Result<&str, crate::Error> {
        self.payload
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| crate::Error::BadCommand(format!("payload field `{name}` is missing or not a string")))
    }
}
