//! Sagas themselves: their state, and events sent to them from outside
//! (the `on_event` transitions of a definition).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::orders::parse_id;
use super::{ApiError, AppState, json_object, read_body};
use crate::clock::rfc3339;
use crate::runtime::Stepped;

/// `GET /sagas/{id}`: where the saga is and what it waits for.
pub async fn saga(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let row = state.store.load(id).await?.ok_or_else(|| ApiError::NotFound(format!("saga {id} not found")))?;
    let s = &row.saga;
    let pending = s.pending.as_ref().map(|p| {
        json!({
            "command_id": p.command.id,
            "subject": p.command.subject,
            "attempt": p.attempt,
            "phase": p.phase,
        })
    });
    Ok(Json(json!({
        "id": s.id,
        "definition": { "name": s.definition.name, "version": s.definition.version, "hash": s.definition.hash },
        "state": s.state,
        "status": s.status,
        "terminal": s.terminal,
        "version": s.version,
        "pending_command": pending,
        "next_deadline": s.deadline().map(|d| rfc3339(d.0 * 1000)),
        "data": s.data,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
    })))
}

/// `POST /sagas/{id}/events` `{"name": "…", "data": {…}}`: delivers a named
/// event to the saga. `202` when it moved the saga, `409` when the saga's
/// state has no transition for it (or has finished), `404` for no saga.
pub async fn send_event(State(state): State<AppState>, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id)?;
    let fields = json_object(&read_body(body, state.max_body_bytes)?)?;
    let name = match fields.get("name") {
        Some(Value::String(name)) if !name.is_empty() && name.len() <= 100 => name.clone(),
        Some(Value::String(_)) => return Err(ApiError::field("name", "must be 1 to 100 characters")),
        Some(_) => return Err(ApiError::field("name", "must be a string")),
        None => return Err(ApiError::field("name", "is required")),
    };
    let data = fields.get("data").cloned().unwrap_or(Value::Null);
    let input = sagas::Input::Event { name: name.clone(), data };
    match state.runtime.advance(id, input, format!("event:{name}")).await? {
        Stepped::Applied => Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "event": name })))),
        Stepped::Ignored(why) => Err(ApiError::Conflict(why.to_string())),
        Stepped::UnknownSaga => Err(ApiError::NotFound(format!("saga {id} not found"))),
    }
}
