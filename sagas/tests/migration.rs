//! Migrating running sagas: the `[migrate.N]` mapping as parsed and as
//! checked against the old version (each problem with its line), and the
//! `definition_migrated` step: what it moves, what it refuses, and that a
//! migrated saga replays to what the step produced.

mod common;

use common::{Run, order_data};
use sagas::migration::{check, migrate};
use sagas::{Act, Action, Change, Definition, Ignored, InFlight, Millis, Problem};

const V1: &str = include_str!("migrate/order-v1.toml");
const V3: &str = include_str!("migrate/order-v3.toml");

fn parse(file: &str, source: &str) -> Definition {
    sagas::parse(file, source).unwrap_or_else(|e| panic!("{file}:\n{e}"))
}

fn v1() -> Definition {
    parse("order-v1.toml", V1)
}

fn v3() -> Definition {
    parse("order-v3.toml", V3)
}

/// v3 with its `[migrate.1]` table replaced by `mapping`.
fn v3_mapping(mapping: &str) -> String {
    let head = V3.split("[migrate.1]").next().unwrap_or_default();
    format!("{head}[migrate.1]\n{mapping}")
}

/// The line of `v3_mapping(mapping)` on which `needle` first appears.
fn line_of(source: &str, needle: &str) -> usize {
    source.lines().position(|l| l.contains(needle)).map(|i| i + 1).unwrap_or_else(|| panic!("{needle} not in the file"))
}

fn act(key: &str) -> Act {
    Act { action: Action::Migrate { from: 1, to: 3 }, reason: "v3 tells the customer".into(), operator: "alice".into(), key: Some(key.into()) }
}

#[test]
fn the_shipped_pair_parses_and_its_mapping_covers_version_1() {
    let new = v3();
    let mapping = new.migrations.get(&1).unwrap_or_else(|| panic!("no [migrate.1]"));
    assert_eq!(mapping.states.keys().map(String::as_str).collect::<Vec<_>>(), ["delivery", "payment", "refund"]);
    assert_eq!(mapping.states.get("delivery").map(|m| (m.to.as_str(), m.command)), Some(("delivery", InFlight::Resend)));
    assert_eq!(mapping.states.get("payment").map(|m| m.command), Some(InFlight::Keep), "a plain `old = \"new\"` keeps the command in flight");
    assert_eq!(check(&v1(), &new), Ok(()));
}

#[test]
fn a_mapping_is_refused_with_the_line_of_each_problem() {
    let source = v3_mapping("payment = \"paymnet\"\ndelivery = { to = \"delivery\", command = \"later\" }\nrefund = \"refund\"\n");
    let errors = sagas::parse("order-v3.toml", &source).err().unwrap_or_else(|| panic!("accepted"));
    let found: Vec<(usize, &Problem)> = errors.0.iter().map(|e| (e.line, &e.problem)).collect();
    assert_eq!(found.len(), 2, "{errors}");
    assert_eq!(found[0].0, line_of(&source, "paymnet"));
    assert!(matches!(found[0].1, Problem::UnknownState { name, .. } if name == "paymnet"), "{errors}");
    assert_eq!((found[1].0, found[1].1), (line_of(&source, "later"), &Problem::BadInFlight("later".into())));
    assert!(errors.to_string().starts_with(&format!("order-v3.toml:{}:", line_of(&source, "paymnet"))), "{errors}");

    let source = v3_mapping("payment = \"payment\"\n").replace("version = 3", "version = 1").replace("[migrate.1]", "[migrate.4]");
    let errors = sagas::parse("order-v1.toml", &source).err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(&errors.0[0].problem, Problem::OutOfRange(why) if why.contains("older version")), "{errors}");
    assert_eq!(errors.0[0].line, line_of(&source, "[migrate.4]"));
}

