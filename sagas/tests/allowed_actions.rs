//! What an operator may do where a saga stands (`allowed_actions`), and
//! that it is exactly what the machine takes: the console offers the
//! buttons this names, so a button the machine refuses, or a repair it
//! would take but the console hides, is a bug.

mod common;

use common::{Run, order, trip};
use sagas::machine::{Act, Action};
use sagas::{Allowed, Definition, Input, Saga, allowed_actions, step};

fn act(action: Action) -> Input {
    Input::Operator(Act { action, reason: "test".into(), operator: "ops".into(), key: None })
}

/// The saga as it would be in `state`, waiting on the state's command if it sends one.
fn at(run: &Run, state: &str) -> Saga {
    let mut saga = run.saga.clone();
    let Some(s) = run.def.state(state) else { panic!("no state {state}") };
    saga.state = s.name.clone();
    saga.status = s.status.clone();
    saga.terminal = s.terminal;
    saga.pending = if s.command.is_some() { run.saga.pending.clone() } else { None };
    saga
}

#[test]
fn a_waiting_order_may_be_retried_or_cancelled_and_a_failed_refund_resumed() {
    let run = Run::order("test");
    let allowed = |state: &str| allowed_actions(&run.def, &at(&run, state));
    assert_eq!(allowed("payment"), Allowed { retry: true, cancel: Some("refund".into()), resume: vec![] });
    assert_eq!(allowed("refund"), Allowed { retry: true, cancel: None, resume: vec![] }, "a refund under way cannot be cancelled");
    assert_eq!(allowed("refund_failed"), Allowed { retry: false, cancel: None, resume: vec!["refund".into()] });
    assert_eq!(allowed("delivered"), Allowed::default(), "a saga that ended well has nothing to repair");
}

#[test]
fn a_saga_of_another_definition_or_an_unknown_state_may_do_nothing() {
    let run = Run::order("test");
    assert_eq!(allowed_actions(&trip(), &run.saga), Allowed::default());
    let mut lost = run.saga.clone();
    lost.state = "nowhere".into();
    assert_eq!(allowed_actions(&run.def, &lost), Allowed::default());
}

/// Every state of both shipped definitions, every action: the machine
/// takes an action exactly when `allowed_actions` names it, and a cancel
/// lands where it said.
#[test]
fn the_machine_takes_exactly_the_allowed_actions() {
    for (def, run) in [(order(), Run::order("test")), (trip(), Run::trip("Ada"))] {
        let def: &Definition = &def;
        for state in def.states.values() {
            let saga = at(&run, &state.name);
            let allowed = allowed_actions(def, &saga);
            let taken = |action: Action| step(def, Some(&saga), &act(action), run.now);
            let where_ = format!("{} state {}", def.name, state.name);
            assert_eq!(taken(Action::Retry).is_ok(), allowed.retry, "retry in {where_}");
            match taken(Action::Cancel) {
                Ok(d) => assert_eq!(Some(&d.saga.state), allowed.cancel.as_ref(), "cancel in {where_}"),
                Err(e) => assert_eq!(allowed.cancel, None, "cancel in {where_} refused ({e})"),
            }
            for to in def.states.keys() {
                let resumed = taken(Action::Resume { to: to.clone() }).is_ok();
                assert_eq!(resumed, allowed.resume.contains(to), "resume to {to} in {where_}");
            }
        }
    }
}
