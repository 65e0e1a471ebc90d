//! Wiring: builds the store, bus, runtime and HTTP server from a
//! [`Config`], runs the participants its caller embeds, and takes them all
//! down in an order that loses nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::Participant;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::bus::{Bus, LocalBus, NatsBus};
use crate::config::Config;
use crate::definitions;
use crate::runtime::Runtime;
use crate::store::{self, Store};

/// Longest wait for command round trips in flight at shutdown (they are
/// bounded by their own timeouts; this guards against a stuck one).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the requests in flight at shutdown.
const SERVER_DRAIN: Duration = Duration::from_secs(10);

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
    /// Works on bulk operator actions (`jobs.rs`).
    jobs: JoinHandle<()>,
    relay: JoinHandle<()>,
    retention: JoinHandle<()>,
    participants: Vec<JoinHandle<()>>,
    /// The embedded participants' records, closed after they stopped.
    participants_pool: Option<sqlx::AnyPool>,
    /// The SQLite files this process holds ([`lock_store`]), released last.
    locks: Vec<db::FileLock>,
}

/// Participants to run in this process, built by the caller (the `eso`
/// binary), so this crate depends on the protocol alone.
#[derive(Default)]
pub struct Embedded {
    /// Answer on the in-process bus, or over NATS when it is configured.
    pub participants: Vec<Arc<dyn Participant>>,
    /// Where they keep their records, closed by [`Running::stop`] once they
    /// have stopped answering.
    pub pool: Option<sqlx::AnyPool>,
}

pub async fn start(config: &Config, telemetry: Arc<observability::Telemetry>, embedded: Embedded) -> anyhow::Result<Running> {
    // Before anything else starts: a bad token or connection setting stops eso with the reason.
    let tokens = api::auth::Tokens::from_settings(config.operator_token.as_ref(), config.read_token.as_ref()).map_err(|e| anyhow::anyhow!(e))?;
    config.admission.check().map_err(|e| anyhow::anyhow!("ESO_ADMISSION: {e}"))?;
    config.history.retention.check(config.idempotency_ttl).map_err(|e| anyhow::anyhow!("ESO_RETENTION: {e}"))?;
    let limits = crate::serve::Limits::from_config(config)?;
    let store = open_store(config).await?;

    let Embedded { participants: embedded, pool: participants_pool } = embedded;
    let stop_intake = CancellationToken::new();
    let mut participant_tasks = Vec::new();
    let bus = match config.nats_url() {
        None => Bus::Local(LocalBus::new(embedded)),
        Some(url) => {
            let nats = NatsBus::connect(url, &config.history).await?;
            for participant in embedded {
                let (client, stop) = (nats.client().clone(), stop_intake.clone());
                participant_tasks.push(tokio::spawn(async move {
                    if let Err(e) = protocol::serve_nats(client, participant, stop.cancelled_owned()).await {
                        tracing::error!(error = %e, "in-process participant stopped");
                    }
                }));
            }
            Bus::Nats(Box::new(nats))
        }
    };

    let registry = definitions::load(&store, &config.sagas_dir).await?;
    let admission = Arc::new(crate::admission::Admission::new(config.admission));
    let runtime = Runtime::new(store.clone(), bus.clone(), registry, config.idempotency_ttl, admission);
    let timers = tokio::spawn(runtime.clone().run_timers(config.timer_interval(), stop_intake.clone()));
    let jobs = tokio::spawn(crate::jobs::run(runtime.clone(), store.clone(), stop_intake.clone()));
    let retention = tokio::spawn(crate::retention::run(store.clone(), finished_statuses(runtime.registry()), config.history.retention, stop_intake.clone()));
    if let Some(finishes) = bus.finishes().await {
        tokio::spawn(hear_finishes(runtime.clone(), finishes, stop_intake.clone()));
    }
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(store::run_relay(store.clone(), bus.clone(), stop_relay.clone()));

    let listener = tokio::net::TcpListener::bind((config.bind, config.port)).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!("port {} on {} is already in use; set PORT (or --port) to a free one", config.port, config.bind),
        _ => anyhow::anyhow!("cannot listen on {}:{}: {e}", config.bind, config.port),
    })?;
    let addr = listener.local_addr()?;
    let app = api::router(AppState {
        runtime: runtime.clone(),
        store: store.clone(),
        bus: bus.clone(),
        telemetry,
        max_body_bytes: config.max_body_bytes,
        trace_url: config.trace_url.clone(),
        stopping: stop_intake.clone(),
        tokens: Arc::new(tokens),
    });
    let server = tokio::spawn(crate::serve::serve(listener, app, limits, stop_intake.clone()));
    tracing::info!(%addr, max_connections = limits.max_connections, "listening");
    Ok(Running {
        addr,
        store,
        bus,
        runtime,
        stop_intake,
        stop_relay,
        server,
        timers,
        jobs,
        relay,
        retention,
        participants: participant_tasks,
        participants_pool,
        locks: Vec::new(),
    })
}

