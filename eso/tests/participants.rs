//! The participants record their answers in batches (one statement for
//! every command waiting); these tests hold them to the promise that makes
//! retries safe: one command id, one recorded answer, whoever asks and
//! however the asks land in batches. Run on SQLite and on real Postgres.

mod common;

use std::sync::Arc;

use common::Postgres;
use db::Backend;
use futures::future::join_all;
use participants::delivery::Delivery;
use participants::payment::{self, Payment};
use protocol::{CommandMessage, Participant};
use serde_json::json;
use sqlx::{AnyPool, Row};
use uuid::Uuid;

async fn sqlite() -> (AnyPool, Backend, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("eso.db").display());
    let (pool, backend) = db::connect(&url, 1).await.unwrap_or_else(|e| panic!("sqlite: {e}"));
    participants::migrations::run(&pool, backend).await.unwrap_or_else(|e| panic!("migrate: {e}"));
    (pool, backend, dir)
}

/// A fresh database (dropped with the returned guard) and a pool on it.
async fn postgres() -> (AnyPool, Backend, Postgres) {
    let database = Postgres::fresh().await;
    let (pool, backend) = db::connect(&database.url, 8).await.unwrap_or_else(|e| panic!("postgres: {e}"));
    participants::migrations::run(&pool, backend).await.unwrap_or_else(|e| panic!("migrate: {e}"));
    (pool, backend, database)
}

fn charge(command_id: Uuid, description: &str) -> CommandMessage {
    CommandMessage { command_id, saga_id: Uuid::new_v4(), attempt: 1, payload: json!({ "amount": "12.50", "description": description }) }
}

/// 100 commands, each sent 4 times at once (repeats in one batch) and
/// once more afterwards (repeats in a later batch), with coin-flip
/// descriptions: every repeat must get the answer recorded first, and
/// each command must be recorded once.
async fn repeats_get_the_first_answer(pool: AnyPool, backend: Backend) {
    let payment = Arc::new(Payment::new(pool.clone(), backend));
    let ids: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    let asks = ids.iter().flat_map(|&id| (0..4).map(move |_| id)).map(|id| {
        let payment = payment.clone();
        async move { (id, payment.handle(payment::PROCESS, charge(id, "a book")).await) }
    });
    let mut answers = join_all(asks).await;
    // And once more after those were recorded: repeats in a later batch.
    let again = ids.iter().map(|&id| {
        let payment = payment.clone();
        async move { (id, payment.handle(payment::PROCESS, charge(id, "a book")).await) }
    });
    answers.extend(join_all(again).await);
    let mut first = std::collections::HashMap::new();
    for (id, answer) in answers {
        let answer = answer.unwrap_or_else(|e| panic!("charge {id}: {e}"));
        let outcome = first.entry(id).or_insert_with(|| answer.outcome.clone());
        assert_eq!(*outcome, answer.outcome, "command {id} got two different answers");
    }
    for (id, outcome) in &first {
        let rows = sqlx::query("SELECT outcome FROM payments WHERE command_id = $1")
            .bind(id.to_string())
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("read payments: {e}"));
        assert_eq!(rows.len(), 1, "command {id} recorded {} times", rows.len());
        let recorded: String = rows[0].try_get("outcome").unwrap_or_else(|e| panic!("outcome: {e}"));
        assert_eq!(&recorded, outcome, "command {id} answered {outcome} but recorded {recorded}");
    }
    // Both outcomes occurred, so the answers really were coin flips.
    assert!(first.values().any(|o| o == "confirmed") && first.values().any(|o| o == "declined"), "{first:?}");
}

/// A refund that overtakes its charge voids it: the late charge is
/// declined and moves no money.
async fn a_refund_before_its_charge_voids_it(pool: AnyPool, backend: Backend) {
    let payment = Payment::new(pool.clone(), backend);
    let charge_id = Uuid::new_v4();
    let refund = CommandMessage {
        command_id: Uuid::new_v4(),
        saga_id: Uuid::new_v4(),
        attempt: 1,
        payload: json!({ "amount": "12.50", "compensates": { "command_id": charge_id.to_string() } }),
    };
    let refunded = payment.handle(payment::REFUND, refund).await.unwrap_or_else(|e| panic!("refund: {e}"));
    assert_eq!(refunded.outcome, "refunded");
    let late = payment.handle(payment::PROCESS, charge(charge_id, "test top up")).await.unwrap_or_else(|e| panic!("charge: {e}"));
    assert_eq!(late.outcome, "declined", "a voided charge must not take money");
}

async fn deliveries_are_recorded_once(pool: AnyPool, backend: Backend) {
    let delivery = Arc::new(Delivery::new(pool.clone(), backend));
    let id = Uuid::new_v4();
    let asks = (0..8).map(|_| {
        let delivery = delivery.clone();
        async move { delivery.handle(participants::delivery::DELIVER, charge(id, "test undeliverable parcel")).await }
    });
    for answer in join_all(asks).await {
        assert_eq!(answer.unwrap_or_else(|e| panic!("deliver: {e}")).outcome, "failed");
    }
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM deliveries WHERE command_id = $1")
        .bind(id.to_string())
        .fetch_one(&pool)
        .await
        .and_then(|r| r.try_get("n"))
        .unwrap_or_else(|e| panic!("count: {e}"));
    assert_eq!(n, 1);
}

#[tokio::test]
async fn sqlite_repeats_get_the_first_answer() {
    let (pool, backend, _dir) = sqlite().await;
    repeats_get_the_first_answer(pool, backend).await;
}

#[tokio::test]
async fn postgres_repeats_get_the_first_answer() {
    let (pool, backend, _database) = postgres().await;
    repeats_get_the_first_answer(pool, backend).await;
}

#[tokio::test]
async fn sqlite_a_refund_before_its_charge_voids_it() {
    let (pool, backend, _dir) = sqlite().await;
    a_refund_before_its_charge_voids_it(pool, backend).await;
}

#[tokio::test]
async fn postgres_a_refund_before_its_charge_voids_it() {
    let (pool, backend, _database) = postgres().await;
    a_refund_before_its_charge_voids_it(pool, backend).await;
}

#[tokio::test]
async fn deliveries_are_recorded_once_on_both_backends() {
    let (pool, backend, _dir) = sqlite().await;
    deliveries_are_recorded_once(pool, backend).await;
    let (pool, backend, _database) = postgres().await;
    deliveries_are_recorded_once(pool, backend).await;
}
