//! Any saga from a file, end to end: the trip saga started, followed,
//! listed and read back through the generic API in every mode, with its
//! participant written against the raw protocol, and every bad input.

mod common;

#[allow(dead_code)]
#[path = "../../participants/examples/trip_agency.rs"]
mod trip_agency;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Mode, TestApp};
use serde_json::{Value, json};
use uuid::Uuid;

fn trip(to: &str, nights: i64) -> Value {
    json!({ "traveller": "Ada", "from": "Lisbon", "to": to, "nights": nights })
}

impl TestApp {
    async fn start_trip(&self, body: Value) -> Uuid {
        let (status, body) = self.send("/sagas/trip", body, None).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_else(|| panic!("no id in {body}"))
    }

    /// The saga once it has finished (`?wait=`), asserting that it did.
    async fn finished(&self, id: Uuid) -> Value {
        let (status, body) = self.get(&format!("/sagas/{id}?wait=10s")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["terminal"], true, "saga {id} did not finish: {body}");
        body
    }

    async fn event_types(&self, id: Uuid) -> Vec<String> {
        let (status, events) = self.get(&format!("/sagas/{id}/events")).await;
        assert_eq!(status, 200, "{events}");
        events.as_array().map(|a| a.iter().filter_map(|e| e["type"].as_str().map(str::to_string)).collect()).unwrap_or_default()
    }

    async fn replay_is_clean(&self) {
        let Some(running) = &self.running else { panic!("not running") };
        let report = running.store.replay(true).await.unwrap_or_else(|e| panic!("replay: {e}"));
        assert!(report.is_clean(), "{}", orchestrator::rebuild::describe(&report));
        assert!(report.sagas > 0 && report.events > 0, "replay saw nothing: {report:?}");
    }
}

