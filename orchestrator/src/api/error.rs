//! Every error the API can answer, mapped to a status and a JSON body in
//! exactly one place, so a new error cannot leak as a 500 by accident.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Field errors, keyed by field, as clients of the original API expect.
    #[error("invalid fields")]
    Fields(BTreeMap<String, Vec<String>>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// No token, or not one of ours.
    #[error("{0}")]
    Unauthorized(String),
    /// A token (or a client) that may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// A client too slow to send its request (`serve.rs`).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// Past the admission limit (`admission.rs`): this many sagas in flight.
    #[error("this replica has {0} sagas in flight, all it takes on at once; retry after the Retry-After seconds, with jitter")]
    Overloaded(usize),
    #[error("this replica is stopping; retry, and another replica (or this one, restarted) will answer")]
    Stopping,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Fields(BTreeMap::from([(field.to_string(), vec![message.into()])]))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Fields(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) | ApiError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let challenge = matches!(self, ApiError::Unauthorized(_));
        let retry = matches!(self, ApiError::Overloaded(_) | ApiError::Stopping);
        // The rest of a late body is not worth waiting for: say the connection ends here.
        let close = matches!(self, ApiError::RequestTimeout(_));
        let body = match self {
            ApiError::Fields(fields) => json!({ "error": fields }),
            ApiError::Internal(detail) => {
                // The detail goes to the log, not to the client.
                tracing::error!(error = %detail, "internal error");
                json!({ "error": "internal error" })
            }
            other => json!({ "error": other.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if challenge {
            response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        if retry {
            // One second: a saga here takes milliseconds, so places free up
            // well within it; clients add their own jitter (README).
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        if close {
            response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<crate::runtime::RuntimeError> for ApiError {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        match e {
            crate::runtime::RuntimeError::Store(crate::store::StoreError::Database(detail) | crate::store::StoreError::Retryable(detail)) => {
                tracing::warn!(error = %detail, "store unavailable");
                ApiError::Unavailable("the event store is unavailable; try again".into())
            }
            crate::runtime::RuntimeError::Store(crate::store::StoreError::Unconfirmed(detail)) => {
                tracing::warn!(error = %detail, "commit not confirmed");
                ApiError::Unavailable(
                    "the event store did not confirm the commit, so this request may have been recorded: look before sending it again, or send a start again with the same Idempotency-Key to get the saga it started (without one, a retry may start a second saga)".into(),
                )
            }
            crate::runtime::RuntimeError::Store(crate::store::StoreError::Closed) => ApiError::Unavailable("shutting down".into()),
            crate::runtime::RuntimeError::Contended(id) => ApiError::Unavailable(format!("saga {id} is changing too fast to step; try again")),
            crate::runtime::RuntimeError::DefinitionNotLoaded(id, definition) => {
                ApiError::Unavailable(format!("saga {id} runs on {definition}, which this replica has not loaded"))
            }
            crate::runtime::RuntimeError::NoDefinition(name) => ApiError::NotFound(format!("no saga definition named `{name}` is loaded")),
            crate::runtime::RuntimeError::Inputs(fields) => ApiError::Fields(fields),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::runtime::RuntimeError::Store(e).into()
    }
}
