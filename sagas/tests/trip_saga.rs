//! The trip saga, path by path: given a trip, when the airline and the
//! hotel answer (or do not), then these events are recorded and the trip
//! ends in this status.

mod common;

use common::{Run, trip, trip_data};
use sagas::{Ignored, Input};
use serde_json::json;

#[test]
fn a_trip_books_the_flight_then_the_hotel() {
    let mut run = Run::trip("Ada");
    assert_eq!(run.saga.status, "booking");
    assert_eq!(run.subjects(), ["trip.flight.book"]);
    assert_eq!(run.reply_with("booked", json!({ "flight_id": "KL1234" })), ["flight_booked"]);
    assert_eq!(run.saga.status, "booking", "still booking: the hotel is next");
    assert_eq!(run.subjects(), ["trip.flight.book", "trip.hotel.book"]);
    assert_eq!(run.reply("booked"), ["hotel_booked", "trip_booked"]);
    assert_eq!(run.types(), ["trip_requested", "flight_booked", "hotel_booked", "trip_booked"]);
    assert_eq!((run.saga.status.as_str(), run.saga.terminal), ("booked", true));
    assert_eq!(run.saga.deadline(), None, "a finished saga has no timer");
    run.assert_replays();
}

#[test]
fn the_commands_carry_the_trip_fields() {
    let mut run = Run::trip("Ada");
    let flight = &run.sent[0].payload;
    assert_eq!((&flight["traveller"], &flight["from"], &flight["to"], &flight["date"]), (&json!("Ada"), &json!("AMS"), &json!("LIS"), &json!("2025-07-01")));
    assert_eq!(flight["saga_id"], run.saga.id.to_string());
    assert_eq!(run.sent[0].timeout_ms, 2000);
    run.reply_with("booked", json!({ "flight_id": "KL1234" }));
    let hotel = &run.sent[1].payload;
    assert_eq!((&hotel["to"], &hotel["nights"]), (&json!("LIS"), &json!(3)));
    assert_eq!(hotel["flight.flight_id"], "KL1234", "the flight's reply reaches the hotel");
}

#[test]
fn a_trip_without_a_date_leaves_it_out_of_the_commands() {
    let mut data = trip_data("Ada");
    data.remove("date");
    let run = Run::start(trip(), data);
    assert!(run.sent[0].payload.get("date").is_none());
}

#[test]
fn a_full_flight_cancels_the_trip_with_nothing_to_undo() {
    let mut run = Run::trip("Ada");
    assert_eq!(run.reply("full"), ["flight_full", "trip_cancelled"]);
    assert_eq!(run.types(), ["trip_requested", "flight_full", "trip_cancelled"]);
    assert_eq!((run.saga.status.as_str(), run.saga.terminal), ("cancelled", true));
    assert_eq!(run.subjects(), ["trip.flight.book"], "no hotel asked, no flight cancelled");
    run.assert_replays();
}

#[test]
fn a_full_hotel_cancels_the_flight_then_the_trip() {
    let mut run = Run::trip("Ada");
    let flight = run.pending_id();
    run.reply_with("booked", json!({ "flight_id": "KL1234" }));
    assert_eq!(run.reply("full"), ["hotel_full"]);
    assert_eq!((run.saga.state.as_str(), run.saga.status.as_str()), ("cancel_flight", "cancelling"));
    let cancel = run.sent.last().cloned().unwrap_or_else(|| panic!("nothing sent"));
    assert_eq!(cancel.subject, "trip.flight.cancel");
    assert_eq!(cancel.payload["compensates"], json!({ "state": "flight", "command_id": flight.to_string() }));
    assert_eq!(cancel.payload["flight.flight_id"], "KL1234");
    assert_eq!(run.reply("cancelled"), ["flight_cancelled", "trip_cancelled"]);
    assert_eq!(run.types(), ["trip_requested", "flight_booked", "hotel_full", "flight_cancelled", "trip_cancelled"]);
    assert_eq!((run.saga.status.as_str(), run.saga.terminal), ("cancelled", true));
    run.assert_replays();
}

#[test]
fn a_hotel_that_never_answers_is_retried_then_the_flight_is_cancelled() {
    let mut run = Run::trip("Ada");
    run.reply("booked");
    let hotel = run.pending_id();
    let started = run.now;
    let events = run.exhaust();
    assert_eq!(
        events,
        ["command_timed_out", "command_retried", "command_timed_out", "command_retried", "command_timed_out", "command_retried", "hotel_timed_out",]
    );
    let hotels: Vec<_> = run.sent.iter().filter(|c| c.subject == "trip.hotel.book").collect();
    assert_eq!(hotels.len(), 4, "first attempt and three retries");
    assert!(hotels.iter().all(|c| c.id == hotel), "a retry keeps the command id");
    // 4 attempts x 2 s timeout + backoff 200 + 400 + 800 ms
    assert_eq!(run.now.0 - started.0, 4 * 2000 + 200 + 400 + 800);
    assert_eq!((run.saga.state.as_str(), run.saga.status.as_str()), ("cancel_flight", "cancelling"));
    assert_eq!(run.reply("cancelled"), ["flight_cancelled", "trip_cancelled"]);
    assert_eq!(run.saga.status, "cancelled");
    run.assert_replays();
}

