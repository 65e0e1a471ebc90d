//! The group commit's promise when one batch holds two steps of one saga
//! (a timer and a reply racing, say): one wins, the other is told to
//! retry, and the stream gets exactly the winner's events. On SQLite and
//! on real Postgres.

mod common;

use std::collections::BTreeMap;

use common::Postgres;
use orchestrator::store::{Append, Committed, Store};
use sagas::{Input, Millis};
use serde_json::{Map, Value};
use uuid::Uuid;

fn append(saga: &sagas::Saga, events: Vec<sagas::Event>, expected: u64) -> Append {
    Append { saga: saga.clone(), expected, events, trace: BTreeMap::new(), causation: "test".into(), previous_status: None, key: None }
}

async fn racing_steps_of_one_saga(url: &str) {
    let (pool, backend) = db::connect(url, 4).await.unwrap_or_else(|e| panic!("connect: {e}"));
    orchestrator::migrations::run(&pool, backend).await.unwrap_or_else(|e| panic!("migrate: {e}"));
    let readers = db::readers(url, &pool, backend, 2).await.unwrap_or_else(|e| panic!("readers: {e}"));
    let store = Store::new(pool, readers, backend, Vec::new());
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sagas/definitions/order.toml")).unwrap_or_else(|e| panic!("{e}"));
    let def = sagas::parse("order.toml", &source).unwrap_or_else(|e| panic!("{e}"));
    let id = Uuid::new_v4();
    let data: Map<String, Value> =
        ["amount", "description", "user_id", "payee_id"].iter().map(|k| (k.to_string(), Value::String(format!("test {k}")))).collect();
    let start = sagas::step(&def, None, &Input::Start { id, data }, Millis(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.append(append(&start.saga, start.events, 0)).await.unwrap_or_else(|e| panic!("{e}")), Committed::Appended);

    // Both decided on the same state; sent together, so they share a batch.
    let timer = sagas::step(&def, Some(&start.saga), &Input::Deadline, Millis(i64::MAX / 2)).unwrap_or_else(|e| panic!("{e}"));
    let version = start.saga.version;
    let (a, b) =
        tokio::join!(store.append(append(&timer.saga, timer.events.clone(), version)), store.append(append(&timer.saga, timer.events.clone(), version)),);
    let mut results = [a.unwrap_or_else(|e| panic!("{e}")), b.unwrap_or_else(|e| panic!("{e}"))];
    results.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(results, [Committed::Appended, Committed::Conflict]);
    let stream = store.stream(id).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stream.len() as u64, timer.saga.version, "the stream holds the winner's events once: {stream:?}");
    let versions: Vec<i64> = stream.iter().map(|e| e.version).collect();
    assert!(versions.windows(2).all(|w| w[0] + 1 == w[1]), "{versions:?}");
    assert!(stream.windows(2).all(|w| w[0].position < w[1].position), "positions follow versions");
}

#[tokio::test]
async fn racing_steps_of_one_saga_on_sqlite() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    racing_steps_of_one_saga(&format!("sqlite://{}?mode=rwc", dir.path().join("eso.db").display())).await;
}

#[tokio::test]
async fn racing_steps_of_one_saga_on_postgres() {
    racing_steps_of_one_saga(&Postgres::fresh().await.url).await;
}
