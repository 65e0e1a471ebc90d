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

/// A read model of one definition's sagas. All methods run inside the
/// caller's transaction and write nothing else.
pub trait Projection: Send + Sync + 'static {
    /// Names it in replay reports.
    fn name(&self) -> &'static str;
    /// The definition whose sagas it follows (every version of it).
    fn definition(&self) -> &'static str;
    /// Writes what `steps` change. At most one step per saga in one call.
    fn apply<'t>(&'t self, tx: Tx<'t>, steps: &'t [Step<'t>]) -> BoxFuture<'t, Result<(), StoreError>>;
    /// Its rows for `ids`, as JSON, for replay to compare.
    fn read<'t>(&'t self, tx: Tx<'t>, ids: &'t [Uuid]) -> BoxFuture<'t, Result<BTreeMap<Uuid, Value>, StoreError>>;
    /// Removes its rows for `ids`, before replay writes them again.
    fn delete<'t>(&'t self, tx: Tx<'t>, ids: &'t [Uuid]) -> BoxFuture<'t, Result<(), StoreError>>;
}
