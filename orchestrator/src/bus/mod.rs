//! Messaging: commands as request-reply, events as publishes. Either NATS
//! (JetStream for events) or an in-process bus with the same semantics, so
//! the runtime does not know which one it runs on.

mod local;
mod nats;

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;

pub use local::LocalBus;
pub use nats::NatsBus;

/// The JetStream stream that holds every event.
pub const EVENT_STREAM: &str = "ESO_EVENTS";
pub const EVENT_SUBJECTS: &str = "eso.events.>";
/// Every published event says where the relay's cursor stood at it
/// (`tx/position`), so a relay starting up finds how far the stream
/// really got, whatever its stored cursor says.
pub const RELAY_CURSOR_HEADER: &str = "Eso-Relay-Cursor";
/// Core NATS (not stored): a replica that committed a saga's terminal step
/// says so here, with the saga id as the body, so that requests waiting
/// on other replicas (`?wait=`) answer at once instead of re-reading the
/// store in case. Lost on a reconnect, which the rare re-read covers.
pub const FINISHED_SUBJECT: &str = "eso.finished";

/// The end of the event stream: its last sequence, and the relay cursor
/// and event id (`Nats-Msg-Id`) of its last event that carries a cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamTail {
    pub sequence: u64,
    pub cursor: Option<String>,
    pub event_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("no participant listens on {0}")]
    NoResponders(String),
    #[error("{0}")]
    Other(String),
}

/// A publish that failed after the first `acked` events were stored.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {acked} acknowledged)")]
pub struct PublishError {
    pub acked: usize,
    pub error: BusError,
}

/// An event on its way to the event stream.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    pub subject: String,
    /// De-duplicates republishing after a crash (`Nats-Msg-Id`).
    pub message_id: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// The producer span, ended when the stream acknowledged the event.
    pub span: tracing::Span,
}

#[derive(Clone)]
pub enum Bus {
    Nats(Box<NatsBus>),
    Local(LocalBus),
}

impl Bus {
    /// Sends a command and waits for its reply.
    pub async fn request(&self, subject: &str, headers: HeaderMap, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        match self {
            Bus::Nats(b) => b.request(subject, headers, payload, timeout).await,
            Bus::Local(b) => b.request(subject, headers, payload, timeout).await,
        }
    }

    /// Publishes events in order and returns once every one is stored
    /// (acknowledged by JetStream). On failure, says how many of the first
    /// events were acknowledged.
    ///
    /// With `after`, the stream must end at that sequence: JetStream refuses
    /// the first event that would not follow it (and so every one after),
    /// so a batch can never land twice, nor beside another relay's.
    pub async fn publish(&self, events: Vec<OutgoingEvent>, after: Option<u64>) -> Result<(), PublishError> {
        match self {
            Bus::Nats(b) => b.publish(events, after).await,
            Bus::Local(b) => b.publish(events).map_err(|error| PublishError { acked: 0, error }),
        }
    }

    /// Where the event stream ends, read from the server. `None` on the
    /// in-process bus, which keeps no stream: nothing to resume after.
    pub async fn stream_tail(&self) -> Result<Option<StreamTail>, BusError> {
        match self {
            Bus::Nats(b) => b.stream_tail().await.map(Some),
            Bus::Local(_) => Ok(None),
        }
    }

    /// Tells the other replicas that saga `id` has finished (see
    /// [`FINISHED_SUBJECT`]); nothing on the in-process bus, whose one
    /// process already knows. Best effort: the store holds the outcome.
    pub async fn announce_finished(&self, id: uuid::Uuid) {
        if let Bus::Nats(b) = self {
            b.announce_finished(id).await;
        }
    }

    /// The finishes other replicas announce, or `None` on the in-process bus.
    pub async fn finishes(&self) -> Option<async_nats::Subscriber> {
        match self {
            Bus::Nats(b) => b.finishes().await,
            Bus::Local(_) => None,
        }
    }

    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Nats(b) => b.is_connected(),
            Bus::Local(_) => true,
        }
    }

    pub fn system(&self) -> &'static str {
        match self {
            Bus::Nats(_) => "nats",
            Bus::Local(_) => "in-process",
        }
    }
}
