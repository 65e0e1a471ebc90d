//! The order API end to end, in both modes: the original system's
//! integration test, the extensions, and every bad input.

mod common;

use std::time::{Duration, Instant};

use common::{Mode, TestApp};
use serde_json::{Value, json};

async fn the_seed_flow(mode: Mode) {
    let mut app = TestApp::start(mode).await;
    let test = app.order("test top up e wallet").await;
    let xxx = app.order("xxx").await;
    let random = app.order("top up e wallet").await;
    // Until the sagas end (with a deadline), not a fixed pause.
    for id in [test, xxx] {
        app.wait_terminal(id, Duration::from_secs(5)).await;
    }

    let (status, body) = app.get(&format!("/?id={test}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "delivered", "{body}");
    assert_eq!(body["amount"], "207.00");
    assert_eq!(body["description"], "test top up e wallet");
    assert_eq!(body["id"], test.to_string());
    for field in ["user_id", "payee_id"] {
        assert!(body[field].as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()), "{field}: {body}");
    }
    let created = body["created_at"].as_str().unwrap_or_default().to_string();
    let updated = body["updated_at"].as_str().unwrap_or_default().to_string();
    assert!(updated > created, "updated_at {updated} must be later than created_at {created}");

    assert_eq!(app.status(xxx).await, "cancelled");
    let random = app.wait_terminal(random, Duration::from_secs(5)).await;
    assert!(["delivered", "cancelled"].contains(&random["status"].as_str().unwrap_or_default()), "{random}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_embedded() {
    the_seed_flow(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_on_postgres_and_nats() {
    the_seed_flow(Mode::Production).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_order_is_refunded_then_cancelled() {
    for mode in [Mode::Embedded, Mode::Production] {
        let mut app = TestApp::start(mode).await;
        let id = app.order("test but undeliverable").await;
        app.wait_terminal(id, Duration::from_secs(5)).await;
        assert_eq!(app.status(id).await, "cancelled");
        let (_, events) = app.get(&format!("/orders/{id}/events")).await;
        let types: Vec<&str> = events.as_array().map(|a| a.iter().filter_map(|e| e["type"].as_str()).collect()).unwrap_or_default();
        assert_eq!(types, ["order_created", "payment_confirmed", "order_confirmed", "delivery_failed", "payment_refunded", "order_cancelled"], "{mode:?}");
        app.stop().await;
    }
}

/// Embedded participants keep their records in a SQLite file of their own,
/// so the store's one writer does not wait behind their writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_participants_write_a_file_of_their_own() {
    let mut app = TestApp::start(Mode::Embedded).await;
    let id = app.order("test top up e wallet").await;
    app.wait_terminal(id, Duration::from_secs(5)).await;
    app.stop().await;
    let count = |file: std::path::PathBuf| async move {
        let pool = common::pool(&format!("sqlite:{}", file.display())).await;
        let n: i64 = sqlx::query("SELECT (SELECT COUNT(*) FROM payments) + (SELECT COUNT(*) FROM deliveries) AS n")
            .fetch_one(&pool)
            .await
            .and_then(|r| sqlx::Row::try_get(&r, "n"))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        n
    };
    let store = app.sqlite_path();
    assert_eq!(count(store.with_extension("participants.db")).await, 2, "a payment and a delivery in the participants' file");
    let pool = common::pool(&format!("sqlite:{}", store.display())).await;
    let tables: i64 = sqlx::query("SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name IN ('payments', 'deliveries')")
        .fetch_one(&pool)
        .await
        .and_then(|r| sqlx::Row::try_get(&r, "n"))
        .unwrap_or_else(|e| panic!("{}: {e}", store.display()));
    assert_eq!(tables, 0, "no participant tables in the store's file");
}

/// After an upgrade from an eso that kept everything in one file, the
/// participants' earlier answers move to their own file: a repeat of a
/// command answered before the upgrade must not be decided (charged) again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_an_older_eso_kept_in_the_store_file_move_to_the_participants_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = dir.path().join("eso.db");
    let older = common::pool(&format!("sqlite:{}?mode=rwc", store.display())).await;
    common::migrate_the_old_way(&older, db::Backend::Sqlite).await;
    sqlx::query("INSERT INTO payments (command_id, order_id, amount, outcome, refunded, created_at) VALUES ('earlier', 'o', '1.00', 'confirmed', 0, 1)")
        .execute(&older)
        .await
        .unwrap_or_else(|e| panic!("insert: {e}"));
    older.close().await;

    let running = eso::start(&common::config(None, None, store.clone()), common::telemetry()).await.unwrap_or_else(|e| panic!("start: {e:#}"));
    running.stop().await;
    let outcome = |file: std::path::PathBuf| async move {
        let pool = common::pool(&format!("sqlite:{}", file.display())).await;
        sqlx::query("SELECT outcome FROM payments WHERE command_id = 'earlier'")
            .fetch_optional(&pool)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .map(|r| sqlx::Row::try_get::<String, _>(&r, "outcome").unwrap_or_default())
    };
    assert_eq!(outcome(store.with_extension("participants.db")).await.as_deref(), Some("confirmed"));
    assert_eq!(outcome(store).await, None, "moved, not copied: the next start has nothing left to move");
}

/// `?wait=` holds a read until the saga has finished: one request gives
/// the outcome, on both read endpoints and in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_read_answers_once_the_saga_has_finished() {
    for mode in [Mode::Embedded, Mode::Production] {
        let mut app = TestApp::start(mode).await;
        let test = app.order("test").await;
        let xxx = app.order("xxx").await;
        let (status, body) = app.get(&format!("/orders/{test}?wait=10s")).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("delivered")), "{mode:?}: {body}");
        let (status, body) = app.get(&format!("/?id={xxx}&wait=10s")).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("cancelled")), "{mode:?}: {body}");
        app.stop().await;
    }
}