#[test]
fn check_refuses_a_state_left_out_a_kept_command_that_differs_and_terminal_targets() {
    let old = v1();
    // `refund` left out; `delivery` keeps its command but `notify` sends another.
    let source = v3_mapping("payment = \"payment\"\ndelivery = \"notify\"\n");
    let new = parse("order-v3.toml", &source);
    let errors = check(&old, &new).err().unwrap_or_else(|| panic!("accepted"));
    let found: Vec<(usize, &Problem)> = errors.0.iter().map(|e| (e.line, &e.problem)).collect();
    assert_eq!(found.len(), 2, "{errors}");
    assert_eq!((found[0].0, found[0].1), (line_of(&source, "[migrate.1]"), &Problem::Unmapped { state: "refund".into(), from: 1 }));
    assert_eq!(found[1].0, line_of(&source, "delivery = \"notify\""));
    assert!(
        matches!(found[1].1, Problem::KeepDiffers { old, new, why } if old == "delivery" && new == "notify" && why.contains("test.order.notify")),
        "{errors}"
    );
    assert!(errors.to_string().contains("command = \"resend\""), "the message says how to fix it: {errors}");

    // The same subject but a reply outcome the new state does not take.
    let narrower = source.replace("on.failed = { record = [\"delivery_failed\"], goto = \"refund\" }\n", "");
    let new = parse("order-v3.toml", &narrower.replace("delivery = \"notify\"", "delivery = \"delivery\"\nrefund = \"refund\""));
    let errors = check(&old, &new).err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(&errors.0[0].problem, Problem::KeepDiffers { why, .. } if why.contains("failed")), "{errors}");

    // Resending is always possible; mapping onto a terminal state, a
    // terminal old state, or a state version 1 lacks, never.
    let source = v3_mapping(
        "payment = \"payment\"\ndelivery = { to = \"notify\", command = \"resend\" }\nrefund = \"cancelled\"\ncancelled = \"cancelled\"\nshipping = \"delivery\"\n",
    );
    let errors = check(&old, &parse("order-v3.toml", &source)).err().unwrap_or_else(|| panic!("accepted"));
    let problems: Vec<&Problem> = errors.0.iter().map(|e| &e.problem).collect();
    assert_eq!(problems.len(), 3, "{errors}");
    assert!(problems.contains(&&Problem::OntoTerminal { old: "refund".into(), new: "cancelled".into() }), "{errors}");
    assert!(problems.contains(&&Problem::MapsTerminal { state: "cancelled".into(), from: 1 }), "{errors}");
    assert!(problems.iter().any(|p| matches!(p, Problem::UnknownOldState { name, .. } if name == "shipping")), "{errors}");
}

/// A saga of version 1 held at `delivery` (paid, the delivery sent).
fn held_at_delivery() -> Run {
    let mut run = Run::start(v1(), order_data("test parcel"));
    run.reply("confirmed");
    assert_eq!(run.saga.state, "delivery");
    run
}

/// Migrates `run`'s saga onto `new` as the runtime would, keeping the log.
fn migrated(run: &mut Run, new: &Definition, key: &str) -> Result<(), Ignored> {
    let decision = migrate(&run.def, new, &run.saga, &act(key), run.now)?;
    run.saga = decision.saga;
    run.log.extend(decision.events);
    run.sent.extend(decision.commands);
    run.def = new.clone();
    Ok(())
}

