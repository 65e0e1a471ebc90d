//! The event store and its read models, on Postgres or SQLite through one
//! set of queries (sqlx's `Any` driver; ids and JSON are text columns).
//!
//! Writes go through [`Store::append`], which batches the appends of many
//! sagas into one transaction (group commit, see `append.rs`). Reads are
//! plain queries on the read models written in those same transactions.

mod append;
mod batch;
mod list;
pub mod projection;
mod relay;
pub mod replay;
mod retention;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use db::Backend;
use sagas::{Event, Saga};
use serde_json::Value;
use sqlx::{AnyPool, Row};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

pub use append::{Append, Committed, IdempotencyKey, MAX_BATCH, Projections};
pub use batch::{BatchWrite, Rows, Statement, id_rows};
pub use list::{Count, Cursor, Filter, Listed};
pub use projection::{Projection, Step};
pub use relay::run_relay;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
    /// A deadlock or serialization failure: the same work may succeed again.
    #[error("database (retryable): {0}")]
    Retryable(String),
    /// The connection broke during `COMMIT`: the transaction may or may not
    /// be durable, so the caller must not be told it was not.
    #[error("database (commit not confirmed): {0}")]
    Unconfirmed(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
        match code.as_deref() {
            Some("40P01" | "40001") => StoreError::Retryable(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// For plain reads; see `db::readers`.
    readers: AnyPool,
    backend: Backend,
    /// The group committer's queue; see `append.rs`.
    committer: mpsc::Sender<append::Job>,
    /// Woken after each commit so the relay publishes without polling delay.
    appended: Arc<Notify>,
    projections: Projections,
    /// Recent counts of finished sagas (see `list.rs`).
    finished_counts: Arc<list::FinishedCounts>,
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: i64,
    pub event_id: String,
    pub stream_id: String,
    pub version: i64,
    pub event_type: String,
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: i64,
}

/// Streams shorter than this keep no snapshot in their saga's row: the
/// snapshot column holds JSON `null` and a read folds the few events
/// instead. A snapshot spares a read the fold of a long stream (a saga
/// that retried, or was repaired, many times), but the order saga takes 3
/// or 4 events, and writing its whole state at each of its steps was a
/// fifth of what a saga wrote (docs/benchmarks.md, "What a saga costs").
pub const SNAPSHOT_FROM: u64 = 8;

/// What a saga's row keeps as its snapshot: the saga, or nothing for a
/// stream shorter than [`SNAPSHOT_FROM`].
pub fn snapshot(saga: &Saga) -> Option<&Saga> {
    (saga.version >= SNAPSHOT_FROM).then_some(saga)
}

/// A saga's row: its folded state and the trace it belongs to.
#[derive(Debug, Clone)]
pub struct SagaRow {
    pub saga: Saga,
    pub trace: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// Wraps a migrated pool and starts the committer on `committer`
    /// (`db::committer`), which writes `projections` in the commit of the
    /// events they follow. At partial load the committer waits up to
    /// `commit_gather` for more appends to share a commit (`ESO_COMMIT_GATHER`).
    pub fn new(pool: AnyPool, readers: AnyPool, committer: AnyPool, backend: Backend, projections: Vec<Arc<dyn Projection>>, commit_gather: Duration) -> Store {
        let appended = Arc::new(Notify::new());
        let projections: Projections = projections.into();
        let committer = append::spawn_committer(committer, backend, projections.clone(), appended.clone(), commit_gather);
        Store { pool, readers, backend, committer, appended, projections, finished_counts: Arc::default() }
    }

    /// The writer's pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool for plain reads, for read models' own queries.
    pub fn readers(&self) -> &AnyPool {
        &self.readers
    }

    pub async fn close(&self) {
        self.readers.close().await;
        self.pool.close().await;
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// The saga's current state, if it exists.
    pub async fn load(&self, id: Uuid) -> Result<Option<SagaRow>, StoreError> {
        // One round trip either way: the row, and its events only when it
        // keeps no snapshot.
        let rows = sqlx::query(
            "SELECT s.id, s.snapshot, s.trace, s.created_at, s.updated_at, e.event_type, e.data FROM sagas s \
             LEFT JOIN events e ON e.stream_id = s.id AND s.snapshot = 'null' WHERE s.id = $1 ORDER BY e.version",
        )
        .bind(id.to_string())
        .fetch_all(&self.readers)
        .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let mut events = Vec::new();
        for r in &rows {
            if let Some(event) = joined_event(r)? {
                events.push(event);
            }
        }
        saga_row(first, &mut BTreeMap::from([(id, events)])).map(Some)
    }

    /// The events of each of `ids`, in stream order, for sagas that keep
    /// no snapshot.
    async fn streams(&self, ids: &[Uuid]) -> Result<BTreeMap<Uuid, Vec<Event>>, StoreError> {
        let mut streams: BTreeMap<Uuid, Vec<Event>> = BTreeMap::new();
        if ids.is_empty() {
            return Ok(streams);
        }
        let sql = Statement::planned_each_time(format!(
            "SELECT e.stream_id, e.event_type, e.data FROM events e JOIN {} ON e.stream_id = r.id ORDER BY e.stream_id, e.version",
            db::recordset(self.backend, &[("id", db::Column::Text)])
        ));
        let rows = sql.fetch(&self.readers, &id_rows(ids), 0).await?;
        for r in &rows {
            let id: String = r.try_get("stream_id")?;
            let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Some(event) = joined_event(r)? {
                streams.entry(id).or_default().push(event);
            }
        }
        Ok(streams)
    }

    /// Claims up to `limit` sagas whose deadline has passed by pushing their
    /// deadline `lease_ms` ahead. With several replicas each due saga goes to
    /// one of them (`SKIP LOCKED`); if that replica dies, the lease expires
    /// and another takes it.
    pub async fn claim_due(&self, now_ms: i64, lease_ms: i64, limit: i64) -> Result<Vec<SagaRow>, StoreError> {
        let sql = match self.backend {
            Backend::Postgres => {
                "UPDATE sagas SET deadline = $1 WHERE id IN (SELECT id FROM sagas WHERE terminal = 0 AND deadline <= $2 \
                 ORDER BY deadline LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING id, snapshot, trace, created_at, updated_at"
            }
            Backend::Sqlite => {
                "UPDATE sagas SET deadline = $1 WHERE id IN (SELECT id FROM sagas WHERE terminal = 0 AND deadline <= $2 \
                 ORDER BY deadline LIMIT $3) RETURNING id, snapshot, trace, created_at, updated_at"
            }
        };
        let rows = sqlx::query(sql).bind(now_ms + lease_ms).bind(now_ms).bind(limit).fetch_all(&self.pool).await?;
        let mut folded = Vec::new();
        for r in &rows {
            let snapshot: String = r.try_get("snapshot")?;
            if snapshot == "null" {
                let id: String = r.try_get("id")?;
                folded.push(Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            }
        }
        let mut streams = self.streams(&folded).await?;
        // One unreadable row must not hold up the others; it comes due
        // again after its lease and is counted until someone fixes it.
        Ok(rows
            .iter()
            .filter_map(|r| match saga_row(r, &mut streams) {
                Ok(row) => Some(row),
                Err(e) => {
                    tracing::error!(error = %e, "unreadable saga row skipped");
                    metrics::counter!("eso_unreadable_sagas_total").increment(1);
                    None
                }
            })
            .collect())
    }

    /// A stream's events in order.
    pub async fn stream(&self, id: Uuid) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, event_id, stream_id, version, event_type, data, metadata, recorded_at \
             FROM events WHERE stream_id = $1 ORDER BY version",
        )
        .bind(id.to_string())
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(stored_event).collect()
    }

    /// Every definition version recorded so far and not retired: `(name, version, hash, source)`.
    pub async fn definitions(&self) -> Result<Vec<(String, i64, String, String)>, StoreError> {
        let rows = sqlx::query("SELECT name, version, hash, source FROM saga_definitions WHERE retired_at IS NULL ORDER BY name, version")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("name")?, r.try_get("version")?, r.try_get("hash")?, r.try_get("source")?))).collect()
    }

    /// Records a definition version (a no-op if it is already recorded) and
    /// returns the hash recorded for that version, which differs from the
    /// definition's when another replica recorded other content first.
    pub async fn record_definition(&self, def: &sagas::Definition, source: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO saga_definitions (name, version, hash, source, loaded_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name, version) DO NOTHING",
        )
        .bind(&def.name)
        .bind(i64::from(def.version))
        .bind(def.hash())
        .bind(source)
        .bind(crate::clock::now_us())
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query("SELECT hash FROM saga_definitions WHERE name = $1 AND version = $2")
            .bind(&def.name)
            .bind(i64::from(def.version))
            .fetch_one(&self.pool)
            .await?
            .try_get("hash")?)
    }

    /// The versions of definitions that were retired, by name.
    pub async fn retired(&self) -> Result<std::collections::BTreeSet<(String, u32)>, StoreError> {
        let rows = sqlx::query("SELECT name, version FROM saga_definitions WHERE retired_at IS NOT NULL").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("name")?, u32::try_from(r.try_get::<i64, _>("version")?).unwrap_or(0)))).collect()
    }

    /// Retires version `version` of `name` if no saga is live on it, in one
    /// statement, so a saga moved onto it meanwhile keeps it: `Ok(false)`
    /// when sagas are live (or it is not recorded).
    pub async fn retire(&self, name: &str, version: u32) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE saga_definitions SET retired_at = $3 WHERE name = $1 AND version = $2 AND retired_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM sagas WHERE definition = $1 AND definition_version = $2 AND terminal = 0)",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(crate::clock::now_us())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sagas not yet terminal, by definition name and version: the live
    /// part of [`Store::counts`], summed over states.
    pub async fn live_counts(&self) -> Result<BTreeMap<(String, u32), i64>, StoreError> {
        let mut live = BTreeMap::new();
        for c in self.count_where(None, None, 0).await? {
            *live.entry((c.definition, c.version)).or_insert(0) += c.count;
        }
        Ok(live)
    }

    /// Forgets idempotency keys recorded before `before` (Unix
    /// microseconds); returns how many. A key past its lifetime is already
    /// ignored when claimed again: this only keeps the table small.
    pub async fn forget_keys(&self, before: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM saga_keys WHERE created_at < $1").bind(before).execute(&self.pool).await?.rows_affected())
    }

    /// Counts for `/metrics` gauges and tests: sagas not yet terminal.
    pub async fn in_flight(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM sagas WHERE terminal = 0").fetch_one(&self.readers).await?.try_get("n")?)
    }
}

