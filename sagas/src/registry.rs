//! Loaded definitions, several versions side by side.
//!
//! A saga keeps running on the version it started with, so the registry
//! holds every version any running saga may need; and because a saga
//! records its definition's hash, a version's content must never change
//! under it: editing a file without bumping `version` is refused here.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::definition::{Definition, DefinitionId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "saga `{name}` version {version} changed (hash {known} became {new}) without a version bump: \
         running sagas depend on version {version} as it was; give the edited definition `version = {next}`"
    )]
    ChangedWithoutBump { name: String, version: u32, known: String, new: String, next: u32 },
}

#[derive(Debug, Default, Clone)]
pub struct Registry {
    definitions: BTreeMap<(String, u32), Arc<Definition>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a definition. Adding the same content again is a no-op; adding
    /// different content under a known name and version is an error.
    pub fn insert(&mut self, def: Definition) -> Result<Arc<Definition>, RegistryError> {
        let key = (def.name.clone(), def.version);
        if let Some(known) = self.definitions.get(&key) {
            if known.hash() == def.hash() {
                return Ok(known.clone());
            }
            let next = self.latest(&def.name).map_or(def.version, |l| l.version) + 1;
            return Err(RegistryError::ChangedWithoutBump {
                name: def.name.clone(),
                version: def.version,
                known: known.hash().to_string(),
                new: def.hash().to_string(),
                next,
            });
        }
        let def = Arc::new(def);
        self.definitions.insert(key, def.clone());
        Ok(def)
    }

    /// The definition a saga was started on, if it is loaded.
    pub fn get(&self, id: &DefinitionId) -> Option<&Arc<Definition>> {
        self.definitions.get(&(id.name.clone(), id.version)).filter(|d| d.hash() == id.hash)
    }

    /// Version `version` of `name`, if it is loaded.
    pub fn version(&self, name: &str, version: u32) -> Option<&Arc<Definition>> {
        self.definitions.get(&(name.to_string(), version))
    }

    /// The highest version of `name`: what new sagas start on.
    pub fn latest(&self, name: &str) -> Option<&Arc<Definition>> {
        self.definitions.range((name.to_string(), 0)..=(name.to_string(), u32::MAX)).next_back().map(|(_, d)| d)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.definitions.values()
    }
}
