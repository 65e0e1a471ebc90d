//! Appending events with optimistic concurrency, batched across sagas.
//!
//! Each append names the stream version it was decided on. The saga's row
//! is the stream head: `UPDATE … WHERE version = expected` either moves it
//! (and the events are inserted) or touches nothing (a conflict: someone
//! else moved the saga first; the caller reloads and decides again). So a
//! conflict never loses or doubles a transition, and one conflicting saga
//! does not fail the others in its batch.
//!
//! Group commit: one committer per process takes every append waiting in
//! its queue and writes them in one transaction, so one disk flush serves
//! many sagas. An append returns only after its transaction committed: a
//! 2xx means on disk. One committer beat four on Postgres (docs/benchmarks.md):
//! while a commit is in flight the next batch gathers, and fewer, larger
//! transactions leave more of a small machine's CPU for everything else.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use db::Column::{BigInt, Json, Text};
use db::{Backend, Column, insert_rows, recordset};
use sagas::{Change, Event, Saga};
use serde::Serialize;
use sqlx::{Any, AnyPool, AssertSqlSafe, Row, Transaction};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::projection::{Projection, Step};
use super::{Store, StoreError};
use crate::clock::now_us;

/// The read models the committer writes beside the events.
pub type Projections = Arc<[Arc<dyn Projection>]>;

/// Most appends in one transaction; bigger batches add latency for little gain.
pub const MAX_BATCH: usize = 256;

/// Events and read-model changes of one step of one saga.
#[derive(Debug, Clone)]
pub struct Append {
    /// The saga after the step.
    pub saga: Saga,
    /// The stream version the step was decided on (0: a new saga).
    pub expected: u64,
    pub events: Vec<Event>,
    /// W3C trace context of the step, stored in each event's metadata.
    pub trace: BTreeMap<String, String>,
    /// What caused the step: `http`, `reply:<command id>`, `timer`.
    pub causation: String,
    /// The saga's status before the step (`None` for a new saga), for
    /// projections that only write when it changes.
    pub previous_status: Option<String>,
    /// A new saga's idempotency key.
    pub key: Option<IdempotencyKey>,
}

/// A client's `Idempotency-Key` for starting a saga: a repeat of the same
/// request within the key's lifetime finds the first saga instead of
/// starting another.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// Keys are unique per definition name.
    pub scope: String,
    pub key: String,
    /// Identifies the request's body, so that a key reused for another
    /// request is told apart from a retry.
    pub fingerprint: String,
    /// Keys recorded before this time (Unix microseconds) are forgotten.
    pub expired_before: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    Appended,
    /// The saga moved since the step was decided; reload and step again.
    Conflict,
    /// The idempotency key already names this saga; `same_request` says
    /// whether it was given for the same body.
    KeyTaken {
        saga: Uuid,
        same_request: bool,
    },
}

pub(super) type Job = (Append, oneshot::Sender<Result<Committed, StoreError>>);

impl Store {
    /// Appends atomically with the read models; returns once committed.
    pub async fn append(&self, append: Append) -> Result<Committed, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.committer.send((append, tx)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Resolves after the next commit (for the relay).
    pub(crate) fn appended(&self) -> &Notify {
        &self.appended
    }
}

/// Starts the committer and returns its queue.
pub(super) fn spawn_committer(pool: AnyPool, backend: Backend, projections: Projections, appended: Arc<Notify>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>(MAX_BATCH * 8);
    tokio::spawn(run_committer(pool, Statements::new(backend), projections, rx, appended));
    tx
}

async fn run_committer(pool: AnyPool, sql: Statements, projections: Projections, mut rx: mpsc::Receiver<Job>, appended: Arc<Notify>) {
    loop {
        // Everything waiting, up to MAX_BATCH: one transaction for all.
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        metrics::histogram!("eso_commit_batch_size").record(batch.len() as f64);
        let started = std::time::Instant::now();
        let (appends, replies): (Vec<Append>, Vec<_>) = batch.into_iter().unzip();
        let mut result = commit(&pool, &sql, &projections, &appends).await;
        // Replicas share idempotency keys and may race on a saga; a
        // deadlock or serialization failure is worth one more try.
        if let Err(StoreError::Retryable(e)) = &result {
            tracing::info!(error = %e, "commit retried");
            result = commit(&pool, &sql, &projections, &appends).await;
        }
        match result {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
                appended.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, appends = appends.len(), "commit failed");
                for reply in replies {
                    let error = match &e {
                        StoreError::Unconfirmed(detail) => StoreError::Unconfirmed(detail.clone()),
                        other => StoreError::Database(other.to_string()),
                    };
                    let _ = reply.send(Err(error));
                }
            }
        }
        metrics::histogram!("eso_commit_seconds").record(started.elapsed().as_secs_f64());
    }
}

