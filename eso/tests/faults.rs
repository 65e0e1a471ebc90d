//! Faults at random moments, with proof. Under a steady load of orders, a
//! part (an orchestrator, a participant, the embedded eso, Postgres, NATS)
//! is killed 1–3 times at moments drawn from a printed seed, and comes
//! back. Each kill counts the sagas in flight just before it and fails if
//! there were none, and the load counts the POSTs that were accepted, so
//! "every saga terminal" cannot pass on an idle system. After the load:
//! every accepted saga terminal, no order charged twice, every committed
//! event on the JetStream stream once (where NATS is in play), and replay
//! finds every snapshot and projection equal to the fold of its events.
//!
//! Each run prints `fault=NAME seed=N (rerun: …)` first and one `SOAK …`
//! line last, counts computed before anything is asserted, so the line is
//! there when the run fails too (`scripts/soak.sh` aggregates them). The
//! seed fixes the fault schedule (how many kills, when, for how long, which
//! replica); the load's timing and the payment participant's coin flips
//! stay those of the machine.

mod common;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{Cluster, Money, Nats, Postgres, PrivatePostgres, Process, Published};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sqlx::Row;
use uuid::Uuid;

/// Orders POSTed per second unless `ESO_FAULT_RATE` says otherwise:
/// enough that a debug build nearly always has sagas in flight, modest
/// because the tests of this binary run two at a time on two shared cores,
/// each with its own processes. A release build ends a saga in a few
/// milliseconds, so the soak posts faster to keep as many in flight.
const RATE: u32 = 40;

fn rate() -> u32 {
    match std::env::var("ESO_FAULT_RATE") {
        Ok(s) => s.trim().parse().ok().filter(|r| *r > 0).unwrap_or_else(|| panic!("ESO_FAULT_RATE={s} is not a positive number")),
        Err(_) => RATE,
    }
}
/// POSTs waiting for an answer at once, at most: a part that is down must
/// not pile up thousands of requests (past this, ticks are skipped).
const MAX_POSTS_WAITING: usize = 64;
/// How long a POST may take before it counts as failed.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a kill waits for a saga to be in flight: a lull between two
/// posts can leave none for a few milliseconds, an idle system for good.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(3);
/// How long every accepted saga has to become terminal once the load stops.
const TERMINAL_WAIT: Duration = Duration::from_secs(90);
/// How long the relay has to put every committed event on the stream.
const STREAM_WAIT: Duration = Duration::from_secs(30);
/// `TIMER_LEASE_MS` of `orchestrator/src/runtime.rs`: how long a claimed
/// timer belongs to the replica that claimed it.
const LEASE: Duration = Duration::from_millis(10_000);
/// What the survivor may take past the lease to step a saga whose lease
/// ended: its timer interval, and the claims and commits of a backlog on a
/// loaded machine (up to 1.3 s seen with a release build beside the test).
const TAKEOVER_MARGIN: Duration = Duration::from_secs(5);

/// A fault's schedule (from the seed) and everything its `SOAK` line says.
struct Fault {
    rng: StdRng,
    summary: Summary,
    started: Instant,
}

