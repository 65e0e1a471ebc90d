//! `--prefill-events N`: a Postgres target with N events of finished
//! sagas already stored, to measure whether a saga costs the same on a
//! store with years of history as on an empty one.
//!
//! The history is copies of one real saga of the warm-up (a delivered
//! order: its row, its four events, its order row), so rows have the size
//! and shape eso writes; each copy gets ids of its own and an earlier
//! creation time, so the list's newest-first pages stay the live ones.
//! eso is stopped while the store is filled and started again after, with
//! the relay's cursor past the copies: they are history, not news, and are
//! not published.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{Connection, Row};

use crate::target::Target;

/// Sagas per transaction: one transaction per million events.
const SAGAS_PER_TX: i64 = 250_000;

pub async fn prefill(target: &mut Target, events: u64) -> anyhow::Result<()> {
    let Some(db) = &target.database else { bail!("--prefill-events needs --spawn postgres") };
    let url = db.url.clone();
    let started = Instant::now();
    target.stop_eso().await?;
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as Connection>::connect(&url).await?;
    let template: String =
        sqlx::query("SELECT s.id FROM sagas s JOIN orders o ON o.id = s.id WHERE s.status = 'delivered' AND s.version = 4 ORDER BY s.created_at LIMIT 1")
            .fetch_optional(&mut conn)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?
            .context("no delivered order from the warm-up to copy (was --warmup 0?)")?;
    let sagas = (events / 4).max(1) as i64;
    let mut done = 0;
    while done < sagas {
        let (from, to) = (done + 1, (done + SAGAS_PER_TX).min(sagas));
        let mut tx = conn.begin().await?;
        // md5 of a counter: ids of their own, fixed for a given N.
        let id = "(md5('eso-prefill-' || g)::uuid)::text";
        let copies = [
            format!(
                "INSERT INTO sagas (id, definition, definition_version, state, status, terminal, version, deadline, snapshot, trace, created_at, updated_at, attempt) \
                 SELECT {id}, definition, definition_version, state, status, terminal, version, deadline, snapshot, trace, \
                 created_at - g * 1000, updated_at - g * 1000, attempt FROM sagas, generate_series($2::bigint, $3::bigint) g WHERE sagas.id = $1"
            ),
            format!(
                "INSERT INTO events (event_id, stream_id, version, event_type, data, metadata, recorded_at) \
                 SELECT (md5('eso-prefill-' || g || '.' || version)::uuid)::text, {id}, version, event_type, data, metadata, recorded_at - g * 1000 \
                 FROM events, generate_series($2::bigint, $3::bigint) g WHERE stream_id = $1 ORDER BY g, version"
            ),
            format!(
                "INSERT INTO orders (id, amount_cents, user_id, payee_id, description, status, created_at, updated_at) \
                 SELECT {id}, amount_cents, user_id, payee_id, description, status, created_at - g * 1000, updated_at - g * 1000 \
                 FROM orders, generate_series($2::bigint, $3::bigint) g WHERE orders.id = $1"
            ),
        ];
        for sql in copies {
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&template).bind(from).bind(to).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        done = to;
        println!("  prefill: {} of {} events ({:.0} s)", done * 4, sagas * 4, started.elapsed().as_secs_f64());
    }
    sqlx::query(
        "UPDATE outbox_cursor SET (tx, position) = (SELECT tx_id::text, position FROM events ORDER BY tx_id DESC, position DESC LIMIT 1) WHERE relay = 'main'",
    )
    .execute(&mut conn)
    .await?;
    let fill = started.elapsed();
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await?;
    let size: i64 = sqlx::query("SELECT pg_database_size(current_database()) AS s").fetch_one(&mut conn).await?.try_get("s")?;
    conn.close().await?;
    target.start_eso().await?;
    println!(
        "prefill: {} events of {} finished sagas in {:.0} s, VACUUM ANALYZE {:.0} s; database {:.1} GiB",
        sagas * 4,
        sagas,
        fill.as_secs_f64(),
        (started.elapsed() - fill).as_secs_f64(),
        size as f64 / f64::from(1 << 30)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}
