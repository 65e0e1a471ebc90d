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
//! its queue and writes them together, so one disk flush serves many
//! sagas: on Postgres as one statement (the version check, the events and
//! the read models' rows in one), on SQLite as one transaction of a few
//! statements. An append returns only after its commit: a 2xx means on
//! disk. One committer beat four on Postgres (docs/benchmarks.md):
//! while a commit is in flight the next batch gathers, and fewer, larger
//! transactions leave more of a small machine's CPU for everything else.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use db::Column::{BigInt, Json, Text};
use db::gather::Gather;
use db::{Backend, Column, insert_from};
use sagas::{Change, Event, Saga};
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Connection as _, Row, Transaction};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::batch::{BatchWrite, Rows, Statement};
use super::projection::{Projection, Step};
use super::{Store, StoreError};
use crate::clock::now_us;

/// The read models the committer writes beside the events.
pub type Projections = Arc<[Arc<dyn Projection>]>;

/// Most appends in one commit; bigger batches add latency for little gain.
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

/// Starts the committer and returns its queue. At partial load it waits up
/// to `gather` for more appends before a commit (see [`Gather`]).
pub(super) fn spawn_committer(pool: AnyPool, backend: Backend, projections: Projections, appended: Arc<Notify>, gather: Duration) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>(MAX_BATCH * 8);
    let sql = Statements::new(backend, &projections);
    // Kept across commits only where the committer has a pool of its own.
    let connection = Connection { pool, held: None, keep: backend == Backend::Postgres };
    tokio::spawn(run_committer(connection, sql, projections, rx, appended, Gather::new(gather, Instant::now())));
    tx
}

/// The committer's connection. sqlx pings a connection each time it goes
/// back to its pool, a round trip per commit that the next commit, on a
/// pool of one, would wait for; so where the committer's pool is its own
/// (Postgres) the connection stays checked out between commits, and goes
/// back only after an error, which may have broken it.
struct Connection {
    pool: AnyPool,
    held: Option<(PoolConnection<Any>, Instant)>,
    keep: bool,
}

impl Connection {
    async fn get(&mut self) -> Result<&mut PoolConnection<Any>, StoreError> {
        // As the pool does for a connection idle that long: one that sat
        // through a Postgres restart fails a ping, not the next commit.
        if let Some((connection, used)) = &mut self.held
            && used.elapsed() >= db::PING_WHEN_IDLE_FOR
            && connection.ping().await.is_err()
        {
            self.held = None;
        }
        if self.held.is_none() {
            self.held = Some((self.pool.acquire().await?, Instant::now()));
        }
        self.held.as_mut().map(|(connection, _)| connection).ok_or(StoreError::Closed)
    }

    /// After a commit: the connection stays for the next one, or goes back.
    fn done(&mut self, ok: bool) {
        match &mut self.held {
            Some((_, used)) if self.keep && ok => *used = Instant::now(),
            _ => self.held = None,
        }
    }
}

async fn run_committer(
    mut connection: Connection,
    sql: Statements,
    projections: Projections,
    mut rx: mpsc::Receiver<Job>,
    appended: Arc<Notify>,
    mut gather: Gather,
) {
    loop {
        // Everything waiting, up to MAX_BATCH: one commit for all.
        let batch = gather.next_batch(&mut rx, MAX_BATCH).await;
        if batch.is_empty() {
            return;
        }
        metrics::histogram!("eso_commit_batch_size").record(batch.len() as f64);
        // Where a commit can be one statement, the appends that claim
        // idempotency keys (which it cannot do) commit beside it in a
        // transaction of their own, rather than holding every append of
        // the batch to the slower way. Each append is atomic on its own
        // either way: a batch was never a unit.
        let groups = if sql.in_one.is_some() {
            let (keyed, plain): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|(a, _)| a.key.is_some());
            vec![keyed, plain]
        } else {
            vec![batch]
        };
        let mut committed = false;
        for group in groups.into_iter().filter(|group| !group.is_empty()) {
            committed |= commit_and_reply(&mut connection, &sql, &projections, group).await;
        }
        if committed {
            appended.notify_one();
        }
    }
}

/// Commits `jobs` and answers each; whether they committed.
async fn commit_and_reply(connection: &mut Connection, sql: &Statements, projections: &Projections, jobs: Vec<Job>) -> bool {
    let started = Instant::now();
    let (appends, replies): (Vec<Append>, Vec<_>) = jobs.into_iter().unzip();
    let mut result = commit(connection, sql, projections, &appends).await;
    // Replicas share idempotency keys and may race on a saga; a
    // deadlock or serialization failure is worth one more try.
    if let Err(StoreError::Retryable(e)) = &result {
        tracing::info!(error = %e, "commit retried");
        result = commit(connection, sql, projections, &appends).await;
    }
    connection.done(result.is_ok());
    metrics::histogram!("eso_commit_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
            true
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
            false
        }
    }
}

