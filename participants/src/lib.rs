//! The services that answer eso's commands: payment and delivery.
//!
//! Each participant is idempotent by command id: it records its answer in
//! its own table before replying, and answers a repeated command id with
//! the answer it recorded first, so a retried command never charges twice.
//! The same participant runs in-process (embedded mode) or as its own
//! binary in a NATS queue group ([`serve`]).

pub mod db;
pub mod delivery;
pub mod payment;
pub mod protocol;
pub mod record;
pub mod serve;

use futures::future::BoxFuture;

pub use protocol::{CommandMessage, ReplyMessage};

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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no handler for subject {0}")]
    UnknownSubject(String),
    #[error("bad command: {0}")]
    BadCommand(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("recording the answer failed: {0}")]
    Record(String),
    #[error("the participant is shutting down")]
    Stopped,
}

/// Microseconds since the Unix epoch: the unit of every `*_at` column.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
