//! The outbox relay: publishes every committed event to the event stream,
//! in order, and remembers how far it got in the database.
//!
//! The stored cursor can lag what went out (it is written lazily, and a
//! crash can fall between a publish and its cursor write), so a relay
//! session starts where the stream really is: each event goes out with the
//! relay's cursor at it in a header ([`RELAY_CURSOR_HEADER`]), and the
//! session resumes after the cursor of the stream's last event when that is
//! ahead of the stored one. It then publishes with JetStream's expected
//! last sequence, so a repeat is refused by the server, however long the
//! relay was down; the duplicate window (`Nats-Msg-Id`) is only a second
//! guard. The in-process bus keeps no stream and has nothing to resume
//! after. On Postgres, one relay runs at a
//! time across all replicas (an advisory lock held on a dedicated
//! connection). It reads in transaction-id order and only below the oldest
//! running transaction (`pg_snapshot_xmin`): positions can commit out of
//! order, but no new row can appear below that horizon, so a late commit
//! is never skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use db::Backend;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{RawEvent, Store, StoreError};
use crate::bus::{Bus, OutgoingEvent, RELAY_CURSOR_HEADER};

pub(super) const RELAY: &str = "main";
/// Arbitrary, fixed: the advisory lock id that elects the relay.
const RELAY_LOCK: i64 = 0x0e50_0e50;
const BATCH: i64 = 512;
const IDLE_POLL: Duration = Duration::from_millis(200);
/// The shortest time between two passes woken by commits. A pass is a query
/// and a publish round trip whatever it carries; at partial load commits
/// come about a millisecond apart, and a pass for each of them cost more
/// than the events it published (docs/benchmarks.md, "Fourth round"). Under
/// full load a commit takes several milliseconds itself, so passes come
/// about as often as before. What it adds is at most this much to an
/// event's way onto the stream; sagas never wait on the relay.
const PASS_EVERY: Duration = Duration::from_millis(10);
/// How long a stopping relay waits for events held above the horizon.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// Runs until `shutdown`; then publishes what is committed and returns.
pub async fn run_relay(store: Store, bus: Bus, shutdown: CancellationToken) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let session = match store.backend {
            Backend::Sqlite => match reader(&store).await {
                Ok(session) => session,
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot reach the store");
                    tokio::select! { () = tokio::time::sleep(Duration::from_secs(1)) => continue, () = shutdown.cancelled() => return }
                }
            },
            Backend::Postgres => match try_lead(&store).await {
                Ok(Some(conn)) => Session { conn, holds_lock: true },
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
        if let Err(e) = relay(&store, &bus, session, &shutdown).await {
            metrics::counter!("eso_outbox_relay_errors_total").increment(1);
            tracing::warn!(error = %e, "relay interrupted; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            return;
        }
    }
}

/// The relay's own connection. Every read of a pass goes through it, so the
/// relay never queues behind API reads for a pooled connection. On Postgres
/// it holds the advisory lock that makes this replica the relay, and the
/// cursor is written on it too. On SQLite it is a reader (the cursor is
/// written by the one writer), and one process owns the file: embedded mode
/// has no second replica to elect against.
struct Session {
    conn: PoolConnection<Any>,
    holds_lock: bool,
}

async fn reader(store: &Store) -> Result<Session, StoreError> {
    ensure_cursor(&store.pool).await?;
    Ok(Session { conn: store.readers.acquire().await?, holds_lock: false })
}

async fn try_lead(store: &Store) -> Result<Option<PoolConnection<Any>>, StoreError> {
    let mut conn = store.pool.acquire().await?;
    ensure_cursor(&mut *conn).await?;
    let locked: i64 =
        sqlx::query("SELECT CASE WHEN pg_try_advisory_lock($1) THEN 1 ELSE 0 END AS locked").bind(RELAY_LOCK).fetch_one(&mut *conn).await?.try_get("locked")?;
    // Without the lock the connection goes back to the pool.
    Ok((locked == 1).then_some(conn))
}

