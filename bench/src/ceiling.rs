//! The machine's ceiling, measured in the same run so that eso's figures
//! compare across machines: what Postgres, SQLite and NATS sustain with the
//! simplest possible work (a single-row INSERT per transaction, a request
//! answered at once). A saga needs several of each, so eso's sagas/s is a
//! fraction of these; the ratio is what should stay stable from box to box.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use sqlx::Row;

use crate::args::BenchArgs;
use crate::report::Ceiling;
use testkit::Database;

use crate::target;

const PAYLOAD: &str = r#"{"type":"ceiling","data":{"amount":"10.50","description":"test ceiling"}}"#;

/// Postgres: `connections` tasks, each on its own connection, doing
/// autocommit single-row INSERTs into a scratch table of a scratch
/// database for `seconds`. Returns inserts (= commits) per second.
pub async fn pg_inserts(admin_url: &str, connections: usize, seconds: Duration) -> anyhow::Result<f64> {
    let db = Database::create(admin_url, "eso_bench_ceiling").await?;
    let result = async {
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(connections as u32)
            .connect(&db.url)
            .await
            .with_context(|| format!("connecting to {}", db::redact(&db.url)))?;
        sqlx::query("CREATE TABLE scratch (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL, recorded_at BIGINT NOT NULL)").execute(&pool).await?;
        let rate = insert_loop(&pool, connections, seconds).await;
        pool.close().await;
        rate
    }
    .await;
    if let Err(e) = db.drop_database().await {
        eprintln!("could not drop the ceiling's database {}: {e:#}", db.name);
    }
    result
}

/// SQLite with eso's own connection settings (WAL, `synchronous = FULL`,
/// one connection): single-row INSERT transactions per second.
pub async fn sqlite_inserts(dir: &Path, seconds: Duration) -> anyhow::Result<f64> {
    let url = format!("sqlite:{}?mode=rwc", dir.join("ceiling.db").display());
    let (pool, _) = db::connect(&url, 1).await?;
    sqlx::query("CREATE TABLE scratch (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL, recorded_at BIGINT NOT NULL)").execute(&pool).await?;
    let rate = insert_loop(&pool, 1, seconds).await;
    pool.close().await;
    rate
}

async fn insert_loop(pool: &sqlx::AnyPool, connections: usize, seconds: Duration) -> anyhow::Result<f64> {
    let inserts = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + seconds;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (pool, inserts) = (pool.clone(), inserts.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            while Instant::now() < deadline {
                sqlx::query("INSERT INTO scratch (payload, recorded_at) VALUES ($1, $2)")
                    .bind(PAYLOAD)
                    .bind(orchestrator::clock::now_us())
                    .execute(&mut *conn)
                    .await?;
                inserts.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("insert task panicked")??;
    }
    Ok(inserts.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// NATS: a responder that answers every request with its payload, and
/// `requesters` concurrent request loops on one client connection (as eso
/// sends its commands). Returns round trips per second and the server's
/// version.
pub async fn nats_round_trips(url: &str, requesters: usize, seconds: Duration) -> anyhow::Result<(f64, String)> {
    let responder = async_nats::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?;
    let client = async_nats::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?;
    let version = client.server_info().version;
    let subject = format!("eso.bench.echo.{}", uuid::Uuid::new_v4().simple());
    let mut subscription = responder.subscribe(subject.clone()).await?;
    responder.flush().await?;
    let echo = tokio::spawn({
        let responder = responder.clone();
        async move {
            while let Some(message) = subscription.next().await {
                if let Some(reply) = message.reply {
                    let _ = responder.publish(reply, message.payload).await;
                }
            }
        }
    });
    // `flush` only empties our socket buffer: the server may not have
    // registered the subscription yet when another connection asks.
    let probe_deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = client.request(subject.clone(), PAYLOAD.into()).await {
        if Instant::now() > probe_deadline {
            echo.abort();
            anyhow::bail!("the echo responder never answered: {e}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let round_trips = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + seconds;
    let mut tasks = Vec::new();
    for _ in 0..requesters {
        let (client, subject, round_trips) = (client.clone(), subject.clone(), round_trips.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                client.request(subject.clone(), PAYLOAD.into()).await.map_err(|e| anyhow::anyhow!("request: {e}"))?;
                round_trips.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let mut outcome = Ok(());
    for task in tasks {
        if let Err(e) = task.await.context("request task panicked").and_then(|r| r) {
            outcome = Err(e);
        }
    }
    let rate = round_trips.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    echo.abort();
    outcome?;
    Ok((rate, version))
}

/// The Postgres server's version (`PostgreSQL 15.x (Debian …)`) and the
/// settings that decide its commit rate.
pub async fn postgres_version(admin_url: &str) -> anyhow::Result<(String, String)> {
    let mut conn = testkit::admin_connection(admin_url).await?;
    let full: String = sqlx::query("SELECT version() AS v").fetch_one(&mut conn).await?.try_get("v")?;
    let rows = sqlx::query(
        "SELECT name, current_setting(name) AS value FROM pg_settings \
         WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', 'shared_buffers', 'max_connections') ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await?;
    let settings: Vec<String> =
        rows.iter().filter_map(|r| Some(format!("{}={}", r.try_get::<String, _>("name").ok()?, r.try_get::<String, _>("value").ok()?))).collect();
    Ok((full.split(" on ").next().unwrap_or(&full).to_string(), settings.join(" ")))
}

/// Every ceiling, each for `--ceiling-duration`; a part that cannot run
/// (no Postgres, no nats-server) becomes a note instead of failing the run.
pub async fn measure(args: &BenchArgs, nats_server: &Path) -> Ceiling {
    let seconds = args.ceiling_duration;
    let mut c = Ceiling {
        seconds: seconds.as_secs_f64(),
        pg_connections: args.ceiling_pg_connections,
        nats_requesters: args.ceiling_nats_requesters,
        ..Ceiling::default()
    };
    println!("measuring the ceiling ({} s each: postgres, sqlite, nats)…", c.seconds);
    match pg_inserts(&args.admin_url, args.ceiling_pg_connections, seconds).await {
        Ok(rate) => c.pg_inserts_per_s = Some(rate),
        Err(e) => c.notes.push(format!("postgres not measured: {e:#}")),
    }
    let dir = target::scratch_dir("ceiling");
    let dir = match dir {
        Ok(d) => d,
        Err(e) => {
            c.notes.push(format!("no scratch directory: {e:#}"));
            return c;
        }
    };
    match sqlite_inserts(&dir, seconds).await {
        Ok(rate) => c.sqlite_inserts_per_s = Some(rate),
        Err(e) => c.notes.push(format!("sqlite not measured: {e:#}")),
    }
    let mut private = None;
    let url = match &args.nats_url {
        Some(url) => Some(url.clone()),
        None => match testkit::NatsServer::start(nats_server, &dir.join("nats")).await {
            Ok(n) => {
                let url = n.url.clone();
                private = Some(n);
                Some(url)
            }
            Err(e) => {
                c.notes.push(format!("nats not measured: {e:#}"));
                None
            }
        },
    };
    if let Some(url) = url {
        match nats_round_trips(&url, args.ceiling_nats_requesters, seconds).await {
            Ok((rate, _)) => c.nats_round_trips_per_s = Some(rate),
            Err(e) => c.notes.push(format!("nats not measured: {e:#}")),
        }
    }
    if let Some(mut n) = private {
        n.stop(Duration::from_secs(10)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    c
}
