//! A bulk operator action survives a crash: 1,000 stuck sagas retried by
//! one job, the orchestrator killed (SIGKILL) in the middle and started
//! again; every saga is retried exactly once.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Nats, Postgres, Process, process_env, until_finished, until_part_done};
use serde_json::{Value, json};
use sqlx::Row;

const ALICE: &str = "alice-operator-token-0123456789";
const SAGAS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stuck_sagas_are_retried_once_each_through_a_crash() {
    let postgres = Postgres::fresh().await;
    let nats = Nats::start().await;
    let mut env = process_env(&postgres, &nats);
    env.push(("SAGAS_DIR", PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sagas").display().to_string()));
    env.push(("ESO_OPERATOR_TOKEN", format!("alice:{ALICE}")));
    let mut eso = Process::spawn(&[], &env).await;
    let url = eso.url();
    let http = reqwest::Client::new();

    // Sagas nobody answers: they wait in `work` for an hour.
    let start = |_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = common::post_retrying(&http, &format!("{url}/sagas/hold"), &json!({})).await;
            let status = response.status().as_u16();
            assert_eq!(status, 201, "{}", response.text().await.unwrap_or_default());
        }
    };
    for chunk in (0..SAGAS).collect::<Vec<_>>().chunks(50) {
        futures::future::join_all(chunk.iter().map(start)).await;
    }

    let body = json!({ "action": "retry", "reason": "the work service is back", "filter": { "definition": "hold", "state": "work" }, "rate": 100 });
    let response = http.post(format!("{url}/actions")).bearer_auth(ALICE).json(&body).send().await.unwrap_or_else(|e| panic!("POST /actions: {e}"));
    assert_eq!(response.status().as_u16(), 202);
    let created: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(created["matched"], SAGAS, "{created}");
    let id = created["job"].as_str().unwrap_or_default().to_string();

    // Killed once part of the job is done, at a rate that leaves most of it to do.
    until_part_done(&http, &url, ALICE, &id, 200, SAGAS as u64).await;
    eso.restart().await;
    let finished = until_finished(&http, &url, ALICE, &id, Duration::from_secs(90)).await;
    assert_eq!((finished["done"].as_u64(), finished["refused"].as_u64(), finished["failed"].as_u64()), (Some(SAGAS as u64), Some(0), Some(0)), "{finished}");

    let pool = postgres.pool().await;
    let row = sqlx::query("SELECT COUNT(*) AS n, COUNT(DISTINCT stream_id) AS sagas FROM events WHERE event_type = 'operator_retried'")
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (n, sagas): (i64, i64) = (row.try_get("n").unwrap_or(-1), row.try_get("sagas").unwrap_or(-1));
    assert_eq!((n, sagas), (SAGAS as i64, SAGAS as i64), "each saga retried exactly once");
    let row = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE event_type = 'operator_retried' AND data LIKE $1")
        .bind(format!("%\"key\":\"job:{id}\"%"))
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(row.try_get::<i64, _>("n").unwrap_or(-1), SAGAS as i64, "every retry names the job");
    eso.kill();
}
