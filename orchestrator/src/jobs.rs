//! Bulk operator actions: one action (retry, cancel, resume) on every saga
//! a list filter matched, as a recorded job.
//!
//! The matched sagas are written down when the job is created, so the job
//! acts on what the operator saw, not on whatever matches later. A replica
//! works on a job while it holds the job's lease, a batch per second at
//! the job's rate; if it dies, the lease runs out and any replica takes the
//! job over where the marks stop. The action a saga takes carries the job's
//! key into the saga's own events, and the machine does not take an action
//! with a key it has seen (`sagas::Ignored::Repeated`): a saga acted on
//! just before a crash, not yet marked, is not acted on twice.

use std::sync::Arc;
use std::time::Duration;

use db::Backend;
use db::Column::Text;
use sagas::{Act, Action, Definition, Ignored};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock;
use crate::runtime::{Runtime, RuntimeError, Stepped};
use crate::store::{Store, StoreError};

/// How long a replica owns a job it works on without renewing the claim.
const LEASE_MS: i64 = 5_000;
/// How often an idle replica looks for a job to work on.
const POLL: Duration = Duration::from_millis(500);
/// Sagas acted on at once within a second's batch: their steps share the
/// group commits, and their marks one statement.
const CONCURRENCY: usize = 100;
/// Most sagas one job may match: a bigger one is a filter to narrow.
pub const MAX_MATCHED: usize = 100_000;
pub const MAX_RATE: u32 = 1_000;
pub const DEFAULT_RATE: u32 = 50;

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub job: Uuid,
    #[serde(flatten)]
    pub action: Action,
    pub reason: String,
    pub operator: String,
    pub filter: Value,
    pub rate: u32,
    pub status: String,
    pub matched: i64,
    pub done: i64,
    pub refused: i64,
    pub failed: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// A job to record.
pub struct NewJob {
    pub action: Action,
    pub reason: String,
    pub operator: String,
    pub filter: Value,
    pub rate: u32,
    pub sagas: Vec<Uuid>,
    /// The request's `Idempotency-Key` and body fingerprint: a repeat finds
    /// this job instead of creating a second one.
    pub key: Option<(String, String)>,
}

/// What creating a job did.
pub enum Created {
    New(Job),
    /// The key names this job, created for the same request.
    Existing(Job),
    /// The key names this job, created for another request.
    KeyReused(Uuid),
}

const COLUMNS: &str = "id, action, reason, operator, filter, rate, status, matched, done, refused, failed, created_at, updated_at";

/// The job a request's key names already, and whether for the same body.
pub async fn by_key(store: &Store, key: &str, fingerprint: &str) -> Result<Option<Created>, StoreError> {
    let row = sqlx::query("SELECT id, fingerprint FROM action_jobs WHERE request_key = $1").bind(key).fetch_optional(store.pool()).await?;
    let Some(row) = row else { return Ok(None) };
    let id: String = row.try_get("id")?;
    let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if row.try_get::<Option<String>, _>("fingerprint")?.as_deref() != Some(fingerprint) {
        return Ok(Some(Created::KeyReused(id)));
    }
    let job = get(store, id).await?.ok_or_else(|| StoreError::Corrupt(format!("job {id} vanished")))?;
    Ok(Some(Created::Existing(job)))
}

/// Records a job and the sagas it matched, in one transaction; a key
/// taken meanwhile by a concurrent request finds that request's job.
pub async fn create(store: &Store, new: NewJob) -> Result<Created, StoreError> {
    let id = Uuid::now_v7();
    let now = clock::now_us();
    let status = if new.sagas.is_empty() { "finished" } else { "running" };
    let (key, fingerprint) = new.key.clone().unzip();
    let mut tx = store.pool().begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO action_jobs (id, action, reason, operator, filter, rate, status, matched, request_key, fingerprint, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) ON CONFLICT (request_key) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(serde_json::to_string(&new.action)?)
    .bind(&new.reason)
    .bind(&new.operator)
    .bind(new.filter.to_string())
    .bind(i64::from(new.rate))
    .bind(status)
    .bind(new.sagas.len() as i64)
    .bind(key)
    .bind(fingerprint)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        let (key, fingerprint) = new.key.unwrap_or_default();
        return by_key(store, &key, &fingerprint).await?.ok_or_else(|| StoreError::Retryable("a job's key was taken and released".into()));
    }
    let insert = db::insert_rows(store.backend(), "action_job_sagas", &[("job", Text), ("saga_id", Text)], &[]);
    for chunk in new.sagas.chunks(1000) {
        let rows: Vec<Value> = chunk.iter().map(|s| serde_json::json!({ "job": id.to_string(), "saga_id": s.to_string() })).collect();
        sqlx::query(sqlx::AssertSqlSafe(insert.clone())).bind(Value::Array(rows).to_string()).bind(0_i64).bind(chunk.len() as i64).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let job = get(store, id).await?.ok_or_else(|| StoreError::Corrupt(format!("job {id} vanished after its insert")))?;
    Ok(Created::New(job))
}