/// Publishes batches until shutdown. Returns `Ok` on shutdown, `Err` when the
/// store or the bus failed (leadership is then re-acquired). Either way the
/// cursor is written first, so a restart does not republish what went out.
async fn relay(store: &Store, bus: &Bus, mut session: Session, shutdown: &CancellationToken) -> Result<(), StoreError> {
    let mut cursor = Cursor::default();
    let mut result = publish_until_shutdown(store, bus, &mut session, &mut cursor, shutdown).await;
    match (cursor.flush(store, &mut session).await, &result) {
        (Err(e), Ok(())) => result = Err(e),
        // The store is likely what failed: keep the first error.
        (Err(e), Err(_)) => tracing::warn!(error = %e, "relay cursor not saved; its last events will be republished"),
        (Ok(()), _) => {}
    }
    if session.holds_lock {
        // The advisory lock lives as long as the session: close the session
        // rather than hand a locked connection back to the pool.
        let _ = session.conn.close().await;
    }
    result
}

async fn publish_until_shutdown(store: &Store, bus: &Bus, session: &mut Session, cursor: &mut Cursor, shutdown: &CancellationToken) -> Result<(), StoreError> {
    let mut stream_at = resume(store, bus, session, cursor).await?;
    let mut stopping = false;
    let mut give_up = Instant::now();
    let mut lag_read_at: Option<Instant> = None;
    loop {
        if cursor.due() {
            cursor.flush(store, session).await?;
        }
        let (tx, position) = cursor.position(session).await?;
        let pass_at = Instant::now();
        let rows = match store.backend {
            Backend::Postgres => {
                sqlx::query(
                    "SELECT position, tx_id::text AS tx, event_id, stream_id, version, event_type, data, metadata, recorded_at FROM events \
                     WHERE (tx_id, position) > ($1::xid8, $2) AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
                     ORDER BY tx_id, position LIMIT $3",
                )
                .bind(&tx)
                .bind(position)
                .bind(BATCH)
                .fetch_all(&mut *session.conn)
                .await?
            }
            Backend::Sqlite => {
                sqlx::query(
                    "SELECT position, '0' AS tx, event_id, stream_id, version, event_type, data, metadata, recorded_at FROM events \
                     WHERE position > $1 ORDER BY position LIMIT $2",
                )
                .bind(position)
                .bind(BATCH)
                .fetch_all(&mut *session.conn)
                .await?
            }
        };
        let events: Vec<Unpublished> = rows.iter().map(unpublished_event).collect::<Result<_, _>>()?;
        if !events.is_empty() {
            let count = events.len();
            let messages = events.iter().map(outgoing).collect::<Result<Vec<_>, _>>()?;
            let (acked, failure) = match bus.publish(messages, stream_at).await {
                Ok(()) => (count, None),
                Err(e) => (e.acked, Some(e.error)),
            };
            stream_at = stream_at.map(|at| at + acked as u64);
            if let Some(last) = acked.checked_sub(1).and_then(|i| events.get(i)) {
                cursor.published(last.tx.clone(), last.event.position);
                metrics::counter!("eso_outbox_published_total").increment(acked as u64);
                // Commit to acknowledged on the stream: what a consumer of
                // the stream waits on top of the commit itself.
                let now = crate::clock::now_us();
                let delay = metrics::histogram!("eso_outbox_delay_seconds");
                for event in &events[..acked] {
                    delay.record((now - event.event.recorded_at).max(0) as f64 / 1e6);
                }
            }
            if let Some(error) = failure {
                // What JetStream acknowledged is recorded on the way out;
                // the next session reads the stream's end again, so what it
                // stored without an acknowledgement reaching us is not
                // published twice either.
                return Err(StoreError::Database(format!("publish: {error}")));
            }
            if count as i64 == BATCH {
                continue;
            }
        }
        if stopping {
            // Our own commits are all done by now, but on Postgres the
            // newest events may sit above the horizon while a transaction
            // anywhere on the server is still open. Wait for it, briefly,
            // rather than leave them for the next start.
            if Instant::now() >= give_up || !unpublished(store, session, cursor).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // A pass per group commit; the gauge is read far less often than
        // that, so it is measured at most every LAG_EVERY, not each pass.
        if lag_read_at.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
            let published = events.last().map_or(position, |e| e.event.position);
            metrics::gauge!("eso_outbox_lag_events").set((newest(store, session).await? - published).max(0) as f64);
            lag_read_at = Some(Instant::now());
        }
        tokio::select! {
            () = store.appended().notified() => tokio::time::sleep_until(pass_at + PASS_EVERY).await,
            () = tokio::time::sleep(cursor.idle_wait()) => {}
            // More passes publish what was committed before shutdown.
            () = shutdown.cancelled() => {
                stopping = true;
                give_up = Instant::now() + SHUTDOWN_FLUSH;
            }
        }
    }
}

