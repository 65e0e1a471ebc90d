//! The trip saga's participant written against the raw protocol
//! (docs/protocol.md), with nothing of eso's: a NATS client and JSON
//! values. Any language with a NATS client can do the same.
//!
//!     NATS_URL=nats://127.0.0.1:4222 cargo run -p participants --example trip_agency
//!
//! It answers `trip.flight.book`, `trip.hotel.book` and `trip.flight.cancel`
//! in the queue group `eso-trip-agency` (start as many as you like; the
//! group is the one `eso participant trip-agency` joins, so the two never
//! both answer one command). Rules: a
//! flight to Atlantis is full, a hotel for more than 14 nights is full,
//! anything else is booked.
//!
//! The protocol's one duty is kept in memory here, to stay short: the first
//! answer to a command id is remembered and every repeat gets it. A real
//! participant records it durably before replying (as eso's own do), or a
//! restart would decide a retried command again.

use std::collections::HashMap;

use futures::StreamExt;
use serde_json::{Value, json};

const SUBJECTS: [&str; 3] = ["trip.flight.book", "trip.hotel.book", "trip.flight.cancel"];

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await?;
    println!("trip agency answering {} on {url}", SUBJECTS.join(", "));
    serve(client).await
}

/// Answers until the connection closes.
pub async fn serve(client: async_nats::Client) -> Result<(), async_nats::Error> {
    let mut subscriptions = Vec::new();
    for subject in SUBJECTS {
        subscriptions.push(client.queue_subscribe(subject, "eso-trip-agency".into()).await?);
    }
    let mut requests = futures::stream::select_all(subscriptions);
    let mut agency = Agency::default();
    while let Some(request) = requests.next().await {
        let reply = match serde_json::from_slice::<Value>(&request.payload) {
            Ok(command) => agency.answer(request.subject.as_str(), &command),
            Err(e) => json!({ "error": format!("not a JSON command: {e}") }),
        };
        let Some(inbox) = request.reply else { continue };
        // The ids travel back as headers too, for tools that read headers only.
        let mut headers = async_nats::HeaderMap::new();
        for name in ["Eso-Command-Id", "Eso-Saga-Id"] {
            if let Some(value) = request.headers.as_ref().and_then(|h| h.get(name)) {
                headers.insert(name, value.clone());
            }
        }
        client.publish_with_headers(inbox, headers, reply.to_string().into()).await?;
    }
    Ok(())
}

#[derive(Default)]
struct Agency {
    /// The first answer to each command id.
    answers: HashMap<String, Value>,
}

impl Agency {
    fn answer(&mut self, subject: &str, command: &Value) -> Value {
        let Some(id) = command["command_id"].as_str().map(str::to_string) else {
            return json!({ "error": "command without command_id" });
        };
        if let Some(first) = self.answers.get(&id) {
            return first.clone();
        }
        let payload = &command["payload"];
        let reply = match subject {
            "trip.flight.book" => match payload["to"].as_str() {
                Some(to) if to.eq_ignore_ascii_case("atlantis") => json!({ "outcome": "full" }),
                Some(_) => json!({ "outcome": "booked", "data": { "flight_id": id } }),
                None => return json!({ "error": "payload.to is missing" }),
            },
            "trip.hotel.book" => match payload["nights"].as_i64() {
                Some(nights) if nights > 14 => json!({ "outcome": "full" }),
                Some(_) => json!({ "outcome": "booked", "data": { "hotel_id": id } }),
                None => return json!({ "error": "payload.nights is missing" }),
            },
            "trip.flight.cancel" => {
                // Undo the booking the compensation names; one that has not
                // arrived yet is answered `full` when it does.
                let Some(booking) = payload["compensates"]["command_id"].as_str() else {
                    return json!({ "error": "payload.compensates.command_id is missing" });
                };
                self.answers.entry(booking.to_string()).or_insert_with(|| json!({ "outcome": "full" }));
                json!({ "outcome": "cancelled", "data": { "flight_id": booking } })
            }
            other => return json!({ "error": format!("no such subject here: {other}") }),
        };
        self.answers.insert(id, reply.clone());
        reply
    }
}
