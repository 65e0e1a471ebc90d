//! Statements over a batch of rows bound as one JSON array (see
//! [`db::recordset`]), so that their text does not depend on the batch's
//! size: the store's own and those of the read models.

use std::sync::Arc;

use db::{Backend, Column, recordset, recordset_at};
use serde::Serialize;
use sqlx::{Any, AssertSqlSafe, Transaction};

use super::StoreError;

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

    pub(super) fn query(&self) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
        sqlx::query(AssertSqlSafe(self.sql.clone())).persistent(self.prepared)
    }

    /// Runs the statement over `rows` (bound as one JSON array, `$1`, with
    /// `$2` the commit time and `$3` the row count); nothing for no rows.
    pub async fn execute<T: Serialize>(&self, tx: &mut Transaction<'_, Any>, rows: &[T], now: i64) -> Result<(), StoreError> {
        self.execute_rows(tx, Rows::of(rows)?, now).await
    }

    /// [`Statement::execute`] of rows already serialised.
    pub async fn execute_rows(&self, tx: &mut Transaction<'_, Any>, rows: Rows, now: i64) -> Result<(), StoreError> {
        if rows.len > 0 {
            self.query().bind(rows.json).bind(now).bind(rows.len as i64).execute(&mut **tx).await?;
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
        self.fetch_rows(executor, Rows::of(rows)?, now).await
    }

    /// [`Statement::fetch`] of rows already serialised.
    pub async fn fetch_rows<'c, E>(&self, executor: E, rows: Rows, now: i64) -> Result<Vec<sqlx::any::AnyRow>, StoreError>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        if rows.len == 0 {
            return Ok(Vec::new());
        }
        Ok(self.query().bind(rows.json).bind(now).bind(rows.len as i64).fetch_all(executor).await?)
    }
}

/// One saga id of a batch, as the recordset statements take it (`id`).
#[derive(Serialize)]
pub struct IdRow<T> {
    id: T,
}

/// The rows of a batch of saga ids, a [`uuid::Uuid`] or its text each.
pub fn id_rows<T: Serialize>(ids: &[T]) -> Vec<IdRow<&T>> {
    ids.iter().map(|id| IdRow { id }).collect()
}

/// The rows of one batch statement, serialised as its JSON array.
#[derive(Debug, Clone)]
pub struct Rows {
    pub(super) json: String,
    pub(super) len: usize,
}

impl Rows {
    pub fn of<T: Serialize>(rows: &[T]) -> Result<Rows, StoreError> {
        Ok(Rows { json: serde_json::to_string(rows)?, len: rows.len() })
    }

    pub fn none() -> Rows {
        Rows { json: "[]".into(), len: 0 }
    }
}

/// A write of rows that each belong to one saga, made in a step's commit:
/// the store's own (sagas, events) and those of the read models. `$2` is
/// the commit time in a commit and 0 in replay, so a read model stamps
/// rows from its [`super::Step`]'s `at`, never from `$2`.
///
/// It is written once, as a function of where its rows come from (a
/// table `r` with `n`, the row's place in the batch), so that the
/// committer can run it either way it commits: on its own in a
/// transaction, after the rows of sagas that lost a race were left out; or
/// as one part of a commit made in a single statement (Postgres), where
/// its rows are narrowed to the sagas that statement wrote.
pub struct BatchWrite {
    columns: Vec<(&'static str, Column)>,
    /// The column that holds the id of the saga a row belongs to.
    saga: &'static str,
    sql: Box<dyn Fn(&str) -> String + Send + Sync>,
    /// On its own, over `db::recordset`'s `$1`/`$3`.
    alone: Statement,
}

impl BatchWrite {
    /// A write whose plan may be cached (an insert of the rows).
    pub fn cached(backend: Backend, columns: &[(&'static str, Column)], saga: &'static str, sql: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        let alone = Statement::cached(sql(&recordset(backend, columns)));
        BatchWrite { columns: columns.to_vec(), saga, sql: Box::new(sql), alone }
    }

    /// A write that joins its rows with a table (an update): see
    /// [`Statement::planned_each_time`]. That holds where it runs alone
    /// (replay, SQLite, a transaction); as a part of the one-statement
    /// commit it is prepared, and the committer connection's planner
    /// settings keep its plan to lookups (`db::committer`).
    pub fn planned_each_time(
        backend: Backend,
        columns: &[(&'static str, Column)],
        saga: &'static str,
        sql: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        let alone = Statement::planned_each_time(sql(&recordset(backend, columns)));
        BatchWrite { columns: columns.to_vec(), saga, sql: Box::new(sql), alone }
    }

    pub(super) fn alone(&self) -> &Statement {
        &self.alone
    }

    /// Its text as a part of a larger statement on Postgres (the one
    /// store that commits in one statement), with its rows bound at
    /// `$json` and `$count`: only those of sagas that `written` (a table
    /// of saga ids in that statement) names, unless `written` is `None`.
    pub(super) fn part(&self, json: usize, count: usize, written: Option<&str>) -> String {
        let rows = recordset_at(Backend::Postgres, &self.columns, json, count);
        match written {
            None => (self.sql)(&rows),
            Some(written) => (self.sql)(&format!("(SELECT * FROM {rows} WHERE r.{} IN (SELECT id FROM {written})) AS r", self.saga)),
        }
    }
}