/// A saga that cannot finish (nobody answers its payment command): the read
/// answers when its wait is up, with the status so far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_read_answers_when_its_wait_is_up() {
    for mode in [Mode::Embedded, Mode::Production] {
        let mut app = TestApp::start_without_participants(mode).await;
        let id = app.order("test").await;
        let started = Instant::now();
        let (status, body) = app.get(&format!("/orders/{id}?wait=600ms")).await;
        let waited = started.elapsed();
        assert_eq!((status, body["status"].as_str()), (200, Some("created")), "{mode:?}: {body}");
        assert!(waited >= Duration::from_millis(600), "{mode:?}: answered after {waited:?}, before its wait was up");
        app.stop().await;
    }
}

/// A stopping server answers its waiting reads at once instead of letting
/// them hold up the shutdown for the rest of their wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_read_answers_when_the_server_stops() {
    let mut app = TestApp::start_without_participants(Mode::Embedded).await;
    let id = app.order("test").await;
    let read = tokio::spawn(app.http.get(format!("{}/orders/{id}?wait=30s", app.url)).send());
    // Long enough for the read to be waiting; nothing finishes the saga.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let stopping = tokio::spawn(async move {
        app.stop().await;
        app
    });
    let response = read.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("GET: {e}"));
    let answered = started.elapsed();
    assert!(answered < Duration::from_secs(10), "the read was answered {answered:?} after the stop began");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(body["status"], "created", "{body}");
    drop(stopping.await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_saga_state_and_trace_ids_are_visible() {
    let mut app = TestApp::start(Mode::Embedded).await;
    let response = app.http.post(&app.url).json(&json!({ "amount": 1, "description": "test" })).send().await.unwrap_or_else(|e| panic!("{e}"));
    let trace_id = response.headers().get("x-trace-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let trace_id = trace_id.unwrap_or_else(|| panic!("no x-trace-id header"));
    assert_eq!(trace_id.len(), 32);
    app.wait_terminal(id.parse().unwrap_or_default(), Duration::from_secs(5)).await;

    let (status, same) = app.get(&format!("/orders/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(same["status"], "delivered");
    assert_eq!(same["amount"], "1.00");

    let (_, events) = app.get(&format!("/orders/{id}/events")).await;
    let events = events.as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 4);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["version"], i + 1);
        assert_eq!(e["trace_id"], trace_id.as_str(), "every event of the saga is in the POST's trace: {e}");
        assert!(e["recorded_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    // Events from outside: a finished saga refuses them, bad bodies are 400.
    let event = |body: Value| app.http.post(format!("{}/sagas/{id}/events", app.url)).json(&body).send();
    let r = event(json!({ "name": "cancel_requested" })).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 409);
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("finished")), "{body}");
    let r = event(json!({ "data": 1 })).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 400);
    let r = app
        .http
        .post(format!("{}/sagas/6f1c2b8e-0000-4000-8000-000000000000/events", app.url))
        .json(&json!({ "name": "x" }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 404);

    let (_, saga) = app.get(&format!("/sagas/{id}")).await;
    assert_eq!(saga["state"], "delivered");
    assert_eq!(saga["definition"]["name"], "order");
    assert_eq!(saga["definition"]["version"], 2, "order.toml v2 (operator cancel and repair)");
    assert_eq!(saga["terminal"], true);
    assert_eq!(saga["pending_command"], Value::Null);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_returns_the_same_order() {
    for mode in [Mode::Embedded, Mode::Production] {
        let mut app = TestApp::start(mode).await;
        let send = || app.http.post(&app.url).header("Idempotency-Key", "order-42").json(&json!({ "amount": 5, "description": "test" })).send();
        let (first, second, third) = tokio::join!(send(), send(), send());
        let mut ids = vec![];
        let mut statuses = vec![];
        for r in [first, second, third] {
            let r = r.unwrap_or_else(|e| panic!("{e}"));
            statuses.push(r.status().as_u16());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            ids.push(body["id"].as_str().unwrap_or_default().to_string());
        }
        statuses.sort();
        assert_eq!(statuses, [200, 200, 201], "{mode:?}: one created, two found");
        assert!(ids.iter().all(|id| id == &ids[0] && !id.is_empty()), "{ids:?}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let mut app = TestApp::start(Mode::Embedded).await;
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    let (status, ready) = app.get("/readyz").await;
    assert_eq!((status, ready), (200, json!({ "store": true, "bus": true, "shedding": false, "stopping": false })));
    let id = app.order("test").await;
    app.wait_terminal(id, Duration::from_secs(5)).await;
    let text = app.http.get(format!("{}/metrics", app.url)).send().await.unwrap_or_else(|e| panic!("{e}")).text().await.unwrap_or_default();
    for name in [
        "eso_sagas_started_total",
        "eso_sagas_finished_total",
        "eso_http_requests_total",
        "eso_sagas_in_flight",
        "eso_step_seconds",
        "eso_admission_limit",
        "eso_admission_in_flight",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    app.stop().await;
}

/// Each bad input: what is sent, the status, and what the body must say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error() {
    let mut app = TestApp::start(Mode::Embedded).await;
    let cases: Vec<(&str, Value, u16, Value)> = vec![
        ("missing amount", json!({ "description": "test" }), 400, json!({ "error": { "amount": ["is required"] } })),
        ("string amount", json!({ "amount": "207.00", "description": "test" }), 400, json!({ "error": { "amount": ["must be a number, not a string"] } })),
        ("boolean amount", json!({ "amount": true, "description": "test" }), 400, json!({ "error": { "amount": ["must be a number"] } })),
        ("zero amount", json!({ "amount": 0, "description": "test" }), 400, json!({ "error": { "amount": ["must be greater than zero"] } })),
        ("negative amount", json!({ "amount": -5.5, "description": "test" }), 400, json!({ "error": { "amount": ["must be greater than zero"] } })),
        ("three decimals", json!({ "amount": 1.001, "description": "test" }), 400, json!({ "error": { "amount": ["must have at most two decimals"] } })),
        ("absurd amount", json!({ "amount": 1e15, "description": "test" }), 400, json!({ "error": { "amount": ["must be at most 9999999999.99"] } })),
        ("missing description", json!({ "amount": 1 }), 400, json!({ "error": { "description": ["is required"] } })),
        ("empty description", json!({ "amount": 1, "description": "" }), 400, json!({ "error": { "description": ["must not be empty"] } })),
        ("numeric description", json!({ "amount": 1, "description": 7 }), 400, json!({ "error": { "description": ["must be a string"] } })),
        (
            "long description",
            json!({ "amount": 1, "description": "x".repeat(501) }),
            400,
            json!({ "error": { "description": ["must be at most 500 characters"] } }),
        ),
        ("both wrong", json!({}), 400, json!({ "error": { "amount": ["is required"], "description": ["is required"] } })),
        ("not an object", json!([1, 2]), 400, json!({ "error": "body must be a JSON object" })),
    ];
    for (name, body, status, expected) in cases {
        let (got_status, got) = app.post(body).await;
        assert_eq!((got_status, &got), (status, &expected), "{name}");
    }

    let raw = |body: &'static str, content_type: &'static str| app.http.post(&app.url).header("content-type", content_type).body(body).send();
    let r = raw("{\"amount\": 1, \"description\": ", "application/json").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(body["error"].as_str().is_some_and(|e| e.starts_with("malformed JSON")), "{body}");
    let r = raw("{\"amount\": 1, \"description\": \"test\"}", "text/plain").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 415);

    // The amount as written, not as an f64 renders it back.
    for (body, status) in [("{\"amount\": 1.0000000000000001, \"description\": \"test\"}", 400), ("{\"amount\": 2.07e2, \"description\": \"test\"}", 201)] {
        let r = raw(body, "application/json").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), status, "{body}");
    }

    let huge = format!("{{\"amount\": 1, \"description\": \"{}\"}}", "x".repeat(100_000));
    // The server answers before reading the whole body and then closes the
    // connection: not one for the client to reuse for the next request.
    let r = app
        .http
        .post(&app.url)
        .header("content-type", "application/json")
        .header("connection", "close")
        .body(huge)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 413);
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("larger than")), "{body}");

    for (path, status, error) in [
        ("/", 400, "id param must not be empty"),
        ("/?id=", 400, "id param must not be empty"),
        ("/?id=not-a-uuid", 400, "id must be a UUID"),
        ("/?id=6f1c2b8e-0000-4000-8000-000000000000", 404, "not found"),
        ("/orders/123", 400, "id must be a UUID"),
        ("/orders/6f1c2b8e-0000-4000-8000-000000000000", 404, "not found"),
        ("/orders/6f1c2b8e-0000-4000-8000-000000000000/events", 404, "not found"),
        ("/orders/6f1c2b8e-0000-4000-8000-000000000000?wait=30s", 404, "not found"),
        ("/orders/6f1c2b8e-0000-4000-8000-000000000000?wait=soon", 400, "wait must be a duration such as 5s"),
        ("/?id=6f1c2b8e-0000-4000-8000-000000000000&wait=-1s", 400, "wait must be a duration such as 5s"),
        ("/orders/6f1c2b8e-0000-4000-8000-000000000000?wait=31s", 400, "wait must be at most 30s"),
        ("/sagas/6f1c2b8e-0000-4000-8000-000000000000", 404, "not found"),
        ("/nowhere", 404, "no such route"),
    ] {
        let (got, body) = app.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(error)), "{path}: {body}");
    }
    let r =
        app.http.post(&app.url).header("Idempotency-Key", "").json(&json!({ "amount": 1, "description": "t" })).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 400);
    app.stop().await;
}

/// Latency of the `test` saga, POST to `delivered`, printed (not asserted:
/// timing belongs in benchmarks, see `eso-bench`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_order_is_delivered_within_the_old_systems_budget() {
    let mut app = TestApp::start(Mode::Embedded).await;
    let started = Instant::now();
    let id = app.order("test").await;
    app.wait_terminal(id, Duration::from_millis(500)).await;
    eprintln!("embedded: POST -> delivered in {:?}", started.elapsed());
    app.stop().await;
}