#[test]
fn a_flight_that_never_answers_is_cancelled_in_case_it_was_booked() {
    let mut run = Run::trip("Ada");
    assert_eq!(run.exhaust().last().map(String::as_str), Some("flight_timed_out"));
    assert_eq!(run.saga.state, "cancel_flight");
    assert!(!run.subjects().contains(&"trip.hotel.book"));
    run.reply("cancelled");
    assert_eq!(run.saga.status, "cancelled");
    run.assert_replays();
}

#[test]
fn a_flight_cancellation_that_never_succeeds_ends_failed() {
    let mut run = Run::trip("Ada");
    run.reply("booked");
    run.reply("full");
    let events = run.exhaust();
    assert_eq!(events.iter().filter(|e| *e == "command_retried").count(), 10);
    assert_eq!(events.last().map(String::as_str), Some("flight_cancel_failed"));
    assert_eq!((run.saga.state.as_str(), run.saga.status.as_str(), run.saga.terminal), ("cancel_failed", "failed", true));
    run.assert_replays();
}

#[test]
fn a_traveller_cancelling_while_the_hotel_is_booked_gets_the_flight_cancelled() {
    let mut run = Run::trip("Ada");
    let flight = run.pending_id();
    run.reply("booked");
    let hotel = run.pending_id();
    let moved = run.try_input(Input::Event { name: "cancel_requested".into(), data: json!({ "reason": "ill" }) });
    assert_eq!(moved, Ok(vec!["trip_cancel_requested".to_string()]));
    assert_eq!((run.saga.state.as_str(), run.saga.status.as_str()), ("cancel_flight", "cancelling"));
    assert_eq!(run.sent.last().map(|c| c.payload["compensates"]["command_id"].clone()), Some(json!(flight.to_string())));
    // The hotel's late answer no longer matters.
    let late = run.try_input(Input::Reply { command_id: hotel, outcome: "booked".into(), data: json!({}) });
    assert_eq!(late, Err(Ignored::StaleReply(hotel)));
    assert_eq!(run.reply("cancelled"), ["flight_cancelled", "trip_cancelled"]);
    assert_eq!(run.types(), ["trip_requested", "flight_booked", "trip_cancel_requested", "flight_cancelled", "trip_cancelled"]);
    assert_eq!(run.saga.status, "cancelled");
    run.assert_replays();
}

#[test]
fn a_traveller_cancelling_before_the_airline_answered_gets_the_flight_cancelled() {
    let mut run = Run::trip("Ada");
    let moved = run.try_input(Input::Event { name: "cancel_requested".into(), data: json!(null) });
    assert_eq!(moved, Ok(vec!["trip_cancel_requested".to_string()]));
    assert_eq!(run.saga.state, "cancel_flight");
    run.reply("cancelled");
    assert_eq!(run.saga.status, "cancelled");
}

#[test]
fn a_cancellation_already_under_way_takes_no_second_request() {
    let mut run = Run::trip("Ada");
    run.reply("booked");
    run.reply("full");
    let again = run.try_input(Input::Event { name: "cancel_requested".into(), data: json!(null) });
    assert!(matches!(again, Err(Ignored::UnknownEvent { .. })), "{again:?}");
}

#[test]
fn a_trip_with_bad_inputs_does_not_start() {
    let def = trip();
    let mut data = trip_data("Ada");
    data.insert("nights".into(), json!("three"));
    data.remove("traveller");
    data.insert("seat".into(), json!("12A"));
    let problems = def.check_inputs(&data).err().unwrap_or_default();
    assert_eq!(problems["nights"], ["must be an integer"]);
    assert_eq!(problems["traveller"], ["is required"]);
    assert_eq!(problems["seat"], ["is not an input of saga `trip`"]);
    let id = uuid::Uuid::from_u128(1);
    let start = sagas::step(&def, None, &Input::Start { id, data }, sagas::Millis(0));
    assert_eq!(start, Err(Ignored::MissingInputs(vec!["traveller".into()])));
}

#[test]
fn the_diagram_shows_the_compensation() {
    let diagram = sagas::graph::mermaid(&trip());
    for line in [
        "[*] --> flight: trip_requested",
        "flight --> hotel: booked / flight_booked",
        "hotel --> cancel_flight: full / hotel_full",
        "cancel_flight --> cancelled: cancelled / flight_cancelled, trip_cancelled",
        "class cancel_flight compensation",
    ] {
        assert!(diagram.contains(line), "missing `{line}` in\n{diagram}");
    }
}
