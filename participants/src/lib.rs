//! The services that answer eso's commands: payment and delivery for the
//! order saga, and the trip agency for the trip saga.
//!
//! Each participant is idempotent by command id: it records its answer in
//! its own table before replying, and answers a repeated command id with
//! the answer it recorded first, so a retried command never charges twice.
//! The same participant runs in-process (embedded mode, [`embedded`]) or as
//! its own binary in a NATS queue group ([`serve`]). They speak the
//! `protocol` crate and keep their tables in a database of their own
//! choosing ([`migrations`]); they know nothing of the orchestrator.

pub mod delivery;
pub mod embedded;
pub mod migrations;
pub mod payment;
pub mod record;
pub mod serve;
pub mod trip;

pub use protocol::{CommandMessage, Error, Participant, ReplyMessage};
