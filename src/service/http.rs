//! The HTTP routes: request parsing and validation, JSON errors, long-polls, auth.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};
use uuid::Uuid;

use super::app::{App, Plan, ServiceCounters, SubmitRefused};
use super::journal::StoreError;
use super::serve::BodyTimeout;
use super::submission::SubmitRequest;
use super::wire::human_duration;

/// The longest long-poll (`?wait=`).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Tasks listed when `?limit` is not given.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The most tasks one list answers.
pub const MAX_LIST_LIMIT: usize = 1000;

/// An error answer: a status and `{"error": "..."}` (plus extra fields).
pub(crate) struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body)).into_response();
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The body was not read whole: the connection cannot carry another request.
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT => {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        res
    }
}

type ApiResult = Result<Response, ApiError>;

pub(crate) fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/v1/tasks", get(list))
        .route("/v1/tasks/{key}", get(status).post(submit).delete(cancel))
        .route("/v1/registry", get(registry))
        .route("/v1/events", get(super::live::events))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(super::dashboard::index))
        .route("/dashboard.js", get(super::dashboard::script))
        .route("/dashboard.css", get(super::dashboard::style))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost, so before authentication and routing.
        .layer(middleware::from_fn_with_state(app.clone(), body_limit))
        .with_state(app)
}

/// Answers 413 to a request whose `Content-Length` is over the limit, before reading any
/// of its body (so an `Expect: 100-continue` gets no `100 Continue`).
async fn body_limit(AxState(app): AxState<Arc<App>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body_bytes as u64) {
        if req.method() == Method::POST {
            ServiceCounters::bump(&app.counters.rejected_bad_request);
        }
        return too_large(app.max_body_bytes).into_response();
    }
    next.run(req).await
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is over the limit of {limit} bytes"),
    )
}

async fn auth(AxState(app): AxState<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is matched without
/// regard to case (RFC 9110 §11.1), so `bearer` and `BEARER` are accepted too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `{"status": "ok", "token_required": ..}`, or 503 `{"status": "draining"}` once shutdown
/// has begun. `token_required` tells a client (the dashboard) to ask for the token before
/// it calls the API.
async fn healthz(AxState(app): AxState<Arc<App>>) -> Response {
    if app.closing.load(Ordering::Acquire) {
        let body = json!({ "status": "draining", "error": "the node is shutting down" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({ "status": "ok", "token_required": app.token.is_some() })).into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

fn path_key(key: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    key.map(|Path(k)| k)
        .map_err(|e| ApiError::bad_request(format!("bad path: {e}")))
}

fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))
}

async fn submit(
    AxState(app): AxState<Arc<App>>,
    key: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult {
    let result = submit_inner(&app, key, body).await;
    if let Err(e) = &result {
        let c = &app.counters;
        match e.status {
            StatusCode::NOT_FOUND => ServiceCounters::bump(&c.rejected_unknown_task),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
                ServiceCounters::bump(&c.rejected_bad_request)
            }
            _ => {}
        }
    }
    result
}

async fn submit_inner(
    app: &Arc<App>,
    key: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult {
    let name = path_key(key)?;
    if app.closing.load(Ordering::Acquire) {
        return Err(shutting_down());
    }
    if !app.registry.contains(&name) {
        return Err(unknown_task(app, &name));
    }
    let bytes = read_body(body, app.max_body_bytes).await?;
    let req: SubmitRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    let args = req.args.clone();
    let (attempt, spawn) = app.plan(&name, req).map_err(|e| match e {
        Plan::UnknownTask => unknown_task(app, &name),
        Plan::Bad(m) => ApiError::bad_request(m),
    })?;
    let priority = spawn.priority;
    // The submission's body is kept with the task in a durable store, to run it again after
    // a restart.
    let request = bytes;
    let spawned = if app.journal.is_some() {
        // Apart from this request, so that a client hanging up while the task is written
        // leaves no task half accepted.
        let (app, name) = (app.clone(), name.clone());
        tokio::spawn(async move { app.spawn(&name, attempt, spawn, request, args).await })
            .await
            .unwrap_or_else(|e| {
                Err(SubmitRefused::Store(StoreError::new(format!(
                    "the submission failed: {e}"
                ))))
            })
    } else {
        app.spawn(&name, attempt, spawn, request, args).await
    };
    match spawned {
        Ok(record) => {
            // The state it was accepted in: it may have run already.
            let body = json!({ "id": record.id.to_string(), "name": record.name, "state": record.initial });
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Err(SubmitRefused::InFlight) => {
            ServiceCounters::bump(&app.counters.rejected_in_flight);
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "the node's in-flight limit is reached; retry later",
            ))
        }
        Err(SubmitRefused::Full) => {
            ServiceCounters::bump(&app.counters.rejected_full);
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("the {} lane is full; retry later", priority.as_str()),
            ))
        }
        Err(SubmitRefused::Closing) => Err(shutting_down()),
        Err(SubmitRefused::Store(e)) => {
            ServiceCounters::bump(&app.counters.rejected_store);
            Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("the node cannot write the task to its store ({e}); nothing was accepted"),
            ))
        }
    }
}