impl Fault {
    fn new(name: &'static str) -> Fault {
        let seed = match std::env::var("ESO_FAULT_SEED") {
            Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("ESO_FAULT_SEED={s} is not an unsigned number")),
            Err(_) => rand::random(),
        };
        println!("fault={name} seed={seed} (rerun: ESO_FAULT_SEED={seed} cargo test -p eso --test faults {name})");
        Fault { rng: StdRng::seed_from_u64(seed), summary: Summary::new(name, seed), started: Instant::now() }
    }

    fn kills(&mut self) -> usize {
        self.rng.random_range(1..=3)
    }

    /// A random duration in `ms` milliseconds.
    fn pause(&mut self, ms: Range<u64>) -> Duration {
        Duration::from_millis(self.rng.random_range(ms))
    }

    async fn sleep(&mut self, ms: Range<u64>) {
        let pause = self.pause(ms);
        tokio::time::sleep(pause).await;
    }

    /// The sagas in flight just before a kill: waits up to
    /// [`IN_FLIGHT_WAIT`] for there to be some, records the count, and
    /// notes a problem if there were none.
    async fn in_flight_before_kill(&mut self, pool: &sqlx::AnyPool) -> i64 {
        let deadline = Instant::now() + IN_FLIGHT_WAIT;
        let count = loop {
            let count = in_flight(pool).await.unwrap_or(0);
            if count > 0 || Instant::now() >= deadline {
                break count;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if count == 0 {
            self.summary.problem(format!("kill {}: no saga in flight for {IN_FLIGHT_WAIT:?} before it; the kill proves nothing", self.summary.kills.len() + 1));
        }
        self.summary.kills.push(count);
        count
    }

    /// Every check after the load: all accepted sagas terminal, the money
    /// right (`records` sees both `orders` and `payments`), every event on
    /// the stream once (with `nats`).
    async fn check(&mut self, tally: Tally, store: &sqlx::AnyPool, records: &sqlx::AnyPool, nats: Option<&Nats>) {
        let summary = &mut self.summary;
        if tally.accepted.len() < 10 {
            summary.problem(format!("only {} POSTs accepted: the load did not run", tally.accepted.len()));
        }
        summary.accepted = Some(tally.accepted.len());
        summary.refused = Some(tally.refused);
        summary.refused_by_status = tally.refused_by_status.iter().map(|(status, n)| format!("{status}:{n}")).collect();
        summary.failed_posts = Some(tally.failed);
        let terminal = Terminal::wait(store, &tally.accepted, TERMINAL_WAIT).await;
        summary.sagas = Some(terminal.sagas);
        summary.terminal = Some(terminal.accepted_terminal);
        summary.stored_unaccepted = Some(terminal.sagas.saturating_sub(tally.accepted.len() - terminal.missing.len()));
        match refused_but_stored(store, &tally.refused_keys).await {
            Ok((n, unwarned)) => {
                summary.refused_but_stored = Some(n);
                if unwarned > 0 {
                    summary.problem(format!("{unwarned} refused POST(s) had their saga stored, answered as if nothing was recorded"));
                }
            }
            Err(e) => summary.problem(format!("idempotency keys: {e}")),
        }
        summary.problems.extend(terminal.problems(tally.accepted.len()));
        match Money::count(records, &tally.accepted).await {
            Ok(money) => {
                summary.double_payments = Some(money.doubled.len());
                summary.money_errors = Some(money.unpaid_deliveries + money.kept_by_cancelled);
                let missing: std::collections::HashSet<&Uuid> = terminal.missing.iter().chain(&money.missing).collect();
                summary.missing = Some(missing.len());
                if money.records == 0 && !tally.accepted.is_empty() {
                    summary.problem("no payment records to check: the check read the wrong table".into());
                }
                summary.problems.extend(money.problems());
            }
            Err(e) => summary.problem(format!("payment records: {e}")),
        }
        if let Some(nats) = nats {
            match Published::count(store, &nats.client().await, STREAM_WAIT).await {
                Ok(published) => {
                    summary.lost_events = Some(published.lost.len());
                    summary.doubled_events = Some(published.doubled.len() + published.foreign.len());
                    summary.problems.extend(published.problems());
                }
                Err(e) => summary.problem(format!("event stream: {e}")),
            }
        }
    }

    fn replay(&mut self, env: &[(&str, String)]) {
        let replay = common::replay_differences(env);
        self.summary.replay = Some(replay.is_ok());
        if let Err(e) = replay {
            self.summary.problem(e);
        }
    }

    /// Prints the `SOAK` line, then fails with every problem found.
    /// After the last kill: a moment more of load, then the load stopped
    /// and every check, replay included, and the run's line printed.
    async fn conclude(mut self, load: Load, pool: &sqlx::AnyPool, nats: &Nats, env: &[(&str, String)]) {
        self.sleep(500..1500).await;
        let tally = load.stop().await;
        self.check(tally, pool, pool, Some(nats)).await;
        self.replay(env);
        self.finish();
    }

    fn finish(mut self) {
        self.summary.secs = Some(self.started.elapsed().as_secs());
        let passed = self.summary.problems.is_empty();
        self.summary.print(passed);
        assert!(passed, "fault {} (seed {}):\n- {}", self.summary.fault, self.summary.seed, self.summary.problems.join("\n- "));
    }
}

/// The counts of one run, printed as one `SOAK key=value …` line; `-` for
/// what a fault does not measure (or did not get to). Printed on drop if
/// the run panicked before [`Fault::finish`], so a soak sees every run.
struct Summary {
    fault: &'static str,
    seed: u64,
    kills: Vec<i64>,
    accepted: Option<usize>,
    refused: Option<u64>,
    refused_by_status: Vec<String>,
    failed_posts: Option<u64>,
    sagas: Option<usize>,
    terminal: Option<usize>,
    /// Stored sagas no POST was answered 201/202 for: from POSTs that got
    /// no answer, or a refusal whose commit went through all the same.
    stored_unaccepted: Option<usize>,
    /// POSTs with an idempotency key refused although their saga was
    /// stored: the commit went through and its acknowledgement was lost.
    refused_but_stored: Option<usize>,
    missing: Option<usize>,
    double_payments: Option<usize>,
    money_errors: Option<i64>,
    lost_events: Option<usize>,
    doubled_events: Option<usize>,
    takeover_ms: Vec<u128>,
    leases_taken_over: Vec<usize>,
    replay: Option<bool>,
    secs: Option<u64>,
    problems: Vec<String>,
    printed: bool,
}

impl Summary {
    fn new(fault: &'static str, seed: u64) -> Summary {
        Summary {
            fault,
            seed,
            kills: vec![],
            accepted: None,
            refused: None,
            refused_by_status: vec![],
            failed_posts: None,
            sagas: None,
            terminal: None,
            stored_unaccepted: None,
            refused_but_stored: None,
            missing: None,
            double_payments: None,
            money_errors: None,
            lost_events: None,
            doubled_events: None,
            takeover_ms: vec![],
            leases_taken_over: vec![],
            replay: None,
            secs: None,
            problems: vec![],
            printed: false,
        }
    }

    fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    fn print(&mut self, passed: bool) {
        fn show<T: ToString>(value: Option<T>) -> String {
            value.map_or_else(|| "-".to_string(), |v| v.to_string())
        }
        fn list<T: ToString>(values: &[T]) -> String {
            if values.is_empty() { "-".to_string() } else { values.iter().map(T::to_string).collect::<Vec<_>>().join(",") }
        }
        self.printed = true;
        println!(
            "SOAK fault={} seed={} result={} rate={} kills={} sagas_in_flight_at_kills={} accepted={} refused={} refused_by_status={} failed_posts={} sagas={} terminal={} \
             stored_unaccepted={} refused_but_stored={} missing={} double_payments={} money_errors={} lost_events={} doubled_events={} takeover_ms={} leases_taken_over={} replay={} secs={}",
            self.fault,
            self.seed,
            if passed { "pass" } else { "fail" },
            rate(),
            self.kills.len(),
            list(&self.kills),
            show(self.accepted),
            show(self.refused),
            list(&self.refused_by_status),
            show(self.failed_posts),
            show(self.sagas),
            show(self.terminal),
            show(self.stored_unaccepted),
            show(self.refused_but_stored),
            show(self.missing),
            show(self.double_payments),
            show(self.money_errors),
            show(self.lost_events),
            show(self.doubled_events),
            list(&self.takeover_ms),
            list(&self.leases_taken_over),
            show(self.replay.map(|ok| if ok { "ok" } else { "diff" })),
            show(self.secs),
        );
    }
}

impl Drop for Summary {
    fn drop(&mut self) {
        if !self.printed {
            self.print(false);
        }
    }
}

/// How many of these idempotency keys (of refused POSTs) name a saga.
/// Also how many of those were answered as if nothing was recorded (not
/// with the "did not confirm the commit" `503` that says it may have been).
async fn refused_but_stored(pool: &sqlx::AnyPool, keys: &[(String, bool)]) -> Result<(usize, usize), sqlx::Error> {
    let stored: std::collections::HashSet<String> =
        sqlx::query("SELECT key FROM saga_keys WHERE scope = 'order'").fetch_all(pool).await?.iter().filter_map(|r| r.try_get("key").ok()).collect();
    let found: Vec<bool> = keys.iter().filter(|(k, _)| stored.contains(k)).map(|(_, warned)| *warned).collect();
    Ok((found.len(), found.iter().filter(|warned| !**warned).count()))
}

/// Non-terminal sagas in the store.
async fn in_flight(pool: &sqlx::AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM sagas WHERE terminal = 0").fetch_one(pool).await?.try_get("n")
}

/// What the POSTs came to.
#[derive(Default)]
struct Tally {
    /// Answered 201 or 202 with an id: the saga is durable and must end.
    accepted: Vec<Uuid>,
    /// Answered with any other status: no saga was promised.
    refused: u64,
    /// The refusals by status.
    refused_by_status: std::collections::BTreeMap<u16, u64>,
    /// The idempotency keys of refused POSTs that carried one, and whether
    /// the answer said the commit was not confirmed.
    refused_keys: Vec<(String, bool)>,
    /// No answer (connection refused or reset, timeout): the saga may or
    /// may not exist; if it does, it must end like any other.
    failed: u64,
}

enum Posted {
    Accepted(Uuid),
    /// The status, the key sent, and whether the answer warned that the
    /// saga may exist (an unconfirmed commit).
    Refused(u16, Option<String>, bool),
    Failed,
}

/// Orders POSTed at [`rate`] a second to the URLs in turn, until stopped. A POST
/// that is not accepted is not retried: a client's retry is a new order,
/// and the tally says how many there were of each.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Tally>,
}

