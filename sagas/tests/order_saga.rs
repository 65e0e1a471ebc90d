//! The order saga, path by path: given an order, when the participants
//! answer (or do not), then these events are recorded and the order ends in
//! this status.

mod common;

use common::{Run, order};
use sagas::{Command, Event, Ignored, Input, Millis, Phase, Saga, step};
use serde_json::json;

#[test]
fn a_test_order_is_paid_then_delivered() {
    let mut run = Run::order("test top up e wallet");
    assert_eq!(run.saga.status, "created");
    assert_eq!(run.subjects(), ["eso.cmd.payment.process"]);
    assert_eq!(run.reply("confirmed"), ["payment_confirmed", "order_confirmed"]);
    assert_eq!(run.saga.status, "confirmed");
    assert_eq!(run.reply("delivered"), ["order_delivered"]);
    assert_eq!(run.types(), ["order_created", "payment_confirmed", "order_confirmed", "order_delivered"]);
    assert_eq!((run.saga.status.as_str(), run.saga.terminal), ("delivered", true));
    assert_eq!(run.subjects(), ["eso.cmd.payment.process", "eso.cmd.delivery.deliver"]);
    assert_eq!(run.saga.deadline(), None, "a finished saga has no timer");
    run.assert_replays();
}

#[test]
fn a_declined_payment_cancels_the_order() {
    let mut run = Run::order("xxx");
    assert_eq!(run.reply("declined"), ["payment_declined", "order_cancelled"]);
    assert_eq!(run.types(), ["order_created", "payment_declined", "order_cancelled"]);
    assert_eq!((run.saga.status.as_str(), run.saga.terminal), ("cancelled", true));
    assert_eq!(run.subjects(), ["eso.cmd.payment.process"], "nothing to deliver, nothing to refund");
    run.assert_replays();
}

#[test]
fn the_payment_command_carries_the_order_fields() {
    let run = Run::order("test");
    let payload = &run.sent[0].payload;
    assert_eq!(payload["amount"], "207.00");
    assert_eq!(payload["description"], "test");
    assert_eq!(payload["saga_id"], run.saga.id.to_string());
    assert!(payload.get("user_id").is_some() && payload.get("payee_id").is_some());
    assert_eq!(run.sent[0].timeout_ms, 2000);
}

