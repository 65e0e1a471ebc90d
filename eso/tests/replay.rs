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
    exec("UPDATE sagas SET state = 'hotel', snapshot = replace(snapshot, '\"booked\"', '\"booking\"') WHERE id = $1", trip.clone()).await;

    let found = store.replay(true).await.unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<String> = found.differences.keys().map(|id| id.to_string()).collect();
    let mut expected = vec![delivered.to_string(), cancelled.to_string(), trip.clone()];
    expected.sort();
    assert_eq!(ids, expected, "{}", orchestrator::rebuild::describe(&found));
    let said = orchestrator::rebuild::describe(&found);
    assert!(said.contains("orders: stored") && said.contains("state: stored hotel but the events make booked"), "{said}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_and_rebuilds_drift_embedded() {
    tampered_rows_are_found_then_rebuilt(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_and_rebuilds_drift_on_postgres() {
    tampered_rows_are_found_then_rebuilt(Mode::Production).await;
}
