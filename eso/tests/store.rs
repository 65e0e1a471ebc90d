//! The group commit's promises when one batch holds two steps of one saga
//! (a timer and a reply racing, say), or a step decided on a state another
//! commit has since moved: one wins, the other is told to retry, and
//! neither the stream nor a read model gets anything of the loser, while
//! the rest of its batch commits. On SQLite and on real Postgres, where a
//! commit is one statement (and a start with an idempotency key, a
//! transaction beside it); and there a committer idle through a restart
//! of Postgres commits again on a new connection.

mod common;

use std::collections::BTreeMap;

use common::Postgres;
use orchestrator::store::{Append, Committed, IdempotencyKey, Store};
use sagas::{Input, Millis};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The append of `decision`, decided on `from` (`None`: a start).
fn append(decision: &sagas::Decision, from: Option<&sagas::Saga>) -> Append {
    Append {
        saga: decision.saga.clone(),
        expected: from.map_or(0, |s| s.version),
        events: decision.events.clone(),
        trace: BTreeMap::new(),
        causation: "test".into(),
        previous_status: from.map(|s| s.status.clone()),
        key: None,
    }
}

/// A store on `url` that keeps the order saga's read model, and the
/// order definition.
async fn order_store(url: &str) -> (Store, sagas::Definition) {
    let (pool, backend) = db::connect(url, 4).await.unwrap_or_else(|e| panic!("connect: {e}"));
    orchestrator::migrations::run(&pool, backend).await.unwrap_or_else(|e| panic!("migrate: {e}"));
    let readers = db::readers(url, &pool, backend, 2).await.unwrap_or_else(|e| panic!("readers: {e}"));
    let committer = db::committer(url, &pool, backend).await.unwrap_or_else(|e| panic!("committer: {e}"));
    let projections = vec![std::sync::Arc::new(orchestrator::orders::OrderProjection::new(backend)) as _];
    let store = Store::new(pool, readers, committer, backend, projections, db::gather::WINDOW);
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sagas/definitions/order.toml")).unwrap_or_else(|e| panic!("{e}"));
    (store, sagas::parse("order.toml", &source).unwrap_or_else(|e| panic!("{e}")))
}

/// The decision that starts an order saga.
fn start(def: &sagas::Definition) -> sagas::Decision {
    let data: Map<String, Value> = [("amount", "1.00"), ("description", "test"), ("user_id", "u"), ("payee_id", "p")]
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    sagas::step(def, None, &Input::Start { id: Uuid::new_v4(), data }, Millis(0)).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts an order saga and returns it as committed.
async fn started(store: &Store, def: &sagas::Definition) -> sagas::Saga {
    let start = start(def);
    assert_eq!(store.append(append(&start, None)).await.unwrap_or_else(|e| panic!("{e}")), Committed::Appended);
    start.saga
}

/// The decision of the payment participant's `outcome` for `saga`.
fn paid(def: &sagas::Definition, saga: &sagas::Saga, outcome: &str) -> sagas::Decision {
    let command_id = saga.pending.as_ref().map(|p| p.command_id).unwrap_or_else(|| panic!("{} waits on no command", saga.id));
    sagas::step(def, Some(saga), &Input::Reply { command_id, outcome: outcome.into(), data: Value::Null }, Millis(1)).unwrap_or_else(|e| panic!("{e}"))
}

async fn order_status(store: &Store, id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1").bind(id.to_string()).fetch_optional(store.pool()).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn racing_steps_of_one_saga(url: &str) {
    let (store, def) = order_store(url).await;
    let start = started(&store, &def).await;
    let id = start.id;

    // Both decided on the same state; sent together, so they share a batch.
    let timer = sagas::step(&def, Some(&start), &Input::Deadline, Millis(i64::MAX / 2)).unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = tokio::join!(store.append(append(&timer, Some(&start))), store.append(append(&timer, Some(&start))));
    let mut results = [a.unwrap_or_else(|e| panic!("{e}")), b.unwrap_or_else(|e| panic!("{e}"))];
    results.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(results, [Committed::Appended, Committed::Conflict]);
    let stream = store.stream(id).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stream.len() as u64, timer.saga.version, "the stream holds the winner's events once: {stream:?}");
    let versions: Vec<i64> = stream.iter().map(|e| e.version).collect();
    assert!(versions.windows(2).all(|w| w[0] + 1 == w[1]), "{versions:?}");
    assert!(stream.windows(2).all(|w| w[0].position < w[1].position), "positions follow versions");
}

