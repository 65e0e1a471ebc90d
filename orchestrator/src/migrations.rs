//! The event store's schema, from `migrations/orchestrator/`.
//!
//! Databases made before the participants had migrations of their own
//! record the participants' tables here as version 2 (`0002_participants`).
//! This migrator no longer has that version and ignores it; its own next
//! migration is 0003, so it never meets that entry (migrations/README.md).

use db::Backend;
use sqlx::AnyPool;
use sqlx::migrate::Migrator;

/// The store's migrator for `backend`.
pub fn migrator(backend: Backend) -> Migrator {
    let mut migrator = match backend {
        Backend::Postgres => sqlx::migrate!("../migrations/orchestrator/postgres"),
        Backend::Sqlite => sqlx::migrate!("../migrations/orchestrator/sqlite"),
    };
    migrator.set_ignore_missing(true);
    migrator
}

/// Creates or updates the event store's tables on `pool`.
pub async fn run(pool: &AnyPool, backend: Backend) -> anyhow::Result<()> {
    db::migrate(pool, &migrator(backend)).await
}
