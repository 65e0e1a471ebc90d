//! Deleting finished sagas past the retention period (`crate::retention`).

use db::Column::Text;
use db::{Backend, recordset};
use sqlx::Row;
use uuid::Uuid;

use super::batch::{Statement, id_rows};
use super::relay::RELAY;
use super::{Store, StoreError};

impl Store {
    /// Deletes up to `limit` sagas of `definition` that ended in `status`
    /// before `before` (Unix microseconds): their events, their row and
    /// their read models' rows, in one transaction. A saga with an event the
    /// relay has not published yet is left for later, so the event stream
    /// still gets every event. Returns how many were deleted.
    ///
    /// The sagas are found through the list's index (`sagas_by_status`, by
    /// creation time, which comes before the finish), so no index is kept
    /// for this alone: each would cost every saga's steps a write.
    pub async fn forget_finished(&self, definition: &str, status: &str, before: i64, limit: i64) -> Result<usize, StoreError> {
        // The relay's order: `(tx_id, position)` on Postgres, position on SQLite.
        let (unpublished, lock) = match self.backend {
            Backend::Postgres => (
                format!(
                    "(e.tx_id, e.position) > (COALESCE((SELECT tx FROM outbox_cursor WHERE relay = '{RELAY}'), '0')::xid8, \
                     COALESCE((SELECT position FROM outbox_cursor WHERE relay = '{RELAY}'), 0))"
                ),
                " FOR UPDATE SKIP LOCKED",
            ),
            Backend::Sqlite => (format!("e.position > COALESCE((SELECT position FROM outbox_cursor WHERE relay = '{RELAY}'), 0)"), ""),
        };
        let select = format!(
            "SELECT id FROM sagas s WHERE definition = $1 AND status = $2 AND created_at < $3 AND terminal = 1 AND updated_at < $3 \
             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.id AND {unpublished}) ORDER BY created_at LIMIT $4{lock}"
        );
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(select)).bind(definition).bind(status).bind(before).bind(limit).fetch_all(&mut *tx).await?;
        let ids: Vec<String> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(0);
        }
        let uuids: Vec<Uuid> =
            ids.iter().map(|id| Uuid::parse_str(id).map_err(|e| StoreError::Corrupt(format!("saga id {id}: {e}")))).collect::<Result<_, _>>()?;
        let in_batch = recordset(self.backend, &[("id", Text)]);
        for table in ["events WHERE stream_id", "sagas WHERE id"] {
            Statement::planned_each_time(format!("DELETE FROM {table} IN (SELECT r.id FROM {in_batch})")).execute(&mut tx, &id_rows(&ids), 0).await?;
        }
        for projection in self.projections.iter().filter(|p| p.definition() == definition) {
            projection.delete(&mut tx, &uuids).await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }
}
