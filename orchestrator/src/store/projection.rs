//! Read models kept beside the event log: written in the transaction of
//! the events they follow, and rebuilt from those events by replay.
//!
//! The store knows streams, events, saga snapshots, deadlines and
//! idempotency keys, and nothing of what a saga is about. Whatever a saga's
//! adapter wants to show in a table of its own (the order saga's `orders`)
//! it declares as a [`Projection`]: the store hands it every committed step
//! of the sagas it follows, batched like the rest of a group commit. A
//! projection must depend only on what a [`Step`] carries, so that replay,
//! which feeds it the same steps rebuilt from the stored events, writes
//! the same rows.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use sagas::{Event, Saga};
use serde_json::Value;
use sqlx::{Any, Transaction};
use uuid::Uuid;

use super::StoreError;
use super::batch::{BatchWrite, Rows};

/// One committed step of one saga, as a projection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The saga after the step.
    pub saga: &'a Saga,
    /// Its status before the step; `None` when the step started it.
    pub previous_status: Option<&'a str>,
    /// The events the step appended, in order.
    pub events: &'a [Event],
    /// When the step was committed (Unix microseconds): every event of the
    /// step is recorded at this time.
    pub at: i64,
}

impl Step<'_> {
    pub fn started(&self) -> bool {
        self.previous_status.is_none()
    }

    pub fn status_changed(&self) -> bool {
        self.previous_status.is_some_and(|s| s != self.saga.status)
    }
}

pub type Tx<'t> = &'t mut Transaction<'static, Any>;

/// A read model of one definition's sagas. Its writes run in the commit
/// of the steps they follow, its reads and deletes in the caller's
/// transaction, and none of them touches another table.
pub trait Projection: Send + Sync + 'static {
    /// Names it in replay reports.
    fn name(&self) -> &'static str;
    /// The definition whose sagas it follows (every version of it).
    fn definition(&self) -> &'static str;
    /// The statements it writes with, each keyed by saga so that the
    /// committer can leave out the rows of a saga whose step lost a race.
    fn writes(&self) -> &[BatchWrite];
    /// The rows `steps` give each of [`Projection::writes`], in their
    /// order. At most one step per saga in one call.
    fn rows(&self, steps: &[Step<'_>]) -> Result<Vec<Rows>, StoreError>;
    /// Its rows for `ids`, as JSON, for replay to compare.
    fn read<'t>(&'t self, tx: Tx<'t>, ids: &'t [Uuid]) -> BoxFuture<'t, Result<BTreeMap<Uuid, Value>, StoreError>>;
    /// Removes its rows for `ids`, before replay writes them again.
    fn delete<'t>(&'t self, tx: Tx<'t>, ids: &'t [Uuid]) -> BoxFuture<'t, Result<(), StoreError>>;
}

/// The rows `steps` give each of `projection`'s writes: none for no steps.
pub(super) fn rows(projection: &dyn Projection, steps: &[Step<'_>]) -> Result<Vec<Rows>, StoreError> {
    let writes = projection.writes().len();
    if steps.is_empty() {
        return Ok(vec![Rows::none(); writes]);
    }
    let rows = projection.rows(steps)?;
    if rows.len() != writes {
        return Err(StoreError::Database(format!("the {} read model gave {} sets of rows for its {writes} writes", projection.name(), rows.len())));
    }
    Ok(rows)
}

/// Writes what `steps` change to `projection`'s rows, in `tx`.
pub(super) async fn apply(tx: Tx<'_>, projection: &dyn Projection, steps: &[Step<'_>]) -> Result<(), StoreError> {
    for (write, rows) in projection.writes().iter().zip(rows(projection, steps)?) {
        write.alone().execute_rows(tx, rows, 0).await?;
    }
    Ok(())
}
