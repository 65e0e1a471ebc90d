//! Wiring: builds the store, bus, participants, runtime and HTTP server
//! from a [`Config`], and takes them down in an order that loses nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use participants::Participant;
use participants::delivery::Delivery;
use participants::payment::Payment;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::bus::{Bus, LocalBus, NatsBus};
use crate::config::Config;
use crate::runtime::Runtime;
use crate::store::{self, Store};
use crate::definitions;

/// Longest wait for command round trips in flight at shutdown (they are
/// bounded by their own timeouts; this guards against a stuck one).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A running orchestrator.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Store,
    pub bus: Bus,
    pub runtime: Runtime,
    /// Stops intake: HTTP, timers, participants' subscriptions.
    stop_intake: CancellationToken,
    /// Stops the relay, after everything else wrote its last event.
    stop_relay: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    timers: JoinHandle<()>,
    relay: JoinHandle<()>,
    participants: Vec<JoinHandle<()>>,
    /// The in-process participants' own SQLite file, when they have one.
    participants_pool: Option<sqlx::AnyPool>,
}

pub async fn start(config: &Config, telemetry: Arc<observability::Telemetry>) -> anyhow::Result<Running> {
    tracing::info!(config = %config.describe(), "eso starting");
    let store = open_store(config).await?;
    let (pool, backend) = (store.pool().clone(), store.backend());

    let mut participants_pool = None;
    let embedded: Vec<Arc<dyn Participant>> = if config.embed_participants() {
        let records = match config.participants_sqlite_url() {
            Some(url) => {
                // One schema for every file: the event-store tables stay empty here.
                let (records, _) = participants::db::connect(&url, 1).await?;
                participants::db::migrate(&records, backend).await?;
                adopt_records(&records, &pool).await?;
                participants_pool = Some(records.clone());
                records
            }
            None => pool.clone(),
        };
        vec![Arc::new(Payment::new(records.clone(), backend)), Arc::new(Delivery::new(records, backend))]
    } else {
        vec![]
    };
    let stop_intake = CancellationToken::new();
    let mut participant_tasks = Vec::new();
    let bus = match config.nats_url() {
        None => Bus::Local(LocalBus::new(embedded)),
        Some(url) => {
            let nats = NatsBus::connect(url).await?;
            for participant in embedded {
                let (client, stop) = (nats.client().clone(), stop_intake.clone());
                participant_tasks.push(tokio::spawn(async move {
                    if let Err(e) = participants::serve::serve_nats(client, participant, stop.cancelled_owned()).await {
                        tracing::error!(error = %e, "in-process participant stopped");
                    }
                }));
            }
            Bus::Nats(Box::new(nats))
        }
    };

    let registry = definitions::load(&store, &config.sagas_dir).await?;
    let runtime = Runtime::new(store.clone(), bus.clone(), registry, config.idempotency_ttl);
    let timers = tokio::spawn(runtime.clone().run_timers(config.timer_interval(), stop_intake.clone()));
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(store::run_relay(store.clone(), bus.clone(), stop_relay.clone()));

    let listener = tokio::net::TcpListener::bind((config.bind, config.port)).await?;
    let addr = listener.local_addr()?;
    let app = api::router(AppState {
        runtime: runtime.clone(),
        store: store.clone(),
        bus: bus.clone(),
        telemetry,
        max_body_bytes: config.max_body_bytes,
        stopping: stop_intake.clone(),
    });
    let stop = stop_intake.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await });
    tracing::info!(%addr, "listening");
    Ok(Running { addr, store, bus, runtime, stop_intake, stop_relay, server, timers, relay, participants: participant_tasks, participants_pool })
}

/// The configured store, migrated, with the read models of the shipped
/// sagas' adapters (the order saga's `orders`).
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let (pool, backend) = participants::db::connect(&config.database_url(), config.db_pool).await?;
    participants::db::migrate(&pool, backend).await?;
    // On SQLite the outbox relay holds one reader for itself; four serve the API.
    let readers = participants::db::readers(&config.database_url(), &pool, backend, 5).await?;
    Ok(Store::new(pool, readers, backend, vec![Arc::new(crate::orders::OrderProjection::new(backend))]))
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop: no new requests or timers, finish the command round
    /// trips in flight, publish every committed event, then return.
    pub async fn stop(self) {
        self.stop_intake.cancel();
        let _ = self.server.await;
        let _ = self.timers.await;
        if tokio::time::timeout(DRAIN_TIMEOUT, self.runtime.drain()).await.is_err() {
            tracing::warn!("commands still in flight at shutdown; their deadlines will resume them");
        }
        for task in self.participants {
            let _ = task.await;
        }
        self.stop_relay.cancel();
        let _ = self.relay.await;
        self.store.close().await;
        if let Some(pool) = self.participants_pool {
            pool.close().await;
        }
        tracing::info!("eso stopped");
    }
}

/// Moves participant records that an earlier eso wrote into the store's own
/// file (before the participants had one) into theirs, so that a command
/// answered before an upgrade still gets its first answer after it instead
/// of being decided, and charged, again. Copied first and then deleted, each
/// step atomic in its own file: a crash in between copies again, and the
/// copy ignores what is already there.
async fn adopt_records(records: &sqlx::AnyPool, store: &sqlx::AnyPool) -> anyhow::Result<()> {
    use sqlx::{AssertSqlSafe, Executor, Row};
    // The file SQLite really opened: the configured path went through URL
    // decoding on its way to the store's connection.
    let store_file: String = sqlx::query("SELECT file FROM pragma_database_list WHERE name = 'main'").fetch_one(store).await?.try_get("file")?;
    let mut conn = records.acquire().await?;
    sqlx::query("ATTACH DATABASE $1 AS store").bind(store_file).execute(&mut *conn).await?;
    let mut moved = 0;
    for table in ["payments", "deliveries"] {
        // The table names are the constants above.
        let copied = conn.execute(AssertSqlSafe(format!("INSERT OR IGNORE INTO main.{table} SELECT * FROM store.{table}"))).await?;
        conn.execute(AssertSqlSafe(format!("DELETE FROM store.{table}"))).await?;
        moved += copied.rows_affected();
    }
    conn.execute("DETACH DATABASE store").await?;
    if moved > 0 {
        tracing::info!(records = moved, "participant records moved from the store's file to the participants' own");
    }
    Ok(())
}