pub async fn get(store: &Store, id: Uuid) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM action_jobs WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(store.readers()).await?;
    row.map(|r| job(&r)).transpose()
}

/// The newest jobs first.
pub async fn recent(store: &Store, limit: i64) -> Result<Vec<Job>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM action_jobs ORDER BY created_at DESC, id DESC LIMIT $1");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(limit).fetch_all(store.readers()).await?;
    rows.iter().map(job).collect()
}

/// Why sagas of a job were refused or failed, a few at most.
pub async fn problems(store: &Store, id: Uuid, limit: i64) -> Result<Vec<(Uuid, String, String)>, StoreError> {
    let rows = sqlx::query("SELECT saga_id, result, detail FROM action_job_sagas WHERE job = $1 AND result IN ('refused', 'failed') ORDER BY saga_id LIMIT $2")
        .bind(id.to_string())
        .bind(limit)
        .fetch_all(store.readers())
        .await?;
    rows.iter()
        .map(|r| {
            let saga: String = r.try_get("saga_id")?;
            let detail: Option<String> = r.try_get("detail")?;
            Ok((Uuid::parse_str(&saga).map_err(|e| StoreError::Corrupt(e.to_string()))?, r.try_get("result")?, detail.unwrap_or_default()))
        })
        .collect()
}

fn job(r: &sqlx::any::AnyRow) -> Result<Job, StoreError> {
    let id: String = r.try_get("id")?;
    let action: String = r.try_get("action")?;
    let filter: String = r.try_get("filter")?;
    Ok(Job {
        job: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        action: serde_json::from_str(&action)?,
        reason: r.try_get("reason")?,
        operator: r.try_get("operator")?,
        filter: serde_json::from_str(&filter)?,
        rate: u32::try_from(r.try_get::<i64, _>("rate")?).unwrap_or(DEFAULT_RATE),
        status: r.try_get("status")?,
        matched: r.try_get("matched")?,
        done: r.try_get("done")?,
        refused: r.try_get("refused")?,
        failed: r.try_get("failed")?,
        created_at: clock::rfc3339(r.try_get("created_at")?),
        updated_at: clock::rfc3339(r.try_get("updated_at")?),
    })
}

/// Takes a running job whose lease has run out (none held, or its holder
/// died), for `LEASE_MS`, as `holder`.
async fn claim(store: &Store, holder: &str) -> Result<Option<Job>, StoreError> {
    let now = clock::now().0;
    let pick = match store.backend() {
        Backend::Postgres => "SELECT id FROM action_jobs WHERE status = 'running' AND lease_until < $2 ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "SELECT id FROM action_jobs WHERE status = 'running' AND lease_until < $2 ORDER BY created_at LIMIT 1",
    };
    let sql = format!("UPDATE action_jobs SET lease_until = $1, holder = $3 WHERE id = ({pick}) RETURNING {COLUMNS}");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now + LEASE_MS).bind(now).bind(holder).fetch_optional(store.pool()).await?;
    row.map(|r| job(&r)).transpose()
}

