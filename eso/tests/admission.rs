//! Admission control end to end: past its limit a replica answers a new
//! saga or outside event `429` with `Retry-After` at once and records
//! nothing for it; reads, and the sagas it took on, go on; `/readyz` says
//! not ready while it sheds; a saga that ends, parks or times out gives its
//! place back.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Mode, TestApp};
use orchestrator::admission::Policy;
use serde_json::{Value, json};
use uuid::Uuid;

/// The metrics are the process's (one recorder for every test here), so
/// the tests that read them run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sagas")
}

/// The sagas of `dir` at a fixed limit, with a participant on NATS that
/// takes their commands and never answers (with no one subscribed, a
/// command fails at once and its saga waits for its deadline, holding no
/// place).
async fn start_in(dir: PathBuf, limit: usize) -> (TestApp, async_nats::Subscriber) {
    let app = TestApp::start_configured(Mode::SqliteAndNats, |config| {
        config.sagas_dir = dir;
        config.embed_participants = Some(false);
        config.admission = Policy::Fixed(limit);
    })
    .await;
    let nats = app.nats.as_ref().unwrap_or_else(|| panic!("the app runs with NATS"));
    let silent = nats.client().await.subscribe("test.>").await.unwrap_or_else(|e| panic!("subscribe: {e}"));
    (app, silent)
}

/// The test sagas (`hold`, `fragile`) at a fixed limit (see [`start_in`]).
async fn start(limit: usize) -> (TestApp, async_nats::Subscriber) {
    start_in(fixtures(), limit).await
}

impl TestApp {
    /// `POST path` with `body`: the status, `Retry-After`, and the body.
    async fn post_to(&self, path: &str, body: Value) -> (u16, Option<String>, Value) {
        let response = self.http.post(format!("{}{path}", self.url)).json(&body).send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status().as_u16();
        let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        (status, retry, response.json().await.unwrap_or(Value::Null))
    }

    async fn start_saga(&self, name: &str) -> Uuid {
        let (status, _, body) = self.post_to(&format!("/sagas/{name}"), json!({})).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_else(|| panic!("no id in {body}"))
    }

    async fn metric(&self, line_start: &str) -> Option<f64> {
        let (_, text) = self.text("/metrics").await;
        text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }

