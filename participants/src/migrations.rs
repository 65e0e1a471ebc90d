//! The participants' tables (`payments`, `deliveries`, `trip_bookings`), migrated from
//! `migrations/participants/` wherever a participant keeps its records:
//! its own database, its own SQLite file in embedded mode, or the store's
//! database when the orchestrator embeds it on Postgres.
//!
//! The migrations are tracked in a table of their own, so they never meet
//! the orchestrator's in `_sqlx_migrations`: databases created before the
//! split have the participants' tables recorded there as version 2 of the
//! store's schema, and `CREATE TABLE IF NOT EXISTS` lets these migrations
//! run over those tables unchanged.

use db::Backend;
use sqlx::AnyPool;
use sqlx::migrate::Migrator;

/// Where the participants' migrations are recorded.
pub const TABLE: &str = "_eso_participants_migrations";

/// The participants' migrator for `backend`.
pub fn migrator(backend: Backend) -> Migrator {
    let mut migrator = match backend {
        Backend::Postgres => sqlx::migrate!("../migrations/participants/postgres"),
        Backend::Sqlite => sqlx::migrate!("../migrations/participants/sqlite"),
    };
    // Not `_sqlx_migrations`: that one is the store's on a shared database.
    migrator.dangerous_set_table_name(TABLE);
    migrator
}

/// Creates or updates the participants' tables on `pool`.
pub async fn run(pool: &AnyPool, backend: Backend) -> anyhow::Result<()> {
    db::migrate(pool, &migrator(backend)).await
}
