//! The participants inside the orchestrator's process (embedded mode):
//! opened on a database of their own and handed to the orchestrator as
//! plain [`Participant`]s, so the orchestrator never names them.

use std::sync::Arc;

use db::Backend;
use protocol::Participant;
use sqlx::AnyPool;

use crate::delivery::Delivery;
use crate::migrations;
use crate::payment::Payment;
use crate::trip::TripAgency;

/// Payment, delivery and the trip agency on one pool, which the caller closes once they
/// have stopped.
pub struct Embedded {
    pub participants: Vec<Arc<dyn Participant>>,
    pub pool: AnyPool,
}

/// Opens (creating, migrating) the participants' records at `url` with up
/// to `max_connections` connections (SQLite always uses one), and builds
/// the participants on them.
pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<Embedded> {
    let (pool, backend) = db::connect(url, max_connections).await?;
    migrations::run(&pool, backend).await?;
    let participants: Vec<Arc<dyn Participant>> =
        vec![Arc::new(Payment::new(pool.clone(), backend)), Arc::new(Delivery::new(pool.clone(), backend)), Arc::new(TripAgency::new(pool.clone(), backend))];
    Ok(Embedded { participants, pool })
}

/// Moves participant records that an earlier eso wrote into the store's
/// SQLite file (before the participants had one) into `records`' file, so
/// that a command answered before an upgrade still gets its first answer
/// after it instead of being decided, and charged, again. Copied first and
/// then deleted, each step atomic in its own file: a crash in between
/// copies again, and the copy ignores what is already there. A store file
/// without those tables (made after the split) has nothing to move.
///
/// Call it before the participants answer anything.
pub async fn adopt_records(records: &AnyPool, store_url: &str) -> anyhow::Result<u64> {
    use sqlx::{AssertSqlSafe, Connection, Executor, Row};
    if Backend::of(store_url)? != Backend::Sqlite {
        return Ok(0);
    }
    // The file SQLite really opens for that URL: the path in it is
    // URL-decoded on its way there, so it is read back, not rebuilt.
    let store_file: String = {
        let mut store = sqlx::AnyConnection::connect(store_url).await.map_err(|e| anyhow::anyhow!("cannot open {}: {e}", db::redact(store_url)))?;
        let file = sqlx::query("SELECT file FROM pragma_database_list WHERE name = 'main'").fetch_one(&mut store).await?.try_get("file")?;
        store.close().await?;
        file
    };
    let mut conn = records.acquire().await?;
    sqlx::query("ATTACH DATABASE $1 AS store").bind(store_file).execute(&mut *conn).await?;
    let moved = async {
        let mut moved = 0;
        for table in ["payments", "deliveries"] {
            let present = sqlx::query("SELECT 1 FROM store.sqlite_master WHERE type = 'table' AND name = $1").bind(table).fetch_optional(&mut *conn).await?;
            if present.is_none() {
                continue;
            }
            // The table names are the constants above.
            let copied = conn.execute(AssertSqlSafe(format!("INSERT OR IGNORE INTO main.{table} SELECT * FROM store.{table}"))).await?;
            conn.execute(AssertSqlSafe(format!("DELETE FROM store.{table}"))).await?;
            moved += copied.rows_affected();
        }
        anyhow::Ok(moved)
    }
    .await;
    // Detached even after a failed move: the connection goes back to the pool.
    conn.execute("DETACH DATABASE store").await?;
    let moved = moved?;
    if moved > 0 {
        tracing::info!(records = moved, "participant records moved from the store's file to the participants' own");
    }
    Ok(moved)
}