/// The newest event's position. Positions, not a count: the gap to it is
/// one read (the sequence on Postgres, which has no index on positions;
/// the rowid on SQLite), where counting the rows behind the cursor scanned
/// them. Rolled-back inserts leave holes, so a lag from it can overstate.
async fn newest(store: &Store, session: &mut Session) -> Result<i64, StoreError> {
    let sql = match store.backend {
        Backend::Postgres => "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS position FROM events_position_seq",
        Backend::Sqlite => "SELECT position FROM events ORDER BY position DESC LIMIT 1",
    };
    Ok(sqlx::query(sql).fetch_optional(&mut *session.conn).await?.map(|r| r.try_get("position")).transpose()?.unwrap_or(0))
}

/// Moves the cursor past what the stream already holds, and returns the
/// stream sequence the next publish must follow (`None` without a stream).
async fn resume(store: &Store, bus: &Bus, session: &mut Session, cursor: &mut Cursor) -> Result<Option<u64>, StoreError> {
    let Some(tail) = bus.stream_tail().await.map_err(|e| StoreError::Database(format!("event stream: {e}")))? else { return Ok(None) };
    let stored = cursor.position(session).await?;
    match tail.cursor.as_deref().map(parse_cursor) {
        Some(Some(on_stream)) if key(&on_stream) > key(&stored) => {
            // A stream kept while the database was replaced (a new eso.db,
            // a restored backup) is ahead of events this store never had:
            // skipping to it would leave new events unpublished.
            if !holds(session, tail.event_id.as_deref(), on_stream.1).await? {
                tracing::warn!(
                    stored = %format!("{}/{}", stored.0, stored.1),
                    on_stream = %format!("{}/{}", on_stream.0, on_stream.1),
                    event_id = ?tail.event_id,
                    "the event stream's last event is not this store's; resuming from the stored cursor"
                );
                return Ok(Some(tail.sequence));
            }
            tracing::info!(
                stored = %format!("{}/{}", stored.0, stored.1),
                on_stream = %format!("{}/{}", on_stream.0, on_stream.1),
                "the event stream is ahead of the stored cursor; resuming after its last event"
            );
            metrics::counter!("eso_outbox_resumed_from_stream_total").increment(1);
            cursor.published(on_stream.0, on_stream.1);
            // Written at once: a relay of another replica must not start
            // from further back either.
            cursor.flush(store, session).await?;
        }
        Some(None) => tracing::warn!(header = ?tail.cursor, "the event stream's last event has an unreadable relay cursor; resuming from the stored one"),
        _ => {}
    }
    Ok(Some(tail.sequence))
}

/// Whether this store holds the event `event_id` at `position`.
async fn holds(session: &mut Session, event_id: Option<&str>, position: i64) -> Result<bool, StoreError> {
    let Some(event_id) = event_id else { return Ok(false) };
    let row = sqlx::query("SELECT position FROM events WHERE event_id = $1").bind(event_id).fetch_optional(&mut *session.conn).await?;
    Ok(row.map(|r| r.try_get::<i64, _>("position")).transpose()? == Some(position))
}

/// A cursor as the header carries it: `tx/position`.
fn parse_cursor(text: &str) -> Option<(String, i64)> {
    let (tx, position) = text.split_once('/')?;
    tx.parse::<u64>().ok()?;
    Some((tx.to_string(), position.parse().ok()?))
}