#[test]
fn a_silent_payment_is_retried_with_the_same_id_and_backoff_then_refunded_and_cancelled() {
    let mut run = Run::order("test");
    let first_id = run.pending_id();
    let started = run.now;
    let events = run.exhaust();
    assert_eq!(
        events,
        ["command_timed_out", "command_retried", "command_timed_out", "command_retried", "command_timed_out", "command_retried", "payment_timed_out",]
    );
    let payments: Vec<_> = run.sent.iter().filter(|c| c.subject == "eso.cmd.payment.process").collect();
    assert_eq!(payments.len(), 4, "first attempt and three retries");
    assert!(payments.iter().all(|c| c.id == first_id), "a retry keeps the command id");
    assert_eq!(payments.iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(payments.iter().all(|c| c.payload == payments[0].payload && c.timeout_ms == 2000), "every attempt sends what the first did");
    // 4 attempts x 2 s timeout + backoff 200 + 400 + 800 ms
    assert_eq!(run.now.0 - started.0, 4 * 2000 + 200 + 400 + 800);

    assert_eq!(run.saga.state, "refund");
    assert_eq!(run.saga.status, "cancelling");
    let refund = run.sent.last().map(|c| c.payload.clone()).unwrap_or_default();
    assert_eq!(refund["compensates"], json!({ "state": "payment", "command_id": first_id.to_string() }));
    assert_eq!(run.reply("refunded"), ["payment_refunded", "order_cancelled"]);
    assert_eq!((run.saga.status.as_str(), run.saga.terminal), ("cancelled", true));
    run.assert_replays();
}

#[test]
fn a_failed_delivery_refunds_the_payment_then_cancels() {
    let mut run = Run::order("test");
    let payment_id = run.pending_id();
    run.reply_with("confirmed", json!({ "payment_id": "pay-1" }));
    assert_eq!(run.reply("failed"), ["delivery_failed"]);
    assert_eq!(run.subjects().last(), Some(&"eso.cmd.payment.refund"));
    let refund = &run.sent[run.sent.len() - 1];
    assert_eq!(refund.payload["compensates"]["command_id"], payment_id.to_string());
    assert_eq!(run.saga.data["payment"], json!({ "payment_id": "pay-1" }), "replies are kept under their state");
    assert_eq!(run.reply("refunded"), ["payment_refunded", "order_cancelled"]);
    assert_eq!(run.types(), ["order_created", "payment_confirmed", "order_confirmed", "delivery_failed", "payment_refunded", "order_cancelled"]);
    assert_eq!(run.saga.status, "cancelled");
    run.assert_replays();
}

#[test]
fn a_delivery_that_never_answers_is_refunded() {
    let mut run = Run::order("test");
    run.reply("confirmed");
    assert_eq!(run.exhaust().last().map(String::as_str), Some("delivery_timed_out"));
    assert_eq!(run.saga.state, "refund");
    run.reply("refunded");
    assert_eq!(run.saga.status, "cancelled");
    run.assert_replays();
}

#[test]
fn a_refund_that_never_succeeds_ends_in_refund_failed() {
    let mut run = Run::order("test");
    run.reply("confirmed");
    run.reply("failed");
    let events = run.exhaust();
    assert_eq!(events.iter().filter(|e| *e == "command_retried").count(), 10);
    assert_eq!(events.last().map(String::as_str), Some("refund_failed"));
    assert_eq!((run.saga.status.as_str(), run.saga.terminal), ("failed", true));
    run.assert_replays();
}

#[test]
fn a_duplicate_reply_is_ignored() {
    let mut run = Run::order("test");
    let id = run.pending_id();
    run.reply("confirmed");
    let again = run.try_input(Input::Reply { command_id: id, outcome: "confirmed".into(), data: json!({}) });
    assert_eq!(again, Err(Ignored::StaleReply(id)));
    assert_eq!(run.types(), ["order_created", "payment_confirmed", "order_confirmed"]);
}

#[test]
fn a_late_reply_for_a_step_already_left_is_ignored() {
    let mut run = Run::order("test");
    let payment = run.pending_id();
    run.reply("confirmed");
    run.reply("delivered");
    // Late "declined" from a slow payment replica after the order was delivered.
    let late = run.try_input(Input::Reply { command_id: payment, outcome: "declined".into(), data: json!({}) });
    assert!(matches!(late, Err(Ignored::Finished(_))));
    // And while still running: a payment reply arriving in the delivery step.
    let mut run = Run::order("test");
    let payment = run.pending_id();
    run.reply("confirmed");
    let late = run.try_input(Input::Reply { command_id: payment, outcome: "declined".into(), data: json!({}) });
    assert_eq!(late, Err(Ignored::StaleReply(payment)));
    assert_eq!(run.saga.state, "delivery");
}

#[test]
fn a_reply_arriving_during_backoff_is_accepted() {
    let mut run = Run::order("test");
    assert_eq!(run.timeout(), ["command_timed_out"]);
    assert_eq!(run.saga.pending.as_ref().map(|p| p.phase), Some(Phase::BackingOff));
    assert_eq!(run.reply("confirmed"), ["payment_confirmed", "order_confirmed"]);
    run.assert_replays();
}

#[test]
fn a_timer_that_fires_early_is_ignored() {
    let mut run = Run::order("test");
    let deadline = run.saga.deadline().unwrap_or_else(|| panic!("no deadline"));
    assert_eq!(run.try_input(Input::Deadline), Err(Ignored::NotDue { deadline, now: run.now }));
}

#[test]
fn an_unknown_outcome_is_ignored_and_left_to_the_timeout() {
    let mut run = Run::order("test");
    let command_id = run.pending_id();
    let r = run.try_input(Input::Reply { command_id, outcome: "maybe".into(), data: json!({}) });
    assert!(matches!(r, Err(Ignored::UnknownOutcome { .. })));
    assert_eq!(run.types(), ["order_created"]);
}

#[test]
fn a_finished_saga_ignores_everything() {
    let mut run = Run::order("xxx");
    run.reply("declined");
    for input in [Input::Deadline, Input::Event { name: "cancel".into(), data: json!(null) }] {
        assert!(matches!(run.try_input(input), Err(Ignored::Finished(_))));
    }
}

#[test]
fn a_saga_is_stepped_only_by_its_own_definition() {
    let mut run = Run::order("test");
    let mut other = order();
    other.version = 3;
    let r = sagas::step(&other, Some(&run.saga), &Input::Deadline, run.now);
    assert!(matches!(r, Err(Ignored::WrongDefinition { .. })));
    assert!(matches!(run.try_input(Input::Start { id: run.saga.id, data: Default::default() }), Err(Ignored::AlreadyStarted)));
}

#[test]
fn command_ids_differ_between_steps_and_sagas() {
    let mut a = Run::order("test");
    let payment = a.pending_id();
    a.reply("confirmed");
    assert_ne!(a.pending_id(), payment);
    let b = Run::start(order(), common::order_data("test"));
    assert_eq!(b.sent[0].id, payment, "same saga id, same step: same id (derived, not random)");
}

#[test]
fn a_customer_cancelling_before_payment_answered_gets_a_refund_then_a_cancelled_order() {
    let mut run = Run::order("a book");
    let payment = run.pending_id();
    let moved = run.try_input(Input::Event { name: "cancel_requested".into(), data: json!({ "reason": "changed my mind" }) });
    assert_eq!(moved, Ok(vec!["order_cancel_requested".to_string()]));
    assert_eq!(run.saga.state, "refund");
    assert_eq!(run.sent.last().map(|c| c.payload["compensates"]["command_id"].clone()), Some(json!(payment.to_string())));
    // The payment's late answer no longer matters.
    let late = run.try_input(Input::Reply { command_id: payment, outcome: "confirmed".into(), data: json!({}) });
    assert_eq!(late, Err(Ignored::StaleReply(payment)));
    assert_eq!(run.reply("refunded"), ["payment_refunded", "order_cancelled"]);
    assert_eq!(run.saga.status, "cancelled");
    run.assert_replays();
}

#[test]
fn cancelling_after_payment_is_not_a_transition_of_the_delivery_step() {
    let mut run = Run::order("test");
    run.reply("confirmed");
    let r = run.try_input(Input::Event { name: "cancel_requested".into(), data: json!(null) });
    assert!(matches!(r, Err(Ignored::UnknownEvent { .. })));
}

/// Events and snapshots written before issue 18 carried the whole command
/// in `pending` and the cause in `noted`: they still fold, and a retry of
/// such a saga sends the command the definition makes of its data.
#[test]
fn a_stream_in_the_older_format_still_folds_and_retries() {
    let run = Run::order("older");
    let (id, command) = (run.saga.id, run.sent[0].clone());
    let definition = serde_json::to_value(&run.saga.definition).unwrap_or_default();
    let older = json!([
        {"event_type": "order_created", "change": {"kind": "started", "saga_id": id, "definition": definition,
            "data": run.saga.data, "state": "payment", "status": "created",
            "pending": {"command": command, "attempt": 1, "phase": "awaiting_reply", "deadline": run.now.0 + 2000}}},
    ]);
    let events: Vec<Event> = serde_json::from_value(older).unwrap_or_else(|e| panic!("older events: {e}"));
    let saga = Saga::replay(&events).ok().flatten().unwrap_or_else(|| panic!("no saga"));
    assert_eq!(saga, run.saga, "the older stream folds to the saga the machine makes today");

    let later = Millis(run.now.0 + 2000);
    let timed_out = step(&run.def, Some(&saga), &Input::Deadline, later).unwrap_or_else(|e| panic!("{e}"));
    let retried = step(&run.def, Some(&timed_out.saga), &Input::Deadline, Millis(later.0 + 200)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(retried.commands, [Command { attempt: 2, ..command }]);

    let written = serde_json::to_value(&run.log).unwrap_or_default();
    assert!(written[0]["change"]["pending"].get("command").is_none(), "no command in new events: {written}");
    let noted = json!({"kind": "noted", "state": "payment", "cause": {"by": "reply", "command_id": id, "outcome": "confirmed", "data": {}}});
    assert!(serde_json::from_value::<sagas::Change>(noted).is_ok(), "a noted event with its cause still reads");
}
