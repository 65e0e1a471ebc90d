//! Running a participant as its own process: the NATS queue-group
//! responder of the protocol crate plus a small HTTP server for health
//! checks and metrics.

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

/// The whole life of a participant binary: configuration from the
/// environment, migrations, health server, NATS responder, clean shutdown.
pub async fn run_binary(service: &'static str, make: fn(sqlx::AnyPool, db::Backend) -> Arc<dyn Participant>) -> anyhow::Result<()> {
    let telemetry = Arc::new(observability::init(service)?);
    let result = run(telemetry.clone(), make).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "stopped");
    }
    telemetry.shutdown();
    result
}

async fn run(telemetry: Arc<observability::Telemetry>, make: fn(sqlx::AnyPool, db::Backend) -> Arc<dyn Participant>) -> anyhow::Result<()> {
    let database_url = std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("DATABASE_URL must be set (postgres://…)"))?;
    let nats_url = std::env::var("NATS_URL").map_err(|_| anyhow::anyhow!("NATS_URL must be set (nats://…)"))?;
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|_| anyhow::anyhow!("PORT must be a port number, not {p:?}"))?,
        Err(_) => 8080,
    };
    let pool_size: u32 = match std::env::var("ESO_DB_POOL") {
        Ok(n) => n.parse().map_err(|_| anyhow::anyhow!("ESO_DB_POOL must be a number, not {n:?}"))?,
        Err(_) => 8,
    };
    let (pool, backend) = db::connect(&database_url, pool_size).await?;
    migrations::run(&pool, backend).await?;
    let client = async_nats::ConnectOptions::new().name("eso-participant").retry_on_initial_connect().connect(&nats_url).await?;
    let participant = make(pool.clone(), backend);
    tracing::info!(participant = participant.name(), database = %db::redact(&database_url), nats = %nats_url, port, "starting");

    let health = Health { pool, client: client.clone(), telemetry };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(|State(h): State<Health>| async move { h.telemetry.render_metrics() }))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
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