/// The batch statements of one backend, built once per committer. Each
/// takes all the rows of its kind as one JSON array (`$1`), the commit
/// time (`$2`) and the row count (`$3`): a commit is at most five
/// statements whatever its size, plus those of the projections.
pub(super) struct Statements {
    insert_sagas: Statement,
    update_sagas: Statement,
    insert_events: Statement,
}

pub struct Statement {
    sql: Arc<str>,
    /// Whether the plan may be cached. A join of the batch with a table
    /// is planned each time, with the batch's real size: a plan cached
    /// while the table was small (Postgres settles on one after five runs)
    /// scans the whole table on every later commit until the next ANALYZE.
    prepared: bool,
}

impl Statement {
    pub fn cached(sql: String) -> Statement {
        Statement { sql: sql.into(), prepared: true }
    }

    pub fn planned_each_time(sql: String) -> Statement {
        Statement { sql: sql.into(), prepared: false }
    }

    fn query(&self) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
        sqlx::query(AssertSqlSafe(self.sql.clone())).persistent(self.prepared)
    }

    /// Runs the statement over `rows` (bound as one JSON array, `$1`, with
    /// `$2` the commit time and `$3` the row count); nothing for no rows.
    pub async fn execute<T: Serialize>(&self, tx: &mut Transaction<'static, Any>, rows: &[T], now: i64) -> Result<(), StoreError> {
        if !rows.is_empty() {
            self.query().bind(serde_json::to_string(rows)?).bind(now).bind(rows.len() as i64).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Like [`Statement::execute`], returning the rows it selects; in a
    /// transaction (`&mut **tx`) or on a pool of its own.
    pub async fn fetch<'c, E, T>(&self, executor: E, rows: &[T], now: i64) -> Result<Vec<sqlx::any::AnyRow>, StoreError>
    where
        E: sqlx::Executor<'c, Database = Any>,
        T: Serialize,
    {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.query().bind(serde_json::to_string(rows)?).bind(now).bind(rows.len() as i64).fetch_all(executor).await?)
    }
}

/// One saga id of a batch, as the recordset statements take it.
#[derive(Serialize)]
pub(super) struct IdRow<'a> {
    pub id: &'a str,
}

/// What a step changes in a saga's row, on insert and on update alike.
/// Every column a list filters on is here, so no step leaves one stale.
/// (`definition_version` changes when a saga is migrated.)
const SAGA_STATE: [(&str, Column); 8] = [
    ("definition_version", BigInt),
    ("state", Text),
    ("status", Text),
    ("terminal", BigInt),
    ("version", BigInt),
    ("deadline", BigInt),
    ("attempt", BigInt),
    ("snapshot", Json),
];

impl Statements {
    pub(super) fn new(backend: Backend) -> Statements {
        let new_sagas: Vec<_> = [("id", Text), ("definition", Text)].into_iter().chain(SAGA_STATE).chain([("trace", Json)]).collect();
        let moved_sagas: Vec<_> = [("id", Text)].into_iter().chain(SAGA_STATE).chain([("expected", BigInt)]).collect();
        let set_state = SAGA_STATE.iter().map(|(name, _)| format!("{name} = r.{name}")).collect::<Vec<_>>().join(", ");
        let events = [("event_id", Text), ("stream_id", Text), ("version", BigInt), ("event_type", Text), ("data", Json), ("metadata", Json)];
        Statements {
            insert_sagas: Statement::cached(format!(
                "{} ON CONFLICT (id) DO NOTHING RETURNING id",
                insert_rows(backend, "sagas", &new_sagas, &["created_at", "updated_at"])
            )),
            // The version check is the optimistic concurrency: a saga that
            // moved since its step was decided is not returned.
            update_sagas: Statement::planned_each_time(format!(
                "UPDATE sagas SET {set_state}, updated_at = $2 FROM {} WHERE sagas.id = r.id AND sagas.version = r.expected RETURNING sagas.id",
                recordset(backend, &moved_sagas)
            )),
            // In batch order, so a stream's events get ascending positions.
            insert_events: Statement::cached(insert_rows(backend, "events", &events, &["recorded_at"])),
        }
    }
}

