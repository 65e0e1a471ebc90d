//! Appending events with optimistic concurrency, batched across sagas.
//!
//! Each append names the stream version it was decided on. The saga's row
//! is the stream head: `UPDATE … WHERE version = expected` either moves it
//! (and the events are inserted) or touches nothing (a conflict: someone
//! else moved the saga first; the caller reloads and decides again). So a
//! conflict never loses or doubles a transition, and one conflicting saga
//! does not fail the others in its batch.
//!
//! Group commit: committers take every append waiting in the queue and
//! write them in one transaction, so one disk flush serves many sagas. An
//! append returns only after its transaction committed: a 2xx means on disk.

use std::collections::BTreeMap;
use std::sync::Arc;

use sagas::{Event, Saga};
use serde_json::json;
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::clock::now_us;

/// Most appends in one transaction; bigger batches add latency for little gain.
const MAX_BATCH: usize = 256;

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
    /// Set when the step changed the status the order shows.
    pub status_changed: bool,
    pub new_order: Option<NewOrderRow>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewOrderRow {
    pub amount_cents: i64,
    pub user_id: String,
    pub payee_id: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    Appended,
    /// The saga moved since the step was decided; reload and step again.
    Conflict,
    /// The idempotency key already names this saga.
    KeyTaken(Uuid),
}

pub(super) type Job = (Append, oneshot::Sender<Result<Committed, StoreError>>);

impl Store {
    /// Appends atomically with the read models; returns once committed.
    pub async fn append(&self, append: Append) -> Result<Committed, StoreError> {
        let (tx, rx) = oneshot::channel();
        let lane = (append.saga.id.as_u128() % self.committers.len().max(1) as u128) as usize;
        let committer = self.committers.get(lane).ok_or(StoreError::Closed)?;
        committer.send((append, tx)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Resolves after the next commit (for the relay).
    pub(crate) fn appended(&self) -> &Notify {
        &self.appended
    }
}

/// Starts `count` committers, each with its own queue. A saga always goes
/// to the same committer (by its id), so two concurrent transactions never
/// touch the same saga's rows and cannot deadlock on them.
pub(super) fn spawn_committers(pool: AnyPool, count: usize, appended: Arc<Notify>) -> Vec<mpsc::Sender<Job>> {
    (0..count.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::channel::<Job>(MAX_BATCH * 8);
            tokio::spawn(run_committer(pool.clone(), rx, appended.clone()));
            tx
        })
        .collect()
}

async fn run_committer(pool: AnyPool, mut rx: mpsc::Receiver<Job>, appended: Arc<Notify>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("eso_commit_batch_size").record(batch.len() as f64);
        let started = std::time::Instant::now();
        let (appends, replies): (Vec<Append>, Vec<_>) = batch.into_iter().unzip();
        let mut result = commit(&pool, &appends).await;
        // Idempotency keys are shared across committers; a deadlock on
        // them (or a serialization failure) is worth one more try.
        if let Err(StoreError::Retryable(e)) = &result {
            tracing::info!(error = %e, "commit retried");
            result = commit(&pool, &appends).await;
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
                    let _ = reply.send(Err(StoreError::Database(e.to_string())));
                }
            }
        }
        metrics::histogram!("eso_commit_seconds").record(started.elapsed().as_secs_f64());
    }
}

/// One event row, inserted with the rest of its batch in one statement.
struct EventRow {
    event_id: String,
    stream_id: String,
    version: i64,
    event_type: String,
    data: String,
    metadata: String,
}

/// Rows per INSERT: 7 parameters each stays far below every driver's limit.
const ROWS_PER_INSERT: usize = 500;

async fn commit(pool: &AnyPool, appends: &[Append]) -> Result<Vec<Committed>, StoreError> {
    let now = now_us();
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(appends.len());
    let mut events = Vec::new();
    for append in appends {
        results.push(commit_one(&mut tx, append, now, &mut events).await?);
    }
    for chunk in events.chunks(ROWS_PER_INSERT) {
        insert_events(&mut tx, chunk, now).await?;
    }
    tx.commit().await?;
    Ok(results)
}