/// The order the relay publishes in: transaction id (a number; `0` on
/// SQLite), then position. Positions alone are not monotonic on the stream
/// on Postgres, where they can commit out of order.
fn key((tx, position): &(String, i64)) -> (u64, i64) {
    (tx.parse().unwrap_or(0), *position)
}

async fn ensure_cursor<'e, E: sqlx::Executor<'e, Database = Any>>(executor: E) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO outbox_cursor (relay, tx, position) VALUES ($1, '0', 0) ON CONFLICT (relay) DO NOTHING").bind(RELAY).execute(executor).await?;
    Ok(())
}

/// How far the relay has published, and how far the stored cursor says.
///
/// Writing the cursor after every pass cost a durable write per group
/// commit, on the connection SQLite's one writer shares with the committer
/// and the participants. So the relay keeps its position in memory and
/// writes it at most every [`CURSOR_EVERY`], and before it stops or returns
/// an error (the gain, with its reads moved off the writer: docs/benchmarks.md).
/// A crash leaves the stored cursor up to that much behind, as any crash
/// between a publish and its cursor write does; the next session resumes
/// after the stream's own last event instead (see [`resume`]).
struct Cursor {
    /// Where publishing has got to, `(tx, position)`: read from the store
    /// once, then moved by each publish (only this relay moves it).
    at: Option<(String, i64)>,
    /// `at` is ahead of the stored row.
    unwritten: bool,
    written_at: Instant,
}

const CURSOR_EVERY: Duration = Duration::from_millis(100);
/// How often the outbox-lag gauge is measured, at most.
const LAG_EVERY: Duration = Duration::from_millis(100);

impl Default for Cursor {
    fn default() -> Self {
        Cursor { at: None, unwritten: false, written_at: Instant::now() }
    }
}

impl Cursor {
    /// Where to read on from: the stored row once a session, then where
    /// publishing got to. The lock needs no proof of its own on each pass:
    /// it lives as long as the connection every read of the pass goes
    /// through, and a read on a dead one fails.
    async fn position(&mut self, session: &mut Session) -> Result<(String, i64), StoreError> {
        if let Some(at) = &self.at {
            return Ok(at.clone());
        }
        let stored = read_cursor(&mut *session.conn).await?;
        self.at = Some(stored.clone());
        Ok(stored)
    }

    fn published(&mut self, tx: String, position: i64) {
        self.at = Some((tx, position));
        self.unwritten = true;
    }

    fn due(&self) -> bool {
        self.unwritten && self.written_at.elapsed() >= CURSOR_EVERY
    }

    /// How long an idle relay may sleep: until the cursor is due, if it is
    /// behind.
    fn idle_wait(&self) -> Duration {
        if self.unwritten { CURSOR_EVERY.saturating_sub(self.written_at.elapsed()) } else { IDLE_POLL }
    }

    async fn flush(&mut self, store: &Store, session: &mut Session) -> Result<(), StoreError> {
        if let (true, Some((tx, position))) = (self.unwritten, &self.at) {
            advance_cursor(store, session, tx, *position).await?;
            self.unwritten = false;
        }
        self.written_at = Instant::now();
        Ok(())
    }
}

/// Moves the cursor forward only, on the lock's connection when there is
/// one: a relay that lost its lock cannot move the new leader's cursor back.
async fn advance_cursor(store: &Store, session: &mut Session, tx: &str, position: i64) -> Result<(), StoreError> {
    let sql = match store.backend {
        Backend::Postgres => "UPDATE outbox_cursor SET tx = $2, position = $3 WHERE relay = $1 AND (tx::xid8, position) < ($2::xid8, $3)",
        Backend::Sqlite => "UPDATE outbox_cursor SET tx = $2, position = $3 WHERE relay = $1 AND position < $3",
    };
    let query = sqlx::query(sql).bind(RELAY).bind(tx).bind(position);
    if session.holds_lock {
        query.execute(&mut *session.conn).await?;
    } else {
        query.execute(&store.pool).await?;
    }
    Ok(())
}

