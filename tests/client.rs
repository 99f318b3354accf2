//! `weft::service::Client`, `AsyncClient` and the `weft` binary against a stub node.
//!
//! The stub (below, not in `src/`) implements the API contract's shapes on a temporary
//! Unix socket and on loopback TCP, with a few tasks that make every outcome easy to
//! reach: `add` succeeds at once, `fail` fails at once, `later` stays `STARTED` until the
//! test finishes or cancels it. It records the requests the client made (tokens, the
//! `?wait=` values, how many polls) so that the tests can check them.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State as Ax};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;

use weft::service::client::{AsyncClient, ClientError, State, SubmitOptions};
use weft::service::Client;
use weft::Priority;

// ---- the stub node --------------------------------------------------------------------

const METRICS: &str = "\
# HELP weft_queued Tasks waiting in each lane.
# TYPE weft_queued gauge
weft_queued{lane=\"high\"} 2
weft_queued{lane=\"normal\"} 7
weft_queued{lane=\"low\"} 0
# HELP weft_workers Worker threads.
# TYPE weft_workers gauge
weft_workers 4
# HELP weft_tasks_completed_total Tasks completed.
# TYPE weft_tasks_completed_total counter
weft_tasks_completed_total 100
# HELP weft_service_submitted_total Tasks submitted over the API.
# TYPE weft_service_submitted_total counter
weft_service_submitted_total 120
";

const TASKS: [&str; 3] = ["add", "fail", "later"];

struct Record {
    info: Value,
    done: watch::Sender<bool>,
}

#[derive(Default)]
struct Shared {
    token: Option<String>,
    records: Mutex<HashMap<String, Record>>,
    order: Mutex<Vec<String>>,
    /// The `Authorization` header of every request, in order.
    auth: Mutex<Vec<Option<String>>>,
    /// The raw `?wait=` values, in order.
    waits: Mutex<Vec<String>>,
    /// GETs of one task, by id.
    gets: Mutex<HashMap<String, usize>>,
    /// The next this many submissions are refused with 429.
    busy: AtomicU32,
    submissions: AtomicUsize,
    /// Connections accepted on both listeners.
    connections: Arc<AtomicUsize>,
    /// The last submission body.
    last_body: Mutex<Option<Value>>,
}

impl Shared {
    fn insert(&self, info: Value) {
        let id = info["id"].as_str().unwrap().to_owned();
        let finished = State::is_finished(serde_json::from_value(info["state"].clone()).unwrap());
        let (done, _) = watch::channel(finished);
        self.records
            .lock()
            .unwrap()
            .insert(id.clone(), Record { info, done });
        self.order.lock().unwrap().push(id);
    }

    fn finish(&self, id: &str, state: &str, result: Option<Value>, error: Option<&str>) {
        let mut records = self.records.lock().unwrap();
        let rec = records.get_mut(id).expect("known id");
        rec.info["state"] = json!(state);
        rec.info["finished_at_ms"] = json!(now_ms());
        if let Some(r) = result {
            rec.info["result"] = r;
        }
        if let Some(e) = error {
            rec.info["error"] = json!(e);
        }
        rec.done.send_replace(true);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// The refusal, if the request lacks the stub's token.
fn unauthorized(s: &Shared, headers: &HeaderMap) -> Option<Response> {
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    s.auth.lock().unwrap().push(auth.clone());
    match &s.token {
        Some(t) if auth.as_deref() != Some(&format!("Bearer {t}")) => Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or bad bearer token",
        )),
        _ => None,
    }
}

/// The stub's reading of `?wait=`: `500ms`, `5s`, or plain seconds.
fn stub_wait(text: &str) -> Duration {
    if let Some(ms) = text.strip_suffix("ms") {
        Duration::from_millis(ms.parse().unwrap())
    } else {
        Duration::from_secs(text.trim_end_matches('s').parse().unwrap())
    }
}

async fn submit(
    Ax(s): Ax<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    if s.busy
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "lane full");
        // The real node sends 1; 0 keeps the tests fast.
        r.headers_mut().insert("retry-after", "0".parse().unwrap());
        return r;
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Value::Object(m),
        _ => return error(StatusCode::BAD_REQUEST, "body is not a JSON object"),
    };
    *s.last_body.lock().unwrap() = Some(body.clone());
    for key in body.as_object().unwrap().keys() {
        if !["args", "priority", "delay_ms", "time_limit_ms", "retry"].contains(&key.as_str()) {
            return error(StatusCode::BAD_REQUEST, format!("unknown field {key:?}"));
        }
    }
    if !TASKS.contains(&name.as_str()) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("unknown task {name:?}"), "tasks": TASKS})),
        )
            .into_response();
    }
    s.submissions.fetch_add(1, Ordering::SeqCst);
    let id = format!(
        "00000000-0000-4000-8000-{:012}",
        s.submissions.load(Ordering::SeqCst)
    );
    let args = body.get("args").cloned().unwrap_or(Value::Null);
    let scheduled = body.get("delay_ms").is_some();
    let mut info = json!({"id": id, "name": name, "state": "STARTED", "attempts": 1,
                          "submitted_at_ms": now_ms(), "finished_at_ms": null});
    match name.as_str() {
        "add" => {
            let Ok([a, b]) = serde_json::from_value::<[i64; 2]>(args.clone()) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("task \"add\": bad args {args}: expected [i64, i64]"),
                );
            };
            info["state"] = json!("SUCCESS");
            info["result"] = json!(a + b);
            info["finished_at_ms"] = json!(now_ms());
        }
        "fail" => {
            info["state"] = json!("FAILURE");
            info["error"] = json!("boom");
            info["finished_at_ms"] = json!(now_ms());
        }
        _ => {}
    }
    s.insert(info);
    let state = if scheduled { "SCHEDULED" } else { "PENDING" };
    (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "name": name, "state": state})),
    )
        .into_response()
}

