//! The HTTP API: routes and the shared state; the layers around them (a
//! server span per request, metrics, timeout, body limit) are in `layers.rs`.

mod actions;
mod admit;
pub mod auth;
mod console;
mod definitions;
mod diagram;
mod error;
mod health;
mod jobs;
mod layers;
pub mod list;
mod orders;
mod sagas;
mod wait;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use admit::Admitted;
pub use error::ApiError;
pub use wait::MAX_WAIT;

use crate::bus::Bus;
use crate::config::TraceUrl;
use crate::runtime::Runtime;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub runtime: Runtime,
    pub store: Store,
    pub bus: Bus,
    pub telemetry: Arc<observability::Telemetry>,
    pub max_body_bytes: usize,
    /// Where `GET /sagas/{id}` links a saga's trace (`ESO_TRACE_URL`).
    pub trace_url: Option<TraceUrl>,
    /// Cancelled when the server stops taking requests: reads waiting for
    /// a saga answer then, so they do not hold up the shutdown.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Who may list sagas, open the console and act (see `auth.rs`).
    pub tokens: Arc<auth::Tokens>,
}

pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let routes = Router::new()
        .route("/", get(orders::get_by_query).post(orders::create))
        .route("/orders", axum::routing::post(orders::create))
        .route("/orders/{id}", get(orders::get_by_path))
        .route("/orders/{id}/events", get(orders::events))
        .route("/sagas", get(list::list))
        // A fixed segment wins over `/sagas/{key}`: a definition named
        // `counts` could not be started with `POST /sagas/counts`.
        .route("/sagas/counts", get(list::counts))
        // One route for both: `{key}` is a definition name to POST, a saga id to GET.
        .route("/sagas/{key}", get(sagas::saga).post(sagas::start))
        .route("/sagas/{id}/events", get(sagas::events).post(sagas::send_event))
        .route("/sagas/{id}/actions/{action}", axum::routing::post(actions::act))
        .route("/sagas/{id}/diagram.svg", get(diagram::saga))
        .route("/actions", get(jobs::list).post(jobs::create))
        .route("/actions/{job}", get(jobs::one))
        .route("/definitions", get(definitions::list))
        .route("/definitions/{name}", get(definitions::one))
        .route("/definitions/{name}/migrations", axum::routing::post(jobs::migrate))
        .route("/definitions/{name}/versions/{version}/retire", axum::routing::post(definitions::retire))
        .route("/definitions/{name}/diagram.svg", get(diagram::definition))
        .route("/ui", get(console::index))
        .route("/ui/", get(console::index))
        .route("/ui/app.js", get(console::app))
        .route("/ui/style.css", get(console::style))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    // After routing, so the gate knows the route; inside the layers, so a
    // shed request is still traced and counted.
    let routes = routes.route_layer(axum::middleware::from_fn_with_state(state.clone(), admit::admit));
    layers::around(routes, limit).with_state(state)
}

/// The request body, or the error that says why it could not be read
/// (`413` past the configured limit, `408` past the body timeout).
pub(crate) fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if let Some(timed_out) = crate::serve::body_timed_out(&rejection) {
            ApiError::RequestTimeout(timed_out.to_string())
        } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest(format!("cannot read body: {rejection}"))
        }
    })
}

/// A JSON request's body: the object, and the bytes it was read from.
pub(crate) struct JsonBody {
    pub fields: Map<String, Value>,
    pub bytes: Bytes,
}

/// A JSON request's body as an object: `415` for another content type,
/// `413` past the limit, `400` for anything but a JSON object. Every route
/// that takes a body reads it through here, so they share one rule.
pub(crate) fn json_request(headers: &HeaderMap, body: Result<Bytes, BytesRejection>, limit: usize) -> Result<JsonBody, ApiError> {
    let body = read_body(body, limit)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(JsonBody { fields: json_object(&body)?, bytes: body })
}

/// The body as a JSON object, or a `400` that says what is wrong with it.
pub(crate) fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::BadRequest("body must be a JSON object".into())),
        Err(e) => Err(ApiError::BadRequest(format!("malformed JSON: {e}"))),
    }
}

/// Longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 200;

/// The request's `Idempotency-Key`, if it sent one, with a fingerprint of
/// its body: the body's JSON with its keys sorted, so a retry that
/// reorders fields is still the same request. Every route that takes a
/// key reads it through here.
pub(crate) fn request_key(headers: &HeaderMap, fields: &Map<String, Value>) -> Result<Option<(String, String)>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::BadRequest(format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} characters")));
    }
    // serde_json's maps are sorted (no `preserve_order`), so this is canonical.
    let canonical = Value::Object(fields.clone()).to_string();
    let fingerprint = sha256_hex(canonical.as_bytes());
    Ok(Some((key.to_string(), fingerprint)))
}

/// The SHA-256 of `bytes`, in hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// At most 64 characters of `s`, for echoing input in an error.
pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
