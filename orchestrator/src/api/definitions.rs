//! The loaded definitions: every version with its hash, states and inputs,
//! how many sagas are still live on it, and (for one definition) its
//! diagram.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{ApiError, AppState, truncate};

/// `GET /definitions`: every loaded version, newest last per name.
pub async fn list(_: super::auth::CanRead, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let live = state.store.live_counts().await?;
    let registry = state.runtime.registry();
    let versions: Vec<Value> = registry.iter().map(|d| version(d, &live, registry, false)).collect();
    Ok(Json(json!({ "definitions": versions })))
}

/// `GET /definitions/{name}`: its versions, each with a Mermaid diagram.
pub async fn one(_: super::auth::CanRead, State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let registry = state.runtime.registry();
    if registry.latest(&name).is_none() {
        return Err(ApiError::NotFound(format!("no saga definition named {:?} is loaded", truncate(&name))));
    }
    let live = state.store.live_counts().await?;
    let versions: Vec<Value> = registry.iter().filter(|d| d.name == name).map(|d| version(d, &live, registry, true)).collect();
    Ok(Json(json!({ "name": name, "versions": versions })))
}

/// `POST /definitions/{name}/versions/{version}/retire`: the version is no
/// longer loaded from the next start on. Refused (`409`) for the version
/// new sagas start on and while any saga is live on it.
pub async fn retire(
    super::auth::Operator(operator): super::auth::Operator,
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let version: u32 = version.parse().map_err(|_| ApiError::field("version", "must be a version number"))?;
    let registry = state.runtime.registry();
    let Some(def) = registry.version(&name, version) else {
        return Err(ApiError::NotFound(format!("version {version} of saga {:?} is not loaded (never, or retired already)", truncate(&name))));
    };
    if registry.latest(&name).is_some_and(|l| l.version == version) {
        return Err(ApiError::Conflict(format!("version {version} is the one new sagas start on: deploy a newer version first")));
    }
    if !state.store.retire(&name, version).await? {
        let live = state.store.live_counts().await?.get(&(name.clone(), version)).copied().unwrap_or(0);
        return Err(ApiError::Conflict(format!(
            "{live} saga(s) are live on version {version}: move them (eso saga migrate) or let them finish, then retire it"
        )));
    }
    tracing::info!(definition = %def.id(), %operator, "definition version retired");
    Ok(Json(json!({ "name": name, "version": version, "hash": def.hash(), "retired": true, "loaded_until": "the next start" })))
}

fn version(def: &sagas::Definition, live: &std::collections::BTreeMap<(String, u32), i64>, registry: &sagas::Registry, diagram: bool) -> Value {
    let states: Vec<Value> = def
        .order
        .iter()
        .filter_map(|name| def.state(name))
        .map(|s| {
            json!({
                "name": s.name,
                "status": s.status,
                "terminal": s.terminal,
                "subject": s.command.as_ref().map(|c| c.subject.as_str()),
                "compensates": s.compensates,
                // What an operator may do there: cancel's target, resume's targets.
                "cancel": s.cancel.as_ref().map(|t| t.goto.as_str()),
                "repair": s.repair,
            })
        })
        .collect();
    let mut body = json!({
        "name": def.name,
        "version": def.version,
        "hash": def.hash(),
        "latest": registry.latest(&def.name).is_some_and(|l| l.version == def.version),
        "description": def.description,
        "initial": def.initial,
        "inputs": def.inputs,
        "states": states,
        "live": live.get(&(def.name.clone(), def.version)).copied().unwrap_or(0),
    });
    if diagram {
        body["diagram"] = Value::String(sagas::graph::mermaid(def));
    }
    body
}
