//! Test harness: real Postgres (a fresh database per test), real NATS (a
//! `nats-server` per test, on a free port, so tests cannot answer each
//! other's commands), the orchestrator in-process or as a child process.
//!
//! A test that needs a server it cannot reach fails and says how to start
//! it; it never passes silently.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use orchestrator::app::Running;
use orchestrator::config::Config;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

pub const ADMIN_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn telemetry() -> Arc<observability::Telemetry> {
    static TELEMETRY: OnceLock<Arc<observability::Telemetry>> = OnceLock::new();
    TELEMETRY
        .get_or_init(|| {
            // Quiet by default: tasks on other threads escape libtest's capture.
            let mut config = observability::TelemetryConfig::from_env("eso-test");
            if std::env::var("RUST_LOG").is_err() {
                config.log_filter = "warn".into();
            }
            match observability::init_with_config(config) {
                Ok(t) => Arc::new(t),
                Err(e) => panic!("telemetry: {e}"),
            }
        })
        .clone()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A database of its own on the Postgres server at `DATABASE_URL`
/// (default: the local server, user postgres).
pub struct Postgres {
    pub url: String,
}

impl Postgres {
    pub async fn fresh() -> Postgres {
        let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| ADMIN_URL_DEFAULT.to_string());
        sqlx::any::install_default_drivers();
        let mut conn = match <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await {
            Ok(c) => c,
            Err(e) => panic!(
                "this test needs PostgreSQL at {admin} (set DATABASE_URL to an admin URL; start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`): {e}"
            ),
        };
        let name = format!("eso_test_{}", Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap_or_else(|e| panic!("create database: {e}"));
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Postgres { url: format!("{base}/{name}") }
    }

    pub async fn pool(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new().max_connections(4).connect(&self.url).await.unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }
}

/// A PostgreSQL server of this test's own (initdb in a temporary
/// directory, run as the `postgres` user), for tests that crash the
/// database: the shared server must stay up for the other tests.
pub struct PrivatePostgres {
    pub url: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    pub async fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| versions.filter_map(Result::ok).map(|v| v.path().join("bin")).find(|b| b.join("initdb").exists()))
            .unwrap_or_else(|| panic!("this test needs the PostgreSQL server binaries (Debian package postgresql) under /usr/lib/postgresql"));
        let dir = tempfile::Builder::new().prefix("eso-pg-").tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        assert!(chown.is_ok_and(|s| s.success()), "this test runs PostgreSQL as the postgres user and needs root to hand it a directory");
        let data = dir.path().join("data");
        let init = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(init.is_ok_and(|s| s.success()), "initdb failed");
        let port = free_port();
        let mut pg = PrivatePostgres { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), dir, bin, port };
        pg.start_again().await;
        pg
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub async fn start_again(&mut self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200", self.port, self.dir.path().display());
        assert!(self.pg_ctl(&["-w", "-o", &options, "start"]), "pg_ctl start failed");
        wait_for_port(self.port, Duration::from_secs(20)).await;
    }

    /// Stops it the way a crash would: no checkpoint, in-flight work lost.
    pub fn crash(&mut self) -> bool {
        self.pg_ctl(&["-m", "immediate", "stop"])
    }

    pub async fn pool(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new().max_connections(4).connect(&self.url).await.unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}

/// A `nats-server` with JetStream of this test's own.
pub struct Nats {
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    pub async fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let port = free_port();
        let mut nats = Nats { port, url: format!("nats://127.0.0.1:{port}"), dir, child: None };
        nats.start_again().await;
        nats
    }

    fn binary() -> PathBuf {
        for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"] {
            if std::path::Path::new(candidate).exists() {
                return PathBuf::from(candidate);
            }
        }
        PathBuf::from("nats-server")
    }

    /// Starts the server (again) on the same port and storage.
    pub async fn start_again(&mut self) {
        let child = Command::new(Self::binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("this test needs nats-server on PATH (Debian package nats-server): {e}"));
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10)).await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap_or_else(|e| panic!("connect nats: {e}"))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Environment for `eso` child processes of one test: its database, its
/// NATS, participants as their own processes, a small pool (several
/// processes per test and two tests at a time stay under Postgres's default
/// 100 connections) and a fast timer poll.
pub fn process_env(postgres: &Postgres, nats: &Nats) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", postgres.url.clone()),
        ("NATS_URL", nats.url.clone()),
        ("ESO_EMBED_PARTICIPANTS", "false".to_string()),
        ("ESO_TIMER_INTERVAL_MS", "20".to_string()),
        ("ESO_DB_POOL", "5".to_string()),
    ]
}