/// The columns of [`SAGA_STATE`], from the saga after its step.
#[derive(Serialize)]
struct SagaState<'a> {
    definition_version: u32,
    state: &'a str,
    status: &'a str,
    terminal: u8,
    version: u64,
    deadline: Option<i64>,
    /// The pending command's attempt, for `GET /sagas?min_attempt=`.
    attempt: Option<u32>,
    /// JSON `null` for a short stream: see [`super::SNAPSHOT_FROM`].
    snapshot: Option<&'a Saga>,
}

impl<'a> SagaState<'a> {
    fn of(saga: &'a Saga) -> Self {
        SagaState {
            definition_version: saga.definition.version,
            state: &saga.state,
            status: &saga.status,
            terminal: u8::from(saga.terminal),
            version: saga.version,
            deadline: saga.deadline().map(|d| d.0),
            attempt: saga.pending.as_ref().map(|p| p.attempt),
            snapshot: super::snapshot(saga),
        }
    }
}

#[derive(Serialize)]
struct NewSaga<'a> {
    id: Uuid,
    definition: &'a str,
    #[serde(flatten)]
    state: SagaState<'a>,
    #[serde(serialize_with = "without_empty")]
    trace: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct MovedSaga<'a> {
    id: Uuid,
    #[serde(flatten)]
    state: SagaState<'a>,
    expected: u64,
}

#[derive(Serialize)]
struct EventRow<'a> {
    event_id: Uuid,
    stream_id: Uuid,
    version: u64,
    event_type: &'a str,
    data: &'a Change,
    metadata: &'a Metadata<'a>,
}

/// What every event says besides its change. Only what the stream and the
/// change do not already say: the saga (the stream id) and its definition
/// (the first event's `started`, and each `migrated`) were repeated here
/// in every event until the metadata was found to be a third of an
/// event's bytes (docs/benchmarks.md, "What a saga costs").
#[derive(Serialize)]
struct Metadata<'a> {
    causation_id: &'a str,
    /// The stream version the step was decided on: the events of one step
    /// share it, which is how replay cuts a stream back into its steps.
    step: u64,
    #[serde(serialize_with = "without_empty")]
    trace: &'a BTreeMap<String, String>,
}

/// A trace context without its empty entries (`tracestate` is mostly
/// empty): absent and empty read back alike.
fn without_empty<S: serde::Serializer>(map: &&BTreeMap<String, String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(map.iter().filter(|(_, value)| !value.is_empty()))
}

