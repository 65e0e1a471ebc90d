//! `sagas::verify`: the shipped definitions explore clean; each file in
//! `tests/broken_verify/` is valid (it parses) yet fails verification.
//! Its first line says how (`# expect: text` of the violation) and its
//! second the shortest counterexample (`# path: start → …`).

use std::path::Path;
use std::time::Instant;

mod common;

use sagas::verify::{self, ViolationKind, render_path};

#[test]
fn the_shipped_sagas_verify_clean() {
    for (name, def) in [("order.toml", common::order()), ("trip.toml", common::trip())] {
        let started = Instant::now();
        let report = verify::verify(&def);
        let took = started.elapsed();
        println!("{name}: {} configurations, bound {}, {took:?}", report.configurations, report.bound);
        let shown: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
        assert!(report.is_clean(), "{name}:\n{}", shown.join("\n"));
        assert_eq!(report.bound, u32::try_from(def.states.len()).unwrap_or(0) + 2);
        assert!(report.configurations > def.states.len(), "{name}: only {} configurations", report.configurations);
    }
}

#[test]
fn every_broken_verify_definition_parses_and_fails_with_its_counterexample() {
    let files = common::toml_files("tests/broken_verify");
    assert!(files.len() >= 3, "the broken_verify library shrank to {}", files.len());
    let mut failures = vec![];
    for path in &files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut lines = source.lines();
        let expect = lines.next().and_then(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| panic!("{name}: no `# expect:` line"));
        let want_path = lines.next().and_then(|l| l.strip_prefix("# path: ")).unwrap_or_else(|| panic!("{name}: no `# path:` line"));
        let def = sagas::parse(&name, &source).unwrap_or_else(|e| panic!("{name} must be valid:\n{e}"));
        let report = verify::verify(&def);
        let found = report.violations.iter().find(|v| v.kind.to_string().contains(expect));
        match found {
            None => failures.push(format!("{name}: expected `{expect}`, got {:?}", report.violations.iter().map(ToString::to_string).collect::<Vec<_>>())),
            Some(v) if render_path(&v.path) != want_path => {
                failures.push(format!("{name}: counterexample\n  {}\nexpected\n  {want_path}", render_path(&v.path)))
            }
            Some(v) => {
                let diagram = v.mermaid(&def);
                assert!(diagram.contains("stateDiagram-v2"), "{diagram}");
                let last = v.path.last().map(|h| h.to.clone()).unwrap_or_default();
                assert!(diagram.contains(&format!("{last} --> [*]")), "{name}: the diagram ends in the terminal:\n{diagram}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Validation refuses every definition with a dead end that the state
/// graph shows (no way out, no terminal reachable), and the machine adds
/// none, so no valid file has one; a definition altered after parsing
/// shows the check works on the explored configurations.
#[test]
fn a_dead_end_is_found_with_the_shortest_path_to_it() {
    let mut def = common::order();
    let Some(refund) = def.states.get_mut("refund") else { panic!("order has a refund state") };
    // The refund now only bounces on an outside event.
    refund.command = None;
    refund.on_reply.clear();
    refund.on_timeout = None;
    refund.on_event.insert("poke".into(), sagas::definition::Transition { record: vec!["poked".into()], goto: "refund".into() });
    let report = verify::verify(&def);
    let dead: Vec<_> = report.violations.iter().filter(|v| matches!(&v.kind, ViolationKind::DeadEnd { state } if state == "refund")).collect();
    assert_eq!(dead.len(), 1, "{:?}", report.violations);
    assert_eq!(render_path(&dead[0].path), "start → event payment:cancel_requested");
    assert!(dead[0].to_string().starts_with("dead end: no terminal state can be reached from `refund`"), "{}", dead[0]);
}

#[test]
fn a_declared_outcome_overrides_the_status_rule() {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken_verify/delivery_failure_skips_refund.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    // Declared a success, ending `cancelled` after a payment is no violation.
    let source = source.replace("[states.cancelled]\nstatus = \"cancelled\"\n", "[states.cancelled]\nstatus = \"cancelled\"\noutcome = \"success\"\n");
    let def = sagas::parse("overridden.toml", &source).unwrap_or_else(|e| panic!("{e}"));
    let report = verify::verify(&def);
    assert!(report.is_clean(), "{:?}", report.violations);
}

/// A chain of 50 states, each with a command (two retries), two outcomes
/// and a timeout; prints how long the search took (no assertion on it).
#[test]
fn a_fifty_state_chain_verifies() {
    let mut source = String::from("name = \"chain\"\nversion = 1\ninitial = \"s1\"\nstarted = \"chain_started\"\n");
    for i in 1..=50 {
        let next = if i == 50 { "done".to_string() } else { format!("s{}", i + 1) };
        source.push_str(&format!(
            "\n[states.s{i}]\nstatus = \"step{i}\"\ncommand = {{ subject = \"chain.s{i}\", timeout = \"1s\", retries = 2 }}\n\
             on.ok = {{ record = [\"s{i}_ok\"], goto = \"{next}\" }}\non.ko = {{ record = [\"s{i}_ko\"], goto = \"cancelled\" }}\n\
             on_timeout = {{ record = [\"s{i}_timed_out\"], goto = \"cancelled\" }}\n"
        ));
    }
    source.push_str("\n[states.done]\nstatus = \"done\"\nterminal = true\n\n[states.cancelled]\nstatus = \"cancelled\"\nterminal = true\n");
    let def = sagas::parse("chain.toml", &source).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let report = verify::verify(&def);
    println!("50-state chain: {} configurations, bound {}, {:?}", report.configurations, report.bound, started.elapsed());
    assert!(report.is_clean(), "{:?}", report.violations);
    assert_eq!(report.bound, 54);
}

/// `tests/verify_clean/` holds the shipped sagas with their natural
/// invariants declared: they hold, and the copies keep the shipped states.
#[test]
fn the_shipped_sagas_keep_their_declared_invariants() {
    let files = common::toml_files("tests/verify_clean");
    assert_eq!(files.len(), 2);
    for path in &files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let def = sagas::parse(&name, &source).unwrap_or_else(|e| panic!("{e}"));
        let shipped = if name == "order.toml" { common::order() } else { common::trip() };
        assert_eq!(def.states, shipped.states, "{name} is a copy of the shipped file");
        assert_eq!(def.invariants.len(), 3, "{name}");
        let started = Instant::now();
        let report = verify::verify(&def);
        println!("{name} with invariants: {} configurations, bound {}, {:?}", report.configurations, report.bound, started.elapsed());
        let shown: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
        assert!(report.is_clean(), "{name}:\n{}", shown.join("\n"));
    }
}

/// The gap invariants close: the swapped outcomes send a confirmed charge
/// straight to a failure terminal, which compensation coverage reads as
/// "nothing happened", so without the invariants the file verifies clean.
#[test]
fn without_its_invariants_the_swapped_payment_verifies_clean() {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken_verify/confirmed_payment_cancels.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let Some((bare, _)) = source.split_once("\n# Once the charge") else { panic!("the file declares its invariants last") };
    let def = sagas::parse("bare.toml", bare).unwrap_or_else(|e| panic!("{e}"));
    assert!(def.invariants.is_empty());
    let report = verify::verify(&def);
    assert!(report.is_clean(), "{:?}", report.violations);
    let with = verify::verify(&sagas::parse("with.toml", &source).unwrap_or_else(|e| panic!("{e}")));
    let broken: Vec<_> = with.violations.iter().filter(|v| matches!(v.kind, ViolationKind::Invariant { .. })).collect();
    assert_eq!(broken.len(), 3, "{:?}", with.violations);
}

/// Entering an `unless_through` state by the triggering step itself
/// discharges the invariant; one that stays open is reported once per
/// terminal, with the shortest path.
#[test]
fn an_invariant_closes_on_the_step_that_enters_its_escape() {
    let source = r#"
name = "loop"
version = 1
initial = "ask"
started = "loop_started"

[states.ask]
status = "asking"
command = { subject = "loop.ask", timeout = "1s" }
on.yes = { record = ["said_yes"], goto = "undo" }
on.no = { record = ["said_no"], goto = "done" }
on_timeout = { record = ["ask_timed_out"], goto = "failed" }

[states.undo]
status = "undoing"
command = { subject = "loop.undo", timeout = "1s" }
on.undone = { record = ["undone"], goto = "ask" }
on_timeout = { record = ["undo_timed_out"], goto = "failed" }

[states.done]
status = "done"
terminal = true

[states.failed]
status = "failed"
terminal = true

[[invariant]]
after = "ask.yes"
ends_in = ["done"]
unless_through = ["undo"]

[[invariant]]
after = "undo.undone"
ends_in = ["done"]
"#;
    let def = sagas::parse("loop.toml", source).unwrap_or_else(|e| panic!("{e}"));
    let report = verify::verify(&def);
    // `ask.yes` enters `undo` itself, so it never stays open (`undo`'s
    // timeout ends in `failed` unreported); `undo.undone` does, and a later
    // timeout of `ask` ends the saga in `failed`.
    let shown: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert!(shown[0].starts_with("invariant broken: after `undo.undone` the saga ends in `failed` (ends_in: `done`)"), "{shown:#?}");
    let paths: Vec<String> = report.violations.iter().map(|v| render_path(&v.path)).collect();
    assert!(paths.contains(&"start → reply ask:yes → reply undo:undone → timeout ask (attempt 1, last)".to_string()), "{paths:#?}");
}

/// A saga migrated into a state may have set an invariant off under the
/// old version: it arrives with it open when the state is reachable from
/// where the trigger lands without entering an `unless_through` state.
#[test]
fn a_migrated_saga_arrives_with_the_invariants_its_state_may_owe() {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken_verify/migration_into_an_offer_skips_refund.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let invariant_paths = |extra: &str| {
        let def = sagas::parse("shop.toml", &format!("{source}\n[[invariant]]\nafter = \"charge.ok\"\nends_in = [\"done\"]\n{extra}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let report = verify::verify(&def);
        report.violations.iter().filter(|v| matches!(v.kind, ViolationKind::Invariant { .. })).map(|v| render_path(&v.path)).collect::<Vec<_>>()
    };
    // Every way from `ship` to `offer` enters `refund`.
    assert_eq!(invariant_paths("unless_through = [\"refund\"]\n"), Vec::<String>::new());
    // A version 1 saga in `charge` may have been charged, refunded and
    // offered again before the migration.
    assert_eq!(
        invariant_paths(""),
        ["migrated from v1 → reply charge:no", "migrated from v1 → timeout charge (attempt 1, last) → timeout refund (attempt 1, last)"]
    );
}