    async fn text(&self, path: &str) -> (u16, String) {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_limit_a_replica_sheds_new_work_at_once_and_goes_on_with_what_it_took() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (app, _silent) = start(3).await;
    // `hold` waits an hour for its command: each keeps its place.
    let held = [app.start_saga("hold").await, app.start_saga("hold").await, app.start_saga("hold").await];
    // Counters are the process's, so this test counts what it adds.
    const STARTS: &str = r#"eso_requests_shed_total{route="/sagas/{key}",reason="overload"}"#;
    const EVENTS: &str = r#"eso_requests_shed_total{route="/sagas/{id}/events",reason="overload"}"#;
    let (starts_before, events_before) = (app.metric(STARTS).await.unwrap_or(0.0), app.metric(EVENTS).await.unwrap_or(0.0));

    let asked = Instant::now();
    let (status, retry, body) = app.post_to("/sagas/hold", json!({})).await;
    assert_eq!((status, retry.as_deref()), (429, Some("1")), "{body}");
    assert!(asked.elapsed() < Duration::from_secs(2), "a shed answer comes at once");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("3 sagas in flight") && e.contains("Retry-After")), "{body}");
    let (status, retry, body) = app.post_to(&format!("/sagas/{}/events", held[0]), json!({ "name": "done" })).await;
    assert_eq!((status, retry.as_deref()), (429, Some("1")), "an outside event is new work too: {body}");
    // The body is not read before the gate: a malformed one is shed, not a 400.
    let response = app.http.post(format!("{}/sagas/hold", app.url)).header("content-type", "application/json").body("{nope").send().await;
    assert_eq!(response.map(|r| r.status().as_u16()).ok(), Some(429));

    // Reads are never shed, and nothing was recorded for the shed starts.
    let (status, list) = app.get("/sagas?definition=hold").await;
    assert_eq!(status, 200, "{list}");
    let listed: HashSet<&str> = list["sagas"].as_array().map(|a| a.iter().filter_map(|s| s["id"].as_str()).collect()).unwrap_or_default();
    assert_eq!(listed.len(), 3, "{list}");

    // Half of this replica's new work was shed: once admission control
    // has looked (every second), it says it is not ready.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, ready) = app.text("/readyz").await;
        if status == 503 && ready.contains(r#""shedding":true"#) {
            break;
        }
        assert!(Instant::now() < deadline, "not shedding after 5 s: {status} {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.metric(STARTS).await.map(|n| n - starts_before), Some(2.0));
    assert_eq!(app.metric(EVENTS).await.map(|n| n - events_before), Some(1.0));
    assert_eq!(app.metric("eso_admission_in_flight").await, Some(3.0));
    assert_eq!(app.metric("eso_admission_limit").await, Some(3.0));
    // Not stopped: a stop waits (up to 15 s) for the commands nobody answers.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_command_times_out_gives_its_place_back() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // `fragile` with a 2 s timeout (long enough that both starts hold
    // their places when the third comes, on a busy machine): once it times
    // out it waits on a participant, not on eso, and its place is free.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let fragile = std::fs::read_to_string(fixtures().join("fragile.toml")).unwrap_or_else(|e| panic!("fragile.toml: {e}"));
    std::fs::write(dir.path().join("fragile.toml"), fragile.replace("timeout = \"100ms\"", "timeout = \"2s\"")).unwrap_or_else(|e| panic!("{e}"));
    let (mut app, _silent) = start_in(dir.path().to_path_buf(), 2).await;
    app.start_saga("fragile").await;
    app.start_saga("fragile").await;
    let (status, _, body) = app.post_to("/sagas/fragile", json!({})).await;
    assert_eq!(status, 429, "both places are held: {body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = app.post_to("/sagas/fragile", json!({})).await;
        match status {
            201 => break,
            429 => {}
            other => panic!("{other}: {body}"),
        }
        assert!(Instant::now() < deadline, "no place freed after the timeouts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

/// A burst far past the limit on the order saga: every POST is either
/// taken on (and ends) or shed (and left no trace); nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_limit_is_taken_on_or_shed_and_every_saga_taken_ends() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut app = TestApp::start_configured(Mode::Embedded, |config| config.admission = Policy::Fixed(8)).await;
    let posts = (0..200).map(|i| {
        let (http, url) = (app.http.clone(), app.url.clone());
        async move {
            let response = http.post(&url).json(&json!({ "amount": 10.5, "description": format!("test burst {i}") })).send().await;
            let response = response.unwrap_or_else(|e| panic!("POST: {e}"));
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()))
        }
    });
    let answers = futures::future::join_all(posts).await;
    let accepted: Vec<Uuid> = answers.iter().filter(|(s, _)| *s == 201).filter_map(|(_, id)| *id).collect();
    let shed = answers.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(accepted.len() + shed, 200, "only 201 or 429: {:?}", answers.iter().map(|(s, _)| s).collect::<HashSet<_>>());
    assert!(shed > 0 && !accepted.is_empty(), "{} accepted, {shed} shed", accepted.len());
    for id in &accepted {
        let order = app.wait_terminal(*id, Duration::from_secs(30)).await;
        assert_eq!(order["status"], "delivered", "{order}");
    }
    let pool = common::pool(&format!("sqlite:{}", app.sqlite_path().display())).await;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sagas").fetch_one(&pool).await.unwrap_or_else(|e| panic!("count: {e}"));
    assert_eq!(stored, accepted.len() as i64, "a shed POST left a saga behind");
    // A saga's place comes back just after its end is visible.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.metric("eso_admission_in_flight").await != Some(0.0) {
        assert!(Instant::now() < deadline, "a place was not given back: {:?}", app.metric("eso_admission_in_flight").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}
