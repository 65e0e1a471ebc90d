//! Any saga: start one of a loaded definition, read it (waiting for its
//! end if asked), read its history, find sagas, and send one an outside
//! event (the `on_event` transitions of its definition).

use std::collections::{BTreeSet, HashMap};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{ApiError, AppState, JsonBody, json_request, truncate, wait};
use crate::clock::rfc3339;
use crate::orders;
use crate::runtime::{StartKey, Started, Stepped};
use crate::store::{Cursor, Filter, Listed};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 200;
/// Sagas in one page of `GET /sagas`, by default and at most.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;
/// Longest name, state or status a query may name.
const MAX_NAME_LEN: usize = 100;

/// `POST /sagas/{name}` with the saga's inputs → `201 {"id", "definition"}`.
pub async fn start(
    State(state): State<AppState>,
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
    match state.runtime.start(&def.name, inputs, key).await? {
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

/// The request's `Idempotency-Key`, with a fingerprint of its body: the
/// body's JSON with its keys sorted, so a retry that reorders fields is
/// still the same request.
pub(super) fn start_key(headers: &HeaderMap, fields: &Map<String, Value>) -> Result<Option<StartKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = value.to_str().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::BadRequest(format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} characters")));
    }
    // serde_json's maps are sorted (no `preserve_order`), so this is canonical.
    let canonical = Value::Object(fields.clone()).to_string();
    let fingerprint = Sha256::digest(canonical.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(StartKey { key: key.to_string(), fingerprint }))
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
        let pending = s.pending.as_ref().map(|p| {
            json!({
                "command_id": p.command.id,
                "subject": p.command.subject,
                "attempt": p.attempt,
                "phase": p.phase,
            })
        });
        let body = json!({
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
    let of = |name: &str| events.first().and_then(|e| e.metadata.pointer("/definition/name")).and_then(Value::as_str) == Some(name);
    if events.is_empty() || definition.is_some_and(|name| !of(name)) {
        return Err(ApiError::NotFound(format!("{what} {id} not found")));
    }
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            let trace_id = e.metadata.pointer("/trace/traceparent").and_then(Value::as_str).and_then(|tp| tp.split('-').nth(1));
            json!({
                "event_id": e.event_id,
                "position": e.position,
                "version": e.version,
                "type": e.event_type,
                "recorded_at": rfc3339(e.recorded_at),
                "data": e.data,
                "trace_id": trace_id,
                "causation_id": e.metadata.get("causation_id"),
            })
        })
        .collect();
    Ok(Json(Value::Array(events)))
}

/// `GET /sagas?definition=&status=&state=&terminal=&limit=&after=`: sagas,
/// newest first, a page at a time; `next` is the `after` of the next page.
pub async fn list(_: super::auth::CanRead, State(state): State<AppState>, Query(params): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let (found, next) = find(&state, &params).await?;
    let sagas: Vec<Value> = found
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "definition": { "name": s.definition, "version": s.version },
                "state": s.state,
                "status": s.status,
                "terminal": s.terminal,
                "created_at": rfc3339(s.created_at),
                "updated_at": rfc3339(s.updated_at),
            })
        })
        .collect();
    Ok(Json(json!({ "sagas": sagas, "next": next.map(|c| c.to_string()) })))
}