impl Load {
    fn start(urls: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(post_orders(urls, stop.clone()));
        Load { stop, task }
    }

    /// Stops posting and waits for the POSTs still waiting for an answer.
    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_else(|e| panic!("the load's task: {e}"))
    }
}

async fn post_orders(urls: Vec<String>, stop: Arc<AtomicBool>) -> Tally {
    let http = reqwest::Client::builder().timeout(POST_TIMEOUT).build().unwrap_or_else(|e| panic!("http client: {e}"));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut posts = tokio::task::JoinSet::new();
    let mut tally = Tally::default();
    let count = |tally: &mut Tally, posted: Result<Posted, tokio::task::JoinError>| match posted {
        Ok(Posted::Accepted(id)) => tally.accepted.push(id),
        Ok(Posted::Refused(status, key, warned)) => {
            tally.refused += 1;
            *tally.refused_by_status.entry(status).or_default() += 1;
            tally.refused_keys.extend(key.map(|k| (k, warned)));
        }
        Ok(Posted::Failed) | Err(_) => tally.failed += 1,
    };
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {}
            Some(posted) = posts.join_next() => {
                count(&mut tally, posted);
                continue;
            }
        }
        if posts.len() >= MAX_POSTS_WAITING {
            continue;
        }
        // Every path of the order saga: confirmed and delivered, declined,
        // a coin flip, and confirmed then refunded when delivery fails.
        let description = match i % 4 {
            0 => format!("test order {i}"),
            1 => format!("xxx order {i}"),
            2 => format!("random order {i}"),
            _ => format!("test undeliverable order {i}"),
        };
        // Half the orders (four in a row, every path) carry an idempotency
        // key, as careful clients' do: both kinds of start share batches,
        // and a refusal's key tells whether its saga was stored after all.
        let key = (i / 4).is_multiple_of(2).then(|| Uuid::new_v4().to_string());
        let (http, url) = (http.clone(), urls[i % urls.len()].clone());
        posts.spawn(async move {
            let mut request = http.post(&url).json(&serde_json::json!({ "amount": 10.50, "description": description }));
            if let Some(key) = &key {
                request = request.header("Idempotency-Key", key);
            }
            match request.send().await {
                Ok(r) if matches!(r.status().as_u16(), 201 | 202) => {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    // Accepted, but the id was lost with the body: as good as no answer.
                    body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).map_or(Posted::Failed, Posted::Accepted)
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let warned = r.text().await.is_ok_and(|body| body.contains("did not confirm the commit"));
                    Posted::Refused(status, key, warned)
                }
                Err(_) => Posted::Failed,
            }
        });
        i += 1;
    }
    while let Some(posted) = posts.join_next().await {
        count(&mut tally, posted);
    }
    tally
}

