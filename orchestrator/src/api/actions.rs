//! Operator actions on one saga: retry its pending command now, cancel it
//! the way its definition says, or resume a saga that ended in failure
//! into one of its repair states. Each is an event in the saga's stream
//! (with the reason, the operator and the time), so the history is the
//! audit log; whether it is allowed is the machine's decision.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use sagas::{Act, Action, Ignored};
use serde_json::{Map, Value, json};

use super::auth::Operator;
use super::sagas::parse_id;
use super::{ApiError, AppState, json_request, request_key, truncate};
use crate::runtime::Stepped;

/// Longest reason kept with an action.
pub const MAX_REASON_CHARS: usize = 500;

/// `POST /sagas/{id}/actions/{retry|cancel|resume}` `{"reason": "…", "to": "…"}`.
pub async fn act(
    Operator(operator): Operator,
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id)?;
    let fields = json_request(&headers, body, state.max_body_bytes)?.fields;
    let (action, reason) = parse(&action, &fields)?;
    let name = action.name();
    // A key names one action: the same key on another action is another request.
    let key = request_key(&headers, &fields)?.map(|(key, _)| format!("request:{name}:{key}"));
    tracing::Span::current().record("saga.id", tracing::field::display(id));
    match state.runtime.operate(id, Act { action, reason, operator, key }).await? {
        Stepped::Applied { state: now, events } => Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "action": name, "state": now, "events": events })))),
        Stepped::Ignored(Ignored::Repeated(_)) => {
            let row = state.store.load(id).await?.ok_or_else(|| ApiError::NotFound(format!("saga {id} not found")))?;
            Ok((StatusCode::OK, Json(json!({ "id": id, "action": name, "state": row.saga.state, "events": [], "repeated": true }))))
        }
        Stepped::Ignored(why) => Err(ApiError::Conflict(format!("{name} refused: {why}"))),
        Stepped::UnknownSaga => Err(ApiError::NotFound(format!("saga {id} not found"))),
    }
}

/// A request's `reason`, trimmed: required, at most [`MAX_REASON_CHARS`].
pub(crate) fn reason(fields: &Map<String, Value>) -> Result<String, ApiError> {
    match fields.get("reason") {
        Some(Value::String(r)) if r.trim().is_empty() => Err(ApiError::field("reason", "must not be empty")),
        Some(Value::String(r)) if r.chars().count() > MAX_REASON_CHARS => {
            Err(ApiError::field("reason", format!("must be at most {MAX_REASON_CHARS} characters")))
        }
        Some(Value::String(r)) if r.chars().any(|c| c.is_control() && c != '\n') => Err(ApiError::field("reason", "must not contain control characters")),
        Some(Value::String(r)) => Ok(r.trim().to_string()),
        Some(_) => Err(ApiError::field("reason", "must be a string")),
        None => Err(ApiError::field("reason", "is required: say why, for the saga's history")),
    }
}

/// The action a request names, and its reason; field errors say what is wrong.
pub(crate) fn parse(action: &str, fields: &Map<String, Value>) -> Result<(Action, String), ApiError> {
    let known: &[&str] = match action {
        "retry" | "cancel" => &["reason"],
        "resume" => &["reason", "to"],
        other => return Err(ApiError::NotFound(format!("no action {:?}; the actions are retry, cancel and resume", truncate(other)))),
    };
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::field(unknown, format!("is not a field of {action} (it takes {})", known.join(", "))));
    }
    let reason = reason(fields)?;
    let action = match action {
        "retry" => Action::Retry,
        "cancel" => Action::Cancel,
        _ => match fields.get("to") {
            Some(Value::String(to)) if !to.is_empty() && to.len() <= 100 => Action::Resume { to: to.clone() },
            Some(Value::String(_)) => return Err(ApiError::field("to", "must be a state name of 1 to 100 characters")),
            Some(_) => return Err(ApiError::field("to", "must be a string")),
            None => return Err(ApiError::field("to", "is required: the state to resume the saga in")),
        },
    };
    Ok((action, reason))
}