async fn status(
    Ax(s): Ax<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    match id.as_str() {
        "garbage" => return (StatusCode::OK, "this is not json").into_response(),
        "hang" => std::future::pending::<()>().await,
        _ => {}
    }
    *s.gets.lock().unwrap().entry(id.clone()).or_default() += 1;
    let mut done = match s.records.lock().unwrap().get(&id) {
        Some(r) => r.done.subscribe(),
        None => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown task id {id:?} (results are kept for 1h)"),
            )
        }
    };
    if let Some(w) = q.get("wait") {
        s.waits.lock().unwrap().push(w.clone());
        let wait = stub_wait(w).min(Duration::from_secs(60));
        let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
    }
    let info = s.records.lock().unwrap()[&id].info.clone();
    Json(info).into_response()
}

async fn cancel(
    Ax(s): Ax<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let state = match s.records.lock().unwrap().get(&id) {
        Some(r) => r.info["state"].as_str().unwrap().to_owned(),
        None => return error(StatusCode::NOT_FOUND, format!("unknown task id {id:?}")),
    };
    let revoked = state == "STARTED";
    if revoked {
        s.finish(&id, "REVOKED", None, Some("cancelled"));
    }
    let state = s.records.lock().unwrap()[&id].info["state"].clone();
    Json(json!({"id": id, "revoked": revoked, "state": state})).into_response()
}

async fn list(
    Ax(s): Ax<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let limit: usize = q.get("limit").map_or(100, |l| l.parse().unwrap());
    let records = s.records.lock().unwrap();
    let tasks: Vec<Value> = s
        .order
        .lock()
        .unwrap()
        .iter()
        .rev()
        .take(limit)
        .map(|id| records[id].info.clone())
        .collect();
    Json(json!({ "tasks": tasks })).into_response()
}

async fn registry(Ax(s): Ax<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    Json(json!({"tasks": [{"name": "add", "priority": "normal"},
                          {"name": "fail", "priority": "low"},
                          {"name": "later", "priority": "high"}]}))
    .into_response()
}

async fn metrics(Ax(s): Ax<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    ([("content-type", "text/plain; version=0.0.4")], METRICS).into_response()
}

