//! `POST /actions`: one operator action on every saga a list filter
//! matches, as a recorded job (`orchestrator::jobs`); `GET /actions/{job}`
//! follows it.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::auth::{CanRead, Operator};
use super::list::find;
use super::sagas::parse_id;
use super::{ApiError, AppState, json_request, request_key, truncate};
use sagas::Action;
use uuid::Uuid;

use crate::jobs::{self, Created, DEFAULT_RATE, MAX_MATCHED, MAX_RATE, NewJob};

/// Sagas read per page while matching a job's filter.
const PAGE: u32 = 500;

/// `POST /actions` `{"action", "reason", "to"?, "filter": {…}, "rate"?}` → `202 {job…}`.
pub async fn create(
    Operator(operator): Operator,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut fields = json_request(&headers, body, state.max_body_bytes)?.fields;
    let key = request_key(&headers, &fields)?;
    if let Some(found) = repeated(&state, &key).await? {
        return answer(found);
    }
    let action = match fields.remove("action") {
        Some(Value::String(a)) => a,
        Some(_) => return Err(ApiError::field("action", "must be a string: retry, cancel or resume")),
        None => return Err(ApiError::field("action", "is required: retry, cancel or resume")),
    };
    let filter = match fields.remove("filter") {
        Some(Value::Object(f)) => f,
        Some(_) => {
            return Err(ApiError::field("filter", "must be an object of GET /sagas parameters, e.g. {\"definition\": \"order\", \"state\": \"payment\"}"));
        }
        None => return Err(ApiError::field("filter", "is required: the sagas to act on, as GET /sagas parameters (an empty object matches every saga)")),
    };
    let rate = rate(fields.remove("rate"))?;
    let (action, reason) = super::actions::parse(&action, &fields)?;
    let sagas = matching(&state, &filter).await?;
    answer(jobs::create(&state.store, NewJob { action, reason, operator, filter: Value::Object(filter), rate, sagas, key }).await?)
}

/// `POST /definitions/{name}/migrations` `{"from", "to", "reason", "filter"?, "rate"?}`
/// → `202 {job…}`: a job moving the live sagas of version `from` (those of
/// them the filter matches) onto version `to`, as `to`'s `[migrate.<from>]`
/// mapping says. `GET /actions/{job}` follows it like any other.
pub async fn migrate(
    Operator(operator): Operator,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut fields = json_request(&headers, body, state.max_body_bytes)?.fields;
    let key = request_key(&headers, &fields)?.map(|(key, fingerprint)| (key, format!("{name}:{fingerprint}")));
    if let Some(found) = repeated(&state, &key).await? {
        return answer(found);
    }
    let version = |fields: &mut Map<String, Value>, key: &str| match fields.remove(key) {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| ApiError::field(key, "must be a version number")),
        Some(_) => Err(ApiError::field(key, "must be a version number")),
        None => Err(ApiError::field(key, "is required: the version number")),
    };
    let (from, to) = (version(&mut fields, "from")?, version(&mut fields, "to")?);
    let mut filter = match fields.remove("filter") {
        None => Map::new(),
        Some(Value::Object(f)) => f,
        Some(_) => return Err(ApiError::field("filter", "must be an object of GET /sagas parameters, e.g. {\"state\": \"delivery\"}")),
    };
    let rate = rate(fields.remove("rate"))?;
    let reason = super::actions::reason(&fields)?;
    if let Some(unknown) = fields.keys().find(|k| k.as_str() != "reason") {
        return Err(ApiError::field(unknown, "is not a field of a migration (it takes from, to, reason, filter, rate)"));
    }
    for (key, value) in [("definition", json!(name)), ("version", json!(from))] {
        if filter.contains_key(key) {
            return Err(ApiError::field(&format!("filter.{key}"), "is the migration's own (the name in the path, `from`): leave it out"));
        }
        filter.insert(key.into(), value);
    }
    let registry = state.runtime.registry();
    let loaded = |v: u32| registry.version(&name, v).ok_or_else(|| ApiError::NotFound(format!("version {v} of saga {:?} is not loaded", truncate(&name))));
    let (_, new) = (loaded(from)?, loaded(to)?);
    if !new.migrations.contains_key(&from) {
        return Err(ApiError::Unprocessable(format!("version {to} of {:?} declares no [migrate.{from}] mapping", truncate(&name))));
    }
    // Finished sagas stay on the version they finished on.
    filter.insert("terminal".into(), json!(false));
    let sagas = matching(&state, &filter).await?;
    let action = Action::Migrate { from, to };
    answer(jobs::create(&state.store, NewJob { action, reason, operator, filter: Value::Object(filter), rate, sagas, key }).await?)
}

