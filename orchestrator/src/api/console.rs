//! The web console at `/ui`: one page, its script and its style, built
//! into the binary so it works offline and needs no other server. It reads
//! the same JSON routes any client does (`/sagas`, `/definitions`, …).

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::auth::CanOpenConsole;

const INDEX: &str = include_str!("console/index.html");
const APP: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

/// Short enough that a new binary's console is picked up within minutes,
/// long enough that page changes inside the console do not refetch them.
const CACHE: &str = "public, max-age=300";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, CACHE), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body).into_response()
}

/// `GET /ui`.
pub async fn index(_: CanOpenConsole) -> Response {
    // The page itself is `no-cache` so that a new release's asset names
    // are never paired with an old page.
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], INDEX)
        .into_response()
}

/// `GET /ui/app.js`.
pub async fn app(_: CanOpenConsole) -> Response {
    asset("text/javascript; charset=utf-8", APP)
}

/// `GET /ui/style.css`.
pub async fn style(_: CanOpenConsole) -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