/// Whether any committed event lies past the cursor, horizon or not.
async fn unpublished(store: &Store, session: &mut Session, cursor: &mut Cursor) -> Result<bool, StoreError> {
    let (tx, position) = cursor.position(session).await?;
    let query = match store.backend {
        Backend::Postgres => sqlx::query("SELECT 1 AS pending FROM events WHERE (tx_id, position) > ($1::xid8, $2) LIMIT 1").bind(tx).bind(position),
        Backend::Sqlite => sqlx::query("SELECT 1 AS pending FROM events WHERE position > $1 LIMIT 1").bind(position),
    };
    Ok(query.fetch_optional(&mut *session.conn).await?.is_some())
}

/// The relay's position: `(transaction id as text, event position)`.
async fn read_cursor<'e, E: sqlx::Executor<'e, Database = Any>>(executor: E) -> Result<(String, i64), StoreError> {
    let row = sqlx::query("SELECT tx, position FROM outbox_cursor WHERE relay = $1").bind(RELAY).fetch_one(executor).await?;
    Ok((row.try_get("tx")?, row.try_get("position")?))
}

/// The message for one event, with a producer span in the saga's trace
/// (the trace context stored with the event) whose context travels in the
/// message headers to whoever consumes the stream.
///
/// An event that does not serialise stops the relay (an error, counted)
/// rather than going out empty or being skipped: the stream stays in order.
fn outgoing(unpublished: &Unpublished) -> Result<OutgoingEvent, StoreError> {
    let e = &unpublished.event;
    let subject = format!("eso.events.{}", e.event_type);
    let span = tracing::info_span!(
        "event.publish",
        otel.name = %format!("{subject} publish"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %e.event_id,
        event.type = %e.event_type,
        saga.id = %e.stream_id,
    );
    let corrupt = |err: serde_json::Error| {
        metrics::counter!("eso_serialization_errors_total", "what" => "event").increment(1);
        StoreError::Corrupt(format!("event {} does not serialise: {err}", e.event_id))
    };
    let (data, metadata): (&RawValue, &RawValue) = (serde_json::from_str(&e.data).map_err(corrupt)?, serde_json::from_str(&e.metadata).map_err(corrupt)?);
    let stored = serde_json::from_str::<TraceOf>(&e.metadata).map(|m| m.trace).unwrap_or_default();
    observability::propagation::set_parent_from_map(&span, &stored);
    let mut headers = HeaderMap::new();
    observability::propagation::inject_nats(&span, &mut headers);
    headers.insert("Eso-Saga-Id", e.stream_id.as_str());
    headers.insert(RELAY_CURSOR_HEADER, format!("{}/{}", unpublished.tx, e.position).as_str());
    let body = Body {
        data,
        event_id: &e.event_id,
        metadata,
        recorded_at: crate::clock::rfc3339(e.recorded_at),
        stream_id: &e.stream_id,
        event_type: &e.event_type,
        version: e.version,
    };
    let payload = serde_json::to_vec(&body).map_err(corrupt)?;
    Ok(OutgoingEvent { subject, message_id: e.event_id.clone(), headers, payload: Bytes::from(payload), span })
}

/// An event as the relay reads it, its JSON columns as stored: they go
/// into the message as they are, checked but not parsed into values and
/// written out again, which was half of the relay's tenth of eso's CPU.
struct Unpublished {
    /// The inserting transaction's id (`0` on SQLite): with the position,
    /// the relay's place.
    tx: String,
    event: RawEvent,
}

fn unpublished_event(r: &sqlx::any::AnyRow) -> Result<Unpublished, StoreError> {
    Ok(Unpublished { tx: r.try_get("tx")?, event: RawEvent::of(r)? })
}

/// A message's body (docs/protocol.md, "Events"), its fields in the order
/// they always had.
#[derive(Serialize)]
struct Body<'a> {
    data: &'a RawValue,
    event_id: &'a str,
    metadata: &'a RawValue,
    recorded_at: String,
    stream_id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    version: i64,
}

/// The trace context in an event's metadata.
#[derive(Deserialize)]
struct TraceOf {
    #[serde(default)]
    trace: BTreeMap<String, String>,
}
