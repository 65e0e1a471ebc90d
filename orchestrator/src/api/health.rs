//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::AppState;

/// Alive: the process answers. Never checks dependencies, so a database
/// outage does not make Kubernetes restart every replica.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready: the store and the bus answer, the replica is not stopping, and
/// it has not shed a real share of its new work in the last seconds
/// (`Admission::shedding`; a load balancer then sends new work elsewhere,
/// and the sagas it has go on either way).
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store.ping().await;
    let bus = state.bus.is_connected();
    let shedding = state.runtime.admission().shedding();
    let stopping = state.stopping.is_cancelled();
    let body = serde_json::json!({ "store": store, "bus": bus, "shedding": shedding, "stopping": stopping });
    let status = if store && bus && !shedding && !stopping { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // In-flight sagas are counted across replicas, from the store.
    if let Ok(n) = state.store.in_flight().await {
        metrics::gauge!("eso_sagas_in_flight").set(n as f64);
    }
    let admission = state.runtime.admission();
    metrics::gauge!("eso_admission_in_flight").set(admission.in_flight() as f64);
    if admission.limit() != usize::MAX {
        metrics::gauge!("eso_admission_limit").set(admission.limit() as f64);
    }
    if let Some(baseline) = admission.baseline() {
        metrics::gauge!("eso_admission_baseline_seconds").set(baseline.as_secs_f64());
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.telemetry.render_metrics())
}
