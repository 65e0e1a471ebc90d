//! The `eso` binary's wiring, kept in a library so the integration tests
//! start exactly what the binary starts: the orchestrator with the payment
//! and delivery participants embedded in it, each side knowing only the
//! `protocol` crate.

use std::sync::Arc;

use orchestrator::app::{Embedded, Running};
use orchestrator::config::{Config, sqlite_url};

/// Starts the orchestrator with the participants `config` asks to embed.
pub async fn start(config: &Config, telemetry: Arc<observability::Telemetry>) -> anyhow::Result<Running> {
    // The first line of the log: which mode, where, no secrets.
    tracing::info!(config = %config.describe(), "eso starting");
    // Before either file is opened: moving participants' records out of
    // the store's file writes to it.
    let mut locks: Vec<db::FileLock> = orchestrator::app::lock_store(config)?.into_iter().collect();
    let embedded = if config.embed_participants() { embedded(config, &mut locks).await? } else { Embedded::default() };
    let mut running = orchestrator::app::start(config, telemetry, embedded).await?;
    running.hold(locks);
    Ok(running)
}

/// Where the embedded participants keep their records. In embedded mode, a
/// SQLite file of their own beside the store's (`eso.db` →
/// `eso.participants.db`), as separate services would own their data:
/// SQLite has one writer per file, and on a shared file the group committer
/// waited behind the participants' writes for about half of each commit.
/// When DATABASE_URL names a database, that one (their tables beside the
/// store's, each with its own migrations).
pub fn participants_url(config: &Config) -> String {
    match config.named_database() {
        Some(url) => url.to_string(),
        None => sqlite_url(&config.sqlite_path.with_extension("participants.db")),
    }
}

/// Opens the participants' records and builds the participants on them.
/// Records an older eso kept in the store's own SQLite file move to the
/// participants' file first, before either answers anything. Their own
/// SQLite file, if they have one, is locked for this process and the lock
/// added to `locks`.
pub async fn embedded(config: &Config, locks: &mut Vec<db::FileLock>) -> anyhow::Result<Embedded> {
    let url = participants_url(config);
    locks.extend(db::lock_sqlite(&url).map_err(|e| anyhow::anyhow!("{e}; stop it, or set ESO_SQLITE_PATH to another file"))?);
    // A few connections on a shared Postgres: their writes are batched.
    let opened = participants::embedded::open(&url, 4).await?;
    if config.named_database().is_none() {
        participants::embedded::adopt_records(&opened.pool, &config.database_url()).await?;
    }
    tracing::info!(records = %db::redact(&url), "participants in-process");
    Ok(Embedded { participants: opened.participants, pool: Some(opened.pool) })
}
