//! The web console at `/ui`: one page, its script and its style, built
//! into the binary so it works offline and needs no other server. It reads
//! the same JSON routes any client does (`/sagas`, `/definitions`, …).

use axum::http::header;
use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};

use super::auth::CanOpenConsole;

const INDEX: &str = include_str!("console/index.html");
const APP: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

/// The assets' URLs carry a hash of their content (see [`page`]), so a
/// cached copy is never stale: a new binary's page names new URLs.
const CACHE: &str = "public, max-age=31536000, immutable";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, CACHE), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body).into_response()
}

/// The page, naming its script and style by content hash.
fn page() -> &'static str {
    static PAGE: LazyLock<String> = LazyLock::new(|| {
        let versioned = |path: &str, body: &str| format!("{path}?v={}", &super::sha256_hex(body.as_bytes())[..16]);
        INDEX
            .replace("\"/ui/app.js\"", &format!("\"{}\"", versioned("/ui/app.js", APP)))
            .replace("\"/ui/style.css\"", &format!("\"{}\"", versioned("/ui/style.css", STYLE)))
    });
    &PAGE
}

/// `GET /ui`.
pub async fn index(_: CanOpenConsole) -> Response {
    // The page is `no-cache`: it is what names the current assets.
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], page())
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_names_its_assets_by_content() {
        let page = super::page();
        assert!(page.contains("\"/ui/app.js?v=") && page.contains("\"/ui/style.css?v="), "{page}");
        assert!(!page.contains("\"/ui/app.js\""), "{page}");
    }
}
