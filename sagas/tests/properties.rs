//! Properties of the machine over random inputs, on the shipped sagas and on
//! randomly generated valid definitions: it never panics, never leaves a
//! terminal state, can always finish, and folding its events reproduces it.

mod common;

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use sagas::{Definition, Input, Millis, Saga, step};
use serde_json::json;
use uuid::Uuid;

/// What the world does next to a saga.
#[derive(Debug, Clone)]
enum Action {
    /// Reply to the pending command (or to an old command) with outcome index `o`.
    Reply { o: usize, stale: bool },
    /// Let `ms` pass, then fire the timer.
    Wait { ms: i64 },
    /// Send a named outside event.
    Event { o: usize },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0usize..8, proptest::bool::weighted(0.2)).prop_map(|(o, stale)| Action::Reply { o, stale }),
        (0i64..6_000).prop_map(|ms| Action::Wait { ms }),
        (0usize..4).prop_map(|o| Action::Event { o }),
    ]
}

/// Outcomes the definition knows for the current state, plus junk.
fn outcome(def: &Definition, saga: &Saga, o: usize) -> String {
    let known: Vec<&String> = def.state(&saga.state).map(|s| s.on_reply.keys().collect()).unwrap_or_default();
    known.get(o).map(|s| s.to_string()).unwrap_or_else(|| format!("junk{o}"))
}

/// Applies `actions` to a new saga, checking the invariants after each step.
fn play(def: &Definition, actions: &[Action]) -> (Saga, Vec<sagas::Event>, Millis) {
    let mut now = Millis(1_000);
    let id = Uuid::from_u128(42);
    // Each shipped saga starts with its own inputs; generated ones declare none.
    let data = if def.name == "trip" { common::trip_data("test") } else { common::order_data("test") };
    let start = step(def, None, &Input::Start { id, data }, now);
    let Ok(first) = start else { panic!("start refused: {start:?}") };
    let mut saga = first.saga;
    let mut log = first.events;
    let mut old_ids = vec![];
    for action in actions {
        let input = match action {
            Action::Reply { o, stale } => {
                let current = saga.pending.as_ref().map(|p| p.command_id);
                let command_id = match (stale, old_ids.first(), current) {
                    (true, Some(old), _) => *old,
                    (_, _, Some(id)) => id,
                    _ => Uuid::from_u128(7),
                };
                Input::Reply { command_id, outcome: outcome(def, &saga, *o), data: json!({ "n": o }) }
            }
            Action::Wait { ms } => {
                now = Millis(now.0 + ms);
                Input::Deadline
            }
            Action::Event { o } => Input::Event { name: format!("signal{o}"), data: json!(null) },
        };
        if let Ok(d) = step(def, Some(&saga), &input, now) {
            assert!(!saga.terminal, "a terminal saga moved: {input:?}");
            assert!(!d.events.is_empty(), "a decision without events");
            assert_eq!(d.saga.version, saga.version + d.events.len() as u64);
            if let Some(p) = &saga.pending {
                old_ids.push(p.command_id);
            }
            log.extend(d.events);
            saga = d.saga;
        }
        let replayed = Saga::replay(&log).ok().flatten();
        prop_assert_eq_or_panic(replayed.as_ref(), Some(&saga));
    }
    (saga, log, now)
}

fn prop_assert_eq_or_panic(a: Option<&Saga>, b: Option<&Saga>) {
    assert_eq!(a, b, "fold(events) differs from the stepped state");
}

