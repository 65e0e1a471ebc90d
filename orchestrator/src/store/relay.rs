//! The outbox relay: publishes every committed event to the event stream,
//! in order, and remembers how far it got in the database.
//!
//! After a crash it republishes from the stored cursor; JetStream drops the
//! repeats by `Nats-Msg-Id` (the event id). On Postgres, one relay runs at a
//! time across all replicas (an advisory lock held on a dedicated
//! connection), and it only reads events of transactions older than every
//! running one, so an event with a lower position that commits late is
//! never skipped.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use participants::db::Backend;
use serde_json::json;
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, StoredEvent};
use crate::bus::{Bus, OutgoingEvent};

const RELAY: &str = "main";
/// Arbitrary, fixed: the advisory lock id that elects the relay.
const RELAY_LOCK: i64 = 0x0e50_0e50;
const BATCH: i64 = 512;
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Runs until `shutdown`; then publishes what is committed and returns.
pub async fn run_relay(store: Store, bus: Bus, shutdown: CancellationToken) {
    sqlx::query("INSERT INTO outbox_cursor (relay, position) VALUES ($1, 0) ON CONFLICT (relay) DO NOTHING")
        .bind(RELAY)
        .execute(&store.pool)
        .await
        .ok();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let lock = match store.backend {
            Backend::Sqlite => None,
            Backend::Postgres => match try_lead(&store).await {
                Ok(Some(conn)) => Some(conn),
                Ok(None) => {
                    // Another replica relays; check again later in case it dies.
                    tokio::select! { () = tokio::time::sleep(Duration::from_secs(1)) => continue, () = shutdown.cancelled() => return }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot reach the store");
                    tokio::select! { () = tokio::time::sleep(Duration::from_secs(1)) => continue, () = shutdown.cancelled() => return }
                }
            },
        };
        tracing::info!("relaying events to the event stream");
        if let Err(e) = relay(&store, &bus, lock, &shutdown).await {
            tracing::warn!(error = %e, "relay interrupted; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            return;
        }
    }
}

async fn try_lead(store: &Store) -> Result<Option<PoolConnection<Any>>, StoreError> {
    let mut conn = store.pool.acquire().await?;
    let locked: i64 = sqlx::query("SELECT CASE WHEN pg_try_advisory_lock($1) THEN 1 ELSE 0 END AS locked")
        .bind(RELAY_LOCK)
        .fetch_one(&mut *conn)
        .await?
        .try_get("locked")?;
    // Without the lock the connection goes back to the pool.
    Ok((locked == 1).then_some(conn))
}

/// Publishes batches until shutdown. Returns `Ok` on shutdown, `Err` when the
/// store or the bus failed (leadership is then re-acquired).
async fn relay(store: &Store, bus: &Bus, mut lock: Option<PoolConnection<Any>>, shutdown: &CancellationToken) -> Result<(), StoreError> {
    let query = match store.backend {
        Backend::Postgres => {
            "SELECT position, event_id, stream_id, version, event_type, data, metadata, recorded_at FROM events \
             WHERE position > $1 AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY position LIMIT $2"
        }
        Backend::Sqlite => {
            "SELECT position, event_id, stream_id, version, event_type, data, metadata, recorded_at FROM events \
             WHERE position > $1 ORDER BY position LIMIT $2"
        }
    };
    let mut stopping = false;
    loop {
        // Reading the cursor on the lock's own connection proves we still
        // hold the lock: if that connection died, so did the lock.
        let cursor: i64 = match &mut lock {
            Some(conn) => cursor(&mut **conn).await?,
            None => cursor(&store.pool).await?,
        };
        let rows = sqlx::query(query).bind(cursor).bind(BATCH).fetch_all(&store.pool).await?;
        let events: Vec<StoredEvent> = rows.iter().map(super::stored_event).collect::<Result<_, _>>()?;
        if let Some(last) = events.last().map(|e| e.position) {
            let count = events.len();
            bus.publish(events.iter().map(outgoing).collect()).await.map_err(|e| StoreError::Database(format!("publish: {e}")))?;
            sqlx::query("UPDATE outbox_cursor SET position = $2 WHERE relay = $1 AND position < $2")
                .bind(RELAY)
                .bind(last)
                .execute(&store.pool)
                .await?;
            metrics::counter!("eso_outbox_published_total").increment(count as u64);
            if count as i64 == BATCH {
                continue;
            }
        }
        if stopping {
            return Ok(());
        }
        let head: i64 = sqlx::query("SELECT COALESCE(MAX(position), 0) AS head FROM events").fetch_one(&store.pool).await?.try_get("head")?;
        let published = events.last().map_or(cursor, |e| e.position);
        metrics::gauge!("eso_outbox_lag_events").set((head - published).max(0) as f64);
        tokio::select! {
            () = store.appended().notified() => {}
            () = tokio::time::sleep(IDLE_POLL) => {}
            // One more pass publishes what was committed before shutdown.
            () = shutdown.cancelled() => stopping = true,
        }
    }
}

async fn cursor<'e, E: sqlx::Executor<'e, Database = Any>>(executor: E) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT position FROM outbox_cursor WHERE relay = $1")
        .bind(RELAY)
        .fetch_one(executor)
        .await?
        .try_get("position")?)
}

fn outgoing(e: &StoredEvent) -> OutgoingEvent {
    let mut headers = HeaderMap::new();
    if let Some(trace) = e.metadata.get("trace").and_then(|t| t.as_object()) {
        for (name, value) in trace {
            if let Some(v) = value.as_str() {
                headers.insert(name.as_str(), v);
            }
        }
    }
    headers.insert("Eso-Saga-Id", e.stream_id.as_str());
    let payload = json!({
        "event_id": e.event_id,
        "stream_id": e.stream_id,
        "version": e.version,
        "type": e.event_type,
        "data": e.data,
        "metadata": e.metadata,
        "recorded_at": crate::clock::rfc3339(e.recorded_at),
    });
    OutgoingEvent {
        subject: format!("eso.events.{}", e.event_type),
        message_id: e.event_id.clone(),
        headers,
        payload: Bytes::from(serde_json::to_vec(&payload).unwrap_or_default()),
    }
}
