//! Databases as an eso from before the per-owner migrations left them.

use super::*;

/// Migrates `pool` with the one migrator eso had before the split: the
/// store's `0001_event_store` and the participants' tables as
/// `0002_participants`, both in `_sqlx_migrations`, with the checksums
/// those files had.
pub async fn migrate_the_old_way(pool: &sqlx::AnyPool, backend: db::Backend) {
    let folder = match backend {
        db::Backend::Postgres => "postgres",
        db::Backend::Sqlite => "sqlite",
    };
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let old = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let copy = |from: PathBuf, name: &str| {
        std::fs::copy(&from, old.path().join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(manifest.join("../migrations/orchestrator").join(folder).join("0001_event_store.sql"), "0001_event_store.sql");
    // The old file, kept as it was (the same SQL for both backends).
    copy(manifest.join("tests/fixtures/0002_participants.sql"), "0002_participants.sql");
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap_or_else(|e| panic!("old migrations: {e}"));
    migrator.run(pool).await.unwrap_or_else(|e| panic!("old migrate: {e}"));
}