/// Where the sagas stand once the load has stopped.
struct Terminal {
    sagas: usize,
    terminal: usize,
    accepted_terminal: usize,
    /// Accepted sagas not in the store.
    missing: Vec<Uuid>,
}

impl Terminal {
    /// Waits up to `timeout` for every accepted saga to be in the store and
    /// every saga in it (accepted or from a POST that got no answer) to be
    /// terminal.
    async fn wait(pool: &sqlx::AnyPool, accepted: &[Uuid], timeout: Duration) -> Terminal {
        let deadline = Instant::now() + timeout;
        let mut last = Terminal { sagas: 0, terminal: 0, accepted_terminal: 0, missing: accepted.to_vec() };
        loop {
            if let Ok(rows) = sqlx::query("SELECT id, terminal FROM sagas").fetch_all(pool).await {
                let stored: std::collections::HashMap<String, bool> =
                    rows.iter().filter_map(|r| Some((r.try_get::<String, _>("id").ok()?, r.try_get::<i64, _>("terminal").ok()? == 1))).collect();
                let accepted_terminal = accepted.iter().filter(|id| stored.get(&id.to_string()) == Some(&true)).count();
                let missing = accepted.iter().filter(|id| !stored.contains_key(&id.to_string())).copied().collect();
                last = Terminal { sagas: stored.len(), terminal: stored.values().filter(|t| **t).count(), accepted_terminal, missing };
                if last.missing.is_empty() && last.terminal == last.sagas {
                    return last;
                }
            }
            if Instant::now() >= deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn problems(&self, accepted: usize) -> Vec<String> {
        let mut problems = vec![];
        if !self.missing.is_empty() {
            problems.push(format!("{} accepted sagas are not in the store: {:?}", self.missing.len(), self.missing));
        }
        if self.accepted_terminal + self.missing.len() < accepted {
            problems.push(format!("after {TERMINAL_WAIT:?}: {} of {accepted} accepted sagas terminal", self.accepted_terminal));
        }
        if self.terminal < self.sagas {
            problems.push(format!("after {TERMINAL_WAIT:?}: {} of {} stored sagas not terminal", self.sagas - self.terminal, self.sagas));
        }
        problems
    }
}

/// The part a fault kills in a cluster of one orchestrator and the two
/// participants.
#[derive(Clone, Copy)]
enum Part {
    Orchestrator,
    Payment,
    Delivery,
}

/// One orchestrator, the payment and the delivery participant on Postgres
/// and NATS; `part` killed (SIGKILL) 1–3 times and started again after a
/// random time down.
async fn kill_a_part(name: &'static str, part: Part, down_ms: Range<u64>) {
    let mut fault = Fault::new(name);
    let cluster = Cluster::new().await;
    let mut payment = cluster.eso(&["participant", "payment"]).await;
    let mut delivery = cluster.eso(&["participant", "delivery"]).await;
    let mut orchestrator = cluster.eso(&[]).await;
    let pool = cluster.postgres.pool().await;
    let load = Load::start(vec![orchestrator.url()]);
    for _ in 0..fault.kills() {
        fault.sleep(300..2500).await;
        let victim = match part {
            Part::Orchestrator => &mut orchestrator,
            Part::Payment => &mut payment,
            Part::Delivery => &mut delivery,
        };
        fault.in_flight_before_kill(&pool).await;
        victim.kill();
        fault.sleep(down_ms.clone()).await;
        victim.restart().await;
    }
    fault.conclude(load, &pool, &cluster.nats, &cluster.env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_kill() {
    kill_a_part("orchestrator_kill", Part::Orchestrator, 100..1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_kill() {
    kill_a_part("payment_kill", Part::Payment, 200..3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_kill() {
    kill_a_part("delivery_kill", Part::Delivery, 200..3000).await;
}

/// The embedded default (SQLite, the in-process bus and participants, no
/// NATS) SIGKILLed and started again on the same files: every accepted
/// saga ends, no order has two payment records, every snapshot is the
/// fold of its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_kill() {
    let mut fault = Fault::new("embedded_kill");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = dir.path().join("eso.db");
    let env = vec![("ESO_SQLITE_PATH", store.display().to_string()), ("ESO_TIMER_INTERVAL_MS", "20".to_string())];
    let mut eso = Process::spawn(&[], &env).await;
    let pool = common::pool(&format!("sqlite:{}", store.display())).await;
    let load = Load::start(vec![eso.url()]);
    for _ in 0..fault.kills() {
        fault.sleep(300..2500).await;
        fault.in_flight_before_kill(&pool).await;
        eso.kill();
        fault.sleep(50..1000).await;
        eso.restart().await;
    }
    fault.sleep(500..1500).await;
    let tally = load.stop().await;
    // The participants keep their records in a file of their own; attached
    // to the store's, one connection sees orders and payments together.
    let records = sqlite_with_records(&store, &store.with_extension("participants.db")).await;
    fault.check(tally, &pool, &records, None).await;
    // Replay opens the store itself: the running eso would hold it.
    eso.kill();
    fault.replay(&env);
    fault.finish();
}

/// The SQLite store with the participants' file attached.
async fn sqlite_with_records(store: &std::path::Path, records: &std::path::Path) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let records = records.display().to_string();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            let records = records.clone();
            Box::pin(async move { sqlx::query("ATTACH DATABASE $1 AS participants").bind(records).execute(conn).await.map(|_| ()) })
        })
        .connect(&format!("sqlite:{}", store.display()))
        .await
        .unwrap_or_else(|e| panic!("store with the participants' records: {e}"))
}

/// Postgres (a private server) crashed (`pg_ctl stop -m immediate`) and
/// started again while orders keep coming: what was accepted was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart() {
    let mut fault = Fault::new("postgres_restart");
    let mut postgres = PrivatePostgres::start().await;
    let nats = Nats::start().await;
    let mut env = common::process_env(&Postgres::at(&postgres.url), &nats);
    // The private server has connections to spare; the small pool is for the shared one.
    env.retain(|(k, _)| *k != "ESO_DB_POOL");
    let _payment = Process::spawn(&["participant", "payment"], &env).await;
    let _delivery = Process::spawn(&["participant", "delivery"], &env).await;
    let orchestrator = Process::spawn(&[], &env).await;
    let pool = postgres.pool().await;
    let load = Load::start(vec![orchestrator.url()]);
    for _ in 0..fault.kills() {
        fault.sleep(300..2500).await;
        fault.in_flight_before_kill(&pool).await;
        assert!(postgres.crash(), "pg_ctl stop -m immediate failed");
        fault.sleep(200..2000).await;
        postgres.start_again().await;
    }
    fault.conclude(load, &pool, &nats, &env).await;
}

/// NATS SIGKILLed and started again on its storage while orders keep
/// coming: commands are retried, the relay republishes, the stream's
/// duplicate window keeps each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart() {
    let mut fault = Fault::new("nats_restart");
    let mut cluster = Cluster::new().await;
    let _payment = cluster.eso(&["participant", "payment"]).await;
    let _delivery = cluster.eso(&["participant", "delivery"]).await;
    let orchestrator = cluster.eso(&[]).await;
    let pool = cluster.postgres.pool().await;
    let load = Load::start(vec![orchestrator.url()]);
    for _ in 0..fault.kills() {
        fault.sleep(300..2500).await;
        fault.in_flight_before_kill(&pool).await;
        cluster.nats.kill();
        fault.sleep(200..2000).await;
        cluster.nats.start_again().await;
    }
    fault.conclude(load, &pool, &cluster.nats, &cluster.env).await;
}

/// Two orchestrators sharing Postgres and NATS, on the order saga with
/// 300 ms timeouts (`tests/fixtures/faults/order.toml`). Before each kill
/// the payment participant goes down, so sagas come due on their timers
/// and both replicas claim them; one replica, drawn by the seed, is then
/// SIGKILLed while it holds claimed timers it has not stepped. Those sagas
/// are leased to the dead replica: the survivor must step each of them
/// once its lease ends, within [`LEASE`] + [`TAKEOVER_MARGIN`] of the kill
/// (the time is printed), and finish every saga once the participant
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_kill() {
    let mut fault = Fault::new("takeover_after_kill");
    let cluster = Cluster::new().await;
    let mut env = cluster.env.clone();
    env.push(("SAGAS_DIR", std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faults").display().to_string()));
    let mut payment = Process::spawn(&["participant", "payment"], &env).await;
    let _delivery = Process::spawn(&["participant", "delivery"], &env).await;
    let mut replicas = [Process::spawn(&[], &env).await, Process::spawn(&[], &env).await];
    let pool = cluster.postgres.pool().await;
    let load = Load::start(replicas.iter().map(|r| r.url()).collect());
    for kill in 1..=fault.kills() {
        fault.sleep(300..1500).await;
        payment.kill();
        // Long enough for the 300 ms timeouts to pass and retries to come due.
        fault.sleep(700..2000).await;
        let victim = fault.rng.random_range(0..replicas.len());
        let caught = catch_holding_leases(&mut fault, &mut replicas[victim], &pool).await;
        payment.restart().await;
        if let Some((caught, killed)) = caught {
            let taken = taken_over(&pool, &caught, killed, LEASE + TAKEOVER_MARGIN).await;
            let last = taken.iter().filter_map(|t| *t).max();
            println!(
                "takeover_after_kill: kill {kill}: replica {victim} held {} claimed timers; the survivor stepped {} of them, the last {} ms after the kill (lease {} ms)",
                caught.len(),
                taken.iter().flatten().count(),
                last.map_or_else(|| "-".to_string(), |l| l.as_millis().to_string()),
                LEASE.as_millis()
            );
            fault.summary.leases_taken_over.push(taken.iter().flatten().count());
            match last {
                Some(last) if taken.iter().all(Option::is_some) => fault.summary.takeover_ms.push(last.as_millis()),
                _ => fault.summary.problem(format!(
                    "kill {kill}: {} of {} sagas leased to the killed replica not stepped within {:?} of the kill",
                    taken.iter().filter(|t| t.is_none()).count(),
                    caught.len(),
                    LEASE + TAKEOVER_MARGIN
                )),
            }
        } else {
            fault.summary.problem(format!("kill {kill}: replica {victim} was never caught holding a claimed timer; the takeover is not shown"));
        }
        replicas[victim].restart().await;
    }
    fault.conclude(load, &pool, &cluster.nats, &env).await;
}

/// A saga leased to a replica: its version and lease end when caught.
struct Leased {
    id: String,
    version: i64,
    until_ms: i64,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Sagas whose deadline is a lease (further ahead than any wait a step of
/// the fixture sets), with their versions.
async fn leased(pool: &sqlx::AnyPool) -> Vec<Leased> {
    let rows = sqlx::query("SELECT id, version, deadline FROM sagas WHERE terminal = 0 AND deadline > $1")
        .bind(now_ms() + LEASE.as_millis() as i64 / 2)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    rows.iter().filter_map(|r| Some(Leased { id: r.try_get("id").ok()?, version: r.try_get("version").ok()?, until_ms: r.try_get("deadline").ok()? })).collect()
}

/// The saga's version and deadline now, if it is still there.
async fn version_and_deadline(pool: &sqlx::AnyPool, id: &str) -> Option<(i64, i64)> {
    let row = sqlx::query("SELECT version, deadline FROM sagas WHERE id = $1").bind(id).fetch_optional(pool).await.ok().flatten()?;
    Some((row.try_get("version").ok()?, row.try_get("deadline").ok()?))
}

/// Freezes the replica (SIGSTOP) at a random moment and looks for sagas
/// leased to it: leases that stay as they are while it is frozen (the
/// other replica steps its own claims within milliseconds). When there are
/// some, SIGKILLs it and returns what is still leased a second later, with
/// the moment of the kill; otherwise thaws it and tries again a little
/// later. A replica holds claimed timers only between a claim and the
/// commit of its steps, so a blind kill catches it holding none as often
/// as not.
///
/// The second look is needed because a frozen replica can be caught in
/// the middle of a transaction whose row locks the survivor's commit of
/// its own claims waits on: those leases do not move while it is frozen
/// either, but they are the survivor's, and they move as soon as the kill
/// ends the transaction. A kill that leaves none of the dead replica's own
/// counts as a kill, and the replica is started and tried again.
async fn catch_holding_leases(fault: &mut Fault, replica: &mut Process, pool: &sqlx::AnyPool) -> Option<(Vec<Leased>, Instant)> {
    let mut kills = 0;
    for _ in 0..40 {
        testkit::signal(&[replica.pid()], testkit::Signal::SIGSTOP);
        let in_flight = in_flight(pool).await.unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let first = leased(pool).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let second = leased(pool).await;
        let held: Vec<Leased> =
            second.into_iter().filter(|s| first.iter().any(|f| f.id == s.id && f.version == s.version && f.until_ms == s.until_ms)).collect();
        if held.is_empty() {
            testkit::signal(&[replica.pid()], testkit::Signal::SIGCONT);
            fault.sleep(20..200).await;
            continue;
        }
        if in_flight == 0 {
            fault.summary.problem(format!("kill {}: no saga in flight before it; the kill proves nothing", fault.summary.kills.len() + 1));
        }
        fault.summary.kills.push(in_flight);
        replica.kill();
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut orphans = vec![];
        for saga in held {
            if version_and_deadline(pool, &saga.id).await == Some((saga.version, saga.until_ms)) {
                orphans.push(saga);
            }
        }
        if !orphans.is_empty() {
            return Some((orphans, killed));
        }
        kills += 1;
        if kills == 3 {
            return None;
        }
        replica.restart().await;
        fault.sleep(300..1000).await;
    }
    None
}

/// For each leased saga, how long after `killed` it was first stepped
/// (its version moved), or `None` if not within `within`.
async fn taken_over(pool: &sqlx::AnyPool, sagas: &[Leased], killed: Instant, within: Duration) -> Vec<Option<Duration>> {
    let mut taken: Vec<Option<Duration>> = vec![None; sagas.len()];
    while killed.elapsed() < within && taken.iter().any(Option::is_none) {
        for (saga, taken) in sagas.iter().zip(taken.iter_mut()).filter(|(_, t)| t.is_none()) {
            let version: Option<i64> = sqlx::query("SELECT version FROM sagas WHERE id = $1")
                .bind(&saga.id)
                .fetch_optional(pool)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.try_get("version").ok());
            if version.is_some_and(|v| v > saga.version) {
                *taken = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    taken
}
