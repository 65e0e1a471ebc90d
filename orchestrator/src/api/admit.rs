//! The gate in front of new work: a request that would start a saga (or
//! step one from outside) is answered at once, before its body is read,
//! when this replica is full (`429`) or stopping (`503`), each with a
//! `Retry-After`. Replies from participants and due timers never pass
//! here: they finish sagas already accepted.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::admission::{Refusal, Ticket};

/// Routes whose `POST` is new work.
const INTAKE: &[&str] = &["/", "/orders", "/sagas/{key}", "/sagas/{id}/events"];

/// The place in flight a request was given, for the handler to hand to
/// the saga it starts; dropped with the request otherwise.
#[derive(Clone)]
pub struct Admitted(Arc<Mutex<Option<Ticket>>>);

impl Admitted {
    pub fn take(&self) -> Option<Ticket> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

pub async fn admit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let Some(route) = route.filter(|r| request.method() == Method::POST && INTAKE.contains(&r.as_str())) else {
        return next.run(request).await;
    };
    let shed = |reason: &'static str, error: ApiError| {
        metrics::counter!("eso_requests_shed_total", "route" => route.clone(), "reason" => reason).increment(1);
        error.into_response()
    };
    if state.stopping.is_cancelled() {
        return shed("stopping", ApiError::Stopping);
    }
    match state.runtime.admission().try_admit() {
        Ok(ticket) => {
            request.extensions_mut().insert(Admitted(Arc::new(Mutex::new(Some(ticket)))));
            next.run(request).await
        }
        Err(Refusal::Full { limit }) => shed("overload", ApiError::Overloaded(limit)),
    }
}
