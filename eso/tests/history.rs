//! What a saga costs over time, end to end: a read waiting on one replica
//! hears of a finish on another through NATS (instead of re-reading the
//! store every half second in case); finished sagas are deleted after the
//! retention period, and only those; the event stream takes the configured
//! limits, also when it already exists.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Mode, Nats, Postgres, TestApp, config, telemetry};
use futures::StreamExt;
use orchestrator::app::Running;
use orchestrator::retention::Retention;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sagas")
}

/// An orchestrator in this process on `postgres` and `nats`, running the
/// test sagas with no participant of its own.
async fn replica(postgres: &Postgres, nats: &Nats, dir: &tempfile::TempDir) -> Running {
    let mut config = config(Some(postgres.url.clone()), Some(nats.url.clone()), dir.path().join("unused.db"));
    config.sagas_dir = fixtures();
    config.embed_participants = Some(false);
    eso::start(&config, telemetry()).await.unwrap_or_else(|e| panic!("start: {e:#}"))
}

async fn start_hold(http: &reqwest::Client, url: &str) -> Uuid {
    let response = http.post(format!("{url}/sagas/hold")).json(&json!({})).send().await.unwrap_or_else(|e| panic!("POST: {e}"));
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_else(|| panic!("no id in {body}"))
}

/// Five reads wait on replica B, started 100 ms apart, for sagas replica A
/// runs. Each must answer within 250 ms of the reply that finished its
/// saga. Re-reading the store every 500 ms instead (as eso did) would
/// answer the reads at five phases 100 ms apart, so at least one late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waiting_on_one_replica_hears_a_finish_on_another() {
    let (postgres, nats, dir) = (Postgres::fresh().await, Nats::start().await, tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")));
    let a = replica(&postgres, &nats, &dir).await;
    let b = replica(&postgres, &nats, &dir).await;
    let client = nats.client().await;
    let mut commands = client.subscribe("test.hold.work").await.unwrap_or_else(|e| panic!("subscribe: {e}"));
    client.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
    let http = reqwest::Client::new();

    let mut reads = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..5 {
        let id = start_hold(&http, &a.url()).await;
        let command = tokio::time::timeout(Duration::from_secs(5), commands.next()).await.ok().flatten().unwrap_or_else(|| panic!("no command for {id}"));
        pending.push(command);
        let read = http.get(format!("{}/sagas/{id}?wait=20s", b.url())).send();
        reads.push(tokio::spawn(async move {
            let response = read.await.unwrap_or_else(|e| panic!("GET: {e}"));
            (Instant::now(), response.json::<Value>().await.unwrap_or(Value::Null))
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every read is waiting now; A's replies finish the sagas on A.
    let mut replied = Vec::new();
    for command in pending {
        let reply = command.reply.unwrap_or_else(|| panic!("a command without a reply subject"));
        client.publish(reply, serde_json::to_vec(&json!({"outcome": "done"})).unwrap_or_default().into()).await.unwrap_or_else(|e| panic!("reply: {e}"));
        client.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
        replied.push(Instant::now());
    }
    for (read, replied) in reads.into_iter().zip(replied) {
        let (answered, body) = read.await.unwrap_or_else(|e| panic!("read task: {e}"));
        assert_eq!(body["state"], "done", "{body}");
        let after = answered.saturating_duration_since(replied);
        assert!(after < Duration::from_millis(250), "replica B answered {after:?} after the finish on A: {body}");
    }
    b.stop().await;
    a.stop().await;
}

/// Sagas finished longer ago than the period are deleted, events, row and
/// read model (the order saga's `orders` row) alike; a saga still running,
/// and one finished since, are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_are_deleted_after_the_retention_period() {
    deleted_after_the_period(Mode::Embedded).await;
}

/// The same on Postgres and NATS, whose deletion skips rows other replicas
/// hold and reads the relay's cursor in transaction order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_are_deleted_after_the_retention_period_on_postgres() {
    deleted_after_the_period(Mode::Production).await;
}

async fn deleted_after_the_period(mode: Mode) {
    let period = Duration::from_secs(2);
    let mut app = TestApp::start_configured(mode, |config| {
        config.idempotency_ttl = period;
        config.history.retention = Retention::Delete(period);
    })
    .await;
    let old = app.order("test: delivered, then deleted").await;
    app.wait_terminal(old, Duration::from_secs(10)).await;
    tokio::time::sleep(period + Duration::from_millis(200)).await;
    let recent = app.order("test: delivered just now").await;
    app.wait_terminal(recent, Duration::from_secs(10)).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = app.get(&format!("/sagas/{old}")).await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "saga {old} still there 10 s after its retention period");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.get(&format!("/orders/{old}")).await.0, 404, "the order's read model row outlived its saga");
    assert_eq!(app.get(&format!("/sagas/{old}/events")).await.0, 404, "the events outlived their saga");
    let (status, body) = app.get(&format!("/sagas/{recent}")).await;
    assert_eq!(status, 200, "a saga finished within the period was deleted: {body}");
    assert_eq!(app.get(&format!("/sagas/{recent}/events")).await.0, 200);
    let store = match &app.postgres {
        Some(postgres) => postgres.url.clone(),
        None => orchestrator::config::sqlite_url(&app.sqlite_path()),
    };
    app.stop().await;
    let pool = common::pool(&store).await;
    let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE stream_id = $1")
        .bind(old.to_string())
        .fetch_one(&pool)
        .await
        .and_then(|r| r.try_get("n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left, 0);
}

/// Why eso would not start with `config` (which has `what` wrong); fails
/// the test if it starts.
async fn refused_at_start(config: &orchestrator::config::Config, what: &str) -> String {
    match eso::start(config, telemetry()).await {
        Ok(running) => {
            running.stop().await;
            panic!("eso started with {what}")
        }
        Err(e) => format!("{e:#}"),
    }
}

/// A period shorter than an idempotency key's lifetime is refused at start.
#[tokio::test]
async fn a_retention_shorter_than_the_key_lifetime_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = config(None, None, dir.path().join("eso.db"));
    config.history.retention = Retention::Delete(Duration::from_secs(60));
    let error = refused_at_start(&config, "a retention of 1m and keys of 24h").await;
    assert!(error.contains("ESO_RETENTION") && error.contains("ESO_IDEMPOTENCY_TTL"), "{error}");
}

/// The event stream gets the configured age, size and replicas, and a
/// stream that exists (made by an earlier start with no limits) is
/// updated to them.
#[tokio::test]
async fn the_event_stream_takes_the_configured_limits() {
    let (nats, dir) = (Nats::start().await, tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")));
    let stream = async_nats::jetstream::new(nats.client().await);
    for (age, bytes) in [(None, None), (Some(Duration::from_secs(7 * 86_400)), Some(1u64 << 30))] {
        let mut config = config(None, Some(nats.url.clone()), dir.path().join("eso.db"));
        config.history.events_max_age = age;
        config.history.events_max_bytes = bytes;
        let running = eso::start(&config, telemetry()).await.unwrap_or_else(|e| panic!("start: {e:#}"));
        let mut events = stream.get_stream("ESO_EVENTS").await.unwrap_or_else(|e| panic!("stream: {e}"));
        let info = events.info().await.map(|i| i.config.clone()).unwrap_or_else(|e| panic!("stream info: {e}"));
        assert_eq!(info.max_age, age.unwrap_or(Duration::ZERO));
        assert_eq!(info.max_bytes, bytes.map_or(-1, |b| b as i64));
        assert_eq!(info.num_replicas, 1);
        running.stop().await;
    }
}

/// More copies of the stream than the NATS deployment has servers stops
/// eso at start, naming the setting.
#[tokio::test]
async fn more_stream_replicas_than_servers_is_refused_at_start() {
    let (nats, dir) = (Nats::start().await, tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")));
    let mut config = config(None, Some(nats.url.clone()), dir.path().join("eso.db"));
    config.history.events_replicas = 3;
    let error = refused_at_start(&config, "3 stream replicas on one nats-server").await;
    assert!(error.contains("ESO_EVENTS_REPLICAS") && error.contains("3 replica"), "{error}");
}
