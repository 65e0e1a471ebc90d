//! Rebuilding saga snapshots and projections from the event log.
//!
//! The `events` table is the source of truth; a saga's row and every
//! projection are caches of what its events say. Replay folds each
//! stream again ([`Saga::replay`], the fold the step itself uses) and
//! feeds the projections the same steps the committer fed them, then
//! compares: any difference between a stored row and its rebuild is a
//! bug, reported per saga. A dry run rolls its rebuild back; a real one
//! keeps it.
//!
//! Run it with no orchestrator writing: a step committed while a batch is
//! rebuilt could be overwritten by the rebuild of the state before it.

use std::collections::BTreeMap;

use sagas::{Change, Event, Saga};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::batch::{Statement, id_rows};
use super::projection::Step;
use super::{Store, StoreError};
use db::Column::Text;
use db::recordset;

/// Sagas rebuilt per transaction.
const BATCH: i64 = 500;

/// What replay found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub sagas: u64,
    pub events: u64,
    /// Per saga, what differed between the stored rows and the rebuild.
    pub differences: BTreeMap<Uuid, Vec<String>>,
    /// Whether the rebuild was kept.
    pub written: bool,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }
}

/// One saga's stored row as replay compares it.
struct Stored {
    snapshot: Value,
    state: String,
    status: String,
    terminal: bool,
    version: i64,
    attempt: Option<i64>,
}