/// From the saga's state, walks towards the nearest terminal state (by
/// replies or timeouts) and checks it gets there: no saga is ever stuck.
fn finish(def: &Definition, mut saga: Saga, mut now: Millis) -> Saga {
    let distance = distances_to_terminal(def);
    for _ in 0..10_000 {
        if saga.terminal {
            return saga;
        }
        let state = def.state(&saga.state).unwrap_or_else(|| panic!("unknown state {}", saga.state));
        // Take whichever exit leads closest to a terminal state.
        enum Exit<'a> {
            Reply(&'a String),
            Timeout,
            Event(&'a String),
        }
        let pending = saga.pending.clone();
        let mut exits: Vec<(usize, Exit)> = state.on_event.iter().map(|(n, t)| (distance[&t.goto], Exit::Event(n))).collect();
        if pending.is_some() {
            exits.extend(state.on_reply.iter().map(|(o, t)| (distance[&t.goto], Exit::Reply(o))));
            exits.extend(state.on_timeout.iter().map(|t| (distance[&t.goto], Exit::Timeout)));
        }
        exits.sort_by_key(|(d, _)| *d);
        let input = match (exits.first(), &pending) {
            (Some((_, Exit::Reply(outcome))), Some(p)) => Input::Reply { command_id: p.command_id, outcome: (*outcome).clone(), data: json!({}) },
            (Some((_, Exit::Timeout)), Some(p)) => {
                now = p.deadline;
                Input::Deadline
            }
            (Some((_, Exit::Event(name))), _) => Input::Event { name: (*name).clone(), data: json!(null) },
            _ => panic!("stuck in {}", saga.state),
        };
        saga = step(def, Some(&saga), &input, now).unwrap_or_else(|e| panic!("{e} in {}", saga.state)).saga;
    }
    panic!("did not finish: {saga:?}");
}

fn distances_to_terminal(def: &Definition) -> BTreeMap<String, usize> {
    let mut dist: BTreeMap<String, usize> = BTreeMap::new();
    let mut queue: VecDeque<String> = def.states.values().filter(|s| s.terminal).map(|s| s.name.clone()).collect();
    for q in &queue {
        dist.insert(q.clone(), 0);
    }
    while let Some(name) = queue.pop_front() {
        let d = dist[&name];
        for s in def.states.values() {
            let leads_here = s.on_reply.values().chain(&s.on_timeout).chain(s.on_event.values()).any(|t| t.goto == name);
            if leads_here && !dist.contains_key(&s.name) {
                dist.insert(s.name.clone(), d + 1);
                queue.push_back(s.name.clone());
            }
        }
    }
    dist
}

/// A random valid definition, written as TOML and parsed like a user's file.
/// States s0..sN send commands; each times out to the next (the last to
/// t0), so every state is reachable and can finish; replies jump anywhere,
/// cycles included.
fn definition() -> impl Strategy<Value = String> {
    (1usize..6, 1usize..4).prop_flat_map(|(n, k)| {
        let edges = proptest::collection::vec(proptest::collection::vec(0..n + k, 0..3), n);
        let retries = proptest::collection::vec(0u32..3, n);
        let signals = proptest::collection::vec(proptest::option::of(0..n + k), n);
        (Just(n), Just(k), edges, retries, signals).prop_map(|(n, k, edges, retries, signals)| {
            let name = |i: usize| if i < n { format!("s{i}") } else { format!("t{}", i - n) };
            let mut toml = String::from("name = \"random\"\nversion = 1\ninitial = \"s0\"\nstarted = \"began\"\n");
            for i in 0..n {
                let timeout_to = if i + 1 < n { name(i + 1) } else { name(n) };
                toml += &format!(
                    "\n[states.s{i}]\nstatus = \"st{i}\"\ncommand = {{ subject = \"eso.cmd.s{i}\", fields = [\"amount\"], timeout = \"{}ms\", retries = {}, backoff = \"10ms\" }}\non_timeout = {{ record = [\"s{i}_timed_out\"], goto = \"{timeout_to}\" }}\n",
                    100 + i * 50,
                    retries[i]
                );
                for (j, target) in edges[i].iter().enumerate() {
                    toml += &format!("on.o{j} = {{ record = [\"s{i}_o{j}\", \"s{i}_moved_{j}\"], goto = \"{}\" }}\n", name(*target));
                }
                // Make every extra terminal reachable.
                for t in 1..k {
                    if t % n == i {
                        toml += &format!("on.to_t{t} = {{ record = [\"s{i}_ended_{t}\"], goto = \"t{t}\" }}\n");
                    }
                }
                if let Some(target) = signals[i] {
                    toml += &format!("on_event.signal0 = {{ record = [\"s{i}_signalled\"], goto = \"{}\" }}\n", name(target));
                }
            }
            for t in 0..k {
                toml += &format!("\n[states.t{t}]\nstatus = \"done{t}\"\nterminal = true\n");
            }
            toml
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_order_saga_survives_any_input_sequence(actions in proptest::collection::vec(action(), 0..60)) {
        let def = common::order();
        let (saga, _, now) = play(&def, &actions);
        let end = finish(&def, saga, now);
        prop_assert!(["delivered", "cancelled", "failed"].contains(&end.status.as_str()));
    }

    #[test]
    fn the_trip_saga_survives_any_input_sequence(actions in proptest::collection::vec(action(), 0..60)) {
        let def = common::trip();
        let (saga, _, now) = play(&def, &actions);
        let end = finish(&def, saga, now);
        prop_assert!(["booked", "cancelled", "failed"].contains(&end.status.as_str()));
    }

    #[test]
    fn random_valid_definitions_survive_any_input_sequence(
        source in definition(),
        actions in proptest::collection::vec(action(), 0..60),
    ) {
        let def = match sagas::parse("random.toml", &source) {
            Ok(def) => def,
            Err(e) => panic!("generated definition refused:\n{e}\n{source}"),
        };
        let (saga, _, now) = play(&def, &actions);
        let end = finish(&def, saga, now);
        prop_assert!(end.terminal);
    }

    #[test]
    fn random_valid_definitions_draw_every_state_with_the_played_path_lit(
        source in definition(),
        actions in proptest::collection::vec(action(), 0..30),
    ) {
        let def = match sagas::parse("random.toml", &source) {
            Ok(def) => def,
            Err(e) => panic!("generated definition refused:\n{e}\n{source}"),
        };
        let (saga, events, _) = play(&def, &actions);
        let path = sagas::diagram::Path::of(events.iter().map(|e| &e.change));
        prop_assert_eq!(path.current.as_deref(), Some(saga.state.as_str()));
        let svg = sagas::diagram::svg(&def, Some(&path));
        for name in &def.order {
            prop_assert_eq!(svg.matches(&format!("data-state=\"{name}\"")).count(), 1);
        }
        prop_assert_eq!(svg.matches(" current\"").count(), 1);
        prop_assert!(!svg.contains("NaN") && !svg.contains("inf,") && !svg.contains("\"inf"), "{}", svg);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in ".{0,400}") {
        let _ = sagas::parse("fuzz.toml", &text);
    }

    #[test]
    fn parse_never_panics_on_mutated_order_toml(cut in 0usize..2000, insert in "[a-z=\\[\\]\"{}. 0-9\n]{0,12}") {
        let mut source = common::ORDER.to_string();
        let at = source.char_indices().map(|(i, _)| i).nth(cut % common::ORDER.len()).unwrap_or(0);
        source.insert_str(at, &insert);
        let _ = sagas::parse("mutated.toml", &source);
    }
}