/// One page of the sagas `params` (the query of `GET /sagas`) asks for,
/// and the cursor of the next page if there may be one.
pub(super) async fn find(state: &AppState, params: &HashMap<String, String>) -> Result<(Vec<Listed>, Option<Cursor>), ApiError> {
    const KNOWN: [&str; 6] = ["definition", "status", "state", "terminal", "limit", "after"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!("unknown parameter {:?}; GET /sagas takes {}", truncate(unknown), KNOWN.join(", "))));
    }
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        match params.get(name).map(|v| v.trim()) {
            None | Some("") => Ok(None),
            Some(v) if v.len() > MAX_NAME_LEN => Err(ApiError::field(name, format!("must be at most {MAX_NAME_LEN} characters"))),
            Some(v) => Ok(Some(v.to_string())),
        }
    };
    let (definition, status, wanted_state) = (text("definition")?, text("status")?, text("state")?);
    let terminal = match params.get("terminal").map(|v| v.trim()) {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(ApiError::field("terminal", "must be true or false")),
    };
    let limit = match params.get("limit").map(|v| v.trim()) {
        None | Some("") => DEFAULT_LIMIT,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(ApiError::field("limit", format!("must be a whole number from 1 to {MAX_LIMIT}"))),
        },
    };
    let after = match params.get("after").map(|v| v.trim()) {
        None | Some("") => None,
        Some(v) => Some(v.parse::<Cursor>().map_err(|()| ApiError::field("after", "must be the `next` of an earlier page"))?),
    };

    let registry = state.runtime.registry();
    let names: BTreeSet<String> = match &definition {
        Some(name) if registry.latest(name).is_none() => {
            return Err(ApiError::NotFound(format!("no saga definition named {:?} is loaded", truncate(name))));
        }
        Some(name) => BTreeSet::from([name.clone()]),
        None => registry.iter().map(|d| d.name.clone()).collect(),
    };
    // Each (definition, status) pair is one walk of the status index: the
    // statuses a saga can show are those its definition's states name.
    // A state shows one status per version, so a state filter narrows the
    // walk to that status (or those, across versions).
    let mut filters = Vec::new();
    let mut known_state = wanted_state.is_none();
    for name in names {
        // Every loaded version's states: a saga shows one of them.
        let states: Vec<&sagas::definition::State> = registry.iter().filter(|d| d.name == name).flat_map(|d| d.states.values()).collect();
        let statuses: BTreeSet<String> = states
            .iter()
            .filter(|s| wanted_state.as_ref().is_none_or(|w| &s.name == w))
            .filter(|s| terminal.is_none_or(|t| s.terminal == t))
            .map(|s| s.status.clone())
            .filter(|s| status.as_ref().is_none_or(|wanted| s == wanted))
            .collect();
        known_state |= wanted_state.as_ref().is_some_and(|w| states.iter().any(|s| &s.name == w));
        for status in statuses {
            // A condition the status already implies is left out: with it,
            // Postgres may judge the rows rarer than they are and trade the
            // ordered walk of the index for a bitmap of every match.
            let showing: Vec<_> = states.iter().filter(|s| s.status == status).collect();
            let state = wanted_state.clone().filter(|w| showing.iter().any(|s| &s.name != w));
            let terminal = terminal.filter(|&t| showing.iter().any(|s| s.terminal != t));
            filters.push(Filter { definition: name.clone(), status, state, terminal, after, limit });
        }
    }
    if !known_state {
        return Err(ApiError::field("state", "no loaded definition has a state of that name"));
    }
    let pages = futures::future::try_join_all(filters.iter().map(|f| state.store.list(f))).await?;
    let mut found: Vec<Listed> = pages.into_iter().flatten().collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.cursor()));
    found.truncate(limit as usize);
    let next = (found.len() == limit as usize).then(|| found.last().map(Listed::cursor)).flatten();
    Ok((found, next))
}

/// `POST /sagas/{id}/events` `{"name": "…", "data": {…}}`: delivers a named
/// event to the saga. `202` when it moved the saga, `409` when the saga's
/// state has no transition for it (or has finished), `404` for no saga.
pub async fn send_event(
    State(state): State<AppState>,
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
    let input = sagas::Input::Event { name: name.clone(), data };
    match state.runtime.advance(id, input, format!("event:{name}")).await? {
        Stepped::Applied { .. } => Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "event": name })))),
        Stepped::Ignored(why) => Err(ApiError::Conflict(why.to_string())),
        Stepped::UnknownSaga => Err(ApiError::NotFound(format!("saga {id} not found"))),
    }
}

pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("id must be a UUID, not {:?}", truncate(id))))
}