async fn a_stale_step_commits_nothing_while_its_batch_commits(url: &str) {
    let (store, def) = order_store(url).await;
    let (a, b) = (started(&store, &def).await, started(&store, &def).await);
    let confirmed = paid(&def, &a, "confirmed");
    assert_eq!(store.append(append(&confirmed, Some(&a))).await.unwrap_or_else(|e| panic!("{e}")), Committed::Appended);

    // Decided on `a` before the payment's answer was committed: stale.
    let stale = paid(&def, &a, "declined");
    let declined = paid(&def, &b, "declined");
    let c = start(&def);
    let mut keyed = append(&c, None);
    keyed.key = Some(IdempotencyKey { scope: "order".into(), key: "k".into(), fingerprint: "f".into(), expired_before: 0 });
    // Sent together, so they share a batch.
    let (lost, won, keyed) = tokio::join!(store.append(append(&stale, Some(&a))), store.append(append(&declined, Some(&b))), store.append(keyed));
    assert_eq!(lost.unwrap_or_else(|e| panic!("{e}")), Committed::Conflict);
    assert_eq!(won.unwrap_or_else(|e| panic!("{e}")), Committed::Appended);
    assert_eq!(keyed.unwrap_or_else(|e| panic!("{e}")), Committed::Appended);

    let stream = |id| {
        let store = store.clone();
        async move { store.stream(id).await.unwrap_or_else(|e| panic!("{e}")).into_iter().map(|e| e.event_type).collect::<Vec<_>>() }
    };
    let types = |d: &sagas::Decision| d.events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>();
    assert_eq!(stream(a.id).await.len() as u64, confirmed.saga.version, "only the winner's events");
    assert!(!stream(a.id).await.iter().any(|t| types(&stale).contains(t)), "nothing of the stale step: {:?}", stream(a.id).await);
    assert!(stream(b.id).await.ends_with(&types(&declined)));
    assert_eq!(stream(c.saga.id).await, types(&c));
    assert_eq!(order_status(&store, a.id).await.as_deref(), Some(confirmed.saga.status.as_str()), "the read model has nothing of the stale step");
    assert_eq!(order_status(&store, b.id).await.as_deref(), Some(declined.saga.status.as_str()));
    assert_eq!(order_status(&store, c.saga.id).await.as_deref(), Some(c.saga.status.as_str()));
    let row = store.load(a.id).await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("no saga {}", a.id));
    assert_eq!(row.saga.version, confirmed.saga.version);
}

#[tokio::test]
async fn a_stale_step_commits_nothing_while_its_batch_commits_on_sqlite() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    a_stale_step_commits_nothing_while_its_batch_commits(&format!("sqlite://{}?mode=rwc", dir.path().join("eso.db").display())).await;
}

#[tokio::test]
async fn a_stale_step_commits_nothing_while_its_batch_commits_on_postgres() {
    a_stale_step_commits_nothing_while_its_batch_commits(&Postgres::fresh().await.url).await;
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

/// The committer keeps its connection between commits on Postgres. One
/// that sat idle through a restart of the server must be found dead by a
/// ping and replaced, not fail the next commit as "not confirmed".
#[tokio::test]
async fn a_commit_after_postgres_restarted_under_an_idle_committer_succeeds() {
    let mut postgres = common::PrivatePostgres::start().await;
    let (store, def) = order_store(&postgres.url).await;
    started(&store, &def).await;
    assert!(postgres.crash(), "pg_ctl stop -m immediate failed");
    postgres.start_again().await;
    // Idle past the age at which a kept connection is pinged first.
    tokio::time::sleep(db::PING_WHEN_IDLE_FOR + std::time::Duration::from_millis(200)).await;
    started(&store, &def).await;
}