/// Works on jobs until `shutdown`: claims one, acts on its sagas a batch
/// per second, and lets go of it when it is finished.
pub async fn run(runtime: Runtime, store: Store, shutdown: CancellationToken) {
    // Names this replica's leases, so it renews and releases only its own.
    let holder = Uuid::new_v4().to_string();
    loop {
        match claim(&store, &holder).await {
            Ok(Some(job)) => {
                tracing::info!(job = %job.job, action = job.action.name(), matched = job.matched, "working on an action job");
                if let Err(e) = work(&runtime, &store, &job, &holder, &shutdown).await {
                    tracing::warn!(job = %job.job, error = %e, "action job interrupted; it resumes when its lease runs out");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for action jobs"),
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Extends this replica's lease on job `id`; false when it no longer
/// holds it (another replica took it over, or the job finished).
async fn renew(store: &Store, id: &str, holder: &str) -> Result<bool, StoreError> {
    let renewed = sqlx::query("UPDATE action_jobs SET lease_until = $1 WHERE id = $2 AND holder = $3 AND status = 'running'")
        .bind(clock::now().0 + LEASE_MS)
        .bind(id)
        .bind(holder)
        .execute(store.pool())
        .await?;
    Ok(renewed.rows_affected() == 1)
}

async fn work(runtime: &Runtime, store: &Store, job: &Job, holder: &str, shutdown: &CancellationToken) -> Result<(), StoreError> {
    let key = format!("job:{}", job.job);
    let id = job.job.to_string();
    let mark = format!(
        "UPDATE action_job_sagas SET result = r.result, detail = r.detail FROM {} WHERE action_job_sagas.job = $2 AND action_job_sagas.saga_id = r.saga_id",
        db::recordset(store.backend(), &[("saga_id", Text), ("result", Text), ("detail", Text)])
    );
    loop {
        let second = tokio::time::Instant::now() + Duration::from_secs(1);
        if !renew(store, &id, holder).await? {
            return Ok(());
        }
        let rows = sqlx::query("SELECT saga_id FROM action_job_sagas WHERE job = $1 AND result IS NULL ORDER BY saga_id LIMIT $2")
            .bind(&id)
            .bind(i64::from(job.rate))
            .fetch_all(store.pool())
            .await?;
        let batch: Vec<Uuid> = rows.iter().filter_map(|r| r.try_get::<String, _>("saga_id").ok()).filter_map(|s| Uuid::parse_str(&s).ok()).collect();
        if batch.is_empty() {
            count(store, &id, true).await?;
            tracing::info!(job = %job.job, "action job finished");
            return Ok(());
        }
        let migration = match &job.action {
            Action::Migrate { from, to } => Some(versions(runtime, job, *from, *to)),
            _ => None,
        };
        for chunk in batch.chunks(CONCURRENCY) {
            // Renewed per chunk: a slow batch must not outlive the lease
            // and run beside the replica that would take it over.
            if !renew(store, &id, holder).await? {
                return Ok(());
            }
            let acts = chunk.iter().map(|&saga| {
                let act = Act { action: job.action.clone(), reason: job.reason.clone(), operator: job.operator.clone(), key: Some(key.clone()) };
                let migration = migration.clone();
                async move {
                    let outcome = match migration {
                        None => runtime.operate(saga, act).await,
                        Some(Ok((old, new))) => runtime.migrate(saga, &old, &new, act).await,
                        Some(Err(missing)) => Err(RuntimeError::NoDefinition(missing)),
                    };
                    (saga, outcome)
                }
            });
            let mut marks = Vec::with_capacity(chunk.len());
            let mut away = None;
            for (saga, outcome) in futures::future::join_all(acts).await {
                let (result, detail) = match outcome {
                    Ok(Stepped::Applied { .. } | Stepped::Ignored(Ignored::Repeated(_))) => ("done", None),
                    Ok(Stepped::Ignored(why)) => ("refused", Some(why.to_string())),
                    Ok(Stepped::UnknownSaga) => ("refused", Some("no such saga".to_string())),
                    // The store is away: the saga is left unmarked, for the
                    // next round (or whoever holds the lease next).
                    Err(RuntimeError::Store(e @ (StoreError::Database(_) | StoreError::Retryable(_) | StoreError::Unconfirmed(_) | StoreError::Closed))) => {
                        away = Some(e);
                        continue;
                    }
                    // An unreadable saga stays unreadable: marked, so that it
                    // does not stop the job at every round.
                    Err(e) => ("failed", Some(e.to_string())),
                };
                metrics::counter!("eso_action_job_sagas_total", "result" => result).increment(1);
                marks.push(serde_json::json!({ "saga_id": saga.to_string(), "result": result, "detail": detail }));
            }
            // One statement (one commit) for the chunk's marks.
            if !marks.is_empty() {
                let n = marks.len() as i64;
                sqlx::query(sqlx::AssertSqlSafe(mark.clone())).bind(Value::Array(marks).to_string()).bind(&id).bind(n).execute(store.pool()).await?;
            }
            if let Some(e) = away {
                return Err(e);
            }
        }
        count(store, &id, false).await?;
        tokio::select! {
            () = tokio::time::sleep_until(second) => {}
            () = shutdown.cancelled() => {
                // Let go at once, so a replica still running takes over
                // without waiting for the lease to run out.
                sqlx::query("UPDATE action_jobs SET lease_until = 0 WHERE id = $1 AND holder = $2").bind(&id).bind(holder).execute(store.pool()).await?;
                return Ok(());
            }
        }
    }
}

/// Both versions a migration job moves sagas between. The definition is
/// the job's filter's: `POST /definitions/{name}/migrations` always sets it.
fn versions(runtime: &Runtime, job: &Job, from: u32, to: u32) -> Result<(Arc<Definition>, Arc<Definition>), String> {
    let name = job.filter.get("definition").and_then(Value::as_str).unwrap_or_default();
    let loaded = |version: u32| runtime.registry().version(name, version).cloned().ok_or_else(|| format!("{name} v{version}"));
    Ok((loaded(from)?, loaded(to)?))
}

/// Brings a job's counts up to date from its sagas' marks.
async fn count(store: &Store, id: &str, finished: bool) -> Result<(), StoreError> {
    let sql = "UPDATE action_jobs SET \
         done = (SELECT COUNT(*) FROM action_job_sagas WHERE job = $1 AND result = 'done'), \
         refused = (SELECT COUNT(*) FROM action_job_sagas WHERE job = $1 AND result = 'refused'), \
         failed = (SELECT COUNT(*) FROM action_job_sagas WHERE job = $1 AND result = 'failed'), \
         status = CASE WHEN $2 = 1 THEN 'finished' ELSE status END, updated_at = $3 WHERE id = $1";
    sqlx::query(sql).bind(id).bind(i64::from(finished)).bind(clock::now_us()).execute(store.pool()).await?;
    Ok(())
}
