//! Migrating running sagas, end to end on Postgres and NATS: 500 orders on
//! version 1 held at `delivery` (the delivery service is down), version 3
//! deployed beside it (an added `notify` step and a `[migrate.1]` mapping),
//! the migration run through the API, the delivery service back: every saga
//! ends as version 3 says, with one `definition_migrated` event in its
//! history and one trace across all its events. Once straight through (the
//! migration rate is printed), once with the orchestrator SIGKILLed in the
//! middle of the migration.
//!
//! The rate at the maximum allowed (1,000 per second):
//! `cargo test -p eso --release --test migrate -- --nocapture straight`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Nats, Postgres, Process, process_env, until_finished, until_part_done};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::Row;

const ALICE: &str = "alice-operator-token-0123456789";
const SAGAS: usize = 500;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sagas/tests/migrate").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn count(pool: &sqlx::AnyPool, sql: &'static str) -> i64 {
    sqlx::query(sql).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}")).try_get("n").unwrap_or(-1)
}

/// Answers version 3's `notify` step, as the notification service would.
async fn notifier(nats: &Nats) -> tokio::task::JoinHandle<()> {
    let client = nats.client().await;
    let mut commands = client.subscribe("test.order.notify").await.unwrap_or_else(|e| panic!("subscribe: {e}"));
    tokio::spawn(async move {
        while let Some(message) = commands.next().await {
            if let Some(reply) = message.reply {
                let answer = serde_json::to_vec(&json!({ "outcome": "notified", "data": {} })).unwrap_or_default();
                let _ = client.publish(reply, answer.into()).await;
            }
        }
    })
}