/// Each definition's statuses of its terminal states, for retention.
fn finished_statuses(registry: &sagas::Registry) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> =
        registry.iter().flat_map(|def| def.states.values().filter(|s| s.terminal).map(|s| (def.name.clone(), s.status.clone())).collect::<Vec<_>>()).collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

/// Wakes this replica's waiting reads for the sagas other replicas finish
/// (`crate::bus::FINISHED_SUBJECT`; this replica's own come back too, and
/// wake no one twice).
async fn hear_finishes(runtime: Runtime, mut finishes: async_nats::Subscriber, stop: CancellationToken) {
    use futures::StreamExt;
    loop {
        tokio::select! {
            message = finishes.next() => match message {
                Some(message) => match std::str::from_utf8(&message.payload).ok().and_then(|text| uuid::Uuid::parse_str(text).ok()) {
                    Some(id) => runtime.finished_elsewhere(id),
                    None => tracing::debug!(subject = %message.subject, "unreadable finish announcement ignored"),
                },
                None => return,
            },
            () = stop.cancelled() => return,
        }
    }
}

/// In embedded mode, takes the store's SQLite file for this process, for
/// as long as the returned lock lives; another process on it is refused
/// with the file's name. The caller takes it before it opens the file
/// (the `eso` binary also moves participants' records out of it first) and
/// hands it to [`Running::hold`]. `None` on Postgres, where replicas share
/// the database by design.
pub fn lock_store(config: &Config) -> anyhow::Result<Option<db::FileLock>> {
    db::lock_sqlite(&config.database_url()).map_err(|e| anyhow::anyhow!("{e}; stop it, or set ESO_SQLITE_PATH to another file"))
}

/// The configured store, migrated, with the read models of the shipped
/// sagas' adapters (the order saga's `orders`).
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let (pool, backend) = db::connect(&config.database_url(), config.db_pool).await?;
    crate::migrations::run(&pool, backend).await?;
    // On SQLite the outbox relay holds one reader for itself; four serve the API.
    let readers = db::readers(&config.database_url(), &pool, backend, 5).await?;
    let committer = db::committer(&config.database_url(), &pool, backend).await?;
    Ok(Store::new(pool, readers, committer, backend, vec![Arc::new(crate::orders::OrderProjection::new(backend))], config.commit_gather))
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Keeps file locks until [`Running::stop`] has closed every pool.
    pub fn hold(&mut self, locks: impl IntoIterator<Item = db::FileLock>) {
        self.locks.extend(locks);
    }

    /// Graceful stop: no new requests or timers, finish the command round
    /// trips in flight, publish every committed event, then return.
    pub async fn stop(self) {
        self.stop_intake.cancel();
        // A client trickling a body, or not reading its answer, must not
        // hold the stop past the drain below (and the pod's grace period).
        let abort = self.server.abort_handle();
        if tokio::time::timeout(SERVER_DRAIN, self.server).await.is_err() {
            tracing::warn!("connections still open at shutdown; closed");
            abort.abort();
        }
        let _ = self.timers.await;
        let _ = self.jobs.await;
        let _ = self.retention.await;
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
        drop(self.locks);
        tracing::info!("eso stopped");
    }
}