/// Two `stats` events a second apart (the figures of `METRICS`), then the end of the
/// stream (as a node that stops).
async fn events(Ax(s): Ax<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let stats = |at: u64, done: u64| {
        json!({"at_ms": at, "queued": {"high": 2, "normal": 7, "low": 0}, "workers": 4,
               "busy": 1, "in_flight": 9, "submitted": 120, "succeeded": done, "failed": 0,
               "revoked": 0, "rejected": 4})
    };
    let body = format!(
        ": hello\n\nevent: stats\ndata: {}\n\nevent: task\ndata: {{\"id\": \"x\"}}\n\nevent: stats\ndata: {}\n\n",
        stats(1_000, 100),
        stats(2_000, 110)
    );
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// A stub node on a temporary Unix socket and on loopback TCP.
struct Stub {
    shared: Arc<Shared>,
    dir: PathBuf,
    socket: PathBuf,
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Stub {
    fn start(token: Option<&str>) -> Stub {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weft-client-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("weft.sock");
        let shared = Arc::new(Shared {
            token: token.map(str::to_owned),
            ..Shared::default()
        });
        let app = Router::new()
            .route("/v1/tasks/{key}", post(submit).get(status).delete(cancel))
            .route("/v1/tasks", get(list))
            .route("/v1/registry", get(registry))
            .route("/metrics", get(metrics))
            .route("/v1/events", get(events))
            .route("/healthz", get(healthz))
            .with_state(shared.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Bound with std so that a stub can start inside an async test too.
        let unix = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", tcp.local_addr().unwrap());
        unix.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        {
            let _in = runtime.enter();
            let unix = tokio::net::UnixListener::from_std(unix).unwrap();
            let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
            let (n1, n2) = (shared.connections.clone(), shared.connections.clone());
            let unix = unix.tap_io(move |_| {
                n1.fetch_add(1, Ordering::SeqCst);
            });
            let tcp = tcp.tap_io(move |_| {
                n2.fetch_add(1, Ordering::SeqCst);
            });
            runtime.spawn(axum::serve(unix, app.clone()).into_future());
            runtime.spawn(axum::serve(tcp, app).into_future());
        }
        Stub {
            shared,
            dir,
            socket,
            url,
            runtime: Some(runtime),
        }
    }

    fn client(&self) -> Client {
        Client::unix(&self.socket)
    }

    fn waits(&self) -> Vec<String> {
        self.shared.waits.lock().unwrap().clone()
    }

    fn gets(&self, id: &str) -> usize {
        self.shared
            .gets
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    fn auth(&self) -> Vec<Option<String>> {
        self.shared.auth.lock().unwrap().clone()
    }

    /// Finishes a `later` task with a value.
    fn succeed(&self, id: &str, value: Value) {
        self.shared.finish(id, "SUCCESS", Some(value), None);
    }

    fn state(&self, id: &str) -> Value {
        self.shared.records.lock().unwrap()[id].info["state"].clone()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn missing_socket() -> PathBuf {
    std::env::temp_dir().join(format!(
        "weft-client-missing-{}/weft.sock",
        std::process::id()
    ))
}

// ---- blocking client ------------------------------------------------------------------

#[test]
fn submit_wait_status() {
    let stub = Stub::start(None);
    let c = stub.client();
    c.health().unwrap();
    let t = c
        .submit("add", json!([2, 3]), SubmitOptions::new())
        .unwrap();
    assert_eq!(t.name, "add");
    assert_eq!(t.state, State::Pending);
    let info = c.wait(&t.id, Duration::from_secs(10)).unwrap();
    assert_eq!(info.state, State::Success);
    assert_eq!(info.result, Some(json!(5)));
    assert_eq!(info.attempts, 1);
    assert!(info.finished_at_ms.is_some());
    assert_eq!(c.status(&t.id, None).unwrap(), info);
}

#[test]
fn options_reach_the_node() {
    let stub = Stub::start(None);
    let opts = SubmitOptions::new()
        .priority(Priority::High)
        .delay(Duration::from_millis(1500))
        .time_limit(Duration::from_secs(5));
    let t = stub
        .client()
        .submit("later", json!({"x": 1}), opts)
        .unwrap();
    assert_eq!(t.state, State::Scheduled);
    assert_eq!(
        stub.shared.last_body.lock().unwrap().clone().unwrap(),
        json!({"args": {"x": 1}, "priority": "high", "delay_ms": 1500, "time_limit_ms": 5000})
    );
}

#[test]
fn wait_long_polls_until_finished() {
    let stub = Stub::start(None);
    let c = stub.client();
    let t = c
        .submit("later", json!(null), SubmitOptions::new())
        .unwrap();
    let id = t.id.clone();
    let waiter = std::thread::spawn(move || {
        let c = c;
        c.wait(&id, Duration::from_secs(30))
    });
    // Finish the task once the waiter's long-poll has arrived (or right away if the poll
    // is not visible yet: the outcome is the same, only the poll count differs).
    while stub.gets(&t.id) == 0 {
        std::thread::yield_now();
    }
    stub.succeed(&t.id, json!("done"));
    let info = waiter.join().unwrap().unwrap();
    assert_eq!(info.state, State::Success);
    assert_eq!(info.result, Some(json!("done")));
    // One long-poll, or two if the first ended just as the task finished: no busy loop.
    assert!(stub.gets(&t.id) <= 2, "{} polls", stub.gets(&t.id));
    let first = stub_wait(&stub.waits()[0]);
    assert!(first > Duration::from_secs(29) && first <= Duration::from_secs(30));
}

#[test]
fn wait_times_out() {
    let stub = Stub::start(None);
    let c = stub.client();
    let t = c
        .submit("later", json!(null), SubmitOptions::new())
        .unwrap();
    let err = c.wait(&t.id, Duration::from_millis(300)).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.to_string().contains("still STARTED"), "{err}");
    let w = stub_wait(&stub.waits()[0]);
    assert!(
        w > Duration::ZERO && w <= Duration::from_millis(300),
        "{w:?}"
    );
}

#[test]
fn status_wait_is_sent_and_capped() {
    let stub = Stub::start(None);
    let c = stub.client();
    let t = c
        .submit("add", json!([1, 1]), SubmitOptions::new())
        .unwrap();
    c.status(&t.id, Some(Duration::from_millis(1500))).unwrap();
    c.status(&t.id, Some(Duration::from_secs(600))).unwrap();
    assert_eq!(stub.waits(), ["1500ms", "60000ms"]);
}

#[test]
fn error_kinds() {
    let stub = Stub::start(None);
    let c = stub.client();

    let e = c
        .submit("nope", json!(null), SubmitOptions::new())
        .unwrap_err();
    assert!(e.is_status());
    assert_eq!(e.status(), Some(404));
    assert_eq!(e.message(), "unknown task \"nope\"");
    assert_eq!(e.body().unwrap()["tasks"], json!(TASKS));

    let e = c
        .submit("add", json!("x"), SubmitOptions::new())
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.message().contains("task \"add\""), "{e}");

    let e = c.status("no-such-id", None).unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.message().contains("unknown task id"));

    let e = c.status("garbage", None).unwrap_err();
    assert!(e.is_bad_response(), "{e:?}");

    let e = stub
        .client()
        .with_request_timeout(Duration::from_millis(200))
        .status("hang", None)
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");

    let e = Client::unix(missing_socket()).health().unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");
    assert!(e.to_string().contains("weft.sock"), "{e}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = Client::tcp(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .health()
        .unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");

    assert!(Client::tcp("https://x:1").unwrap_err().is_invalid_input());
}

#[test]
fn busy_is_retried_then_reported() {
    let stub = Stub::start(None);
    stub.shared.busy.store(2, Ordering::SeqCst);
    let t = stub
        .client()
        .submit("add", json!([1, 2]), SubmitOptions::new());
    assert_eq!(t.unwrap().state, State::Pending);

    stub.shared.busy.store(5, Ordering::SeqCst);
    let e = stub
        .client()
        .with_busy_retries(1)
        .submit("add", json!([1, 2]), SubmitOptions::new())
        .unwrap_err();
    assert_eq!(e.status(), Some(429));
    assert_eq!(e.retry_after(), Some(Duration::ZERO));
    assert_eq!(stub.shared.busy.load(Ordering::SeqCst), 3);
}

#[test]
fn cancel_tasks_registry_metrics() {
    let stub = Stub::start(None);
    let c = stub.client();
    let a = c
        .submit("add", json!([1, 2]), SubmitOptions::new())
        .unwrap();
    let l = c
        .submit("later", json!(null), SubmitOptions::new())
        .unwrap();

    let x = c.cancel(&l.id).unwrap();
    assert!(x.revoked);
    assert_eq!(x.state, State::Revoked);
    let x = c.cancel(&a.id).unwrap();
    assert!(!x.revoked);
    assert_eq!(x.state, State::Success);
    let info = c.status(&l.id, None).unwrap();
    assert_eq!(info.state, State::Revoked);
    assert_eq!(info.error.as_deref(), Some("cancelled"));

    let all = c.tasks(None).unwrap();
    assert_eq!(
        all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [l.id.as_str(), a.id.as_str()]
    );
    assert_eq!(c.tasks(Some(1)).unwrap().len(), 1);

    let reg = c.registry().unwrap();
    assert_eq!(reg.len(), 3);
    assert_eq!(reg[2].name, "later");
    assert_eq!(reg[2].priority, Priority::High);

    assert_eq!(c.metrics().unwrap(), METRICS);
}

#[test]
fn token_is_sent_over_tcp() {
    let stub = Stub::start(Some("s3cret"));
    let c = Client::tcp(&stub.url).unwrap();
    c.health().unwrap(); // no token needed
    let e = c.registry().unwrap_err();
    assert_eq!(e.status(), Some(401));
    let c = c.with_token("s3cret");
    assert_eq!(c.registry().unwrap().len(), 3);
    let auth = stub.auth();
    assert_eq!(auth.last().unwrap().as_deref(), Some("Bearer s3cret"));
}

#[test]
fn connections_are_reused() {
    let stub = Stub::start(None);
    let c = stub.client();
    for i in 0..50 {
        c.submit("add", json!([i, 1]), SubmitOptions::new())
            .unwrap();
    }
    assert_eq!(c.tasks(Some(1000)).unwrap().len(), 50);
    assert_eq!(stub.shared.connections.load(Ordering::SeqCst), 1);
    // Each client keeps its own connections.
    let c2 = Client::tcp(&stub.url).unwrap();
    c2.health().unwrap();
    c2.health().unwrap();
    assert_eq!(stub.shared.connections.load(Ordering::SeqCst), 2);
}

// ---- async client ---------------------------------------------------------------------

#[tokio::test]
async fn async_client_over_tcp_and_unix() {
    let stub = Stub::start(Some("tok"));
    for c in [
        AsyncClient::tcp(&stub.url).unwrap().with_token("tok"),
        AsyncClient::unix(&stub.socket).with_token("tok"),
    ] {
        c.health().await.unwrap();
        let t = c
            .submit("add", json!([20, 22]), SubmitOptions::new())
            .await
            .unwrap();
        let info = c.wait(&t.id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(info.result, Some(json!(42)));
        let t = c
            .submit("fail", json!(null), SubmitOptions::new())
            .await
            .unwrap();
        let info = c.wait(&t.id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(info.state, State::Failure);
        assert_eq!(info.error.as_deref(), Some("boom"));
        let e: ClientError = c
            .submit("nope", json!(null), SubmitOptions::new())
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(404));
        assert_eq!(c.registry().await.unwrap().len(), 3);
        assert!(c.metrics().await.unwrap().contains("weft_workers 4"));
        let later = c
            .submit("later", json!(null), SubmitOptions::new())
            .await
            .unwrap();
        let e = c
            .wait(&later.id, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(e.is_timeout());
        assert!(c.cancel(&later.id).await.unwrap().revoked);
        assert_eq!(c.tasks(Some(10)).await.unwrap()[0].id, later.id);
    }
    assert!(stub
        .auth()
        .iter()
        .all(|a| a.as_deref() == Some("Bearer tok")));
}

#[tokio::test]
async fn async_unreachable() {
    let e = AsyncClient::unix(missing_socket())
        .submit("add", json!(null), SubmitOptions::new())
        .await
        .unwrap_err();
    assert!(e.is_unreachable());
}

// ---- the weft binary ------------------------------------------------------------------

fn weft(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(args)
        .env_remove("WEFT_SOCKET")
        .env_remove("WEFT_TOKEN")
        .env_remove("XDG_RUNTIME_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn on(stub: &Stub, args: &[&str]) -> Output {
    let socket = stub.socket.to_str().unwrap();
    let mut all = vec!["--socket", socket];
    all.extend_from_slice(args);
    weft(&all, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn cli_submit_wait_success_prints_only_the_result() {
    let stub = Stub::start(None);
    let o = on(&stub, &["submit", "add", "--args", "[2, 3]", "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "5\n");
    assert_eq!(stderr(&o), "");
}

#[test]
fn cli_submit_prints_the_id() {
    let stub = Stub::start(None);
    let o = on(
        &stub,
        &[
            "submit",
            "later",
            "--priority",
            "high",
            "--delay",
            "2s",
            "--time-limit",
            "500ms",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    assert_eq!(stub.state(&id), json!("STARTED"));
    assert_eq!(
        stub.shared.last_body.lock().unwrap().clone().unwrap(),
        json!({"args": null, "priority": "high", "delay_ms": 2000, "time_limit_ms": 500})
    );
}

#[test]
fn cli_task_failure_is_1() {
    let stub = Stub::start(None);
    let o = on(&stub, &["submit", "fail", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("FAILURE: boom"), "{}", stderr(&o));

    // status of a failed task: the JSON on stdout, exit 1.
    let id = stub.shared.order.lock().unwrap()[0].clone();
    let o = on(&stub, &["status", &id]);
    assert_eq!(o.status.code(), Some(1));
    let info: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(info["state"], "FAILURE");
}

#[test]
fn cli_revoked_is_1() {
    let stub = Stub::start(None);
    let id = stdout(&on(&stub, &["submit", "later"])).trim().to_owned();
    let o = on(&stub, &["cancel", &id]);
    assert_eq!(o.status.code(), Some(0));
    let reply: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        reply,
        json!({"id": id, "revoked": true, "state": "REVOKED"})
    );
    let o = on(&stub, &["status", &id, "--wait", "1s"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("REVOKED: cancelled"), "{}", stderr(&o));
}

#[test]
fn cli_unreachable_is_3() {
    let missing = missing_socket();
    let o = weft(
        &["--socket", missing.to_str().unwrap(), "submit", "add"],
        &[],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
    // The socket from the environment.
    let o = weft(&["metrics"], &[("WEFT_SOCKET", missing.to_str().unwrap())]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains(missing.to_str().unwrap()));
}

#[test]
fn cli_refused_is_4() {
    let stub = Stub::start(None);
    let o = on(&stub, &["submit", "nope", "--wait"]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).contains("unknown task \"nope\""),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));

    let o = on(&stub, &["submit", "add", "--args", "\"x\""]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("bad args"), "{}", stderr(&o));

    let o = on(&stub, &["status", "no-such-id"]);
    assert_eq!(o.status.code(), Some(4));
}

#[test]
fn cli_wait_ran_out_is_5() {
    let stub = Stub::start(None);
    let o = on(&stub, &["submit", "later", "--wait", "--timeout", "300ms"]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("still STARTED"), "{}", stderr(&o));
    let id = stub.shared.order.lock().unwrap()[0].clone();
    let o = on(&stub, &["status", &id, "--wait", "100ms"]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(stub.waits().last().unwrap(), "100ms");
}

#[test]
fn cli_usage_is_2() {
    let stub = Stub::start(None);
    for args in [
        &["submit", "add", "--args", "{not json"][..],
        &["submit", "add", "--delay", "soon"],
        &["submit", "add", "--timeout", "5s"],
        &["submit", "add", "--priority", "urgent"],
        &["frobnicate"],
    ] {
        let o = on(&stub, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
    let o = weft(&["--url", "https://h:1", "health"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stub.shared.submissions.load(Ordering::SeqCst), 0);
}

#[test]
fn cli_token_from_flag_and_env() {
    let stub = Stub::start(Some("s3cret"));
    let o = weft(
        &[
            "--url", &stub.url, "submit", "add", "--args", "[1,1]", "--wait",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));

    let o = weft(
        &[
            "--url", &stub.url, "--token", "s3cret", "submit", "add", "--args", "[1,1]", "--wait",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "2\n");

    let o = weft(
        &[
            "--url", &stub.url, "submit", "add", "--args", "[2,2]", "--wait",
        ],
        &[("WEFT_TOKEN", "s3cret")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "4\n");
    assert_eq!(
        stub.auth().last().unwrap().as_deref(),
        Some("Bearer s3cret")
    );
}

#[test]
fn cli_tasks_metrics_watch() {
    let stub = Stub::start(None);
    on(&stub, &["submit", "add", "--args", "[1,2]"]);
    on(&stub, &["submit", "later"]);
    let o = on(&stub, &["tasks", "--limit", "1"]);
    assert_eq!(o.status.code(), Some(0));
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("\tlater\tSTARTED\t"), "{lines:?}");

    let o = on(&stub, &["metrics"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), METRICS);

    let o = on(&stub, &["watch", "--once"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("queued high=2 normal=7 low=0"), "{out}");
    assert!(out.contains("workers 4 (1 busy)"), "{out}");
    assert!(out.contains("completed 100"), "{out}");

    // Without --once: a frame per stats event (the rate from the second), until the stream
    // ends.
    let o = on(&stub, &["watch", "--interval", "0s"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].contains("completed 110 (10.0/s)"), "{out}");
}

#[test]
fn cli_help_lists_exit_codes() {
    let o = weft(&["--help"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o);
    for line in ["0  success", "3  node unreachable", "5  --wait ran out"] {
        assert!(help.contains(line), "{help}");
    }
}

// ---- the socket's directory (issue 18, part 2) ------------------------------------------

/// Whether this process runs as root (the owner of `/proc/self`): only root can give a
/// directory to another user, so the ownership cases run only there (CI runs as root).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Squats `dir` as another local user could: opens it to everyone, or (as root) gives it
/// to uid 65534 with mode 0700.
fn squat(dir: &std::path::Path, how: &str) {
    use std::os::unix::fs::PermissionsExt;
    match how {
        "mode" => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap(),
        "owner" => {
            std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        _ => unreachable!(),
    }
}

fn squats() -> Vec<&'static str> {
    if is_root() {
        vec!["mode", "owner"]
    } else {
        eprintln!("not root: the directory-owner case is skipped (CI runs it)");
        vec!["mode"]
    }
}

#[test]
fn client_refuses_a_socket_in_a_squatted_directory() {
    for how in squats() {
        let stub = Stub::start(None);
        squat(&stub.dir, how);
        let e = stub.client().health().unwrap_err();
        assert!(e.is_unsafe_socket() && e.is_unreachable(), "{how}: {e:?}");
        let m = e.to_string();
        assert!(m.contains("refusing the socket directory"), "{how}: {m}");
        assert!(
            m.contains(if how == "mode" { "0777" } else { "uid 65534" }),
            "{how}: {m}"
        );
        assert_eq!(
            stub.shared.connections.load(Ordering::SeqCst),
            0,
            "{how}: the socket in it was never connected to"
        );
    }
}

/// The default socket directory (here `$XDG_RUNTIME_DIR`) must be the user's own with
/// mode 0700, and `weft` refuses it otherwise, before connecting; an explicit `--socket`
/// in a directory others may write to is refused too.
#[test]
fn cli_refuses_a_squatted_default_socket_directory() {
    use std::os::unix::fs::PermissionsExt;
    let stub = Stub::start(None);
    let dir = stub.dir.to_str().unwrap().to_owned();
    let xdg = [("XDG_RUNTIME_DIR", dir.as_str())];

    // 0755 is fine for a directory named with --socket, not for the default one.
    std::fs::set_permissions(&stub.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = on(&stub, &["health"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = weft(&["health"], &xdg);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("must be 0700"), "{}", stderr(&o));
    let reached = stub.shared.connections.load(Ordering::SeqCst);

    std::fs::set_permissions(&stub.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = weft(&["health"], &xdg);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    for how in squats() {
        squat(&stub.dir, how);
        for o in [weft(&["health"], &xdg), on(&stub, &["health"])] {
            assert_eq!(o.status.code(), Some(3), "{how}: {}", stderr(&o));
            assert!(
                stderr(&o).contains("refusing the socket directory"),
                "{how}: {}",
                stderr(&o)
            );
        }
        if how == "owner" {
            std::os::unix::fs::chown(&stub.dir, Some(0), Some(0)).unwrap();
        }
    }
    assert_eq!(
        stub.shared.connections.load(Ordering::SeqCst),
        reached + 1,
        "only the 0700 directory was connected to"
    );
}
