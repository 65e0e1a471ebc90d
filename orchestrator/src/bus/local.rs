//! The in-process bus: requests call the participant's handler directly,
//! published events go to a broadcast channel. Used when `NATS_URL` is
//! unset, so `cargo run` needs no server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use protocol::{CommandMessage, ErrorReply, Participant};
use tokio::sync::broadcast;
use tracing::Instrument;

use super::{BusError, OutgoingEvent};

#[derive(Clone)]
pub struct LocalBus {
    handlers: Arc<HashMap<&'static str, Arc<dyn Participant>>>,
    events: broadcast::Sender<OutgoingEvent>,
}

impl LocalBus {
    pub fn new(participants: Vec<Arc<dyn Participant>>) -> Self {
        let mut handlers = HashMap::new();
        for p in participants {
            for subject in p.subjects() {
                handlers.insert(*subject, p.clone());
            }
        }
        let (events, _) = broadcast::channel(4096);
        LocalBus { handlers: Arc::new(handlers), events }
    }

    /// Every event published from now on (for tests and tools).
    pub fn subscribe(&self) -> broadcast::Receiver<OutgoingEvent> {
        self.events.subscribe()
    }

    pub(super) async fn request(&self, subject: &str, headers: HeaderMap, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        let participant = self.handlers.get(subject).ok_or_else(|| BusError::NoResponders(subject.to_string()))?;
        // Serialise as NATS would, so both buses exercise the same protocol.
        let command: CommandMessage = serde_json::from_slice(&payload).map_err(|e| BusError::Other(format!("bad command: {e}")))?;
        let span = tracing::info_span!(
            "command",
            otel.name = %format!("{subject} process"),
            otel.kind = "server",
            messaging.system = "in-process",
            messaging.destination.name = %subject,
            participant = participant.name(),
            command.id = %command.command_id,
            saga.id = %command.saga_id,
        );
        observability::propagation::set_parent_from_nats(&span, Some(&headers));
        let handled = tokio::time::timeout(timeout, participant.handle(subject, command).instrument(span)).await;
        let reply = match handled {
            Err(_) => return Err(BusError::Timeout(timeout)),
            Ok(Ok(reply)) => serde_json::to_vec(&reply),
            Ok(Err(e)) => serde_json::to_vec(&ErrorReply { error: e.to_string() }),
        };
        reply.map(Bytes::from).map_err(|e| BusError::Other(e.to_string()))
    }

    pub(super) fn publish(&self, events: Vec<OutgoingEvent>) -> Result<(), BusError> {
        for event in events {
            // No subscribers is fine: nobody is listening in-process.
            let _ = self.events.send(event);
        }
        Ok(())
    }
}
