//! The seed API's routes: orders, an adapter over the order saga. Their
//! bodies are the original system's, unchanged.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::{Value, json};
use uuid::Uuid;

use super::sagas::{history, key_reused, parse_id, start_key};
use super::{Admitted, ApiError, AppState, json_request, wait};
use crate::orders;
use crate::runtime::Started;

/// `POST /`: `{"amount": 207.00, "description": "…"}` → `201 {"id": "…"}`;
/// the order saga's start, with the seed API's body and answer.
pub async fn create(
    State(state): State<AppState>,
    admitted: Option<Extension<Admitted>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = json_request(&headers, body, state.max_body_bytes)?;
    let order = orders::parse(&body.fields, &body.bytes).map_err(ApiError::Fields)?;
    let key = start_key(&headers, &body.fields)?;
    loaded(&state)?;
    let ticket = admitted.map(|a| a.ticket(&state)).transpose()?;
    let started = state.runtime.start(orders::DEFINITION, orders::inputs(&order), key, ticket).await?;
    let (status, id) = match started {
        Started::Created(id, _) => (StatusCode::CREATED, id),
        Started::Existing(id) => (StatusCode::OK, id),
        Started::KeyReused(id) => return Err(key_reused(id)),
    };
    tracing::Span::current().record("order.id", tracing::field::display(id));
    Ok((status, Json(json!({ "id": id }))))
}

/// The seed routes need the order saga; without it they say so.
fn loaded(state: &AppState) -> Result<(), ApiError> {
    match state.runtime.registry().latest(orders::DEFINITION) {
        Some(_) => Ok(()),
        None => Err(ApiError::Unavailable(format!("no `{}` saga definition is loaded, so orders are not taken", orders::DEFINITION))),
    }
}

/// `GET /?id=…`, the original read endpoint.
pub async fn get_by_query(State(state): State<AppState>, Query(params): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let id = params.get("id").map(|s| s.trim()).unwrap_or_default();
    if id.is_empty() {
        return Err(ApiError::BadRequest("id param must not be empty".into()));
    }
    order(&state, parse_id(id)?, wait::parse(&params)?).await
}

pub async fn get_by_path(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    order(&state, parse_id(&id)?, wait::parse(&params)?).await
}

async fn order(state: &AppState, id: Uuid, wait_for: Duration) -> Result<Json<Value>, ApiError> {
    loaded(state)?;
    let read = || async move { Ok(orders::read(&state.store, id).await?.map(|o| (o.to_json(), o.finished))) };
    Ok(Json(wait::until_finished(state, id, wait_for, "order", read).await?))
}

/// `GET /orders/{id}/events`: the order's history, oldest first.
pub async fn events(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    loaded(&state)?;
    history(&state, &id, Some(orders::DEFINITION), "order").await
}