async fn scenario(crash: bool) {
    let postgres = Postgres::fresh().await;
    let nats = Nats::start().await;
    let sagas_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(sagas_dir.path().join("order-v1.toml"), fixture("order-v1.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut env = process_env(&postgres, &nats);
    env.push(("SAGAS_DIR", sagas_dir.path().display().to_string()));
    env.push(("ESO_OPERATOR_TOKEN", format!("alice:{ALICE}")));
    let mut eso = Process::spawn(&[], &env).await;
    let _payment = Process::spawn(&["participant", "payment"], &env).await;
    let _notifier = notifier(&nats).await;
    let url = eso.url();
    let http = reqwest::Client::new();
    let pool = postgres.pool().await;

    // 500 orders on version 1, paid, waiting on a delivery nobody answers.
    let mut traces = BTreeMap::new();
    for chunk in (0..SAGAS).collect::<Vec<_>>().chunks(50) {
        let posts = chunk.iter().map(|i| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = common::post_retrying(&http, &url, &json!({ "amount": 10.50, "description": format!("test order {i}") })).await;
                assert_eq!(response.status().as_u16(), 201);
                let trace = response.headers().get("x-trace-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (body["id"].as_str().unwrap_or_default().to_string(), trace)
            }
        });
        traces.extend(futures::future::join_all(posts).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&pool, "SELECT COUNT(*) AS n FROM sagas WHERE state = 'delivery' AND definition_version = 1").await < SAGAS as i64 {
        assert!(Instant::now() < deadline, "the orders did not all reach delivery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Version 3 deployed: the same process, restarted with both files.
    std::fs::write(sagas_dir.path().join("order-v3.toml"), fixture("order-v3.toml")).unwrap_or_else(|e| panic!("{e}"));
    eso.restart().await;

    let (refused, said) = cli(&["saga", "retire", "order", "1", "--url", &url]).await;
    assert!(!refused && said.contains("500 saga(s) are live on version 1"), "{said}");

    let rate = if crash { 100 } else { 1000 };
    let started = Instant::now();
    // Straight: through the API; killed: through `eso saga migrate`, which
    // follows the job across the restart.
    let (id, migrating) = if crash {
        let args = ["saga", "migrate", "order", "--from", "1", "--to", "3", "--state", "delivery", "--rate", "100", "--url", &url].map(str::to_string);
        let migrating = tokio::spawn(async move { cli(&args.iter().map(String::as_str).collect::<Vec<_>>()).await });
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            let jobs: Value =
                http.get(format!("{url}/actions")).bearer_auth(ALICE).send().await.unwrap_or_else(|e| panic!("{e}")).json().await.unwrap_or(Value::Null);
            if let Some(id) = jobs["jobs"][0]["job"].as_str() {
                break id.to_string();
            }
            assert!(Instant::now() < deadline, "eso saga migrate created no job");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (id, Some(migrating))
    } else {
        let body = json!({ "from": 1, "to": 3, "reason": "v3 tells the customer", "filter": { "state": "delivery" }, "rate": rate });
        let response = http.post(format!("{url}/definitions/order/migrations")).bearer_auth(ALICE).json(&body).send().await;
        let response = response.unwrap_or_else(|e| panic!("POST migrations: {e}"));
        assert_eq!(response.status().as_u16(), 202);
        let created: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!((created["matched"].as_u64(), created["action"].as_str()), (Some(SAGAS as u64), Some("migrate")), "{created}");
        (created["job"].as_str().unwrap_or_default().to_string(), None)
    };

    if crash {
        until_part_done(&http, &url, ALICE, &id, 100, SAGAS as u64).await;
        eso.restart().await;
    }
    let finished = until_finished(&http, &url, ALICE, &id, Duration::from_secs(90)).await;
    let elapsed = started.elapsed();
    if let Some(migrating) = migrating {
        let (ok, said) = migrating.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(ok && said.contains("matched 500, done 500, refused 0, failed 0"), "eso saga migrate:\n{said}");
    }
    assert_eq!((finished["done"].as_u64(), finished["refused"].as_u64(), finished["failed"].as_u64()), (Some(SAGAS as u64), Some(0), Some(0)), "{finished}");
    if !crash {
        // From the first move to the last, as the events record them (the
        // job's own wall time adds its poll and its one-second batches).
        let span = sqlx::query("SELECT MIN(recorded_at) AS first, MAX(recorded_at) AS last FROM events WHERE event_type = 'definition_migrated'")
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let micros = span.try_get::<i64, _>("last").unwrap_or(0) - span.try_get::<i64, _>("first").unwrap_or(0);
        let moving = SAGAS as f64 / (micros.max(1) as f64 / 1e6);
        eprintln!("migrated {SAGAS} sagas at rate {rate}: job {elapsed:?} from request to finished; moves {micros} µs first to last = {moving:.0} sagas/s");
    }
    assert_eq!(count(&pool, "SELECT COUNT(*) AS n FROM sagas WHERE definition_version = 3 AND state = 'delivery'").await, SAGAS as i64);

    // The delivery service is back: every saga goes on as version 3 says.
    let _delivery = Process::spawn(&["participant", "delivery"], &env).await;
    common::wait_all_terminal(&pool, SAGAS, Duration::from_secs(120)).await;
    assert_eq!(count(&pool, "SELECT COUNT(*) AS n FROM sagas WHERE definition_version = 3 AND state = 'delivered'").await, SAGAS as i64);
    assert_eq!(count(&pool, "SELECT COUNT(*) AS n FROM events WHERE event_type = 'customer_notified'").await, SAGAS as i64, "v3's added step");
    let (moved, sagas) = (
        count(&pool, "SELECT COUNT(*) AS n FROM events WHERE event_type = 'definition_migrated'").await,
        count(&pool, "SELECT COUNT(DISTINCT stream_id) AS n FROM events WHERE event_type = 'definition_migrated'").await,
    );
    assert_eq!((moved, sagas), (SAGAS as i64, SAGAS as i64), "each saga migrated exactly once");
    let keyed = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE event_type = 'definition_migrated' AND data LIKE $1")
        .bind(format!("%\"key\":\"job:{id}\"%"))
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(keyed.try_get::<i64, _>("n").unwrap_or(-1), SAGAS as i64, "every move names the job");

    // One trace per saga, from its start through the migration to the end.
    let rows = sqlx::query("SELECT stream_id, metadata FROM events").fetch_all(&pool).await.unwrap_or_else(|e| panic!("{e}"));
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in &rows {
        let (stream, metadata): (String, String) = (row.try_get("stream_id").unwrap_or_default(), row.try_get("metadata").unwrap_or_default());
        let metadata: Value = serde_json::from_str(&metadata).unwrap_or(Value::Null);
        let parent = metadata["trace"]["traceparent"].as_str().unwrap_or_default();
        seen.entry(stream).or_default().insert(parent.split('-').nth(1).unwrap_or_default().to_string());
    }
    assert_eq!(seen.len(), SAGAS);
    for (saga, ids) in &seen {
        let announced = traces.get(saga).cloned().unwrap_or_default();
        assert_eq!(ids, &BTreeSet::from([announced.clone()]), "saga {saga}: its events are in traces {ids:?}, not only {announced}");
        assert_eq!(announced.len(), 32);
    }
    common::assert_replay_finds_no_difference(&env);

    // Version 1 has no live saga left: it can be retired, version 3 (new
    // sagas start there) cannot, and after a restart only version 3 is loaded.
    let (listed, said) = cli(&["saga", "versions", "--url", &url]).await;
    assert!(
        listed && said.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()[..2] == ["order", "1"] && l.split_whitespace().nth(3) == Some("0")),
        "{said}"
    );
    let (refused, said) = cli(&["saga", "retire", "order", "3", "--url", &url]).await;
    assert!(!refused && said.contains("new sagas start on"), "{said}");
    let (retired, said) = cli(&["saga", "retire", "order", "1", "--url", &url]).await;
    assert!(retired, "{said}");
    eso.restart().await;
    let definitions: Value =
        http.get(format!("{url}/definitions")).bearer_auth(ALICE).send().await.unwrap_or_else(|e| panic!("{e}")).json().await.unwrap_or(Value::Null);
    let loaded: Vec<(String, u64)> = definitions["definitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| (d["name"].as_str().unwrap_or_default().to_string(), d["version"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(loaded, [("order".to_string(), 3)], "{definitions}");
    eso.kill();
}

/// `eso ARGS…` with the operator's token: whether it succeeded, and what it printed.
async fn cli(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_eso")).args(&args).env("ESO_OPERATOR_TOKEN", format!("alice:{ALICE}")).output()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("eso: {e}"));
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn straight_500_held_orders_move_to_version_3_and_finish_as_it_says() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_migration_each_of_500_orders_is_moved_exactly_once() {
    scenario(true).await;
}
