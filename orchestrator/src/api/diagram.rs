//! Definitions and sagas as SVG state diagrams (`sagas::diagram`), drawn
//! on the server so the console shows them with no script of its own.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::sagas::parse_id;
use super::{ApiError, AppState, truncate};

/// `GET /definitions/{name}/diagram.svg?version=N`: that version (the
/// newest by default).
pub async fn definition(
    _: super::auth::CanRead,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let registry = state.runtime.registry();
    let Some(latest) = registry.latest(&name) else {
        return Err(ApiError::NotFound(format!("no saga definition named {:?} is loaded", truncate(&name))));
    };
    let def = match params.get("version").map(|v| v.trim()) {
        None | Some("") => latest,
        Some(v) => {
            let version: u32 = v.parse().map_err(|_| ApiError::field("version", "must be a whole number"))?;
            registry
                .iter()
                .find(|d| d.name == name && d.version == version)
                .ok_or_else(|| ApiError::NotFound(format!("saga definition {:?} has no version {version} loaded", truncate(&name))))?
        }
    };
    Ok(svg(sagas::diagram::svg(def, None)))
}

/// `GET /sagas/{id}/diagram.svg`: the saga's definition version with its
/// current state lit and the states and transitions of its history marked.
pub async fn saga(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let Some(row) = state.store.load(id).await? else { return Err(ApiError::NotFound(format!("saga {id} not found"))) };
    let definition = &row.saga.definition;
    let def = state
        .runtime
        .registry()
        .get(definition)
        .ok_or_else(|| ApiError::Unavailable(format!("saga {id} runs on {definition}, which this replica has not loaded")))?;
    let events = state.store.stream(id).await?;
    // An event this build cannot read (a newer kind) marks nothing; the
    // saga's row still says where it is.
    let changes: Vec<sagas::Change> = events.iter().filter_map(|e| serde_json::from_value(e.data.clone()).ok()).collect();
    let mut path = sagas::diagram::Path::of(&changes);
    path.current = Some(row.saga.state.clone());
    Ok(svg(sagas::diagram::svg(def, Some(&path))))
}

fn svg(body: String) -> Response {
    // A saga's diagram changes with every step: never cached.
    ([(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
