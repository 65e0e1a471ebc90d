//! The trip agency (`trip.flight.book`, `trip.hotel.book`,
//! `trip.flight.cancel`): the participant of the shipped trip saga, so that
//! `POST /sagas/trip` runs end to end with nothing but `cargo run`.
//!
//! Rules, for trying the saga's paths: a flight to `Atlantis` is full, a
//! hotel for more than 14 nights is full, everything else is booked. Like
//! the payment participant it records each first answer by command id and
//! answers repeats with it, and a cancellation that arrives before its
//! booking voids it, so a late booking is answered `full` instead of
//! holding a seat nobody wants. `participants/examples/trip_agency.rs` is
//! the same agency written against the raw protocol only.

use db::Backend;
use db::Column::{BigInt, Text};
use db::now_us;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use sqlx::AnyPool;

use crate::record::Recorder;
use crate::{CommandMessage, Error, Participant, ReplyMessage};

pub const BOOK_FLIGHT: &str = "trip.flight.book";
pub const BOOK_HOTEL: &str = "trip.hotel.book";
pub const CANCEL_FLIGHT: &str = "trip.flight.cancel";

/// Longest stay the agency's hotels take.
pub const MAX_NIGHTS: i64 = 14;

pub struct TripAgency {
    pool: AnyPool,
    bookings: Recorder,
}

impl TripAgency {
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        let columns = [("command_id", Text), ("trip_id", Text), ("kind", Text), ("outcome", Text), ("cancelled", BigInt)];
        let bookings = Recorder::spawn(pool.clone(), backend, "trip_bookings", &columns);
        TripAgency { pool, bookings }
    }

    async fn book(&self, kind: &str, outcome: &str, command: &CommandMessage) -> Result<ReplyMessage, Error> {
        let id = command.command_id.to_string();
        let mut row = Map::new();
        row.insert("command_id".into(), id.clone().into());
        row.insert("trip_id".into(), command.saga_id.to_string().into());
        row.insert("kind".into(), kind.into());
        row.insert("outcome".into(), outcome.into());
        row.insert("cancelled".into(), 0.into());
        // A repeat, or a booking cancelled before it arrived, gets what was recorded first.
        let recorded = self.bookings.record(row).await?;
        let outcome = if recorded == "voided" { "full" } else { recorded.as_str() };
        Ok(ReplyMessage { outcome: outcome.into(), data: json!({ format!("{kind}_id"): id }) })
    }

    async fn cancel(&self, command: &CommandMessage) -> Result<ReplyMessage, Error> {
        let booking = command
            .payload
            .pointer("/compensates/command_id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::BadCommand("cancellation without compensates.command_id".into()))?
            .to_string();
        let now = now_us();
        let mut tx = self.pool.begin().await.map_err(Error::failed)?;
        sqlx::query(
            "INSERT INTO trip_bookings (command_id, trip_id, kind, outcome, cancelled, created_at) VALUES ($1, $2, 'flight', 'voided', 1, $3) \
             ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(&booking)
        .bind(command.saga_id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(Error::failed)?;
        sqlx::query("UPDATE trip_bookings SET cancelled = 1 WHERE command_id = $1").bind(&booking).execute(&mut *tx).await.map_err(Error::failed)?;
        tx.commit().await.map_err(Error::failed)?;
        Ok(ReplyMessage { outcome: "cancelled".into(), data: json!({ "flight_id": booking }) })
    }
}

/// The flight rule.
pub fn flight(to: &str) -> &'static str {
    if to.trim().eq_ignore_ascii_case("atlantis") { "full" } else { "booked" }
}

/// The hotel rule.
pub fn hotel(nights: i64) -> &'static str {
    if nights > MAX_NIGHTS { "full" } else { "booked" }
}

impl Participant for TripAgency {
    fn name(&self) -> &'static str {
        "trip-agency"
    }

    fn subjects(&self) -> &'static [&'static str] {
        &[BOOK_FLIGHT, BOOK_HOTEL, CANCEL_FLIGHT]
    }

    fn handle<'a>(&'a self, subject: &'a str, command: CommandMessage) -> BoxFuture<'a, Result<ReplyMessage, Error>> {
        async move {
            match subject {
                BOOK_FLIGHT => self.book("flight", flight(command.field("to")?), &command).await,
                BOOK_HOTEL => {
                    let nights = command
                        .payload
                        .get("nights")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| Error::BadCommand("payload field `nights` is missing or not an integer".into()))?;
                    self.book("hotel", hotel(nights), &command).await
                }
                CANCEL_FLIGHT => self.cancel(&command).await,
                other => Err(Error::UnknownSubject(other.to_string())),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::{flight, hotel};

    #[test]
    fn the_agency_rules() {
        assert_eq!(flight("Lisbon"), "booked");
        assert_eq!(flight(" atlantis "), "full");
        assert_eq!(hotel(14), "booked");
        assert_eq!(hotel(15), "full");
    }
}
