//! eso's test kit: the servers and processes the integration tests
//! (`eso/tests/`) and the benchmark (`eso-bench`) run against, in one copy.
//!
//! - [`free_port`], [`wait_for_port`]: ports on 127.0.0.1.
//! - [`NatsServer`]: a `nats-server -js` of the caller's own on a free port.
//! - [`Database`]: a fresh PostgreSQL database on the server at an admin URL
//!   ([`admin_url`]: `DATABASE_URL`, default the local server).
//! - [`PrivatePostgres`]: a whole PostgreSQL server of a test's own.
//! - [`Process`]: a child process with its environment, waited for on its
//!   port, stopped (SIGTERM, then SIGKILL), killed, restarted; [`signal`].
//!
//! When a server cannot be reached or started, the error says how to
//! install or start it: a test fails with that message, never passes
//! silently.
//!
//! Never a dependency of a production crate: only `eso`'s dev-dependencies
//! and `eso-bench` use it.

mod nats;
mod ports;
mod postgres;
mod process;

pub use nats::{NatsServer, find_nats_server};
pub use nix::sys::signal::Signal;
pub use ports::{free_port, wait_for_port};
pub use postgres::{ADMIN_URL_DEFAULT, Database, PrivatePostgres, admin_connection, admin_url, database_url};
pub use process::{Output, Process, ProcessSpec, signal};
