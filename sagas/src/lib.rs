//! eso's saga language and the pure state machine that runs it.
//!
//! A saga is data: a TOML file ([`definition::parse`]) listing states, the
//! command each state sends, and the transitions its replies, timeouts and
//! events take. [`machine::step`] decides what an input does to a saga;
//! the runtime (in `orchestrator`) only loads, steps, appends and sends.
//! See `sagas/README.md` for the file format.

pub mod definition;
pub mod diagram;
pub mod graph;
pub mod inputs;
pub mod invariant;
pub mod machine;
pub mod migration;
pub mod registry;
pub mod saga;
mod validate;
pub mod verify;

pub use definition::{Definition, DefinitionErrors, DefinitionId, Located, Outcome, Problem, parse};
pub use inputs::{InputKind, InputProblem, InputSpec};
pub use machine::{
    Act, Action, Allowed, Cause, Change, Command, Decision, Event, FoldError, Ignored, InFlight, Input, Millis, Pending, Phase, Saga, allowed_actions, step,
};
pub use registry::{Registry, RegistryError};
