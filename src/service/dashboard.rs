//! `GET /`: the dashboard, built into the binary (`dashboard/`: one page, its script and
//! its style; nothing fetched from elsewhere, so it works with no internet). Served
//! without a token: the page asks for one when the node needs it and sends it as the API
//! requires (`Authorization: Bearer`), never in a URL.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Only the node's own script, style and API; no frames, no forms posting elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

pub(crate) async fn index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

pub(crate) async fn script() -> Response {
    page(SCRIPT, "text/javascript; charset=utf-8")
}

pub(crate) async fn style() -> Response {
    page(STYLE, "text/css; charset=utf-8")
}
