//! The web console, `GET /ui` on every hub: one page of plain HTML, CSS and JavaScript
//! from `hub/ui/`, compiled into the binary (nothing is fetched at run time, no build
//! step). The page itself holds no secret and is served to anyone; it asks for a key,
//! keeps it in the tab's `sessionStorage` and calls the hub's JSON API with it
//! (`/admin/v1/*` with the admin key; `/v1/usage` and `/v1/chat/completions` with any
//! key), so the API's own checks decide what each key sees.
//!
//! The Content-Security-Policy allows only this hub's own scripts, styles and API (no
//! inline script or style, no other origin, no framing), which the page is written for:
//! every value it shows goes in as text, never as markup.

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::Hub;

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/console.js");
const STYLE: &str = include_str!("../ui/console.css");

/// The policy of every console response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

/// The console's routes (outside the API's key check: the page asks for the key).
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/ui", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            // The assets change with the binary: a browser asks again rather than keep an
            // old script beside a new hub.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy holds only if the page has no inline script, style or handler, and
    /// loads nothing from another origin.
    #[test]
    fn the_page_keeps_to_its_content_security_policy() {
        let lower = INDEX.to_ascii_lowercase();
        for script in lower.match_indices("<script").map(|(i, _)| &lower[i..]) {
            let tag = &script[..script.find('>').expect("closed tag")];
            assert!(tag.contains("src=\"/ui/console.js\""), "inline script: {tag}");
        }
        assert!(!lower.contains("<style"), "inline style element");
        assert!(!lower.contains(" style="), "inline style attribute");
        for (i, _) in lower.match_indices(" on") {
            let rest = &lower[i + 3..];
            let name_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            assert!(!rest[name_len..].starts_with('='), "inline handler: {}", &lower[i..i + 3 + name_len]);
        }
        for page in [INDEX, SCRIPT, STYLE] {
            assert!(!page.contains("http://") && !page.contains("https://"), "another origin");
        }
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("eval("), "markup from values");
    }
}
