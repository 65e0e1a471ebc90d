//! Orders: create (starting the order saga), read, history, saga state.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiError, AppState, json_object, read_body};
use crate::clock::rfc3339;
use crate::domain::{Amount, Description, NewOrder};
use crate::runtime::Started;
use crate::store::OrderRow;

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 200;
/// Longest `?wait=`: a waiting request holds a connection and a task.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting request re-reads the order anyway: a saga finished
/// by another replica wakes nobody here. Every waiting read costs a query
/// this often, so not much more often than a replica's client would notice.
const RECHECK: Duration = Duration::from_millis(500);

/// `POST /`: `{"amount": 207.00, "description": "…"}` → `201 {"id": "…"}`.
pub async fn create(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = read_body(body, state.max_body_bytes)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let order = parse_order(&body)?;
    let key = idempotency_key(&headers)?;
    match state.runtime.start_order(&order, key).await? {
        Started::Created(id) => Ok((StatusCode::CREATED, Json(json!({ "id": id })))),
        Started::Existing(id) => Ok((StatusCode::OK, Json(json!({ "id": id })))),
    }
}

/// Turns the body into a [`NewOrder`], collecting every field's problems.
fn parse_order(body: &[u8]) -> Result<NewOrder, ApiError> {
    let fields = json_object(body)?;
    let mut errors: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let amount = match fields.get("amount") {
        None | Some(Value::Null) => Err("is required".to_string()),
        Some(Value::Number(n)) => Amount::parse(&n.to_string()),
        Some(Value::String(_)) => Err("must be a number, not a string".to_string()),
        Some(_) => Err("must be a number".to_string()),
    };
    let description = match fields.get("description") {
        None | Some(Value::Null) => Err("is required".to_string()),
        Some(Value::String(s)) => Description::parse(s),
        Some(_) => Err("must be a string".to_string()),
    };
    if let Err(e) = &amount {
        errors.entry("amount").or_default().push(e.clone());
    }
    if let Err(e) = &description {
        errors.entry("description").or_default().push(e.clone());
    }
    match (amount, description) {
        (Ok(amount), Ok(description)) => Ok(NewOrder { amount, description }),
        _ => Err(ApiError::Fields(errors)),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = value.to_str().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::BadRequest(format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} characters")));
    }
    Ok(Some(key.to_string()))
}

/// `GET /?id=…`, the original read endpoint.
pub async fn get_by_query(State(state): State<AppState>, Query(params): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let id = params.get("id").map(|s| s.trim()).unwrap_or_default();
    if id.is_empty() {
        return Err(ApiError::BadRequest("id param must not be empty".into()));
    }
    order(&state, parse_id(id)?, wait(&params)?).await
}

pub async fn get_by_path(State(state): State<AppState>, Path(id): Path<String>, Query(params): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    order(&state, parse_id(&id)?, wait(&params)?).await
}

/// `?wait=5s`: answer once the saga has finished, or when the wait is up,
/// or when the server stops, whichever comes first (the status says which).
fn wait(params: &HashMap<String, String>) -> Result<Duration, ApiError> {
    let Some(raw) = params.get("wait") else { return Ok(Duration::ZERO) };
    let wait = humantime::parse_duration(raw.trim())
        .map_err(|_| ApiError::BadRequest(format!("wait must be a duration such as 5s or 250ms, not {:?}", truncate(raw))))?;
    if wait > MAX_WAIT {
        return Err(ApiError::BadRequest(format!("wait must be at most {}", humantime::format_duration(MAX_WAIT))));
    }
    Ok(wait)
}

async fn order(state: &AppState, id: Uuid, wait: Duration) -> Result<Json<Value>, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    // With no room to wait (see `finishes::MAX_WATCHES`), answer at once.
    let watch = if wait.is_zero() { None } else { state.runtime.watch(id) };
    loop {
        let woken = watch.as_ref().map(|w| w.notified());
        let row = state.store.order(id).await?.ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
        let now = tokio::time::Instant::now();
        let Some(woken) = woken.filter(|_| !row.finished && now < deadline && !state.stopping.is_cancelled()) else {
            return Ok(Json(order_json(&row)));
        };
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep_until(deadline.min(now + RECHECK)) => {}
            () = state.stopping.cancelled() => {}
        }
    }
}

fn order_json(o: &OrderRow) -> Value {
    json!({
        "id": o.id,
        "amount": Amount::from_cents(o.amount_cents).to_string(),
        "user_id": o.user_id,
        "payee_id": o.payee_id,
        "description": o.description,
        "status": o.status,
        "created_at": rfc3339(o.created_at),
        "updated_at": rfc3339(o.updated_at),
    })
}

/// `GET /orders/{id}/events`: the order's history, oldest first.
pub async fn events(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let events = state.store.stream(id).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound(format!("order {id} not found")));
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

pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("id must be a UUID, not {:?}", truncate(id))))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