/// A saga's row, its saga taken from the snapshot or, where the row keeps
/// none, folded from its events in `streams`.
fn saga_row(r: &sqlx::any::AnyRow, streams: &mut BTreeMap<Uuid, Vec<Event>>) -> Result<SagaRow, StoreError> {
    let snapshot: String = r.try_get("snapshot")?;
    let trace: String = r.try_get("trace")?;
    let saga = match serde_json::from_str::<Option<Saga>>(&snapshot)? {
        Some(saga) => saga,
        None => {
            let id: String = r.try_get("id")?;
            let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let events = streams.remove(&id).unwrap_or_default();
            let folded = Saga::replay(&events).map_err(|e| StoreError::Corrupt(format!("saga {id}: {e}")))?;
            folded.ok_or_else(|| StoreError::Corrupt(format!("saga {id} has neither a snapshot nor events")))?
        }
    };
    Ok(SagaRow { saga, trace: serde_json::from_str(&trace)?, created_at: r.try_get("created_at")?, updated_at: r.try_get("updated_at")? })
}

/// The event of a row that joined one (`event_type`, `data`), if it did.
fn joined_event(r: &sqlx::any::AnyRow) -> Result<Option<Event>, StoreError> {
    let (Some(event_type), Some(data)) = (r.try_get::<Option<String>, _>("event_type")?, r.try_get::<Option<String>, _>("data")?) else { return Ok(None) };
    Ok(Some(Event { event_type, change: serde_json::from_str(&data)? }))
}

