//! Any saga: start one of a loaded definition, read it (waiting for its
//! end if asked) with what an operator may do to it, read its history, and
//! send one an outside event (the `on_event` transitions of its
//! definition). Finding sagas is `list.rs`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{Admitted, ApiError, AppState, JsonBody, json_request, truncate, wait};
use crate::clock::rfc3339;
use crate::orders;
use crate::runtime::{StartKey, Started, Stepped};

/// Longest event name a request may name.
const MAX_NAME_LEN: usize = 100;

/// `POST /sagas/{name}` with the saga's inputs → `201 {"id", "definition"}`.
pub async fn start(
    State(state): State<AppState>,
    admitted: Option<Extension<Admitted>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let JsonBody { fields, bytes } = json_request(&headers, body, state.max_body_bytes)?;
    let def =
        state.runtime.registry().latest(&name).ok_or_else(|| ApiError::NotFound(format!("no saga definition named {:?} is loaded", truncate(&name))))?.clone();
    let key = start_key(&headers, &fields)?;
    // The order saga's inputs go through its adapter, so an order started
    // here is the order `POST /` would have made.
    let inputs = if def.name == orders::DEFINITION { orders::prepare(fields, &bytes).map_err(ApiError::Fields)? } else { fields };
    let ticket = admitted.map(|a| a.ticket(&state)).transpose()?;
    match state.runtime.start(&def.name, inputs, key, ticket).await? {
        Started::Created(id, definition) => {
            let body = json!({ "id": id, "definition": { "name": definition.name, "version": definition.version, "hash": definition.hash } });
            Ok((StatusCode::CREATED, Json(body)))
        }
        Started::Existing(id) => {
            let row = state.store.load(id).await?.ok_or_else(|| ApiError::Internal(format!("saga {id} of an idempotency key has no row")))?;
            let d = &row.saga.definition;
            Ok((StatusCode::OK, Json(json!({ "id": id, "definition": { "name": d.name, "version": d.version, "hash": d.hash } }))))
        }
        Started::KeyReused(id) => Err(key_reused(id)),
    }
}

/// A start's `Idempotency-Key` (see [`super::request_key`]).
pub(super) fn start_key(headers: &HeaderMap, fields: &Map<String, Value>) -> Result<Option<StartKey>, ApiError> {
    Ok(super::request_key(headers, fields)?.map(|(key, fingerprint)| StartKey { key, fingerprint }))
}

pub(super) fn key_reused(id: Uuid) -> ApiError {
    ApiError::Unprocessable(format!("this Idempotency-Key was given for another request, which started saga {id}; send a new key for a new request"))
}

/// `GET /sagas/{id}` (`?wait=5s` answers once it has finished): where the
/// saga is and what it waits for.
pub async fn saga(State(state): State<AppState>, Path(id): Path<String>, Query(params): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let wait_for = wait::parse(&params)?;
    let read = || async {
        let Some(row) = state.store.load(id).await? else { return Ok(None) };
        let s = &row.saga;
        // A saga whose version is not loaded (its file was removed) can
        // still be read; nothing can be done to it until it is loaded again,
        // and what its command is sent as is that file's to say.
        let def = state.runtime.registry().get(&s.definition);
        let command = def.and_then(|def| sagas::machine::command(def, s));
        let pending = s.pending.as_ref().map(|p| {
            json!({
                "command_id": p.command_id,
                "subject": command.as_ref().map(|c| &c.subject),
                "attempt": p.attempt,
                "phase": p.phase,
                "deadline": rfc3339(p.deadline.0.saturating_mul(1000)),
                "timeout_ms": command.as_ref().map(|c| c.timeout_ms),
            })
        });
        let actions = def.map(|def| sagas::allowed_actions(def, s)).unwrap_or_default();
        let trace_id = row.trace.get("traceparent").and_then(|tp| trace_id(tp));
        let trace_url = trace_id.zip(state.trace_url.as_ref()).map(|(id, url)| url.link(id));
        let body = json!({
            "id": s.id,
            "definition": { "name": s.definition.name, "version": s.definition.version, "hash": s.definition.hash },
            "state": s.state,
            "status": s.status,
            "terminal": s.terminal,
            "version": s.version,
            "pending_command": pending,
            "next_deadline": s.deadline().map(|d| rfc3339(d.0.saturating_mul(1000))),
            "actions": actions,
            "data": s.data,
            "trace_id": trace_id,
            "trace_url": trace_url,
            "created_at": rfc3339(row.created_at),
            "updated_at": rfc3339(row.updated_at),
        });
        Ok(Some((body, s.terminal)))
    };
    Ok(Json(wait::until_finished(&state, id, wait_for, "saga", read).await?))
}

/// `GET /sagas/{id}/events`: the saga's history, oldest first.
pub async fn events(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    history(&state, &id, None, "saga").await
}

