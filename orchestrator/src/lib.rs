//! eso, the event-sourced saga orchestrator: HTTP API, saga runtime, event
//! store, outbox relay. The decisions live in the `sagas` crate; this crate
//! is the imperative shell around them.

pub mod admission;
pub mod api;
pub mod app;
pub mod bus;
pub mod clock;
pub mod config;
pub mod definitions;
pub mod domain;
pub mod finishes;
pub mod jobs;
pub mod migrations;
pub mod orders;
pub mod rebuild;
pub mod retention;
pub mod runtime;
mod saga_cache;
pub mod serve;
pub mod store;
