//! Running a participant as its own process: a NATS queue-group responder
//! (any number of replicas share the load) plus a small HTTP server for
//! health checks and metrics.

use std::sync::Arc;

use async_nats::{Client, HeaderMap, Message};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::protocol::{CommandMessage, ErrorReply, HEADER_COMMAND_ID, HEADER_SAGA_ID};
use crate::{Participant, db};

/// Commands handled at once per process; more wait in the subscription.
const MAX_IN_FLIGHT: usize = 512;

/// Answers `participant`'s subjects until `shutdown` resolves, then stops
/// taking messages and finishes the ones in hand.
pub async fn serve_nats(
    client: Client,
    participant: Arc<dyn Participant>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let queue = format!("eso-{}", participant.name());
    let mut subscriptions = Vec::new();
    for subject in participant.subjects() {
        subscriptions.push(client.queue_subscribe(*subject, queue.clone()).await?);
    }
    let mut messages = futures::stream::select_all(subscriptions);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    tracing::info!(participant = participant.name(), subjects = ?participant.subjects(), %queue, "serving commands");
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            m = messages.next() => match m { Some(m) => m, None => break },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let client = client.clone();
        let participant = participant.clone();
        tokio::spawn(async move {
            answer(&client, participant.as_ref(), message).await;
            drop(permit);
        });
    }
    // Leave the queue group first, so NATS routes new commands to the other
    // replicas; then finish the commands in hand.
    drop(messages);
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
    // With NATS down a flush would wait for it forever; replies not flushed
    // by then are lost like any reply in flight, and the orchestrator retries.
    if tokio::time::timeout(std::time::Duration::from_secs(5), client.flush()).await.is_err() {
        tracing::warn!("NATS unreachable at shutdown; unflushed replies will be retried by the orchestrator");
    }
    Ok(())
}

/// Handles one request and publishes the reply.
pub async fn answer(client: &Client, participant: &dyn Participant, message: Message) {
    let subject = message.subject.to_string();
    let span = tracing::info_span!(
        "command",
        otel.name = %format!("{subject} process"),
        otel.kind = "server",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %subject,
        participant = participant.name(),
        command.id = tracing::field::Empty,
        saga.id = tracing::field::Empty,
        order.id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    observability::propagation::set_parent_from_nats(&span, message.headers.as_ref());
    let reply = async {
        let command: CommandMessage = match serde_json::from_slice(&message.payload) {
            Ok(c) => c,
            Err(e) => return error_reply(format!("bad command: {e}")),
        };
        let span = tracing::Span::current();
        span.record("command.id", tracing::field::display(command.command_id));
        span.record("saga.id", tracing::field::display(command.saga_id));
        span.record("order.id", tracing::field::display(command.saga_id));
        match participant.handle(&subject, command).await {
            Ok(reply) => {
                span.record("outcome", reply.outcome.as_str());
                tracing::info!(outcome = %reply.outcome, "answered");
                metrics::counter!("eso_participant_commands_total", "participant" => participant.name(), "outcome" => reply.outcome.clone()).increment(1);
                serde_json::to_vec(&reply).unwrap_or_default()
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not answer; the orchestrator will retry");
                metrics::counter!("eso_participant_errors_total", "participant" => participant.name()).increment(1);
                error_reply(e.to_string())
            }
        }
    }
    .instrument(span.clone())
    .await;
    if let Some(reply_to) = message.reply {
        let mut headers = HeaderMap::new();
        observability::propagation::inject_nats(&span, &mut headers);
        if let Some(h) = &message.headers {
            for name in [HEADER_COMMAND_ID, HEADER_SAGA_ID] {
                if let Some(v) = h.get(name) {
                    headers.insert(name, v.clone());
                }
            }
        }
        if let Err(e) = client.publish_with_headers(reply_to, headers, reply.into()).await {
            tracing::warn!(error = %e, "reply not sent; the orchestrator will retry");
        }
    }
}

fn error_reply(error: String) -> Vec<u8> {
    serde_json::to_vec(&ErrorReply { error }).unwrap_or_default()
}

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
pub async fn run_binary(
    service: &'static str,
    make: fn(sqlx::AnyPool, db::Backend) -> Arc<dyn Participant>,
) -> anyhow::Result<()> {
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
    db::migrate(&pool, backend).await?;
    let client = async_nats::ConnectOptions::new()
        .name("eso-participant")
        .retry_on_initial_connect()
        .connect(&nats_url)
        .await?;
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
