//! A given/when/then harness over the pure machine: it plays the runtime's
//! part (keeps the saga, fires deadlines, remembers what was sent) without
//! any I/O.
#![allow(dead_code)]

use sagas::{Command, Decision, Definition, Event, Ignored, Input, Millis, Saga, step};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// The `*.toml` files of a folder of this crate (`tests/broken`), sorted:
/// a library of cases where adding a file adds a case.
pub fn toml_files(folder: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

pub const ORDER: &str = include_str!("../../definitions/order.toml");

pub fn order() -> Definition {
    match sagas::parse("order.toml", ORDER) {
        Ok(def) => def,
        Err(e) => panic!("order.toml is invalid:\n{e}"),
    }
}

pub const TRIP: &str = include_str!("../../definitions/trip.toml");

pub fn trip() -> Definition {
    match sagas::parse("trip.toml", TRIP) {
        Ok(def) => def,
        Err(e) => panic!("trip.toml is invalid:\n{e}"),
    }
}

pub fn trip_data(traveller: &str) -> Map<String, Value> {
    let Value::Object(data) = json!({
        "traveller": traveller,
        "from": "AMS",
        "to": "LIS",
        "nights": 3,
        "date": "2025-07-01",
    }) else {
        unreachable!()
    };
    data
}

pub fn order_data(description: &str) -> Map<String, Value> {
    let Value::Object(data) = json!({
        "amount": "207.00",
        "description": description,
        "user_id": "6a1d9a4e-58c7-4c3e-9a52-5d6cf1b1b1a1",
        "payee_id": "0b9ae2a4-0fd3-4e43-8a4b-0d2d8a1a5c11",
    }) else {
        unreachable!()
    };
    data
}

pub struct Run {
    pub def: Definition,
    pub saga: Saga,
    pub now: Millis,
    /// Every event recorded so far, in order.
    pub log: Vec<Event>,
    /// Every command sent so far, in order.
    pub sent: Vec<Command>,
}

impl Run {
    pub fn start(def: Definition, data: Map<String, Value>) -> Run {
        let now = Millis(1_700_000_000_000);
        let id = Uuid::from_u128(0x5a6a_0000_0000_4000_8000_0000_0000_0001);
        let decision = step(&def, None, &Input::Start { id, data }, now).unwrap_or_else(|e| panic!("start: {e}"));
        let mut run = Run { def, saga: decision.saga.clone(), now, log: vec![], sent: vec![] };
        run.absorb(decision);
        run
    }

    pub fn order(description: &str) -> Run {
        Run::start(order(), order_data(description))
    }

    pub fn trip(traveller: &str) -> Run {
        Run::start(trip(), trip_data(traveller))
    }

    fn absorb(&mut self, d: Decision) {
        // Through JSON, as the store keeps it: every later step is decided
        // on the saga a reload would find, so a command rebuilt from it
        // (a retry) is tested against the one first sent.
        let json = serde_json::to_string(&d.saga).unwrap_or_default();
        self.saga = serde_json::from_str(&json).unwrap_or_else(|e| panic!("saga round trip: {e}"));
        assert_eq!(self.saga, d.saga, "json(saga) changes it");
        self.log.extend(d.events);
        self.sent.extend(d.commands);
    }

    pub fn try_input(&mut self, input: Input) -> Result<Vec<String>, Ignored> {
        let d = step(&self.def, Some(&self.saga), &input, self.now)?;
        let types = d.events.iter().map(|e| e.event_type.clone()).collect();
        self.absorb(d);
        Ok(types)
    }

    /// The participant answers the command the saga waits on.
    pub fn reply(&mut self, outcome: &str) -> Vec<String> {
        self.reply_with(outcome, json!({}))
    }

    pub fn reply_with(&mut self, outcome: &str, data: Value) -> Vec<String> {
        let command_id = self.pending_id();
        self.try_input(Input::Reply { command_id, outcome: outcome.into(), data }).unwrap_or_else(|e| panic!("reply {outcome}: {e}"))
    }

    /// Time passes to the saga's deadline and the timer fires.
    pub fn timeout(&mut self) -> Vec<String> {
        self.now = self.saga.deadline().unwrap_or_else(|| panic!("no deadline in {}", self.saga.state));
        self.try_input(Input::Deadline).unwrap_or_else(|e| panic!("deadline: {e}"))
    }

    /// Times out every attempt of the current command and returns the events.
    pub fn exhaust(&mut self) -> Vec<String> {
        let state = self.saga.state.clone();
        let mut events = vec![];
        while self.saga.state == state && !self.saga.terminal {
            events.extend(self.timeout());
        }
        events
    }

    pub fn pending_id(&self) -> Uuid {
        self.saga.pending.as_ref().map(|p| p.command_id).unwrap_or_else(|| panic!("nothing pending in {}", self.saga.state))
    }

    pub fn types(&self) -> Vec<&str> {
        self.log.iter().map(|e| e.event_type.as_str()).collect()
    }

    pub fn subjects(&self) -> Vec<&str> {
        self.sent.iter().map(|c| c.subject.as_str()).collect()
    }

    /// Folding the recorded events gives exactly the saga the steps produced.
    pub fn assert_replays(&self) {
        let replayed = Saga::replay(&self.log).unwrap_or_else(|e| panic!("replay: {e}"));
        assert_eq!(replayed.as_ref(), Some(&self.saga), "fold(events) != state");
        let json = serde_json::to_string(&self.log).unwrap_or_default();
        let back: Vec<Event> = serde_json::from_str(&json).unwrap_or_else(|e| panic!("events round trip: {e}"));
        assert_eq!(Saga::replay(&back).ok().flatten().as_ref(), Some(&self.saga), "fold(json(events)) != state");
    }
}
