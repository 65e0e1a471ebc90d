//! Recording participants' first answers, many commands per statement.
//!
//! A participant records its answer before it replies, so every command
//! costs a durable write. One task takes every answer waiting and writes
//! them in one `INSERT … ON CONFLICT DO NOTHING`: one transaction and one
//! disk flush for all the commands that arrived together (group commit),
//! instead of one each; at partial load it waits a moment for more
//! (`db::gather`), as the orchestrator's committer does. A command id that
//! already has an answer gets the recorded one back, so a repeat never
//! decides twice.

use std::collections::{HashMap, HashSet};

use db::gather::{self, Gather};
use db::{Backend, Column, insert_rows, now_us};
use serde_json::{Map, Value};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// Most answers in one statement.
const MAX_BATCH: usize = 256;

/// Where a recorded outcome (or why none could be) goes.
type Reply = oneshot::Sender<Result<String, String>>;
type Job = (Map<String, Value>, Reply);

/// Records answers in a table keyed by `command_id` with an `outcome` column.
#[derive(Clone)]
pub struct Recorder {
    jobs: mpsc::Sender<Job>,
}

impl Recorder {
    /// Starts the recording task for `table`; `columns` are those each row
    /// sets besides `created_at` (stamped by the recorder) and must include
    /// `command_id` and `outcome`.
    pub fn spawn(pool: AnyPool, backend: Backend, table: &str, columns: &[(&str, Column)]) -> Recorder {
        let insert = format!("{} ON CONFLICT (command_id) DO NOTHING RETURNING command_id", insert_rows(backend, table, columns, &["created_at"]));
        let recorded = format!("SELECT outcome FROM {table} WHERE command_id = $1");
        let (jobs, rx) = mpsc::channel(MAX_BATCH * 8);
        tokio::spawn(run(pool, insert, recorded, rx));
        Recorder { jobs }
    }

    /// Records `row` unless its command id has an answer already, and
    /// returns the outcome recorded first for that command id.
    pub async fn record(&self, row: Map<String, Value>) -> Result<String, Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send((row, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(|e| Error::failed(format!("recording the answer failed: {e}")))
    }
}

async fn run(pool: AnyPool, insert: String, recorded: String, mut rx: mpsc::Receiver<Job>) {
    let mut gather = Gather::new(gather::WINDOW, tokio::time::Instant::now());
    loop {
        let batch = gather.next_batch(&mut rx, MAX_BATCH).await;
        if batch.is_empty() {
            return;
        }
        // A repeat of a command in the same batch (a retry that overtook
        // the first try) must get the first try's answer, not its own.
        let mut order: Vec<String> = Vec::new();
        let mut by_id: HashMap<String, (Map<String, Value>, Vec<Reply>)> = HashMap::new();
        for (row, reply) in batch {
            let id = row.get("command_id").and_then(Value::as_str).unwrap_or_default().to_string();
            by_id
                .entry(id.clone())
                .or_insert_with(|| {
                    order.push(id);
                    (row, Vec::new())
                })
                .1
                .push(reply);
        }
        let rows: Vec<&Map<String, Value>> = order.iter().filter_map(|id| by_id.get(id).map(|(row, _)| row)).collect();
        let answers = write(&pool, &insert, &recorded, &rows).await.map_err(|e| e.to_string());
        for id in &order {
            let Some((row, replies)) = by_id.remove(id) else { continue };
            let answer = match &answers {
                Ok(recorded) => Ok(recorded.get(id).cloned().unwrap_or_else(|| outcome_of(&row))),
                Err(e) => Err(e.clone()),
            };
            for reply in replies {
                let _ = reply.send(answer.clone());
            }
        }
    }
}

/// Inserts the rows; returns the outcomes recorded earlier for the command
/// ids that were already there (the new rows' outcomes are their own).
async fn write(pool: &AnyPool, insert: &str, recorded: &str, rows: &[&Map<String, Value>]) -> Result<HashMap<String, String>, sqlx::Error> {
    let json = serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let inserted: HashSet<String> = sqlx::query(AssertSqlSafe(insert))
        .bind(json)
        .bind(now_us())
        .bind(rows.len() as i64)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    let mut earlier = HashMap::new();
    for row in rows {
        let id = row.get("command_id").and_then(Value::as_str).unwrap_or_default();
        if inserted.contains(id) {
            continue;
        }
        let outcome: String = sqlx::query(AssertSqlSafe(recorded)).bind(id).fetch_one(pool).await?.try_get("outcome")?;
        earlier.insert(id.to_string(), outcome);
    }
    Ok(earlier)
}

fn stopped() -> Error {
    Error::failed("the participant is shutting down")
}

fn outcome_of(row: &Map<String, Value>) -> String {
    row.get("outcome").and_then(Value::as_str).unwrap_or_default().to_string()
}
