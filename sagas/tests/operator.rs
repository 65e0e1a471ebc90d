//! An operator's retry, cancel and resume, decided by the machine from the
//! definition: where they apply, what they record, and that a repeated
//! action (same key) is not taken twice.

mod common;

use common::Run;
use sagas::{Act, Action, Change, Ignored, Input, Phase};

fn act(action: Action, key: Option<&str>) -> Input {
    Input::Operator(Act { action, reason: "the payment service was down".into(), operator: "alice".into(), key: key.map(str::to_string) })
}

fn resume(to: &str) -> Action {
    Action::Resume { to: to.into() }
}

#[test]
fn retry_sends_the_pending_command_again_now_with_the_same_id() {
    let mut run = Run::order("test");
    let id = run.pending_id();
    assert_eq!(run.try_input(act(Action::Retry, Some("k1"))), Ok(vec!["operator_retried".to_string()]));
    let pending = run.saga.pending.clone().unwrap_or_else(|| panic!("nothing pending"));
    assert_eq!((pending.command_id, pending.attempt, pending.phase), (id, 2, Phase::AwaitingReply));
    assert_eq!(run.sent.last().map(|c| (c.id, c.attempt)), Some((id, 2)), "sent at once");
    let Some(Change::Retried { by: Some(by), .. }) = run.log.last().map(|e| &e.change) else { panic!("no audit: {:?}", run.log.last()) };
    assert_eq!((by.operator.as_str(), by.reason.as_str()), ("alice", "the payment service was down"));

    // Backing off after a timeout, a retry skips the wait.
    run.timeout();
    assert_eq!(run.saga.pending.as_ref().map(|p| p.phase), Some(Phase::BackingOff));
    assert_eq!(run.try_input(act(Action::Retry, Some("k2"))), Ok(vec!["operator_retried".to_string()]));
    assert_eq!(run.saga.pending.as_ref().map(|p| (p.phase, p.attempt)), Some((Phase::AwaitingReply, 3)));

    // The same key again changes nothing.
    assert_eq!(run.try_input(act(Action::Retry, Some("k1"))), Err(Ignored::Repeated("k1".into())));
    // The retried command's reply moves the saga on as any reply does.
    run.reply("confirmed");
    assert_eq!(run.saga.state, "delivery");
    run.assert_replays();
}

#[test]
fn an_operator_retry_counts_against_the_state_s_retries() {
    let mut run = Run::order("test");
    // payment: 3 retries, so 4 attempts before `on_timeout`.
    for key in ["a", "b", "c"] {
        run.try_input(act(Action::Retry, Some(key))).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(run.saga.pending.as_ref().map(|p| p.attempt), Some(4));
    run.timeout();
    assert_eq!(run.saga.state, "refund", "the last attempt timed out: the saga gives up as the definition says");
}

#[test]
fn cancel_takes_the_definition_s_cancel_transition_only() {
    let mut run = Run::order("test");
    let charge = run.pending_id();
    assert_eq!(run.try_input(act(Action::Cancel, None)), Ok(vec!["order_cancelled_by_operator".to_string()]));
    assert_eq!((run.saga.state.as_str(), run.saga.status.as_str()), ("refund", "cancelling"));
    let refund = run.sent.last().map(|c| c.payload.clone()).unwrap_or_default();
    assert_eq!(refund["compensates"]["command_id"], charge.to_string(), "the refund names the charge it undoes");
    // `refund` declares no cancel: refused, and the saga is as it was.
    let before = run.saga.clone();
    assert_eq!(run.try_input(act(Action::Cancel, None)), Err(Ignored::NoCancel("refund".into())));
    assert_eq!(run.saga, before);
    run.reply("refunded");
    assert_eq!(run.try_input(act(Action::Cancel, None)), Err(Ignored::Finished("cancelled".into())));
    assert_eq!(run.try_input(act(Action::Retry, None)), Err(Ignored::Finished("cancelled".into())));
    run.assert_replays();
}

#[test]
fn resume_sends_a_failed_saga_back_into_a_repair_target_with_its_last_command_id() {
    let mut run = Run::order("undeliverable");
    assert_eq!(run.try_input(act(resume("refund"), None)), Err(Ignored::StillRunning("payment".into())));
    run.reply("confirmed");
    run.reply("failed");
    let refund_id = run.pending_id();
    run.exhaust();
    assert_eq!((run.saga.state.as_str(), run.saga.terminal), ("refund_failed", true));

    assert!(
        matches!(run.try_input(act(resume("delivery"), None)), Err(Ignored::NotRepairable { to, allowed, .. }) if to == "delivery" && allowed == ["refund"])
    );
    assert_eq!(run.try_input(act(resume("refund"), Some("r"))), Ok(vec!["operator_resumed".to_string()]));
    assert_eq!((run.saga.state.as_str(), run.saga.status.as_str(), run.saga.terminal), ("refund", "cancelling", false));
    assert_eq!(run.pending_id(), refund_id, "the refund goes out with the id it had: a refund that did happen is answered, not repeated");
    assert_eq!(run.saga.pending.as_ref().map(|p| p.attempt), Some(1), "with a fresh set of attempts");
    assert_eq!(run.try_input(act(resume("refund"), Some("r"))), Err(Ignored::Repeated("r".into())));
    run.reply("refunded");
    assert_eq!(run.saga.state, "cancelled");
    run.assert_replays();
}

#[test]
fn a_state_without_a_command_has_nothing_to_retry() {
    let mut run = Run::order("test");
    run.reply("confirmed");
    run.reply("delivered");
    assert_eq!(run.try_input(act(Action::Retry, None)), Err(Ignored::Finished("delivered".into())));
    assert_eq!(
        run.try_input(act(resume("refund"), None)).err().map(|e| e.to_string()),
        Some("`refund` is not a repair target of state `delivered` (it lists none under `repair`)".into())
    );
}
