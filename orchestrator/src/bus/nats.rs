//! NATS: core request-reply for commands (replies come back to the replica
//! that asked), JetStream for events (stored, de-duplicated by message id).

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{HeaderMap, client::RequestErrorKind};
use bytes::Bytes;

use super::{BusError, EVENT_STREAM, EVENT_SUBJECTS, OutgoingEvent, PublishError, RELAY_CURSOR_HEADER, StreamTail};

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
    /// Connects (retrying until NATS is up) and makes sure the event stream exists.
    pub async fn connect(url: &str) -> anyhow::Result<NatsBus> {
        let client = async_nats::ConnectOptions::new().name("eso-orchestrator").retry_on_initial_connect().connect(url).await?;
        let jetstream = jetstream::new(client.clone());
        jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: EVENT_STREAM.to_string(),
                subjects: vec![EVENT_SUBJECTS.to_string()],
                // A second guard only: the relay resumes after the stream's
                // last event and publishes with an expected last sequence.
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create JetStream stream {EVENT_STREAM} (is JetStream enabled? run nats-server with -js): {e}"))?;
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

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}
