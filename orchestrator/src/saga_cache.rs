//! The last state this replica wrote for each running saga, so a reply
//! needs no read before its step. Only a hint: a stale entry (another
//! replica moved the saga) fails the append's version check, and the saga
//! is then read from the store.
//!
//! Entries are kept as the saga's JSON, not the parsed saga: a running
//! saga waits on its command far longer than it steps, and parsed, its
//! data maps (B-trees) took three times the memory. Parsing one back costs
//! microseconds, once per reply.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sagas::Saga;
use uuid::Uuid;

use crate::store::SagaRow;

/// Entries beyond this are dropped wholesale; they are only hints.
const LIMIT: usize = 100_000;

#[derive(Default)]
pub struct SagaCache {
    entries: Mutex<HashMap<Uuid, Entry>>,
}

#[derive(Clone)]
struct Entry {
    version: u64,
    saga: Arc<str>,
    trace: Arc<str>,
    created_at: i64,
    updated_at: i64,
}

impl SagaCache {
    pub fn get(&self, id: Uuid) -> Option<SagaRow> {
        // Parsed outside the lock: every reply of the replica goes through it.
        let entry = self.lock().get(&id).cloned()?;
        Some(SagaRow {
            saga: serde_json::from_str(&entry.saga).ok()?,
            trace: serde_json::from_str::<BTreeMap<String, String>>(&entry.trace).ok()?,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
        })
    }

    /// Keeps `saga` (as it is after a step) with the trace and timestamps
    /// of its row; a terminal saga is forgotten instead.
    pub fn remember(&self, saga: &Saga, trace: &BTreeMap<String, String>, created_at: i64, updated_at: i64) {
        if saga.terminal {
            self.forget(saga.id);
            return;
        }
        let (Ok(json), Ok(trace)) = (serde_json::to_string(saga), serde_json::to_string(trace)) else {
            self.forget(saga.id);
            return;
        };
        let entry = Entry { version: saga.version, saga: json.into(), trace: trace.into(), created_at, updated_at };
        let mut entries = self.lock();
        // Steps finishing out of order must not put an older state back.
        if entries.get(&saga.id).is_some_and(|known| known.version >= entry.version) {
            return;
        }
        if entries.len() >= LIMIT {
            entries.clear();
        }
        entries.insert(saga.id, entry);
    }

    pub fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        // Each change is one insert or remove: a panic elsewhere cannot leave it half-done.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use sagas::Input;
    use serde_json::{Map, Value};

    use super::*;

    fn running_saga() -> SagaRow {
        let source = include_str!("../../sagas/definitions/order.toml");
        let def = sagas::parse("order.toml", source).unwrap_or_else(|e| panic!("{e}"));
        let mut data = Map::new();
        data.insert("amount".into(), Value::String("207.00".into()));
        data.insert("description".into(), Value::String("test".into()));
        data.insert("user_id".into(), Value::String("u".into()));
        data.insert("payee_id".into(), Value::String("p".into()));
        let decision = sagas::step(&def, None, &Input::Start { id: Uuid::new_v4(), data }, sagas::Millis(0)).unwrap_or_else(|e| panic!("{e}"));
        let trace = BTreeMap::from([("traceparent".to_string(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string())]);
        SagaRow { saga: decision.saga, trace, created_at: 1, updated_at: 2 }
    }

    fn remember(cache: &SagaCache, row: &SagaRow) {
        cache.remember(&row.saga, &row.trace, row.created_at, row.updated_at);
    }

    #[test]
    fn gives_back_what_it_was_given() {
        let cache = SagaCache::default();
        let row = running_saga();
        remember(&cache, &row);
        let back = cache.get(row.saga.id).unwrap_or_else(|| panic!("not cached"));
        assert_eq!(back.saga, row.saga);
        assert_eq!((back.trace, back.created_at, back.updated_at), (row.trace, 1, 2));
    }

    #[test]
    fn an_older_state_does_not_replace_a_newer_one() {
        let cache = SagaCache::default();
        let newer = running_saga();
        let mut older = newer.clone();
        older.saga.version -= 1;
        older.saga.state = "older".into();
        remember(&cache, &newer);
        remember(&cache, &older);
        assert_eq!(cache.get(newer.saga.id).map(|r| r.saga.state), Some(newer.saga.state));
    }

    #[test]
    fn a_finished_saga_is_forgotten() {
        let cache = SagaCache::default();
        let mut row = running_saga();
        remember(&cache, &row);
        row.saga.terminal = true;
        row.saga.version += 1;
        remember(&cache, &row);
        assert!(cache.get(row.saga.id).is_none());
    }
}
