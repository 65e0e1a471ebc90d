//! The HTTP stack around the routes, as tower layers, outermost first:
//! each request's server span (tower-http's trace layer, continuing an
//! incoming `traceparent`), its metrics and `x-trace-id` header, a timeout
//! that answers JSON, and the body limit.

use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;
use tracing::Span;

use super::{ApiError, MAX_WAIT};

/// Longest a request may take: a read held by `?wait=` for its longest
/// wait, and then some. Past it the client gets a `503`, not silence.
pub const REQUEST_TIMEOUT: Duration = MAX_WAIT.saturating_add(Duration::from_secs(30));

pub fn around<S: Clone + Send + Sync + 'static>(router: Router<S>, max_body_bytes: usize) -> Router<S> {
    router.layer(
        ServiceBuilder::new()
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_request(())
                    .on_response(|response: &Response, _: Duration, span: &Span| {
                        span.record("http.response.status_code", response.status().as_u16());
                    })
                    .on_failure(()),
            )
            .layer(middleware::from_fn(measure))
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                ApiError::Unavailable(format!("the request took longer than {}", humantime::format_duration(REQUEST_TIMEOUT)))
            }))
            .layer(tower::timeout::TimeoutLayer::new(REQUEST_TIMEOUT))
            .layer(DefaultBodyLimit::max(max_body_bytes)),
    )
}

/// The route a request matched, as metrics and spans name it.
fn route(request: &Request) -> &str {
    request.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str())
}

/// The server span of a request, a child of the caller's trace if it sent
/// one; handlers record `saga.id` (and the order routes `order.id`) in it.
fn request_span(request: &Request) -> Span {
    let (method, route) = (request.method(), route(request));
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        saga.id = tracing::field::Empty,
        order.id = tracing::field::Empty,
    );
    observability::propagation::set_parent_from_http(&span, request.headers());
    span
}

/// Request metrics, and the trace id in the `x-trace-id` header. Runs
/// inside the request's span.
async fn measure(request: Request, next: Next) -> Response {
    // A read held by `?wait=` lasts as long as its saga: kept apart in the
    // metrics, it does not hide how fast plain reads are.
    let waits = request.uri().query().is_some_and(|q| q.split('&').any(|pair| pair.starts_with("wait=")));
    let route = if waits { format!("{}?wait", route(&request)) } else { route(&request).to_string() };
    let method = request.method().to_string();
    let started = Instant::now();
    let mut response = next.run(request).await;
    if let Some(trace_id) = observability::propagation::trace_id(&Span::current())
        && let Ok(value) = HeaderValue::from_str(&trace_id)
    {
        response.headers_mut().insert("x-trace-id", value);
    }
    let labels = [("method", method), ("route", route), ("status", response.status().as_u16().to_string())];
    metrics::counter!("eso_http_requests_total", &labels).increment(1);
    metrics::histogram!("eso_http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}