pub async fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn config(database_url: Option<String>, nats_url: Option<String>, sqlite: PathBuf) -> Config {
    Config {
        port: 0,
        bind: "127.0.0.1".parse().unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        database_url,
        sqlite_path: sqlite,
        nats_url,
        sagas_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sagas"),
        db_pool: 8,
        timer_interval_ms: 20,
        max_body_bytes: 16 * 1024,
        embed_participants: Some(true),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SQLite file and the in-process bus: `cargo run` with no configuration.
    Embedded,
    /// Postgres and NATS, participants answering over NATS.
    Production,
}

/// The orchestrator in this process, on a free port.
pub struct TestApp {
    pub running: Option<Running>,
    pub url: String,
    pub http: reqwest::Client,
    pub postgres: Option<Postgres>,
    pub nats: Option<Nats>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn start(mode: Mode) -> TestApp {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (postgres, nats) = match mode {
            Mode::Embedded => (None, None),
            Mode::Production => (Some(Postgres::fresh().await), Some(Nats::start().await)),
        };
        let config = config(postgres.as_ref().map(|p| p.url.clone()), nats.as_ref().map(|n| n.url.clone()), dir.path().join("eso.db"));
        let running = orchestrator::app::start(&config, telemetry()).await.unwrap_or_else(|e| panic!("start: {e:#}"));
        let url = running.url();
        TestApp { running: Some(running), url, http: reqwest::Client::new(), postgres, nats, _dir: dir }
    }

    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    pub async fn post(&self, body: Value) -> (u16, Value) {
        let response = self.http.post(&self.url).json(&body).send().await.unwrap_or_else(|e| panic!("POST: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn order(&self, description: &str) -> Uuid {
        let (status, body) = self.post(json!({ "amount": 207.00, "description": description })).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_else(|| panic!("no id in {body}"))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn status(&self, id: Uuid) -> String {
        let (_, body) = self.get(&format!("/?id={id}")).await;
        body["status"].as_str().unwrap_or_default().to_string()
    }

    /// Polls until the order shows a terminal status.
    pub async fn wait_terminal(&self, id: Uuid, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body) = self.get(&format!("/?id={id}")).await;
            if ["delivered", "cancelled", "failed"].contains(&body["status"].as_str().unwrap_or_default()) {
                return body;
            }
            assert!(Instant::now() < deadline, "order {id} not terminal after {timeout:?}: {body}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `eso` (or one of its subcommands) as a child process we can kill.
pub struct Process {
    pub child: Child,
    pub port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Process {
    pub async fn spawn(args: &[&str], env: &[(&str, String)]) -> Process {
        let port = free_port();
        let mut p = Process {
            child: spawn_eso(args, env, port),
            port,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        wait_for_port(p.port, Duration::from_secs(30)).await;
        let _ = &mut p;
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown code runs, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, String)> = self.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.child = spawn_eso(&args, &env, self.port);
        wait_for_port(self.port, Duration::from_secs(30)).await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_eso(args: &[&str], env: &[(&str, String)], port: u16) -> Child {
    let log = std::env::var("ESO_TEST_LOGS").is_ok();
    Command::new(env!("CARGO_BIN_EXE_eso"))
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .env("SAGAS_DIR", PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sagas"))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(if log { Stdio::inherit() } else { Stdio::null() })
        .stderr(if log { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .unwrap_or_else(|e| panic!("spawn eso: {e}"))
}

/// POSTs `n` orders concurrently to the given base URLs (round robin) with
/// a mix of descriptions; returns their ids. Retries a POST that could not
/// connect (the target may be restarting); a 2xx means the order is durable.
pub async fn post_many(urls: &[String], n: usize) -> Vec<Uuid> {
    let http = reqwest::Client::new();
    let posts = (0..n).map(|i| {
        let http = http.clone();
        let url = urls[i % urls.len()].clone();
        async move {
            let description = match i % 3 {
                0 => format!("test order {i}"),
                1 => format!("xxx order {i}"),
                _ => format!("random order {i}"),
            };
            let give_up = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < give_up, "POST {url} not accepted for 60 s");
                match http.post(&url).json(&json!({ "amount": 10.50, "description": description })).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        return body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok());
                    }
                    // Not accepted (connection refused, 503): the client retries, as clients do.
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    });
    futures::future::join_all(posts).await.into_iter().flatten().collect()
}

/// Waits until every saga in the database is terminal.
pub async fn wait_all_terminal(pool: &sqlx::AnyPool, expected: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let row = sqlx::query("SELECT COUNT(*) AS total, (SELECT COUNT(*) FROM sagas WHERE terminal = 1) AS done FROM sagas").fetch_one(pool).await;
        if let Ok(row) = row {
            let total: i64 = row.try_get("total").unwrap_or(-1);
            let done: i64 = row.try_get("done").unwrap_or(-1);
            if total as usize >= expected && done == total {
                return;
            }
            assert!(Instant::now() < deadline, "after {timeout:?}: {done} of {total} sagas terminal (expected {expected})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the promises that must hold after any crash: each order has
/// exactly one payment record, money moved back for every cancelled order
/// whose charge was confirmed, and no order is both delivered and refunded.
pub async fn assert_no_double_charge(pool: &sqlx::AnyPool, orders: &[Uuid]) {
    let doubled: Vec<String> = sqlx::query("SELECT order_id FROM payments GROUP BY order_id HAVING COUNT(*) > 1")
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter_map(|r| r.try_get("order_id").ok())
        .collect();
    assert!(doubled.is_empty(), "orders with more than one payment record: {doubled:?}");
    let unpaid: i64 = sqlx::query("SELECT COUNT(*) AS n FROM orders o WHERE o.status = 'delivered' AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.outcome = 'confirmed' AND p.refunded = 0)")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get("n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unpaid, 0, "delivered orders without exactly one kept charge");
    let kept: i64 = sqlx::query("SELECT COUNT(*) AS n FROM orders o JOIN payments p ON p.order_id = o.id WHERE o.status = 'cancelled' AND p.outcome = 'confirmed' AND p.refunded = 0")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get("n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kept, 0, "cancelled orders that kept the customer's money");
    let known: i64 = sqlx::query("SELECT COUNT(*) AS n FROM orders").fetch_one(pool).await.and_then(|r| r.try_get("n")).unwrap_or(-1);
    assert!(known as usize >= orders.len(), "accepted orders lost: {known} stored, {} accepted", orders.len());
    for id in orders {
        let found = sqlx::query("SELECT 1 FROM orders WHERE id = $1").bind(id.to_string()).fetch_optional(pool).await.ok().flatten();
        assert!(found.is_some(), "accepted order {id} is not in the store");
    }
}

/// Every event is in JetStream exactly once: the stream holds as many
/// messages as the events table has rows, and their message ids are the
/// event ids.
pub async fn assert_events_published_once(pool: &sqlx::AnyPool, nats: &async_nats::Client, timeout: Duration) {
    use futures::StreamExt;
    let events: i64 = sqlx::query("SELECT COUNT(*) AS n FROM events").fetch_one(pool).await.and_then(|r| r.try_get("n")).unwrap_or(-1);
    let js = async_nats::jetstream::new(nats.clone());
    let deadline = Instant::now() + timeout;
    let mut stream = js.get_stream("ESO_EVENTS").await.unwrap_or_else(|e| panic!("event stream: {e}"));
    loop {
        let messages = stream.info().await.map(|i| i.state.messages).unwrap_or(0) as i64;
        if messages == events {
            break;
        }
        assert!(messages <= events, "{messages} messages in JetStream for {events} events: duplicates");
        assert!(Instant::now() < deadline, "only {messages} of {events} events reached JetStream after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut messages = consumer.messages().await.unwrap_or_else(|e| panic!("messages: {e}"));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..events {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next()).await.ok().flatten();
        let Some(Ok(message)) = message else { panic!("could not read the event stream back") };
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string()).unwrap_or_default();
        assert!(seen.insert(id.clone()), "event {id} is in JetStream twice");
    }
    let ids: std::collections::HashSet<String> = sqlx::query("SELECT event_id FROM events")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.try_get("event_id").ok())
        .collect();
    assert_eq!(seen, ids, "JetStream holds other events than the store");
}
