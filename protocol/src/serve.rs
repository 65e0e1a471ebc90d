//! Answering a participant's commands over NATS in a queue group, so any
//! number of replicas share the load. Used by the participant binaries and
//! by the orchestrator for participants it runs in its own process.

use std::sync::Arc;

use async_nats::{Client, HeaderMap, Message};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::{CommandMessage, ErrorReply, HEADER_COMMAND_ID, HEADER_SAGA_ID, Participant};

/// Commands handled at once per process; more wait in the subscription.
const MAX_IN_FLIGHT: usize = 512;

/// Answers `participant`'s subjects until `shutdown` resolves, then stops
/// taking messages and finishes the ones in hand.
pub async fn serve_nats(client: Client, participant: Arc<dyn Participant>, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
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
        match participant.handle(&subject, command).await {
            Ok(reply) => {
                span.record("outcome", reply.outcome.as_str());
                tracing::info!(outcome = %reply.outcome, "answered");
                metrics::counter!("eso_participant_commands_total", "participant" => participant.name(), "outcome" => reply.outcome.clone()).increment(1);
                serde_json::to_vec(&reply).unwrap_or_else(|e| {
                    // Never an empty message: the orchestrator would wait
                    // out its timeout not knowing why.
                    tracing::error!(error = %e, "the reply does not serialise; answering with an error instead");
                    metrics::counter!("eso_serialization_errors_total", "what" => "reply").increment(1);
                    error_reply(format!("the participant's reply does not serialise: {e}"))
                })
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
    // A struct of one string always serialises; the literal is for the
    // impossible case, so the message is never empty.
    serde_json::to_vec(&ErrorReply { error }).unwrap_or_else(|_| br#"{"error":"unreadable error"}"#.to_vec())
}
