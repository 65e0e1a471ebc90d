//! NATS: core request-reply for commands (replies come back to the replica
//! that asked), JetStream for events (stored, de-duplicated by message id).

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{HeaderMap, client::RequestErrorKind};
use bytes::Bytes;

use super::{BusError, EVENT_STREAM, EVENT_SUBJECTS, FINISHED_SUBJECT, OutgoingEvent, PublishError, RELAY_CURSOR_HEADER, StreamTail};

/// How far back from the stream's end to look for an event that carries
/// the relay's cursor (messages without it are not the relay's: another
/// publisher's, or an older eso's).
const TAIL_SCAN: u64 = 64;

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
}

impl NatsBus {
    /// Connects (retrying until NATS is up) and makes sure the event
    /// stream exists with the configured limits and replicas: a stream
    /// created by an earlier start (or by hand) is updated to them.
    pub async fn connect(url: &str, history: &crate::retention::History) -> anyhow::Result<NatsBus> {
        let client = async_nats::ConnectOptions::new().name("eso-orchestrator").retry_on_initial_connect().connect(url).await?;
        let jetstream = jetstream::new(client.clone());
        let wanted = jetstream::stream::Config {
            name: EVENT_STREAM.to_string(),
            subjects: vec![EVENT_SUBJECTS.to_string()],
            // A second guard only: the relay resumes after the stream's
            // last event and publishes with an expected last sequence.
            duplicate_window: Duration::from_secs(120),
            // Zero and -1 are JetStream's "no limit".
            max_age: history.events_max_age.unwrap_or(Duration::ZERO),
            max_bytes: history.events_max_bytes.and_then(|b| i64::try_from(b).ok()).unwrap_or(-1),
            num_replicas: usize::from(history.events_replicas),
            ..Default::default()
        };
        let replicas = wanted.num_replicas;
        let cannot = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "cannot set up JetStream stream {EVENT_STREAM} with {replicas} replica(s) (is JetStream enabled? run nats-server with -js; \
                 more than one replica needs a NATS cluster of that many servers, see ESO_EVENTS_REPLICAS): {e}"
            )
        };
        let stream = jetstream.get_or_create_stream(wanted.clone()).await.map_err(|e| cannot(&e))?;
        let have = &stream.cached_info().config;
        if (have.max_age, have.max_bytes, have.num_replicas) != (wanted.max_age, wanted.max_bytes, wanted.num_replicas) {
            tracing::info!(
                max_age = ?wanted.max_age, max_bytes = wanted.max_bytes, replicas = wanted.num_replicas,
                "updating the event stream's limits to the configured ones"
            );
            let mut update = have.clone();
            (update.max_age, update.max_bytes, update.num_replicas) = (wanted.max_age, wanted.max_bytes, wanted.num_replicas);
            jetstream.update_stream(update).await.map_err(|e| cannot(&e))?;
        }
        Ok(NatsBus { client, jetstream })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub(super) async fn request(&self, subject: &str, headers: HeaderMap, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        let request = async_nats::Request::new().headers(headers).payload(payload).timeout(Some(timeout));
        match self.client.send_request(subject.to_string(), request).await {
            Ok(message) => Ok(message.payload),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::TimedOut => BusError::Timeout(timeout),
                RequestErrorKind::NoResponders => BusError::NoResponders(subject.to_string()),
                _ => BusError::Other(e.to_string()),
            }),
        }
    }

    pub(super) async fn stream_tail(&self) -> Result<StreamTail, BusError> {
        let other = |e: &dyn std::fmt::Display| BusError::Other(format!("event stream {EVENT_STREAM}: {e}"));
        let stream = self.jetstream.get_stream(EVENT_STREAM).await.map_err(|e| other(&e))?;
        let info = stream.get_info().await.map_err(|e| other(&e))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut tail = StreamTail { sequence: last, cursor: None, event_id: None };
        if info.state.messages == 0 {
            return Ok(tail);
        }
        // Newest first; a deleted sequence (limits, an operator) is skipped.
        for sequence in (first.max(last.saturating_sub(TAIL_SCAN))..=last).rev() {
            match stream.get_raw_message(sequence).await {
                Ok(message) => {
                    if let Some(cursor) = message.headers.get(RELAY_CURSOR_HEADER) {
                        tail.cursor = Some(cursor.as_str().to_string());
                        tail.event_id = message.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|id| id.as_str().to_string());
                        break;
                    }
                }
                Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(other(&e)),
            }
        }
        Ok(tail)
    }

    pub(super) async fn publish(&self, events: Vec<OutgoingEvent>, after: Option<u64>) -> Result<(), PublishError> {
        // Send all, then wait for all acks: one round trip per batch, not per event.
        let mut acks = Vec::with_capacity(events.len());
        let mut spans = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            spans.push(event.span);
            // Headers first: `headers()` replaces the map `message_id()` writes into.
            let mut publish = PublishMessage::build().headers(event.headers).payload(event.payload).message_id(event.message_id);
            if let Some(after) = after {
                publish = publish.expected_last_sequence(after + i as u64);
            }
            match self.jetstream.send_publish(event.subject, publish).await {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    acks.clear();
                    return Err(PublishError { acked: 0, error: BusError::Other(e.to_string()) });
                }
            }
        }
        // Acks arrive in order for one stream; the acknowledged prefix is durable.
        for (acked, ack) in acks.into_iter().enumerate() {
            if let Err(e) = ack.await {
                return Err(PublishError { acked, error: BusError::Other(e.to_string()) });
            }
        }
        drop(spans);
        Ok(())
    }

    pub(super) async fn announce_finished(&self, id: uuid::Uuid) {
        // Queued in the client's buffer, not waited for: a finish no one
        // hears costs a waiting read one re-read.
        if let Err(e) = self.client.publish(FINISHED_SUBJECT, Bytes::from(id.to_string())).await {
            tracing::debug!(error = %e, saga.id = %id, "finish not announced");
        }
    }

    pub(super) async fn finishes(&self) -> Option<async_nats::Subscriber> {
        match self.client.subscribe(FINISHED_SUBJECT).await {
            Ok(subscriber) => Some(subscriber),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear other replicas' finishes; waiting reads re-read the store instead");
                None
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}