fn unknown_task(app: &App, name: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        body: json!({
            "error": format!("unknown task {name:?}"),
            "tasks": app.registry.names().collect::<Vec<_>>(),
        }),
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down")
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Err(e) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
            while let Some(c) = cause {
                if let Some(t) = c.downcast_ref::<BodyTimeout>() {
                    return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, t.to_string()));
                }
                cause = c.source();
            }
            Err(ApiError::bad_request(format!(
                "cannot read the request body: {e}"
            )))
        }
    }
}

fn unknown_id(app: &App, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "unknown task id {id:?} (results are kept for {})",
            human_duration(app.store.ttl())
        ),
    )
}

fn find(app: &App, id: &str) -> Result<Arc<super::store::Record>, ApiError> {
    Uuid::parse_str(id)
        .ok()
        .and_then(|u| app.store.get(&u))
        .ok_or_else(|| unknown_id(app, id))
}

async fn status(
    AxState(app): AxState<Arc<App>>,
    key: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let id = path_key(key)?;
    let q = query(q)?;
    let wait = match q.get("wait") {
        Some(w) => Some(parse_wait(w).ok_or_else(|| {
            ApiError::bad_request(format!(
                "bad wait {w:?}: use seconds (5), or a duration such as 5s or 500ms"
            ))
        })?),
        None => None,
    };
    let record = find(&app, &id)?;
    if let Some(wait) = wait {
        let _waiting = Waiting::new(&app);
        let mut done = record.subscribe();
        let mut stopping = app.stopping.subscribe();
        tokio::select! {
            _ = done.wait_for(|d| *d) => {}
            _ = stopping.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    Ok(Json(record.info()).into_response())
}

/// Counts a long-poll in progress (`weft_service_waiters`) while it lives; a client
/// that hangs up drops it too.
struct Waiting<'a>(&'a App);

impl<'a> Waiting<'a> {
    fn new(app: &'a App) -> Self {
        app.waiters.fetch_add(1, Ordering::Relaxed);
        Waiting(app)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Parses `5`, `0.5`, `5s`, `500ms` (capped at [`MAX_WAIT`]).
pub(crate) fn parse_wait(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let secs = (v * scale).min(MAX_WAIT.as_secs_f64());
    Some(Duration::from_secs_f64(secs))
}

async fn cancel(
    AxState(app): AxState<Arc<App>>,
    key: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = path_key(key)?;
    let record = find(&app, &id)?;
    let revoked = match record.request_cancel().await {
        // The resolver is gone: the task had finished.
        None => false,
        Some(reply) => reply.won || !reply.finished,
    };
    Ok(Json(json!({
        "id": record.id.to_string(),
        "revoked": revoked,
        "state": record.state(),
    }))
    .into_response())
}

async fn list(
    AxState(app): AxState<Arc<App>>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let limit = match q.get("limit") {
        Some(l) => l.trim().parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!(
                "bad limit {l:?}: use a whole number (at most {MAX_LIST_LIMIT})"
            ))
        })?,
        None => DEFAULT_LIST_LIMIT,
    }
    .min(MAX_LIST_LIMIT);
    let (records, truncated) = app.store.list(limit, app.max_list_bytes);
    let tasks: Vec<_> = records.iter().map(|r| r.info()).collect();
    if truncated {
        // Cut short by the byte budget: the rest are still readable by id.
        return Ok(Json(json!({ "tasks": tasks, "truncated": true })).into_response());
    }
    Ok(Json(json!({ "tasks": tasks })).into_response())
}

async fn registry(AxState(app): AxState<Arc<App>>) -> Response {
    let tasks: Vec<_> = app
        .registry
        .entries()
        .map(|(name, e)| json!({ "name": name, "priority": e.options.get_priority().as_str() }))
        .collect();
    Json(json!({ "tasks": tasks })).into_response()
}

async fn metrics(AxState(app): AxState<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        super::prom::render(&app),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
