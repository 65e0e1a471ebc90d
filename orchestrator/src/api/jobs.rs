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
    // A repeat of the request (a client's retry, a second click) finds the
    // job it created, before anything is matched again.
    let key = request_key(&headers, &fields)?;
    if let Some((key, fingerprint)) = &key
        && let Some(found) = jobs::by_key(&state.store, key, fingerprint).await?
    {
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
    let rate = match fields.remove("rate") {
        None => DEFAULT_RATE,
        Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if (1..=MAX_RATE).contains(&n) => n,
            _ => return Err(ApiError::field("rate", format!("must be a whole number of sagas per second from 1 to {MAX_RATE}"))),
        },
        Some(_) => return Err(ApiError::field("rate", "must be a number")),
    };
    let (action, reason) = super::actions::parse(&action, &fields)?;
    let mut params = query(&filter)?;
    params.insert("limit".into(), PAGE.to_string());
    let mut sagas = Vec::new();
    loop {
        let (page, next) = find(&state, &params).await?;
        sagas.extend(page.iter().map(|s| s.id));
        if sagas.len() > MAX_MATCHED {
            return Err(ApiError::Unprocessable(format!("the filter matches more than {MAX_MATCHED} sagas; narrow it (by state, version, time…)")));
        }
        match next {
            Some(cursor) => params.insert("after".into(), cursor.to_string()),
            None => break,
        };
    }
    answer(jobs::create(&state.store, NewJob { action, reason, operator, filter: Value::Object(filter), rate, sagas, key }).await?)
}

fn answer(created: Created) -> Result<(StatusCode, Json<Value>), ApiError> {
    match created {
        Created::New(job) => {
            tracing::info!(job = %job.job, action = job.action.name(), matched = job.matched, operator = %job.operator, "action job created");
            Ok((StatusCode::ACCEPTED, Json(json!(job))))
        }
        Created::Existing(job) => Ok((StatusCode::OK, Json(json!(job)))),
        Created::KeyReused(job) => Err(ApiError::Unprocessable(format!(
            "this Idempotency-Key was given for another request, which created job {job}; send a new key for a new request"
        ))),
    }
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