/// The job a repeat of the request (a client's retry, a second click)
/// created, found before anything is matched again.
async fn repeated(state: &AppState, key: &Option<(String, String)>) -> Result<Option<Created>, ApiError> {
    match key {
        Some((key, fingerprint)) => Ok(jobs::by_key(&state.store, key, fingerprint).await?),
        None => Ok(None),
    }
}

fn answer(created: Created) -> Result<(StatusCode, Json<Value>), ApiError> {
    match created {
        Created::New(job) => {
            tracing::info!(job = %job.job, action = job.action.name(), matched = job.matched, operator = %job.operator, "job created");
            Ok((StatusCode::ACCEPTED, Json(json!(job))))
        }
        Created::Existing(job) => Ok((StatusCode::OK, Json(json!(job)))),
        Created::KeyReused(job) => Err(ApiError::Unprocessable(format!(
            "this Idempotency-Key was given for another request, which created job {job}; send a new key for a new request"
        ))),
    }
}

fn rate(given: Option<Value>) -> Result<u32, ApiError> {
    match given {
        None => Ok(DEFAULT_RATE),
        Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if (1..=MAX_RATE).contains(&n) => Ok(n),
            _ => Err(ApiError::field("rate", format!("must be a whole number of sagas per second from 1 to {MAX_RATE}"))),
        },
        Some(_) => Err(ApiError::field("rate", "must be a number")),
    }
}

/// Every saga the filter matches now, at most [`MAX_MATCHED`].
async fn matching(state: &AppState, filter: &Map<String, Value>) -> Result<Vec<Uuid>, ApiError> {
    let mut params = query(filter)?;
    params.insert("limit".into(), PAGE.to_string());
    let mut sagas = Vec::new();
    loop {
        let (page, next) = find(state, &params).await?;
        sagas.extend(page.iter().map(|s| s.id));
        if sagas.len() > MAX_MATCHED {
            return Err(ApiError::Unprocessable(format!("the filter matches more than {MAX_MATCHED} sagas; narrow it (by state, version, time…)")));
        }
        match next {
            Some(cursor) => params.insert("after".into(), cursor.to_string()),
            None => break,
        };
    }
    Ok(sagas)
}

/// A job's filter as the query of `GET /sagas`; paging is the job's own.
fn query(filter: &Map<String, Value>) -> Result<HashMap<String, String>, ApiError> {
    filter
        .iter()
        .map(|(key, value)| {
            if key == "limit" || key == "after" {
                return Err(ApiError::field(&format!("filter.{}", truncate(key)), "is not a filter: a job acts on every match"));
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(ApiError::field(&format!("filter.{}", truncate(key)), "must be a string, number or boolean")),
            };
            Ok((key.clone(), text))
        })
        .collect()
}

/// `GET /actions/{job}`: the job's counts, and why sagas were refused.
pub async fn one(_: CanRead, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let job = jobs::get(&state.store, id).await?.ok_or_else(|| ApiError::NotFound(format!("action job {id} not found")))?;
    let problems: Vec<Value> = jobs::problems(&state.store, id, 50)
        .await?
        .into_iter()
        .map(|(saga, result, detail)| json!({ "saga_id": saga, "result": result, "detail": detail }))
        .collect();
    let mut body = json!(job);
    body["problems"] = Value::Array(problems);
    Ok(Json(body))
}

/// `GET /actions`: the newest jobs.
pub async fn list(_: CanRead, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "jobs": jobs::recent(&state.store, 50).await? })))
}
