//! Nothing lost, nothing doubled, at the moments that are not random:
//! two orchestrators sharing one database and one NATS, a SIGTERM that
//! must drain in-flight work and flush the outbox, and a relay down past
//! JetStream's duplicate window or on a stream kept from another store.
//! All parts are real processes on real Postgres and NATS. Kills at random
//! moments under load (orchestrator, participants, embedded eso, Postgres,
//! NATS, a replica holding timer leases) are in `faults.rs`.

mod common;

use std::time::Duration;

use common::{
    Cluster, Nats, Postgres, Process, assert_events_published_once, assert_no_double_charge, assert_replay_finds_no_difference, post_many, wait_all_terminal,
};
use sqlx::Row;

impl Cluster {
    async fn orchestrator(&self) -> Process {
        self.eso(&[]).await
    }

    async fn participant(&self, name: &str) -> Process {
        self.eso(&["participant", name]).await
    }

    async fn check(&self, accepted: &[uuid::Uuid]) {
        let pool = self.postgres.pool().await;
        wait_all_terminal(&pool, accepted.len(), Duration::from_secs(90)).await;
        assert_no_double_charge(&pool, accepted).await;
        assert_events_published_once(&pool, &self.nats.client().await, Duration::from_secs(30)).await;
        assert_replay_finds_no_difference(&self.env);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_share_one_database_and_one_nats() {
    let cluster = Cluster::new().await;
    let _payment = cluster.participant("payment").await;
    let _payment2 = cluster.participant("payment").await;
    let _delivery = cluster.participant("delivery").await;
    let a = cluster.orchestrator().await;
    let b = cluster.orchestrator().await;
    let accepted = post_many(&[a.url(), b.url()], 1000).await;
    assert_eq!(accepted.len(), 1000);
    cluster.check(&accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_flushes_the_outbox() {
    let cluster = Cluster::new().await;
    let _payment = cluster.participant("payment").await;
    let _delivery = cluster.participant("delivery").await;
    let mut orchestrator = cluster.orchestrator().await;
    let accepted = post_many(&[orchestrator.url()], 100).await;
    testkit::signal(&[orchestrator.pid()], testkit::Signal::SIGTERM);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = orchestrator.exited() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "eso did not exit within 20 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "eso exited with {status} on SIGTERM");
    // Every event committed before the exit was published before it.
    let pool = cluster.postgres.pool().await;
    assert_events_published_once(&pool, &cluster.nats.client().await, Duration::from_secs(1)).await;
    // The relay writes its cursor lazily; a clean stop must still leave it
    // past every published event, so the next start republishes nothing.
    let behind: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM events e, outbox_cursor c WHERE c.relay = 'main' AND (e.tx_id, e.position) > (c.tx::xid8, c.position)")
            .fetch_one(&pool)
            .await
            .and_then(|r| sqlx::Row::try_get(&r, "n"))
            .unwrap_or_else(|e| panic!("cursor: {e}"));
    assert_eq!(behind, 0, "events past the relay's stored cursor after a clean stop");
    orchestrator.restart().await;
    cluster.check(&accepted).await;
}

/// The relay down for longer than JetStream's duplicate window, with its
/// stored cursor behind what the stream holds (the crash fell between
/// publishes and the cursor write): the restart resumes after the stream's
/// last event, so no event is on the stream twice. A stream made first
/// with a one-second window (eso keeps a stream that exists) stands for an
/// outage of any length.
async fn a_relay_down_past_the_duplicate_window(env: Vec<(&'static str, String)>, store_url: &str, nats: &Nats) {
    let client = nats.client().await;
    async_nats::jetstream::new(client.clone())
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ESO_EVENTS".to_string(),
            subjects: vec!["eso.events.>".to_string()],
            duplicate_window: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("event stream: {e}"));
    let mut orchestrator = Process::spawn(&[], &env).await;
    let mut accepted = post_many(&[orchestrator.url()], 50).await;
    let pool = common::pool(store_url).await;
    wait_all_terminal(&pool, accepted.len(), Duration::from_secs(60)).await;
    assert_events_published_once(&pool, &client, Duration::from_secs(30)).await;
    orchestrator.kill();
    sqlx::query("UPDATE outbox_cursor SET tx = '0', position = 0 WHERE relay = 'main'").execute(&pool).await.unwrap_or_else(|e| panic!("rewind: {e}"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    orchestrator.restart().await;
    accepted.extend(post_many(&[orchestrator.url()], 20).await);
    assert_eq!(accepted.len(), 70);
    wait_all_terminal(&pool, accepted.len(), Duration::from_secs(60)).await;
    assert_events_published_once(&pool, &client, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_down_past_the_duplicate_window_publishes_nothing_twice() {
    let postgres = Postgres::fresh().await;
    let nats = Nats::start().await;
    let mut env = common::process_env(&postgres, &nats);
    // Participants in the process: fewer processes, the same relay.
    env.retain(|(k, _)| *k != "ESO_EMBED_PARTICIPANTS");
    env.push(("ESO_EMBED_PARTICIPANTS", "true".to_string()));
    a_relay_down_past_the_duplicate_window(env, &postgres.url, &nats).await;
}

/// The same on the embedded store with NATS, whose cursor has no
/// transaction ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_sqlite_down_past_the_duplicate_window_publishes_nothing_twice() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = dir.path().join("eso.db");
    let nats = Nats::start().await;
    let env = vec![
        ("ESO_SQLITE_PATH", store.display().to_string()),
        ("NATS_URL", nats.url.clone()),
        ("ESO_EMBED_PARTICIPANTS", "true".to_string()),
        ("ESO_TIMER_INTERVAL_MS", "20".to_string()),
    ];
    a_relay_down_past_the_duplicate_window(env, &format!("sqlite:{}", store.display()), &nats).await;
}

/// A stream kept while the store was replaced (a new SQLite file on the
/// same NATS) is ahead of positions the new store has not reached: the
/// relay must not skip to it, or the new store's events never go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_on_a_kept_stream_publishes_all_its_events() {
    let nats = Nats::start().await;
    let client = nats.client().await;
    let mut published = 0;
    for orders in [30, 10] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let store = dir.path().join("eso.db");
        let env = vec![
            ("ESO_SQLITE_PATH", store.display().to_string()),
            ("NATS_URL", nats.url.clone()),
            ("ESO_EMBED_PARTICIPANTS", "true".to_string()),
            ("ESO_TIMER_INTERVAL_MS", "20".to_string()),
        ];
        let mut orchestrator = Process::spawn(&[], &env).await;
        let accepted = post_many(&[orchestrator.url()], orders).await;
        let pool = common::pool(&format!("sqlite:{}", store.display())).await;
        wait_all_terminal(&pool, accepted.len(), Duration::from_secs(60)).await;
        let events: i64 = sqlx::query("SELECT COUNT(*) AS n FROM events").fetch_one(&pool).await.and_then(|r| r.try_get("n")).unwrap_or(-1);
        published += events as u64;
        let mut stream = async_nats::jetstream::new(client.clone()).get_stream("ESO_EVENTS").await.unwrap_or_else(|e| panic!("event stream: {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let messages = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
            if messages == published {
                break;
            }
            assert!(messages < published, "{messages} messages on the stream for {published} events: duplicates");
            assert!(std::time::Instant::now() < deadline, "only {messages} of {published} events on the stream");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        orchestrator.kill();
    }
}