async fn commit(pool: &AnyPool, sql: &Statements, projections: &Projections, appends: &[Append]) -> Result<Vec<Committed>, StoreError> {
    let now = now_us();
    let mut tx = pool.begin().await?;
    let mut results = vec![Committed::Conflict; appends.len()];

    // Two steps of one saga in one batch were decided on the same state
    // (a step's successor is decided only after it commits), so at most
    // one can win: the first is tried, the others retry as conflicts.
    let mut seen = HashSet::new();
    let mut tried = Vec::with_capacity(appends.len());
    let mut keyed = Vec::new();
    for (i, a) in appends.iter().enumerate() {
        if !seen.insert(a.saga.id) {
            continue;
        }
        match &a.key {
            Some(key) => keyed.push((key, i)),
            None => tried.push(i),
        }
    }
    // Keys in one order too, for the same reason as the rows below.
    keyed.sort_by(|(a, _), (b, _)| (&a.scope, &a.key).cmp(&(&b.scope, &b.key)));
    for (key, i) in keyed {
        match claim_key(&mut tx, key, appends[i].saga.id, now).await? {
            Some(taken) => results[i] = taken,
            None => tried.push(i),
        }
    }
    // In id order: replicas committing at once lock shared sagas' rows in
    // the same order, so they wait for each other instead of deadlocking.
    tried.sort_by_key(|&i| appends[i].saga.id);

    let (new, moved): (Vec<usize>, Vec<usize>) = tried.iter().partition(|&&i| appends[i].expected == 0);
    let new_rows: Vec<NewSaga> = new
        .iter()
        .map(|&i| {
            let (a, saga) = (&appends[i], &appends[i].saga);
            NewSaga { id: saga.id, definition: &saga.definition.name, state: SagaState::of(saga), trace: &a.trace }
        })
        .collect();
    let moved_rows: Vec<MovedSaga> = moved
        .iter()
        .map(|&i| {
            let a = &appends[i];
            MovedSaga { id: a.saga.id, state: SagaState::of(&a.saga), expected: a.expected }
        })
        .collect();
    let mut written = returned_ids(&mut tx, &sql.insert_sagas, &new_rows, now).await?;
    written.extend(returned_ids(&mut tx, &sql.update_sagas, &moved_rows, now).await?);

    let mut metadata = Vec::new();
    let mut steps: Vec<Vec<Step>> = vec![Vec::new(); projections.len()];
    for &i in &tried {
        let a = &appends[i];
        if !written.contains(&a.saga.id) {
            continue;
        }
        results[i] = Committed::Appended;
        let step = Step { saga: &a.saga, previous_status: a.previous_status.as_deref(), events: &a.events, at: now };
        for (p, projection) in projections.iter().enumerate() {
            if projection.definition() == a.saga.definition.name {
                steps[p].push(step);
            }
        }
        metadata.push((i, Metadata { causation_id: &a.causation, step: a.expected, trace: &a.trace }));
    }
    let mut events = Vec::new();
    for (i, metadata) in &metadata {
        let a = &appends[*i];
        for (k, event) in a.events.iter().enumerate() {
            events.push(EventRow {
                event_id: event_id(),
                stream_id: a.saga.id,
                version: a.expected + k as u64 + 1,
                event_type: &event.event_type,
                data: &event.change,
                metadata,
            });
        }
    }
    for (projection, steps) in projections.iter().zip(&steps) {
        if !steps.is_empty() {
            projection.apply(&mut tx, steps).await?;
        }
    }
    sql.insert_events.execute(&mut tx, &events, now).await?;
    // Past this point an error says nothing of the outcome: Postgres may
    // have made the commit durable and died before acknowledging it.
    tx.commit().await.map_err(|e| match StoreError::from(e) {
        StoreError::Database(detail) => StoreError::Unconfirmed(detail),
        other => other,
    })?;
    Ok(results)
}

/// A new event's id: time-ordered, so it lands at the end of SQLite's
/// index of event ids rather than on a random page of it, and random in
/// the 74 bits after its millisecond (no per-process counter), so ids of
/// two replicas in one millisecond collide with odds of 2^-74. The
/// `(stream_id, version)` index is what keeps the log consistent; on
/// Postgres the id has no index of its own (migration 0003). It names the
/// event to JetStream's de-duplication.
pub fn event_id() -> Uuid {
    Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext))
}

/// Runs a batch statement that returns the ids of the sagas it wrote.
async fn returned_ids<T: Serialize>(tx: &mut Transaction<'static, Any>, sql: &Statement, rows: &[T], now: i64) -> Result<HashSet<Uuid>, StoreError> {
    sql.fetch(&mut **tx, rows, now)
        .await?
        .iter()
        .map(|r| {
            let id: String = r.try_get(0)?;
            Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
}

/// Records an idempotency key for `saga`, or says which saga it already
/// names. A key older than its lifetime is taken over, as if forgotten.
async fn claim_key(tx: &mut Transaction<'static, Any>, key: &IdempotencyKey, saga: Uuid, now: i64) -> Result<Option<Committed>, StoreError> {
    let claimed = sqlx::query(
        "INSERT INTO saga_keys (scope, key, saga_id, fingerprint, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (scope, key) DO UPDATE SET saga_id = excluded.saga_id, fingerprint = excluded.fingerprint, created_at = excluded.created_at \
         WHERE saga_keys.created_at < $6",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(saga.to_string())
    .bind(&key.fingerprint)
    .bind(now)
    .bind(key.expired_before)
    .execute(&mut **tx)
    .await?;
    if claimed.rows_affected() == 1 {
        return Ok(None);
    }
    let row =
        sqlx::query("SELECT saga_id, fingerprint FROM saga_keys WHERE scope = $1 AND key = $2").bind(&key.scope).bind(&key.key).fetch_one(&mut **tx).await?;
    let existing: String = row.try_get("saga_id")?;
    // Keys recorded before requests had fingerprints match any request.
    let fingerprint: Option<String> = row.try_get("fingerprint")?;
    let saga = Uuid::parse_str(&existing).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Some(Committed::KeyTaken { saga, same_request: fingerprint.is_none_or(|f| f == key.fingerprint) }))
}
