//! Test harness: real Postgres (a fresh database per test), real NATS (a
//! `nats-server` per test, on a free port, so tests cannot answer each
//! other's commands), the orchestrator in-process or as a child process.
//! The servers and processes come from the test kit (`testkit`, shared
//! with eso-bench); this module gives them the tests' panicking API.
//!
//! A test that needs a server it cannot reach fails and says how to start
//! it; it never passes silently.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use orchestrator::app::Running;
use orchestrator::config::Config;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

mod app;
mod checks;
mod jobs;
mod migrations;
mod process;
mod servers;

pub use app::*;
pub use checks::*;
pub use jobs::*;
pub use migrations::*;
pub use process::*;
pub use servers::*;