fn stored_event(r: &sqlx::any::AnyRow) -> Result<StoredEvent, StoreError> {
    let e = RawEvent::of(r)?;
    Ok(StoredEvent {
        position: e.position,
        event_id: e.event_id,
        stream_id: e.stream_id,
        version: e.version,
        event_type: e.event_type,
        data: serde_json::from_str(&e.data)?,
        metadata: serde_json::from_str(&e.metadata)?,
        recorded_at: e.recorded_at,
    })
}

/// An event row with its JSON columns as the stored text, for the relay
/// to pass on as it is and for [`StoredEvent`] to parse.
struct RawEvent {
    position: i64,
    event_id: String,
    stream_id: String,
    version: i64,
    event_type: String,
    data: String,
    metadata: String,
    recorded_at: i64,
}

impl RawEvent {
    fn of(r: &sqlx::any::AnyRow) -> Result<RawEvent, StoreError> {
        Ok(RawEvent {
            position: r.try_get("position")?,
            event_id: r.try_get("event_id")?,
            stream_id: r.try_get("stream_id")?,
            version: r.try_get("version")?,
            event_type: r.try_get("event_type")?,
            data: r.try_get("data")?,
            metadata: r.try_get("metadata")?,
            recorded_at: r.try_get("recorded_at")?,
        })
    }
}