impl Store {
    /// Rebuilds every saga's snapshot and every projection from the events;
    /// keeps the rebuild unless `dry_run`.
    pub async fn replay(&self, dry_run: bool) -> Result<Report, StoreError> {
        let mut report = Report { written: !dry_run, ..Report::default() };
        let mut after = String::new();
        let ids_sql = recordset(self.backend, &[("id", Text)]);
        let events_sql = Statement::planned_each_time(format!(
            "SELECT e.stream_id, e.version, e.event_type, e.data, e.metadata, e.recorded_at FROM events e JOIN {ids_sql} ON e.stream_id = r.id \
             ORDER BY e.stream_id, e.version"
        ));
        loop {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query("SELECT id, snapshot, state, status, terminal, version, attempt FROM sagas WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(&after)
                .bind(BATCH)
                .fetch_all(&mut *tx)
                .await?;
            if rows.is_empty() {
                break;
            }
            let mut stored = BTreeMap::new();
            for r in &rows {
                let id: String = r.try_get("id")?;
                let snapshot: String = r.try_get("snapshot")?;
                let saga = Stored {
                    snapshot: normalised(&snapshot)?,
                    state: r.try_get("state")?,
                    status: r.try_get("status")?,
                    terminal: r.try_get::<i64, _>("terminal")? != 0,
                    version: r.try_get("version")?,
                    attempt: r.try_get("attempt")?,
                };
                after = id.clone();
                stored.insert(parse_id(&id)?, saga);
            }
            let ids: Vec<Uuid> = stored.keys().copied().collect();
            let event_rows = events_sql.fetch(&mut *tx, &id_rows(&ids), 0).await?;
            let mut streams: BTreeMap<Uuid, Vec<Recorded>> = BTreeMap::new();
            for r in &event_rows {
                let id: String = r.try_get("stream_id")?;
                let data: String = r.try_get("data")?;
                let metadata: String = r.try_get("metadata")?;
                let change: Change = serde_json::from_str(&data)?;
                let metadata: Value = serde_json::from_str(&metadata)?;
                let at: i64 = r.try_get("recorded_at")?;
                // Events of one step share its `step`; events written before
                // it was recorded share their commit time and cause instead.
                let step = match metadata.get("step").and_then(Value::as_u64) {
                    Some(step) => StepKey::Step(step),
                    None => StepKey::Commit(at, metadata.get("causation_id").and_then(Value::as_str).unwrap_or_default().to_string()),
                };
                streams.entry(parse_id(&id)?).or_default().push(Recorded { event: Event { event_type: r.try_get("event_type")?, change }, at, step });
                report.events += 1;
            }
            report.sagas += ids.len() as u64;

            // The steps of each saga, each with the saga as it was after it.
            let mut rebuilt: BTreeMap<Uuid, Vec<Rebuilt>> = BTreeMap::new();
            for (&id, saga) in &stored {
                let differences = report.differences.entry(id).or_default();
                let events = streams.remove(&id).unwrap_or_default();
                match fold(&events) {
                    Ok(steps) => {
                        if let Some(last) = steps.last() {
                            compare(saga, &last.saga, differences);
                        } else {
                            differences.push("the saga has a row but no events".into());
                        }
                        rebuilt.insert(id, steps);
                    }
                    Err(e) => differences.push(format!("its events do not fold: {e}")),
                }
            }
            if !dry_run {
                for (id, steps) in &rebuilt {
                    if let Some(last) = steps.last()
                        && report.differences.get(id).is_some_and(|d| !d.is_empty())
                    {
                        write_snapshot(&mut tx, &last.saga).await?;
                    }
                }
            }

            for projection in self.projections.iter() {
                let mine: Vec<Uuid> = rebuilt
                    .iter()
                    .filter(|(_, steps)| steps.first().is_some_and(|s| s.saga.definition.name == projection.definition()))
                    .map(|(id, _)| *id)
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let before = projection.read(&mut tx, &mine).await?;
                projection.delete(&mut tx, &mine).await?;
                // Round k applies every saga's k-th step: one step per saga
                // per call, as in a group commit.
                let rounds = mine.iter().filter_map(|id| rebuilt.get(id)).map(Vec::len).max().unwrap_or(0);
                for k in 0..rounds {
                    let steps: Vec<Step> = mine
                        .iter()
                        .filter_map(|id| rebuilt.get(id))
                        .filter_map(|steps| {
                            let step = steps.get(k)?;
                            let previous_status = k.checked_sub(1).and_then(|p| steps.get(p)).map(|p| p.saga.status.as_str());
                            Some(Step { saga: &step.saga, previous_status, events: &step.events, at: step.at })
                        })
                        .collect();
                    super::projection::apply(&mut tx, projection.as_ref(), &steps).await?;
                }
                let after = projection.read(&mut tx, &mine).await?;
                for id in &mine {
                    let (was, now) = (before.get(id), after.get(id));
                    if was != now {
                        let show = |v: Option<&Value>| v.map_or_else(|| "no row".to_string(), Value::to_string);
                        report.differences.entry(*id).or_default().push(format!(
                            "{}: stored {} but the events make {}",
                            projection.name(),
                            show(was),
                            show(now)
                        ));
                    }
                }
            }
            if dry_run {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            if (rows.len() as i64) < BATCH {
                break;
            }
        }
        report.differences.retain(|_, d| !d.is_empty());
        Ok(report)
    }
}

struct Recorded {
    event: Event,
    at: i64,
    step: StepKey,
}

/// What the events of one step have in common.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StepKey {
    /// The stream version the step was decided on (metadata `step`).
    Step(u64),
    /// Commit time and cause, for events recorded before `step` was.
    Commit(i64, String),
}

/// One step as the committer saw it: its events and the saga after them.
struct Rebuilt {
    events: Vec<Event>,
    saga: Saga,
    at: i64,
}

/// Folds a stream, cutting it into the steps that appended it.
fn fold(events: &[Recorded]) -> Result<Vec<Rebuilt>, sagas::FoldError> {
    let mut steps: Vec<Rebuilt> = Vec::new();
    let mut saga: Option<Saga> = None;
    let mut i = 0;
    while i < events.len() {
        let (at, key) = (events[i].at, &events[i].step);
        let mut step = Vec::new();
        while i < events.len() && &events[i].step == key {
            saga = Some(Saga::apply(saga, &events[i].event)?);
            step.push(events[i].event.clone());
            i += 1;
        }
        if let Some(saga) = &saga {
            steps.push(Rebuilt { events: step, saga: saga.clone(), at });
        }
    }
    Ok(steps)
}

/// A stored snapshot as this release writes it, where it reads as a saga:
/// one written before a format change (a pending command's payload until
/// issue 18) means the same saga and compares equal. Anything else is
/// compared as it is, to be reported.
fn normalised(snapshot: &str) -> Result<Value, StoreError> {
    let value: Value = serde_json::from_str(snapshot)?;
    Ok(serde_json::from_value::<Saga>(value.clone()).ok().and_then(|saga| serde_json::to_value(saga).ok()).unwrap_or(value))
}

fn compare(stored: &Stored, folded: &Saga, differences: &mut Vec<String>) {
    let show = |attempt: Option<i64>| attempt.map_or_else(|| "none".to_string(), |a| a.to_string());
    // No snapshot is never wrong (a read folds the events); one that is
    // there must be their fold, whether or not this release writes one
    // for a stream that short (`super::SNAPSHOT_FROM`).
    match serde_json::to_value(folded) {
        Ok(value) if !stored.snapshot.is_null() && value != stored.snapshot => {
            differences.push(format!("snapshot: stored {} but the events make {value}", stored.snapshot))
        }
        Ok(_) => {}
        Err(e) => differences.push(format!("the fold does not serialise: {e}")),
    }
    let columns = [
        ("state", stored.state.clone(), folded.state.clone()),
        ("status", stored.status.clone(), folded.status.clone()),
        ("terminal", stored.terminal.to_string(), folded.terminal.to_string()),
        ("version", stored.version.to_string(), folded.version.to_string()),
        ("attempt", show(stored.attempt), show(folded.pending.as_ref().map(|p| i64::from(p.attempt)))),
    ];
    for (column, was, now) in columns {
        if was != now {
            differences.push(format!("{column}: stored {was} but the events make {now}"));
        }
    }
}

async fn write_snapshot(tx: &mut sqlx::Transaction<'static, sqlx::Any>, saga: &Saga) -> Result<(), StoreError> {
    sqlx::query("UPDATE sagas SET snapshot = $2, state = $3, status = $4, terminal = $5, version = $6, deadline = $7, attempt = $8, definition_version = $9 WHERE id = $1")
        .bind(saga.id.to_string())
        .bind(serde_json::to_string(&super::snapshot(saga))?)
        .bind(&saga.state)
        .bind(&saga.status)
        .bind(i64::from(saga.terminal))
        .bind(i64::try_from(saga.version).unwrap_or(i64::MAX))
        .bind(saga.deadline().map(|d| d.0))
        .bind(saga.pending.as_ref().map(|p| i64::from(p.attempt)))
        .bind(i64::from(saga.definition.version))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn parse_id(id: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(id).map_err(|e| StoreError::Corrupt(format!("saga id {id:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::normalised;

    #[test]
    fn a_snapshot_in_the_older_format_compares_as_the_saga_it_means() {
        let id = uuid::Uuid::from_u128(7);
        let saga = |pending| {
            json!({ "id": id, "definition": { "name": "order", "version": 2, "hash": "h" }, "data": {}, "state": "payment",
                    "status": "created", "terminal": false, "pending": pending, "commands": { "payment": id }, "visits": 1, "version": 1 })
        };
        let older =
            saga(json!({ "command": { "id": id, "saga_id": id, "subject": "eso.cmd.payment.process", "payload": {}, "attempt": 1, "timeout_ms": 2000 },
                                  "attempt": 1, "phase": "awaiting_reply", "deadline": 5 }));
        let now = saga(json!({ "command_id": id, "attempt": 1, "phase": "awaiting_reply", "deadline": 5 }));
        assert_eq!(normalised(&older.to_string()).ok(), Some(now.clone()));
        assert_eq!(normalised(&now.to_string()).ok(), Some(now));
        assert_eq!(normalised("{\"not\": \"a saga\"}").ok(), Some(json!({ "not": "a saga" })), "kept as it is, to be reported");
    }
}
