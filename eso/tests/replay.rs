//! Replay finds what differs from the events, and puts it right: a saga's
//! row and the order saga's projection are rebuilt from the event log.

mod common;

use std::time::Duration;

use common::{Mode, TestApp};
use serde_json::json;
use sqlx::Row;

async fn tampered_rows_are_found_then_rebuilt(mode: Mode) {
    let mut app = TestApp::start(mode).await;
    let delivered = app.order("test replayed").await;
    let cancelled = app.order("xxx replayed").await;
    for id in [delivered, cancelled] {
        app.wait_terminal(id, Duration::from_secs(5)).await;
    }
    let (status, trip) = app.send("/sagas/trip", json!({ "traveller": "Ada", "from": "Lisbon", "to": "Porto", "nights": 2 }), None).await;
    assert_eq!(status, 201, "{trip}");
    let trip = trip["id"].as_str().unwrap_or_default().to_string();
    let (_, done) = app.get(&format!("/sagas/{trip}?wait=5s")).await;
    assert_eq!(done["state"], "booked", "{done}");

    let Some(running) = &app.running else { panic!("not running") };
    let store = &running.store;
    as_written_before_issue_18(store.pool(), &delivered.to_string()).await;
    let clean = store.replay(true).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(clean.is_clean(), "{}", orchestrator::rebuild::describe(&clean));

    // Three kinds of drift: a projection row with the wrong status, a
    // missing projection row, a snapshot that is not its events' fold.
    let pool = store.pool();
    let exec = |sql: &'static str, id: String| async move {
        sqlx::query(sql).bind(id).execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    };
    exec("UPDATE orders SET status = 'confirmed' WHERE id = $1", delivered.to_string()).await;
    exec("DELETE FROM orders WHERE id = $1", cancelled.to_string()).await;
    // (A stream this short keeps no snapshot; one is written in, wrong.)
    exec("UPDATE sagas SET state = 'hotel', snapshot = '{\"state\": \"booking\"}' WHERE id = $1", trip.clone()).await;

    let found = store.replay(true).await.unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<String> = found.differences.keys().map(|id| id.to_string()).collect();
    let mut expected = vec![delivered.to_string(), cancelled.to_string(), trip.clone()];
    expected.sort();
    assert_eq!(ids, expected, "{}", orchestrator::rebuild::describe(&found));
    let said = orchestrator::rebuild::describe(&found);
    assert!(said.contains("orders: stored") && said.contains("state: stored hotel but the events make booked"), "{said}");
    assert!(said.contains(r#"snapshot: stored {"state":"booking"} but the events make"#), "{said}");
    // A dry run writes nothing.
    let status: String = sqlx::query("SELECT status FROM orders WHERE id = $1")
        .bind(delivered.to_string())
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get("status"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, "confirmed");

    let rebuilt = store.replay(false).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rebuilt.differences.len(), 3);
    let again = store.replay(true).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(again.is_clean(), "{}", orchestrator::rebuild::describe(&again));
    let (_, order) = app.get(&format!("/?id={cancelled}")).await;
    assert_eq!(order["status"], "cancelled", "the deleted order is back: {order}");
    let (_, saga) = app.get(&format!("/sagas/{trip}")).await;
    assert_eq!((saga["state"].as_str(), saga["status"].as_str()), (Some("booked"), Some("booked")), "{saga}");
    app.stop().await;
}

/// Rewrites a saga's events as earlier releases wrote them: the whole
/// command in each `pending`, the step's cause repeated in each `noted`.
/// They must fold to the same saga, so replay finds nothing to rebuild.
async fn as_written_before_issue_18(pool: &sqlx::AnyPool, id: &str) {
    let rows = sqlx::query("SELECT version, data FROM events WHERE stream_id = $1").bind(id).fetch_all(pool).await.unwrap_or_else(|e| panic!("{e}"));
    let mut rewritten = 0;
    for row in rows {
        let (version, data): (i64, String) = (row.get("version"), row.get("data"));
        let mut data: serde_json::Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}"));
        if let Some(pending) = data.get_mut("pending").and_then(|p| p.as_object_mut()) {
            let command_id = pending.remove("command_id").unwrap_or_else(|| panic!("a pending command without its id"));
            let command = json!({ "id": command_id, "saga_id": id, "subject": "eso.cmd.payment.process", "payload": { "saga_id": id }, "attempt": 1, "timeout_ms": 2000 });
            pending.insert("command".into(), command);
            rewritten += 1;
        }
        if data["kind"] == "noted" {
            data["cause"] = json!({ "by": "reply", "command_id": uuid::Uuid::nil(), "outcome": "confirmed", "data": {} });
            rewritten += 1;
        }
        sqlx::query("UPDATE events SET data = $1 WHERE stream_id = $2 AND version = $3")
            .bind(data.to_string())
            .bind(id)
            .bind(version)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(rewritten, 3, "a delivered order enters two states with a command and notes one reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_and_rebuilds_drift_embedded() {
    tampered_rows_are_found_then_rebuilt(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_and_rebuilds_drift_on_postgres() {
    tampered_rows_are_found_then_rebuilt(Mode::Production).await;
}