/// A stream's events as the API shows them; with `definition`, only a
/// saga of that definition has them. `what` names it in a `404`.
pub(super) async fn history(state: &AppState, id: &str, definition: Option<&str>, what: &str) -> Result<Json<Value>, ApiError> {
    let id = parse_id(id)?;
    let events = state.store.stream(id).await?;
    // The first event is the start, which names the definition.
    let of = |name: &str| events.first().and_then(|e| e.data.pointer("/definition/name")).and_then(Value::as_str) == Some(name);
    if events.is_empty() || definition.is_some_and(|name| !of(name)) {
        return Err(ApiError::NotFound(format!("{what} {id} not found")));
    }
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            let trace_id = e.metadata.pointer("/trace/traceparent").and_then(Value::as_str).and_then(trace_id);
            // An event the machine of this release cannot read (a corrupt
            // row) is still shown; it only lacks what is read from it.
            let change = serde_json::from_value::<sagas::Change>(e.data.clone()).ok();
            json!({
                "event_id": e.event_id,
                "position": e.position,
                "version": e.version,
                "type": e.event_type,
                "recorded_at": rfc3339(e.recorded_at),
                "data": e.data,
                "attempt": change.as_ref().and_then(attempt),
                "operator": change.as_ref().and_then(sagas::Change::act).map(operator),
                "trace_id": trace_id,
                "causation_id": e.metadata.get("causation_id"),
            })
        })
        .collect();
    Ok(Json(Value::Array(events)))
}

/// `POST /sagas/{id}/events` `{"name": "…", "data": {…}}`: delivers a named
/// event to the saga. `202` when it moved the saga, `409` when the saga's
/// state has no transition for it (or has finished), `404` for no saga.
pub async fn send_event(
    State(state): State<AppState>,
    admitted: Option<Extension<Admitted>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id)?;
    let fields = json_request(&headers, body, state.max_body_bytes)?.fields;
    let name = match fields.get("name") {
        Some(Value::String(name)) if !name.is_empty() && name.len() <= MAX_NAME_LEN => name.clone(),
        Some(Value::String(_)) => return Err(ApiError::field("name", format!("must be 1 to {MAX_NAME_LEN} characters"))),
        Some(_) => return Err(ApiError::field("name", "must be a string")),
        None => return Err(ApiError::field("name", "is required")),
    };
    let data = fields.get("data").cloned().unwrap_or(Value::Null);
    // The event's place in flight, for as long as its step takes.
    let _ticket = admitted.map(|a| a.ticket(&state)).transpose()?;
    let input = sagas::Input::Event { name: name.clone(), data };
    match state.runtime.advance(id, input, format!("event:{name}")).await? {
        Stepped::Applied { .. } => Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "event": name })))),
        Stepped::Ignored(why) => Err(ApiError::Conflict(why.to_string())),
        Stepped::UnknownSaga => Err(ApiError::NotFound(format!("saga {id} not found"))),
    }
}

/// The attempt an event is about: the one that timed out or was sent again,
/// or that of the command a start or move sent.
fn attempt(change: &sagas::Change) -> Option<u32> {
    use sagas::Change::*;
    match change {
        AttemptTimedOut { attempt, .. } | Retried { attempt, .. } => Some(*attempt),
        Started { pending: Some(p), .. } | Moved { pending: Some(p), .. } | Migrated { pending: Some(p), .. } => Some(p.attempt),
        _ => None,
    }
}

/// Who did what, for an operator's event.
fn operator(act: &sagas::machine::Act) -> Value {
    let mut shown = json!({ "action": act.action.name(), "reason": act.reason, "by": act.operator });
    match &act.action {
        sagas::machine::Action::Resume { to } => shown["to"] = json!(to),
        sagas::machine::Action::Migrate { from, to } => {
            shown["from_version"] = json!(from);
            shown["to_version"] = json!(to);
        }
        _ => {}
    }
    shown
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`);
/// none for a malformed one or the all-zero id, which names no trace.
fn trace_id(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')).then_some(id)
}

pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("id must be a UUID, not {:?}", truncate(id))))
}

#[cfg(test)]
mod tests {
    use sagas::machine::{Act, Action};
    use serde_json::json;

    #[test]
    fn a_traceparent_gives_its_trace_id_unless_it_names_none() {
        assert_eq!(super::trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-short-00f067aa0ba902b7-01", "", "garbage"] {
            assert_eq!(super::trace_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_operator_event_shows_the_action_reason_operator_and_a_resumes_target() {
        let act = |action| Act { action, reason: "stuck".into(), operator: "ada".into(), key: Some("k".into()) };
        assert_eq!(super::operator(&act(Action::Retry)), json!({ "action": "retry", "reason": "stuck", "by": "ada" }));
        assert_eq!(
            super::operator(&act(Action::Resume { to: "refund".into() })),
            json!({ "action": "resume", "reason": "stuck", "by": "ada", "to": "refund" })
        );
    }
}