/// The batch writes of one backend, built once per committer. Each takes
/// all the rows of its kind as one JSON array (`$1`), the commit time
/// (`$2`) and the row count (`$3`): a commit in a transaction is three
/// statements whatever its size, plus those of the projections and one or
/// two per idempotency key.
pub(super) struct Statements {
    insert_sagas: BatchWrite,
    update_sagas: BatchWrite,
    insert_events: BatchWrite,
    /// Postgres: every write of a commit as one statement (see
    /// [`in_one_statement`]).
    in_one: Option<Statement>,
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
    pub(super) fn new(backend: Backend, projections: &Projections) -> Statements {
        let new_sagas: Vec<_> = [("id", Text), ("definition", Text)].into_iter().chain(SAGA_STATE).chain([("trace", Json)]).collect();
        let moved_sagas: Vec<_> = [("id", Text)].into_iter().chain(SAGA_STATE).chain([("expected", BigInt)]).collect();
        let set_state = SAGA_STATE.iter().map(|(name, _)| format!("{name} = r.{name}")).collect::<Vec<_>>().join(", ");
        let events = [("event_id", Text), ("stream_id", Text), ("version", BigInt), ("event_type", Text), ("data", Json), ("metadata", Json)];
        let columns = new_sagas.clone();
        let insert_sagas = BatchWrite::cached(backend, &new_sagas, "id", move |rows| {
            format!("{} ON CONFLICT (id) DO NOTHING RETURNING id", insert_from("sagas", &columns, &["created_at", "updated_at"], rows))
        });
        // The version check is the optimistic concurrency: a saga that
        // moved since its step was decided is not returned.
        let update_sagas = BatchWrite::planned_each_time(backend, &moved_sagas, "id", move |rows| {
            format!("UPDATE sagas SET {set_state}, updated_at = $2 FROM {rows} WHERE sagas.id = r.id AND sagas.version = r.expected RETURNING sagas.id")
        });
        // In batch order, so a stream's events get ascending positions.
        let insert_events = BatchWrite::cached(backend, &events, "stream_id", move |rows| insert_from("events", &events, &["recorded_at"], rows));
        let in_one = (backend == Backend::Postgres).then(|| {
            // The sagas' rows at `$1`/`$3` and `$4`/`$5`, then each write's
            // at the next two; `$2` is the commit time, as everywhere.
            let mut parts = vec![
                format!("new_sagas AS ({})", insert_sagas.part(1, 3, None)),
                format!("moved_sagas AS ({})", update_sagas.part(4, 5, None)),
                "written AS (SELECT id FROM new_sagas UNION ALL SELECT id FROM moved_sagas)".to_string(),
            ];
            for (k, write) in std::iter::once(&insert_events).chain(projections.iter().flat_map(|p| p.writes())).enumerate() {
                parts.push(format!("w{k} AS ({})", write.part(2 * k + 6, 2 * k + 7, Some("written"))));
            }
            // Prepared: its plan is made once, on the committer's own
            // connection, whose planner sticks to lookups (`db::committer`).
            Statement::cached(format!("WITH {} SELECT id FROM written", parts.join(", ")))
        });
        Statements { insert_sagas, update_sagas, insert_events, in_one }
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

async fn commit(connection: &mut Connection, sql: &Statements, projections: &Projections, appends: &[Append]) -> Result<Vec<Committed>, StoreError> {
    let now = now_us();
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
    let written = match &sql.in_one {
        Some(statement) if keyed.is_empty() => {
            // In id order, as below.
            tried.sort_by_key(|&i| appends[i].saga.id);
            in_one_statement(connection.get().await?, statement, projections, appends, &tried, now).await?
        }
        _ => {
            let mut tx = connection.get().await?.begin().await?;
            // Keys in one order too, for the same reason as the rows below.
            keyed.sort_by(|(a, _), (b, _)| (&a.scope, &a.key).cmp(&(&b.scope, &b.key)));
            for (key, i) in keyed {
                match claim_key(&mut tx, key, appends[i].saga.id, now).await? {
                    Some(taken) => results[i] = taken,
                    None => tried.push(i),
                }
            }
            // In id order: replicas committing at once lock shared sagas'
            // rows in the same order, so they wait for each other instead
            // of deadlocking.
            tried.sort_by_key(|&i| appends[i].saga.id);
            let written = write_in(&mut tx, sql, projections, appends, &tried, now).await?;
            // Past this point an error says nothing of the outcome: Postgres
            // may have made the commit durable and died before acknowledging it.
            tx.commit().await.map_err(|e| match StoreError::from(e) {
                StoreError::Database(detail) => StoreError::Unconfirmed(detail),
                other => other,
            })?;
            written
        }
    };
    for &i in &tried {
        if written.contains(&appends[i].saga.id) {
            results[i] = Committed::Appended;
        }
    }
    Ok(results)
}

/// Writes the appends `tried` in `tx`: the sagas' rows, then the events
/// and read-model rows of those whose row it wrote; the ids of those.
async fn write_in(
    tx: &mut Transaction<'_, Any>,
    sql: &Statements,
    projections: &Projections,
    appends: &[Append],
    tried: &[usize],
    now: i64,
) -> Result<HashSet<Uuid>, StoreError> {
    let (new, moved) = saga_rows(appends, tried)?;
    let mut written = returned_ids(sql.insert_sagas.alone().fetch_rows(&mut **tx, new, now).await?)?;
    written.extend(returned_ids(sql.update_sagas.alone().fetch_rows(&mut **tx, moved, now).await?)?);
    let kept: Vec<usize> = tried.iter().copied().filter(|&i| written.contains(&appends[i].saga.id)).collect();
    let (events, read_models) = step_rows(appends, &kept, projections, now)?;
    for (write, rows) in projections.iter().flat_map(|p| p.writes()).zip(read_models) {
        write.alone().execute_rows(tx, rows, now).await?;
    }
    sql.insert_events.alone().execute_rows(tx, events, now).await?;
    Ok(written)
}

/// Writes the appends `tried` in one statement, which commits on its own:
/// the sagas' rows, and the events and read-model rows of those whose row
/// it wrote, which it tells apart itself. A transaction takes Postgres
/// seven to nine round trips (its `BEGIN` and `COMMIT`, one per statement
/// and one more for each planned each time); this takes one, and
/// Postgres starts and ends one statement, parsed and planned once, instead
/// of up to seven.
async fn in_one_statement(
    connection: &mut PoolConnection<Any>,
    statement: &Statement,
    projections: &Projections,
    appends: &[Append],
    tried: &[usize],
    now: i64,
) -> Result<HashSet<Uuid>, StoreError> {
    let (new, moved) = saga_rows(appends, tried)?;
    let (events, read_models) = step_rows(appends, tried, projections, now)?;
    let mut query = statement.query().bind(new.json).bind(now).bind(new.len as i64);
    for rows in [moved, events].into_iter().chain(read_models) {
        query = query.bind(rows.json).bind(rows.len as i64);
    }
    let rows = query.fetch_all(&mut **connection).await.map_err(|e| match e {
        // Refused by Postgres, so not committed, unless the server itself
        // failed (connection exceptions, operator intervention, system and
        // internal errors): it may have been past its commit record.
        sqlx::Error::Database(ref d) if !d.code().is_some_and(|c| ["08", "57", "58", "XX"].iter().any(|class| c.starts_with(class))) => StoreError::from(e),
        // Sent and maybe committed, as a `COMMIT` that got no answer.
        other => StoreError::Unconfirmed(other.to_string()),
    })?;
    // Committed by now: what goes wrong from here says nothing of that.
    returned_ids(rows).map_err(|e| StoreError::Unconfirmed(e.to_string()))
}

/// The rows of the sagas of the appends `tried`: new ones, moved ones.
fn saga_rows(appends: &[Append], tried: &[usize]) -> Result<(Rows, Rows), StoreError> {
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
    Ok((Rows::of(&new_rows)?, Rows::of(&moved_rows)?))
}

/// The events of the appends `of`, and the rows they give the read models'
/// writes (in the order of [`Statements::new`]'s parts).
fn step_rows(appends: &[Append], of: &[usize], projections: &Projections, now: i64) -> Result<(Rows, Vec<Rows>), StoreError> {
    let mut events = Vec::new();
    let mut steps: Vec<Vec<Step>> = vec![Vec::new(); projections.len()];
    let metadata: Vec<Metadata> =
        of.iter().map(|&i| Metadata { causation_id: &appends[i].causation, step: appends[i].expected, trace: &appends[i].trace }).collect();
    for (&i, metadata) in of.iter().zip(&metadata) {
        let a = &appends[i];
        let step = Step { saga: &a.saga, previous_status: a.previous_status.as_deref(), events: &a.events, at: now };
        for (p, projection) in projections.iter().enumerate() {
            if projection.definition() == a.saga.definition.name {
                steps[p].push(step);
            }
        }
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
    let mut read_models = Vec::new();
    for (projection, steps) in projections.iter().zip(&steps) {
        read_models.extend(super::projection::rows(projection.as_ref(), steps)?);
    }
    Ok((Rows::of(&events)?, read_models))
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

/// The saga ids a write returned.
fn returned_ids(rows: Vec<sqlx::any::AnyRow>) -> Result<HashSet<Uuid>, StoreError> {
    rows.iter()
        .map(|r| {
            let id: String = r.try_get(0)?;
            Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
}

/// Records an idempotency key for `saga`, or says which saga it already
/// names. A key older than its lifetime is taken over, as if forgotten.
async fn claim_key(tx: &mut Transaction<'_, Any>, key: &IdempotencyKey, saga: Uuid, now: i64) -> Result<Option<Committed>, StoreError> {
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