/// The three paths of the trip, through whichever participant answers.
async fn the_trip_paths(app: &TestApp) {
    let booked = app.start_trip(trip("Porto", 3)).await;
    let no_hotel = app.start_trip(trip("Porto", 20)).await;
    let no_flight = app.start_trip(trip("Atlantis", 3)).await;

    let body = app.finished(booked).await;
    assert_eq!((body["state"].as_str(), body["status"].as_str()), (Some("booked"), Some("booked")), "{body}");
    assert_eq!(body["definition"]["name"], "trip");
    assert!(body["data"]["flight"]["flight_id"].is_string(), "the flight's reply is in the saga's data: {body}");
    assert_eq!(app.event_types(booked).await, ["trip_requested", "flight_booked", "hotel_booked", "trip_booked"]);

    assert_eq!(app.finished(no_hotel).await["state"], "cancelled");
    assert_eq!(app.event_types(no_hotel).await, ["trip_requested", "flight_booked", "hotel_full", "flight_cancelled", "trip_cancelled"]);

    assert_eq!(app.finished(no_flight).await["state"], "cancelled");
    assert_eq!(app.event_types(no_flight).await, ["trip_requested", "flight_full", "trip_cancelled"]);
    app.replay_is_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_runs_end_to_end_embedded_and_on_postgres_and_nats() {
    for mode in [Mode::Embedded, Mode::Production] {
        let mut app = TestApp::start(mode).await;
        the_trip_paths(&app).await;
        app.stop().await;
    }
}

/// The participant is `participants/examples/trip_agency.rs`, which knows
/// only NATS and JSON values: what a participant in another language does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_on_the_raw_protocol_runs_the_trip_on_both_stores() {
    for mode in [Mode::SqliteAndNats, Mode::Production] {
        let mut app = TestApp::start_without_participants(mode).await;
        let Some(nats) = &app.nats else { panic!("{mode:?} has NATS") };
        let agency = tokio::spawn(trip_agency::serve(nats.client().await));
        the_trip_paths(&app).await;
        app.stop().await;
        agency.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_checks_the_definitions_inputs_and_every_bad_request() {
    let mut app = TestApp::start(Mode::Embedded).await;
    let (status, body) = app.send("/sagas/trip", json!({ "traveller": 7, "from": "Lisbon", "nights": "two", "colour": "red" }), None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({ "error": {
            "traveller": ["must be a string"],
            "to": ["is required"],
            "nights": ["must be an integer"],
            "colour": ["is not an input of saga `trip`"],
        } })
    );
    let (status, body) = app.send("/sagas/no_such_saga", json!({}), None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("no saga definition")), "{body}");

    let raw = |method: reqwest::Method, path: &str, content_type: &str, body: &str| {
        app.http.request(method, format!("{}{path}", app.url)).header("content-type", content_type).body(body.to_string()).send()
    };
    for (method, path, content_type, body, status) in [
        (reqwest::Method::POST, "/sagas/trip".to_string(), "application/json", "{\"traveller\":", 400),
        (reqwest::Method::POST, "/sagas/trip".to_string(), "application/json", "[1, 2]", 400),
        (reqwest::Method::POST, "/sagas/trip".to_string(), "text/plain", "{}", 415),
        (reqwest::Method::POST, format!("/sagas/{}/events", Uuid::new_v4()), "text/plain", "{\"name\": \"x\"}", 415),
        (reqwest::Method::POST, format!("/sagas/{}/events", Uuid::new_v4()), "application/json", "{\"name\": \"x\"}", 404),
        (reqwest::Method::DELETE, "/sagas/trip".to_string(), "application/json", "", 405),
        (reqwest::Method::PUT, "/definitions".to_string(), "application/json", "{}", 405),
    ] {
        let response = raw(method.clone(), &path, content_type, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(response.status().as_u16(), status, "{method} {path} {body}");
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(answer["error"].is_string(), "{method} {path}: every error has a JSON body, not {answer}");
    }

    // The order saga through the generic route goes through its adapter:
    // the seed routes see the same order.
    let (status, body) = app.send("/sagas/order", json!({ "amount": 1.5, "description": "test via the generic route" }), None).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let (status, order) = app.get(&format!("/?id={id}&wait=5s")).await;
    assert_eq!((status, order["amount"].as_str(), order["status"].as_str()), (200, Some("1.50"), Some("delivered")), "{order}");
    let (status, body) = app.send("/sagas/order", json!({ "amount": -1, "description": "" }), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["amount"].is_array() && body["error"]["description"].is_array(), "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_finds_its_saga_refuses_another_body_and_is_forgotten() {
    for mode in [Mode::Embedded, Mode::Production] {
        let mut app = TestApp::start_configured(mode, |c| c.idempotency_ttl = Duration::from_secs(2)).await;
        let (first, body) = app.send("/sagas/trip", trip("Porto", 3), Some("k-1")).await;
        assert_eq!(first, 201, "{body}");
        let id = body["id"].clone();
        // The same request again, its fields in another order: the same saga.
        let (again, body) = app.send("/sagas/trip", json!({ "nights": 3, "to": "Porto", "from": "Lisbon", "traveller": "Ada" }), Some("k-1")).await;
        assert_eq!((again, &body["id"]), (200, &id), "{mode:?}: {body}");
        assert_eq!(body["definition"]["name"], "trip");
        let (other, body) = app.send("/sagas/trip", trip("Porto", 4), Some("k-1")).await;
        assert_eq!(other, 422, "{mode:?}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("another request")), "{body}");
        // Keys are per definition.
        let (status, _) = app.send("/", json!({ "amount": 1, "description": "test" }), Some("k-1")).await;
        assert_eq!(status, 201, "{mode:?}: the order saga's key k-1 is not the trip's");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let (later, body) = app.send("/sagas/trip", trip("Porto", 4), Some("k-1")).await;
        assert_eq!(later, 201, "{mode:?}: a key past its lifetime starts a new saga: {body}");
        assert_ne!(body["id"], id);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_newest_first_and_filters() {
    let mut app = TestApp::start(Mode::Embedded).await;
    let mut trips = Vec::new();
    for (i, to) in ["Porto", "Atlantis", "Porto", "Atlantis", "Porto"].iter().enumerate() {
        let id = app.start_trip(trip(to, 1 + i as i64)).await;
        app.finished(id).await;
        trips.push(id);
    }
    let order = app.order("test listed").await;
    app.wait_terminal(order, Duration::from_secs(5)).await;

    let ids = |page: &Value| -> Vec<Uuid> {
        page["sagas"].as_array().map(|a| a.iter().filter_map(|s| s["id"].as_str().and_then(|id| Uuid::parse_str(id).ok())).collect()).unwrap_or_default()
    };
    let mut seen = Vec::new();
    let mut path = "/sagas?definition=trip&limit=2".to_string();
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/sagas?definition=trip&limit=2&after={next}"),
            None => break,
        }
    }
    let newest_first: Vec<Uuid> = trips.iter().rev().copied().collect();
    assert_eq!(seen, newest_first, "pages of two, newest first, each saga once");

    let count = |path: String| {
        let app = &app;
        async move {
            let (status, page) = app.get(&path).await;
            assert_eq!(status, 200, "{path}: {page}");
            ids(&page).len()
        }
    };
    assert_eq!(count("/sagas?definition=trip&status=cancelled".into()).await, 2);
    assert_eq!(count("/sagas?definition=trip&state=booked".into()).await, 3);
    assert_eq!(count("/sagas?definition=trip&state=booked&status=cancelled".into()).await, 0);
    assert_eq!(count("/sagas?definition=trip&terminal=false".into()).await, 0);
    assert_eq!(count("/sagas?definition=trip&terminal=true".into()).await, 5);
    assert_eq!(count("/sagas".into()).await, 6, "every definition");
    assert_eq!(count("/sagas?status=delivered".into()).await, 1);
    let (_, page) = app.get("/sagas?limit=1").await;
    assert_eq!(ids(&page), [order], "the newest of all definitions");
    let first = &page["sagas"][0];
    for field in ["state", "status", "terminal", "created_at", "updated_at"] {
        assert!(!first[field].is_null(), "{field} in {first}");
    }
    assert_eq!(first["definition"], json!({ "name": "order", "version": 2 }));
    assert_eq!(first["attempt"], Value::Null, "a finished saga waits on no command: {first}");
    let (_, done) = app.get(&format!("/sagas/{}", trips[0])).await;
    assert_eq!(done["actions"], json!({ "retry": false, "cancel": null, "resume": [] }), "a booked trip has nothing to repair: {done}");
    assert_eq!(done["trace_url"], Value::Null, "no ESO_TRACE_URL, no link: {done}");
    // The order's history shows the attempt of each command it sent.
    let (_, events) = app.get(&format!("/orders/{order}/events")).await;
    let attempts: Vec<&Value> = events.as_array().map(|a| a.iter().map(|e| &e["attempt"]).collect()).unwrap_or_default();
    assert_eq!(attempts, [&json!(1), &Value::Null, &json!(1), &Value::Null], "{events}");

    for (path, status) in [
        ("/sagas?limit=0", 400),
        ("/sagas?limit=501", 400),
        ("/sagas?limit=ten", 400),
        ("/sagas?after=yesterday", 400),
        ("/sagas?terminal=maybe", 400),
        ("/sagas?colour=red", 400),
        ("/sagas?state=nowhere", 400),
        ("/sagas?definition=nope", 404),
    ] {
        let (got, body) = app.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].is_string() || body["error"].is_object(), "{path}: {body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_show_their_versions_live_sagas_and_diagram() {
    let mut app = TestApp::start_without_participants(Mode::Embedded).await;
    // With no participant, the trip waits on its first command: live.
    app.start_trip(trip("Porto", 3)).await;
    let (status, body) = app.get("/definitions").await;
    assert_eq!(status, 200, "{body}");
    let definitions = body["definitions"].as_array().cloned().unwrap_or_default();
    let names: BTreeSet<&str> = definitions.iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["order", "trip"]));
    let trip = definitions.iter().find(|d| d["name"] == "trip").cloned().unwrap_or_default();
    assert_eq!((trip["version"].as_u64(), trip["live"].as_i64(), trip["latest"].as_bool()), (Some(2), Some(1), Some(true)), "{trip}");
    assert_eq!(trip["hash"].as_str().map(str::len), Some(64), "{trip}");
    let states: Vec<&str> = trip["states"].as_array().map(|s| s.iter().filter_map(|s| s["name"].as_str()).collect()).unwrap_or_default();
    assert_eq!(states, ["flight", "hotel", "cancel_flight", "booked", "cancelled", "cancel_failed"]);
    assert!(trip["inputs"].as_array().is_some_and(|i| i.len() == 5), "{trip}");
    let order = definitions.iter().find(|d| d["name"] == "order").cloned().unwrap_or_default();
    assert_eq!(order["live"], 0, "{order}");

    let (status, body) = app.get("/definitions/trip").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["versions"][0]["diagram"].as_str().is_some_and(|d| d.contains("stateDiagram-v2") && d.contains("hotel --> booked")), "{body}");
    let (status, body) = app.get("/definitions/nope").await;
    assert_eq!(status, 404, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_order_definition_the_order_routes_say_so() {
    let only_trip = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sagas/definitions/trip.toml");
    std::fs::copy(&shipped, only_trip.path().join("trip.toml")).unwrap_or_else(|e| panic!("{e}"));
    let dir = only_trip.path().to_path_buf();
    let mut app = TestApp::start_configured(Mode::Embedded, move |c| c.sagas_dir = dir).await;
    let (status, body) = app.send("/", json!({ "amount": 1, "description": "test" }), None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("`order`")), "{body}");
    let (status, _) = app.get(&format!("/?id={}", Uuid::new_v4())).await;
    assert_eq!(status, 503);
    // Any other saga runs as ever.
    let id = app.start_trip(trip("Porto", 2)).await;
    assert_eq!(app.finished(id).await["state"], "booked");
    app.stop().await;
}

/// Stuck sagas (by age and by attempt), a start range, a version, the
/// counts per state, and what one saga and its history show, on both
/// stores. No participant answers, so the trips wait on their flight; the
/// test moves their timers an hour on (and one saga's last step an hour
/// back) in the database, so nothing moves while it looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_finds_stuck_sagas_and_counts_them_and_a_saga_shows_its_trace_attempts_and_actions() {
    for mode in [Mode::Embedded, Mode::Production] {
        let mut app = TestApp::start_configured(mode, |c| {
            c.embed_participants = Some(false);
            c.trace_url = orchestrator::config::TraceUrl::parse("http://jaeger:16686/trace/{trace_id}").ok();
        })
        .await;
        let Some(running) = &app.running else { panic!("not running") };
        let (pool, runtime) = (running.store.pool().clone(), running.runtime.clone());
        let exec = |sql: &'static str, id: Uuid| {
            let pool = pool.clone();
            async move {
                sqlx::query(sql).bind(id.to_string()).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        };
        let hold = |id| exec("UPDATE sagas SET deadline = deadline + 3600000 WHERE id = $1", id);

        // The first trip's flight times out once (2 s) and is sent again.
        let first = app.start_trip(trip("Porto", 1)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while app.get(&format!("/sagas/{first}")).await.1["pending_command"]["attempt"] != 2 {
            assert!(std::time::Instant::now() < deadline, "{mode:?}: the flight was not sent a second time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hold(first).await;
        let second = app.start_trip(trip("Porto", 2)).await;
        let third = app.start_trip(trip("Porto", 3)).await;
        hold(second).await;
        hold(third).await;
        exec("UPDATE sagas SET updated_at = updated_at - 3600000000 WHERE id = $1", first).await;

        let ids = |path: String| {
            let app = &app;
            async move {
                let (status, page) = app.get(&path).await;
                assert_eq!(status, 200, "{path}: {page}");
                let listed = page["sagas"].as_array().cloned().unwrap_or_default();
                listed.iter().filter_map(|s| s["id"].as_str().and_then(|id| Uuid::parse_str(id).ok())).collect::<Vec<_>>()
            }
        };
        assert_eq!(ids("/sagas?stuck_for=30m".into()).await, [first], "{mode:?}");
        assert!(ids("/sagas?definition=trip&stuck_for=2h".into()).await.is_empty());
        assert_eq!(ids("/sagas?definition=trip&min_attempt=2".into()).await, [first], "{mode:?}");
        assert_eq!(ids("/sagas?min_attempt=1".into()).await, [third, second, first]);
        assert!(ids("/sagas?definition=trip&min_attempt=3".into()).await.is_empty());
        assert_eq!(ids("/sagas?definition=trip&version=2&state=flight".into()).await, [third, second, first]);
        // The range is half-open: from its start, up to (not at) its end.
        let created = |id: Uuid| {
            let app = &app;
            async move { app.get(&format!("/sagas/{id}")).await.1["created_at"].as_str().unwrap_or_default().to_string() }
        };
        let (from, to) = (created(second).await, created(third).await);
        assert_eq!(ids(format!("/sagas?started_after={from}")).await, [third, second]);
        assert_eq!(ids(format!("/sagas?started_before={to}")).await, [second, first]);
        assert_eq!(ids(format!("/sagas?started_after={from}&started_before={to}&min_attempt=1")).await, [second]);
        let (_, page) = app.get("/sagas?definition=trip").await;
        let attempts: Vec<&Value> = page["sagas"].as_array().map(|a| a.iter().map(|s| &s["attempt"]).collect()).unwrap_or_default();
        assert_eq!(attempts, [&json!(1), &json!(1), &json!(2)], "{page}");

        let (status, counts) = app.get("/sagas/counts?definition=trip").await;
        assert_eq!(status, 200, "{counts}");
        let flight = json!({ "definition": "trip", "version": 2, "state": "flight", "status": "booking", "terminal": false, "count": 3 });
        assert_eq!(counts["counts"], json!([flight]), "{counts}");
        assert!(counts["finished_as_of"].is_string(), "{counts}");
        let (_, all) = app.get("/sagas/counts?version=2").await;
        assert_eq!(all["counts"], counts["counts"], "no order was started");

        let (_, saga) = app.get(&format!("/sagas/{first}")).await;
        let trace_id = saga["trace_id"].as_str().unwrap_or_default().to_string();
        assert!(trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()), "{saga}");
        assert_eq!(saga["trace_url"], format!("http://jaeger:16686/trace/{trace_id}"));
        assert_eq!(saga["pending_command"]["timeout_ms"], 2000, "{saga}");
        assert_eq!(saga["pending_command"]["deadline"], saga["next_deadline"], "{saga}");
        assert_eq!(saga["actions"], json!({ "retry": true, "cancel": "cancel_flight", "resume": [] }));
        let (_, events) = app.get(&format!("/sagas/{first}/events")).await;
        let shown = |events: &Value, field: &str| -> Vec<Value> { events.as_array().map(|a| a.iter().map(|e| e[field].clone()).collect()).unwrap_or_default() };
        assert_eq!(shown(&events, "type"), [json!("trip_requested"), json!("command_timed_out"), json!("command_retried")]);
        assert_eq!(shown(&events, "attempt"), [json!(1), json!(1), json!(2)], "{events}");
        assert_eq!(shown(&events, "operator"), [Value::Null, Value::Null, Value::Null]);

        // An operator's cancel shows who did it and why.
        let act = sagas::machine::Act { action: sagas::machine::Action::Cancel, reason: "the traveller called".into(), operator: "ada".into(), key: None };
        let stepped = runtime.advance(second, sagas::Input::Operator(act), "operator".into()).await;
        assert!(matches!(stepped, Ok(orchestrator::runtime::Stepped::Applied { .. })), "{mode:?}: {stepped:?}");
        let (_, events) = app.get(&format!("/sagas/{second}/events")).await;
        let last = events.as_array().and_then(|a| a.last()).cloned().unwrap_or_default();
        assert_eq!(last["type"], "trip_cancelled_by_operator", "{events}");
        assert_eq!(last["operator"], json!({ "action": "cancel", "reason": "the traveller called", "by": "ada" }));
        assert_eq!(last["attempt"], 1, "the cancel sent the flight's cancellation, attempt 1: {last}");
        let (_, saga) = app.get(&format!("/sagas/{second}")).await;
        assert_eq!(saga["actions"], json!({ "retry": true, "cancel": null, "resume": [] }), "a cancellation under way cannot be cancelled: {saga}");
        app.replay_is_clean().await;

        for (path, status) in [
            ("/sagas?stuck_for=forever", 400),
            ("/sagas?stuck_for=0s", 400),
            ("/sagas?stuck_for=99999d", 400),
            ("/sagas?stuck_for=10m&terminal=true", 400),
            ("/sagas?min_attempt=0", 400),
            ("/sagas?min_attempt=many", 400),
            ("/sagas?version=two", 400),
            ("/sagas?definition=trip&version=7", 400),
            ("/sagas?started_after=yesterday", 400),
            ("/sagas?started_after=2026-02-01T00:00:00Z&started_before=2026-01-01T00:00:00Z", 400),
            ("/sagas/counts?colour=red", 400),
            ("/sagas/counts?version=0", 400),
            ("/sagas/counts?version=7", 400),
            ("/sagas/counts?definition=nope", 404),
        ] {
            let (got, body) = app.get(path).await;
            assert_eq!(got, status, "{path}: {body}");
            assert!(body["error"].is_string() || body["error"].is_object(), "{path}: {body}");
        }
        app.stop().await;
    }
}