#[test]
fn a_migrated_saga_runs_on_the_new_version_and_replays_to_the_same_saga() {
    let (old, new) = (v1(), v3());
    let mut run = held_at_delivery();
    let before = run.pending_id();
    migrated(&mut run, &new, "job:1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.saga.definition, new.id());
    let Some(Change::Migrated { from, to, from_state, to_state, command, by, .. }) = run.log.last().map(|e| &e.change) else { panic!("{:?}", run.log.last()) };
    assert_eq!(run.log.last().map(|e| e.event_type.as_str()), Some("definition_migrated"));
    assert_eq!((from, to, from_state.as_str(), to_state.as_str(), *command), (&old.id(), &new.id(), "delivery", "delivery", InFlight::Resend));
    assert_eq!((by.operator.as_str(), by.key.as_deref()), ("alice", Some("job:1")));
    // `resend`: the new state's command, at once, under a new id.
    let sent = run.sent.last().unwrap_or_else(|| panic!("nothing sent"));
    assert_eq!((sent.subject.as_str(), run.pending_id() == before, sent.id), ("eso.cmd.delivery.deliver", false, run.pending_id()));
    assert_eq!(run.saga.pending.as_ref().map(|p| p.deadline), Some(run.now.after(std::time::Duration::from_secs(1))), "v3's timeout");
    run.assert_replays();

    // From here on the saga goes as version 3 says.
    run.reply("delivered");
    assert_eq!((run.saga.state.as_str(), run.subjects().last().copied()), ("notify", Some("test.order.notify")));
    run.reply("notified");
    assert_eq!((run.saga.state.as_str(), run.saga.terminal), ("delivered", true));
    run.assert_replays();
}

#[test]
fn a_kept_command_is_not_sent_again_and_its_reply_is_taken_by_the_new_state() {
    let new = parse("order-v3.toml", &v3_mapping("payment = \"payment\"\ndelivery = \"delivery\"\nrefund = \"refund\"\n"));
    let mut run = held_at_delivery();
    let (id, sent) = (run.pending_id(), run.sent.len());
    migrated(&mut run, &new, "job:1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((run.pending_id(), run.sent.len()), (id, sent), "the same command, not sent again");
    run.reply("delivered");
    assert_eq!(run.saga.state, "notify");
    run.assert_replays();
}

#[test]
fn a_migration_is_refused_twice_for_finished_sagas_other_versions_and_unmapped_states() {
    let (old, new) = (v1(), v3());
    let mut run = held_at_delivery();
    migrated(&mut run, &new, "job:1").unwrap_or_else(|e| panic!("{e}"));
    // The same job again (after a crash), or another job: nothing moves.
    let saga = run.saga.clone();
    assert_eq!(migrate(&old, &new, &saga, &act("job:1"), Millis(0)).err(), Some(Ignored::Repeated("job:1".into())));
    assert_eq!(migrate(&old, &new, &saga, &act("job:2"), Millis(0)).err(), Some(Ignored::AlreadyOn(new.id())));

    let mut finished = Run::start(old.clone(), order_data("xxx declined"));
    finished.reply("declined");
    assert_eq!(migrate(&old, &new, &finished.saga, &act("job:1"), Millis(0)).err(), Some(Ignored::Finished("cancelled".into())));

    let other = common::order();
    let on_v2 = Run::start(other.clone(), order_data("test")).saga;
    assert!(matches!(migrate(&old, &new, &on_v2, &act("job:1"), Millis(0)), Err(Ignored::WrongDefinition { .. })));

    let partial = parse("order-v3.toml", &v3_mapping("payment = \"payment\"\ndelivery = \"delivery\"\n"));
    let mut refunding = Run::start(old.clone(), order_data("test"));
    refunding.exhaust();
    assert_eq!(refunding.saga.state, "refund");
    let refused = migrate(&old, &partial, &refunding.saga, &act("job:1"), Millis(0)).err();
    assert_eq!(refused, Some(Ignored::NotMapped { state: "refund".into(), from: 1, to: 3 }));

    // An operator action cannot migrate: it has one definition only.
    let input = sagas::Input::Operator(act("k"));
    assert_eq!(sagas::step(&old, Some(&held_at_delivery().saga), &input, Millis(0)).err(), Some(Ignored::MigrationIsNotAnAction));
}

#[test]
fn verify_explores_from_every_mapped_state() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken_verify/migration_into_an_offer_skips_refund.toml");
    let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let with = sagas::verify::verify(&parse("shop.toml", &source));
    let unmapped = source.split("[migrate.1]").next().unwrap_or_default();
    let without = sagas::verify::verify(&parse("shop.toml", unmapped));
    assert!(without.is_clean(), "clean from the initial state alone: {:?}", without.violations);
    assert_eq!(with.violations.len(), 1, "{:?}", with.violations);
    assert_eq!(sagas::verify::render_path(&with.violations[0].path), "migrated from v1 → event offer:declined");
    // The shipped pair: version 3 explored from its mapped states too, clean.
    let report = sagas::verify::verify(&v3());
    assert!(report.is_clean(), "{:?}", report.violations);
}