/// Inserts a batch's events in one statement: most of a commit's work was
/// one round trip per event before.
async fn insert_events(tx: &mut Transaction<'static, Any>, rows: &[EventRow], now: i64) -> Result<(), StoreError> {
    let mut sql = String::from("INSERT INTO events (event_id, stream_id, version, event_type, data, metadata, recorded_at) VALUES ");
    for i in 0..rows.len() {
        let n = i * 7;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${}, ${}, ${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4, n + 5, n + 6, n + 7));
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for row in rows {
        query = query
            .bind(&row.event_id)
            .bind(&row.stream_id)
            .bind(row.version)
            .bind(&row.event_type)
            .bind(&row.data)
            .bind(&row.metadata)
            .bind(now);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

async fn commit_one(tx: &mut Transaction<'static, Any>, a: &Append, now: i64, events: &mut Vec<EventRow>) -> Result<Committed, StoreError> {
    let saga = &a.saga;
    let id = saga.id.to_string();
    if let Some(key) = &a.idempotency_key {
        let inserted = sqlx::query("INSERT INTO idempotency_keys (key, saga_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(&id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        if inserted.rows_affected() == 0 {
            let existing: String = sqlx::query("SELECT saga_id FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_one(&mut **tx)
                .await?
                .try_get("saga_id")?;
            let existing = Uuid::parse_str(&existing).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            return Ok(Committed::KeyTaken(existing));
        }
    }

    let snapshot = serde_json::to_string(saga)?;
    let deadline = saga.deadline().map(|d| d.0);
    let version = i64::try_from(saga.version).unwrap_or(i64::MAX);
    let expected = i64::try_from(a.expected).unwrap_or(i64::MAX);
    let moved = if a.expected == 0 {
        sqlx::query(
            "INSERT INTO sagas (id, definition, definition_version, state, status, terminal, version, deadline, snapshot, trace, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(&saga.definition.name)
        .bind(i64::from(saga.definition.version))
        .bind(&saga.state)
        .bind(&saga.status)
        .bind(i64::from(saga.terminal))
        .bind(version)
        .bind(deadline)
        .bind(&snapshot)
        .bind(serde_json::to_string(&a.trace)?)
        .bind(now)
        .execute(&mut **tx)
        .await?
    } else {
        sqlx::query(
            "UPDATE sagas SET state = $2, status = $3, terminal = $4, version = $5, deadline = $6, snapshot = $7, updated_at = $8 \
             WHERE id = $1 AND version = $9",
        )
        .bind(&id)
        .bind(&saga.state)
        .bind(&saga.status)
        .bind(i64::from(saga.terminal))
        .bind(version)
        .bind(deadline)
        .bind(&snapshot)
        .bind(now)
        .bind(expected)
        .execute(&mut **tx)
        .await?
    };
    if moved.rows_affected() == 0 {
        return Ok(Committed::Conflict);
    }

    let metadata = serde_json::to_string(&json!({
        "correlation_id": id,
        "causation_id": a.causation,
        "definition": { "name": saga.definition.name, "version": saga.definition.version, "hash": saga.definition.hash },
        "trace": a.trace,
    }))?;
    for (i, event) in a.events.iter().enumerate() {
        events.push(EventRow {
            event_id: Uuid::now_v7().to_string(),
            stream_id: id.clone(),
            version: expected + i as i64 + 1,
            event_type: event.event_type.clone(),
            data: serde_json::to_string(&event.change)?,
            metadata: metadata.clone(),
        });
    }

    if let Some(order) = &a.new_order {
        sqlx::query(
            "INSERT INTO orders (id, amount_cents, user_id, payee_id, description, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&id)
        .bind(order.amount_cents)
        .bind(&order.user_id)
        .bind(&order.payee_id)
        .bind(&order.description)
        .bind(&saga.status)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    } else if a.status_changed {
        // Strictly after created_at even within one microsecond, so clients
        // can tell an order has moved.
        sqlx::query(
            "UPDATE orders SET status = $2, updated_at = CASE WHEN $3 > created_at THEN $3 ELSE created_at + 1 END WHERE id = $1",
        )
        .bind(&id)
        .bind(&saga.status)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(Committed::Appended)
}
