//! The gate in front of new work: a request that would start a saga (or
//! step one from outside) is answered at once, before its body is read,
//! when this replica is full (`429`) or stopping (`503`), each with a
//! `Retry-After`. Its place is taken only once its body is in
//! ([`Admitted::ticket`]), so a client slow to send one holds none.
//! Replies from participants and due timers never pass here: they finish
//! sagas already accepted.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::admission::{Refusal, Ticket};

/// Routes whose `POST` is new work.
const INTAKE: &[&str] = &["/", "/orders", "/sagas/{key}", "/sagas/{id}/events"];

/// A request the gate let through; its handler takes its place in flight
/// once it has read the body.
#[derive(Clone)]
pub struct Admitted {
    route: String,
}

impl Admitted {
    /// A place in flight, for the saga the request starts (or for the
    /// request itself), or the `429` that says there is none.
    pub fn ticket(&self, state: &AppState) -> Result<Ticket, ApiError> {
        state.runtime.admission().try_admit().map_err(|Refusal::Full { limit }| {
            shed_count(&self.route, "overload");
            ApiError::Overloaded(limit)
        })
    }
}

fn shed_count(route: &str, reason: &'static str) {
    metrics::counter!("eso_requests_shed_total", "route" => route.to_string(), "reason" => reason).increment(1);
}

pub async fn admit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let Some(route) = route.filter(|r| request.method() == Method::POST && INTAKE.contains(&r.as_str())) else {
        return next.run(request).await;
    };
    if state.stopping.is_cancelled() {
        shed_count(&route, "stopping");
        return ApiError::Stopping.into_response();
    }
    let admission = state.runtime.admission();
    if admission.full() {
        shed_count(&route, "overload");
        return ApiError::Overloaded(admission.limit()).into_response();
    }
    request.extensions_mut().insert(Admitted { route });
    next.run(request).await
}
