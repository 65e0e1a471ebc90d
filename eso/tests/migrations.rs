//! Upgrading a database that an eso from before the per-owner migrations
//! made: both `0001_event_store` and `0002_participants` are recorded in
//! `_sqlx_migrations` and the participants' tables hold records. The
//! store's migrator must accept the entry it no longer has, and the
//! participants' (tracked in a table of their own) must run over the
//! tables that are already there, keeping their rows. On SQLite and on
//! real Postgres.

mod common;

use common::Postgres;
use db::Backend;
use sqlx::{AnyPool, Row};

async fn upgrade(pool: AnyPool, backend: Backend) {
    common::migrate_the_old_way(&pool, backend).await;
    sqlx::query("INSERT INTO payments (command_id, order_id, amount, outcome, refunded, created_at) VALUES ('earlier', 'o', '1.00', 'confirmed', 0, 1)")
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("insert: {e}"));
    // Events at positions 1 and 2, and 3 given out and gone (a rolled-back
    // insert leaves the same gap): the relay's cursor names positions, so
    // they must survive 0003's rebuild of the table, and 3 must not be given again.
    for (i, event_id) in ["e1", "e2", "e3"].iter().enumerate() {
        sqlx::query("INSERT INTO events (event_id, stream_id, version, event_type, data, metadata, recorded_at) VALUES ($1, 's', $2, 't', '{}', '{}', 1)")
            .bind(*event_id)
            .bind(i as i64 + 1)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("insert event: {e}"));
    }
    sqlx::query("DELETE FROM events WHERE event_id = 'e3'").execute(&pool).await.unwrap_or_else(|e| panic!("delete: {e}"));
    // A live saga at its third attempt and a finished one: 0004 reads the
    // attempt out of the live one's snapshot.
    for (id, terminal, snapshot) in [("live", 0, r#"{"pending":{"attempt":3}}"#), ("done", 1, r#"{"pending":null}"#)] {
        sqlx::query(
            "INSERT INTO sagas (id, definition, definition_version, state, status, terminal, version, deadline, snapshot, trace, created_at, updated_at) \
             VALUES ($1, 'order', 1, 's', 's', $2, 1, NULL, $3, '{}', 1, 1)",
        )
        .bind(id)
        .bind(terminal)
        .bind(snapshot)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("insert saga: {e}"));
    }

    // Twice: the second start finds everything recorded by the first.
    for _ in 0..2 {
        orchestrator::migrations::run(&pool, backend).await.unwrap_or_else(|e| panic!("store migrations on an old database: {e:#}"));
        participants::migrations::run(&pool, backend).await.unwrap_or_else(|e| panic!("participants' migrations on an old database: {e:#}"));
    }

    let outcome: String = sqlx::query("SELECT outcome FROM payments WHERE command_id = 'earlier'")
        .fetch_one(&pool)
        .await
        .and_then(|r| r.try_get("outcome"))
        .unwrap_or_else(|e| panic!("the old record: {e}"));
    assert_eq!(outcome, "confirmed");
    let recorded = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT version FROM {table} ORDER BY version")))
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"))
                .iter()
                .map(|r| r.try_get::<i64, _>("version").unwrap_or(-1))
                .collect::<Vec<_>>()
        }
    };
    let positions: Vec<(i64, String)> = sqlx::query("SELECT position, event_id FROM events ORDER BY position")
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| panic!("events: {e}"))
        .iter()
        .map(|r| (r.try_get("position").unwrap_or(-1), r.try_get("event_id").unwrap_or_default()))
        .collect();
    assert_eq!(positions, [(1, "e1".to_string()), (2, "e2".to_string())], "events keep their positions");
    let next: i64 = sqlx::query("INSERT INTO events (event_id, stream_id, version, event_type, data, metadata, recorded_at) VALUES ('e2', 't', 1, 't', '{}', '{}', 1) RETURNING position")
        .fetch_one(&pool)
        .await
        .and_then(|r| r.try_get("position"))
        .unwrap_or_else(|e| panic!("an event after the upgrade (its id may repeat another's now): {e}"));
    assert_eq!(next, 4, "a position once given is not given again");
    let attempts: Vec<(String, Option<i64>)> = sqlx::query("SELECT id, attempt FROM sagas ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| panic!("sagas: {e}"))
        .iter()
        .map(|r| (r.try_get("id").unwrap_or_default(), r.try_get("attempt").unwrap_or(Some(-1))))
        .collect();
    assert_eq!(attempts, [("done".to_string(), None), ("live".to_string(), Some(3))], "0004 fills the attempt of live sagas");
    // 0007 drops the index on positions, which only Postgres has apart
    // from the table (SQLite's position is the rowid).
    let (expected, indexes): (&[i64], &str) = match backend {
        Backend::Postgres => (&[1, 2, 3, 4, 5, 6, 7], "SELECT indexname::text AS name FROM pg_indexes WHERE tablename = 'events' ORDER BY indexname"),
        Backend::Sqlite => {
            (&[1, 2, 3, 4, 5, 6], "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL ORDER BY name")
        }
    };
    assert_eq!(recorded("_sqlx_migrations").await, expected, "the store's table keeps the old entry (2, now the participants'), and gets its own new ones");
    let indexes: Vec<String> =
        sqlx::query(indexes).fetch_all(&pool).await.unwrap_or_else(|e| panic!("indexes: {e}")).iter().map(|r| r.try_get("name").unwrap_or_default()).collect();
    assert!(!indexes.iter().any(|i| i == "events_pkey"), "no index on positions: {indexes:?}");
    assert_eq!(recorded(participants::migrations::TABLE).await, [1, 2]);
}

#[tokio::test]
async fn an_old_sqlite_database_takes_the_new_migrations() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (pool, backend) = db::connect(&format!("sqlite:{}?mode=rwc", dir.path().join("eso.db").display()), 1).await.unwrap_or_else(|e| panic!("sqlite: {e}"));
    upgrade(pool, backend).await;
}

#[tokio::test]
async fn an_old_postgres_database_takes_the_new_migrations() {
    let database = Postgres::fresh().await;
    let (pool, backend) = db::connect(&database.url, 2).await.unwrap_or_else(|e| panic!("postgres: {e}"));
    upgrade(pool, backend).await;
}

/// A new database gets each owner's tables from its own migrations only.
#[tokio::test]
async fn a_new_store_has_no_participant_tables() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (pool, backend) = db::connect(&format!("sqlite:{}?mode=rwc", dir.path().join("eso.db").display()), 1).await.unwrap_or_else(|e| panic!("sqlite: {e}"));
    orchestrator::migrations::run(&pool, backend).await.unwrap_or_else(|e| panic!("migrate: {e:#}"));
    let tables: i64 = sqlx::query("SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name IN ('payments', 'deliveries')")
        .fetch_one(&pool)
        .await
        .and_then(|r| r.try_get("n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tables, 0);
}
