//! What a point wrote to the store, per completed saga: the events' own
//! bytes, the growth of the database (tables, indexes, TOAST, free space
//! maps: what a disk holds) and, on Postgres, the WAL (what a replica and
//! a backup receive, and what each commit flushes).
//!
//! Read from the store itself before and after a point, not from eso, so a
//! change to how eso counts cannot flatter it. The WAL position is the
//! server's, so anything else writing to that Postgres during the point is
//! counted too: run it on a quiet server.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sqlx::{Connection, Row};

/// Where to read: the spawned target's Postgres database or SQLite file.
#[derive(Debug, Clone)]
pub enum Probe {
    Postgres { url: String },
    Sqlite { path: PathBuf },
}

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// Highest event position: the point's events are those above it.
    position: i64,
    database: i64,
    /// `pg_current_wal_lsn()` as bytes since the cluster began; none on SQLite.
    wal: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct BytesPerSaga {
    pub events: f64,
    /// The `data` and `metadata` of those events, as stored (UTF-8).
    pub event_bytes: f64,
    /// Growth of the database's files: every table and index.
    pub database_bytes: f64,
    /// WAL written by the whole Postgres server during the point.
    pub wal_bytes: Option<f64>,
}

impl Probe {
    pub fn sqlite(path: &Path) -> Probe {
        Probe::Sqlite { path: path.to_path_buf() }
    }

    pub async fn read(&self) -> anyhow::Result<Reading> {
        let mut conn = self.connect().await?;
        let reading = self.reading(&mut conn).await?;
        conn.close().await?;
        Ok(reading)
    }

    async fn reading(&self, conn: &mut sqlx::AnyConnection) -> anyhow::Result<Reading> {
        // Postgres has no index on positions (migration 0007): its sequence
        // says the newest (the sum in `since` reads the table through).
        let newest = match self {
            Probe::Postgres { .. } => "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS p FROM events_position_seq",
            Probe::Sqlite { .. } => "SELECT COALESCE(MAX(position), 0) AS p FROM events",
        };
        let position: i64 = sqlx::query(newest).fetch_one(&mut *conn).await?.try_get("p")?;
        let (database, wal) = match self {
            Probe::Postgres { .. } => {
                let row = sqlx::query("SELECT pg_database_size(current_database()) AS size, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal")
                    .fetch_one(&mut *conn)
                    .await?;
                (row.try_get("size")?, Some(row.try_get("wal")?))
            }
            // The reader's view includes what sits in the WAL file not yet
            // checkpointed into the main file, so this is the database's size
            // whenever SQLite checkpoints.
            Probe::Sqlite { .. } => {
                let size: i64 = sqlx::query("SELECT page_count * page_size AS size FROM pragma_page_count(), pragma_page_size()")
                    .fetch_one(&mut *conn)
                    .await?
                    .try_get("size")?;
                (size, None)
            }
        };
        Ok(Reading { position, database, wal })
    }

    /// What was written between `before` and now, per completed saga.
    pub async fn since(&self, before: Reading, completed: usize) -> anyhow::Result<BytesPerSaga> {
        let mut conn = self.connect().await?;
        let after = self.reading(&mut conn).await?;
        // Bytes, not characters: SQLite's length() of text counts characters.
        let sql = match self {
            Probe::Postgres { .. } => {
                "SELECT COUNT(*) AS n, COALESCE(SUM(octet_length(data) + octet_length(metadata)), 0)::bigint AS bytes FROM events WHERE position > $1"
            }
            Probe::Sqlite { .. } => {
                "SELECT COUNT(*) AS n, COALESCE(SUM(length(CAST(data AS BLOB)) + length(CAST(metadata AS BLOB))), 0) AS bytes FROM events WHERE position > $1"
            }
        };
        let row = sqlx::query(sql).bind(before.position).fetch_one(&mut conn).await?;
        let (events, bytes): (i64, i64) = (row.try_get("n")?, row.try_get("bytes")?);
        conn.close().await?;
        let per = |n: i64| if completed > 0 { n as f64 / completed as f64 } else { 0.0 };
        Ok(BytesPerSaga {
            events: per(events),
            event_bytes: per(bytes),
            database_bytes: per(after.database - before.database),
            wal_bytes: before.wal.zip(after.wal).map(|(b, a)| per(a - b)),
        })
    }

    async fn connect(&self) -> anyhow::Result<sqlx::AnyConnection> {
        sqlx::any::install_default_drivers();
        let url = match self {
            Probe::Postgres { url } => url.clone(),
            // Read-only: eso owns the file (and its lock) while it runs.
            Probe::Sqlite { path } => format!("sqlite://{}?mode=ro", path.display()),
        };
        Ok(<sqlx::AnyConnection as Connection>::connect(&url).await?)
    }
}

impl BytesPerSaga {
    /// `ev 4.0 × 812 B, db 9.1 KiB, wal 24.3 KiB` for the table.
    pub fn summary(&self) -> String {
        let kib = |b: f64| if b.abs() >= 1024.0 { format!("{:.1} KiB", b / 1024.0) } else { format!("{b:.0} B") };
        let per_event = if self.events > 0.0 { self.event_bytes / self.events } else { 0.0 };
        let mut text = format!("{:.1} events × {per_event:.0} B = {}, database +{}", self.events, kib(self.event_bytes), kib(self.database_bytes));
        if let Some(wal) = self.wal_bytes {
            text.push_str(&format!(", WAL {}", kib(wal)));
        }
        text
    }
}
