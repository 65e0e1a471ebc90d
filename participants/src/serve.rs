//! Running a participant as its own process: the NATS queue-group
//! responder of the protocol crate plus a small HTTP server for health
//! checks and metrics.

use std::net::IpAddr;
use std::sync::Arc;

use async_nats::Client;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use protocol::{Participant, serve_nats};

use crate::migrations;

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[derive(Clone)]
struct Health {
    pool: sqlx::AnyPool,
    client: Client,
    telemetry: Arc<observability::Telemetry>,
}

/// A participant process's configuration: flags or the environment, read
/// once (`--help` lists them).
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Port of /healthz, /readyz and /metrics [default: the participant's
    /// own: payment 8081, delivery 8082, trip-agency 8083, so several run
    /// side by side on one machine].
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
    /// Address to listen on (containers set 0.0.0.0).
    #[arg(long, env = "BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Where the participant keeps its records: postgres://…
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// NATS, where the commands come from: nats://…
    #[arg(long, env = "NATS_URL")]
    pub nats_url: String,
    /// Database connections.
    #[arg(long, env = "ESO_DB_POOL", default_value_t = 8)]
    pub db_pool: u32,
}

/// A participant, how to build it, and the port it takes unless told otherwise.
pub struct Service {
    /// Its name in logs and traces (`eso-payment`).
    pub name: &'static str,
    pub default_port: u16,
    pub make: fn(sqlx::AnyPool, db::Backend) -> Arc<dyn Participant>,
}

/// The participants eso ships, each with its own default port.
pub const PAYMENT: Service = Service { name: "eso-payment", default_port: 8081, make: |pool, backend| Arc::new(crate::payment::Payment::new(pool, backend)) };
pub const DELIVERY: Service =
    Service { name: "eso-delivery", default_port: 8082, make: |pool, backend| Arc::new(crate::delivery::Delivery::new(pool, backend)) };
pub const TRIP_AGENCY: Service =
    Service { name: "eso-trip-agency", default_port: 8083, make: |pool, backend| Arc::new(crate::trip::TripAgency::new(pool, backend)) };

/// The whole life of a participant process: migrations, health server,
/// NATS responder, clean shutdown. An error is the caller's to report.
pub async fn run_binary(config: Config, service: Service) -> anyhow::Result<()> {
    let telemetry = Arc::new(observability::init(service.name)?);
    let result = run(config, &service, telemetry.clone()).await;
    telemetry.shutdown();
    result
}

/// Listens on `bind:port`, or says in one line which variable frees it.
pub async fn listen(bind: IpAddr, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((bind, port)).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!("port {port} on {bind} is already in use; set PORT (or --port) to a free one"),
        _ => anyhow::anyhow!("cannot listen on {bind}:{port}: {e}"),
    })
}

async fn run(config: Config, service: &Service, telemetry: Arc<observability::Telemetry>) -> anyhow::Result<()> {
    let Config { port, bind, database_url, nats_url, db_pool: pool_size } = config;
    let port = port.unwrap_or(service.default_port);
    // Bound first: a taken port is found before anything connects.
    let listener = listen(bind, port).await?;
    let (pool, backend) = db::connect(&database_url, pool_size).await?;
    migrations::run(&pool, backend).await?;
    let client = async_nats::ConnectOptions::new().name("eso-participant").retry_on_initial_connect().connect(&nats_url).await?;
    let participant = (service.make)(pool.clone(), backend);
    tracing::info!(participant = participant.name(), database = %db::redact(&database_url), nats = %db::redact(&nats_url), port, "starting");

    let health = Health { pool, client: client.clone(), telemetry };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(|State(h): State<Health>| async move { h.telemetry.render_metrics() }))
        .with_state(health);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(async move {
        let mut stop = stop_rx.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    serve_nats(client, participant, shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    let _ = http.await;
    Ok(())
}

async fn ready(State(h): State<Health>) -> (StatusCode, &'static str) {
    let db = sqlx::query("SELECT 1").execute(&h.pool).await.is_ok();
    let nats = h.client.connection_state() == async_nats::connection::State::Connected;
    match (db, nats) {
        (true, true) => (StatusCode::OK, "ready"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
        (_, false) => (StatusCode::SERVICE_UNAVAILABLE, "nats unreachable"),
    }
}

/// `main` of a participant binary: its configuration from flags and the
/// environment, then [`run_binary`]; an error is one line on stderr.
pub fn main_of(service: Service) -> std::process::ExitCode {
    use clap::Parser;
    #[derive(Parser)]
    #[command(about = "an eso participant: answers commands over NATS (see docs/protocol.md)")]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }
    let config = Cli::parse().config;
    let name = service.name;
    let result = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run_binary(config, service)),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
