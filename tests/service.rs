//! The node-local service (feature `service`), driven through raw HTTP/1.1 on a Unix socket
//! and on loopback TCP: submissions, long-polls, cancellation, retries, delays, priorities,
//! result expiry, every kind of bad input, back-pressure (429), shutdown, and the socket's
//! life cycle. Waits are on conditions with generous timeouts, never fixed sleeps.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weft::service::{Endpoint, Node, Registry, RunningNode, ShutdownMode, TaskOptions};
use weft::{Priority, RetryPolicy};

/// A node that keeps its tasks in memory (tests never touch the user's state directory).
fn ephemeral_node(registry: Registry) -> Node {
    Node::new(registry).ephemeral()
}

/// Generous: only catches hangs.
const HANG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- a tiny HTTP/1.1 client

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` message of an error answer.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.text()))
            .to_owned()
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer.
async fn raw(at: &Endpoint, request: &[u8]) -> Resp {
    match at {
        Endpoint::Unix(p) => {
            exchange(tokio::net::UnixStream::connect(p).await.unwrap(), request).await
        }
        Endpoint::Tcp(a) => {
            exchange(tokio::net::TcpStream::connect(a).await.unwrap(), request).await
        }
        _ => unreachable!(),
    }
}

async fn exchange(mut s: impl AsyncRead + AsyncWrite + Unpin, request: &[u8]) -> Resp {
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(HANG, s.read_to_end(&mut buf))
        .await
        .expect("no answer in time")
        .unwrap();
    parse(&buf)
}

fn parse(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 2 + n + 2..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn build(method: &str, path: &str, body: Option<&[u8]>, token: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: weft\r\nconnection: close\r\n");
    if let Some(t) = token {
        r += &format!("authorization: Bearer {t}\r\n");
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "POST" {
        r += &format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
    }
    r += "\r\n";
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// A client bound to one node (and maybe a token).
#[derive(Clone)]
struct Http {
    at: Endpoint,
    token: Option<String>,
}

impl Http {
    fn new(node: &RunningNode) -> Http {
        Http {
            at: node.endpoint().clone(),
            token: None,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
        raw(&self.at, &build(method, path, body, self.token.as_deref())).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: &str) -> Resp {
        self.call("POST", path, Some(body.as_bytes())).await
    }

    /// Submits and expects a 202; returns the id.
    async fn submit(&self, name: &str, body: Value) -> String {
        let r = self
            .post(&format!("/v1/tasks/{name}"), &body.to_string())
            .await;
        assert_eq!(r.status, 202, "{}", r.text());
        let v = r.json();
        assert_eq!(v["name"], name);
        assert!(v["state"] == "PENDING" || v["state"] == "SCHEDULED", "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn info(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Long-polls until the task is finished (fails after `HANG`).
    async fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + HANG;
        loop {
            let r = self.get(&format!("/v1/tasks/{id}?wait=10s")).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            if ["SUCCESS", "FAILURE", "REVOKED"].contains(&v["state"].as_str().unwrap()) {
                return v;
            }
            assert!(Instant::now() < deadline, "task {id} not finished: {v}");
        }
    }

    /// Polls (1 ms apart) until the task's state is `state`: for states seen only through
    /// the node's API (`RETRY`, set after a failed attempt returns). A `block` task's
    /// `STARTED` is waited for on the gate instead ([`Fixture::started`]).
    async fn wait_state(&self, id: &str, state: &str) -> Value {
        wait_for(|| async {
            let v = self.info(id).await;
            (v["state"] == state).then_some(v)
        })
        .await
    }

    /// Polls `/metrics` until it has the line `line`.
    async fn wait_metric(&self, line: &str) {
        wait_for(|| async {
            let text = self.get("/metrics").await.text();
            text.lines().any(|l| l == line).then_some(())
        })
        .await
    }

    async fn cancel(&self, id: &str) -> Value {
        let r = self.call("DELETE", &format!("/v1/tasks/{id}"), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

/// Re-checks `cond` (1 ms apart) until it gives a value; fails after `HANG`. Only for
/// conditions the test can see through the node's HTTP API alone (a `RETRY` state, the
/// waiters gauge of long polls, a record's expiry), which has no way to notify.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(mut cond: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached in {HANG:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------- fixtures

/// A fresh directory (not created: the node creates it, mode 0700).
fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "weft-svc-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A gate tasks block on until the test opens it; it counts the tasks that reached it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Default)]
struct GateState {
    open: bool,
    arrived: usize,
}

impl Gate {
    fn open(&self) {
        self.0 .0.lock().unwrap().open = true;
        self.0 .1.notify_all();
    }

    fn wait(&self) {
        let mut g = self.0 .0.lock().unwrap();
        g.arrived += 1;
        self.0 .1.notify_all();
        while !g.open {
            g = self.0 .1.wait(g).unwrap();
        }
    }

    /// Waits (up to `HANG`) until `n` tasks have reached the gate.
    async fn arrived(&self, n: usize) {
        let gate = self.clone();
        tokio::task::spawn_blocking(move || {
            let (lock, cv) = &*gate.0;
            let g = lock.lock().unwrap();
            let (g, _) = cv.wait_timeout_while(g, HANG, |g| g.arrived < n).unwrap();
            assert!(
                g.arrived >= n,
                "{} of {n} tasks reached the gate in {HANG:?}",
                g.arrived
            );
        })
        .await
        .unwrap();
    }
}

/// The tasks the tests use; `block` waits for `gate`, `order` records its argument.
fn registry(gate: &Gate, order: &Arc<Mutex<Vec<String>>>) -> Registry {
    let g = gate.clone();
    let o = order.clone();
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("fail", |msg: String| Err::<(), _>(msg))
        .task("boom", |(): ()| -> Result<(), String> {
            panic!("boom goes the task")
        })
        .task("block", move |(): ()| {
            g.wait();
            Ok::<_, String>("unblocked")
        })
        .task("order", move |tag: String| {
            o.lock().unwrap().push(tag);
            Ok::<_, String>(())
        })
        .task("spin", |(): ()| {
            while weft::checkpoint().is_ok() {
                std::thread::yield_now();
            }
            Ok::<_, String>("stopped")
        })
        .task_with(
            "flaky",
            TaskOptions::new().retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(5)),
            move |fails: usize| {
                let n = flaky_calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= fails {
                    Err(format!("attempt {n} failed"))
                } else {
                    Ok(n)
                }
            },
        )
        .task_with(
            "urgent",
            TaskOptions::new().priority(Priority::High),
            |(): ()| Ok::<_, String>(1),
        )
        .task_with(
            "limited",
            TaskOptions::new().time_limit(Duration::from_millis(1)),
            |(): ()| {
                while weft::checkpoint().is_ok() {
                    std::thread::yield_now();
                }
                Ok::<_, String>(())
            },
        )
}

struct Fixture {
    node: RunningNode,
    http: Http,
    gate: Gate,
    order: Arc<Mutex<Vec<String>>>,
    dir: Option<PathBuf>,
}

impl Fixture {
    /// Waits until `id`, this fixture's first `block` task, has reached the gate, and
    /// checks that the node shows it `STARTED` (marked before the task's function runs).
    async fn started(&self, id: &str) {
        self.gate.arrived(1).await;
        assert_eq!(self.http.info(id).await["state"], "STARTED");
    }

    async fn shutdown(self) {
        self.gate.open();
        self.node.shutdown().await;
        if let Some(d) = self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A node on a fresh Unix socket, configured by `f`.
async fn unix_node(f: impl FnOnce(Node) -> Node) -> Fixture {
    let gate = Gate::default();
    let order = Arc::default();
    let dir = temp_dir();
    let node = f(ephemeral_node(registry(&gate, &order))
        .workers(2)
        .unix(dir.join("n.sock")))
    .start()
    .await
    .unwrap();
    Fixture {
        http: Http::new(&node),
        node,
        gate,
        order,
        dir: Some(dir),
    }
}

// ---------------------------------------------------------------- the happy paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_submit_and_wait() {
    let fx = unix_node(|n| n).await;
    let Endpoint::Unix(path) = fx.node.endpoint().clone() else {
        panic!()
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "socket mode");
    assert_eq!(mode(path.parent().unwrap()), 0o700, "directory mode");

    let h = &fx.http;
    assert_eq!(
        h.get("/healthz").await.json(),
        json!({"status": "ok", "token_required": false})
    );
    let id = h.submit("add", json!({"args": [2, 3]})).await;
    let v = h.wait(&id).await;
    assert_eq!(v["state"], "SUCCESS");
    assert_eq!(v["result"], 5);
    assert_eq!(v["attempts"], 1);
    assert!(v.get("error").is_none());
    assert!(v["finished_at_ms"].as_u64().unwrap() >= v["submitted_at_ms"].as_u64().unwrap());

    // Registry, list, metrics.
    let reg = h.get("/v1/registry").await.json();
    let names: Vec<_> = reg["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"add") && names.contains(&"flaky"));
    let urgent = reg["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "urgent")
        .unwrap();
    assert_eq!(urgent["priority"], "high");
    let id2 = h.submit("add", json!({"args": [1, 1]})).await;
    h.wait(&id2).await;
    let list = h.get("/v1/tasks?limit=1").await.json();
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(list["tasks"][0]["id"], id2, "newest first");
    assert_eq!(
        h.get("/v1/tasks").await.json()["tasks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let m = h.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = m.text();
    for name in [
        "weft_tasks_spawned_total 2",
        "weft_tasks_completed_total 2",
        "weft_queued{lane=\"high\"} 0",
        "weft_workers 2",
        "weft_service_submitted_total 2",
        "weft_service_in_flight 0",
        "weft_service_results_stored 2",
        "weft_submissions_rejected_total{reason=\"full\"} 0",
        "# TYPE weft_tasks_panicked_total counter",
        "# HELP weft_timers_pending",
    ] {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }
    fx.shutdown().await;
    assert!(!path.exists(), "socket removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_loopback_without_token() {
    let node = ephemeral_node(registry(&Gate::default(), &Arc::default()))
        .workers(1)
        .tcp("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let Endpoint::Tcp(addr) = node.endpoint() else {
        panic!()
    };
    assert_ne!(addr.port(), 0);
    let h = Http::new(&node);
    let id = h.submit("add", json!({"args": [40, 2]})).await;
    assert_eq!(h.wait(&id).await["result"], 42);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_with_token() {
    let node = ephemeral_node(registry(&Gate::default(), &Arc::default()))
        .workers(1)
        .tcp("127.0.0.1:0".parse().unwrap())
        .token("s3cret")
        .start()
        .await
        .unwrap();
    let mut h = Http::new(&node);
    assert_eq!(
        h.get("/healthz").await.status,
        200,
        "healthz needs no token"
    );
    for path in ["/v1/registry", "/v1/tasks", "/metrics"] {
        let r = h.get(path).await;
        assert_eq!(r.status, 401, "{path}");
        assert!(r.error().contains("token"));
    }
    assert_eq!(
        h.post("/v1/tasks/add", r#"{"args": [1, 2]}"#).await.status,
        401
    );
    h.token = Some("wrong".into());
    assert_eq!(h.get("/v1/registry").await.status, 401);
    h.token = Some("s3cret".into());
    let id = h.submit("add", json!({"args": [1, 2]})).await;
    assert_eq!(h.wait(&id).await["result"], 3);
    node.shutdown().await;

    // A non-loopback bind needs a token.
    let err = ephemeral_node(Registry::new())
        .tcp("0.0.0.0:0".parse().unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(err.is_token_required(), "{err}");
    assert!(err.to_string().contains("token"));
    let ok = ephemeral_node(Registry::new())
        .workers(1)
        .tcp("0.0.0.0:0".parse().unwrap())
        .token("t")
        .start()
        .await
        .unwrap();
    ok.shutdown().await;
}

/// The `Bearer` scheme is matched without regard to case (RFC 9110 §11.1); the token is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive() {
    let node = ephemeral_node(Registry::new())
        .workers(1)
        .tcp("127.0.0.1:0".parse().unwrap())
        .token("s3cret")
        .start()
        .await
        .unwrap();
    let at = node.endpoint().clone();
    let get = |auth: &str| {
        format!("GET /v1/registry HTTP/1.1\r\nhost: weft\r\nconnection: close\r\nauthorization: {auth}\r\n\r\n")
    };
    for auth in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR  s3cret",
    ] {
        let r = raw(&at, get(auth).as_bytes()).await;
        assert_eq!(r.status, 200, "{auth}: {}", r.text());
    }
    for auth in ["Bearer S3CRET", "Basic s3cret", "Bearers3cret", "s3cret"] {
        let r = raw(&at, get(auth).as_bytes()).await;
        assert_eq!(r.status, 401, "{auth}: {}", r.text());
    }
    node.shutdown().await;
}

// ---------------------------------------------------------------- outcomes and states

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_panics_and_time_limits() {
    let fx = unix_node(|n| n).await;
    let h = &fx.http;
    let v = h
        .wait(&h.submit("fail", json!({"args": "disk full"})).await)
        .await;
    assert_eq!(
        (v["state"].as_str(), v["error"].as_str()),
        (Some("FAILURE"), Some("disk full"))
    );
    assert!(v.get("result").is_none());

    let v = h.wait(&h.submit("boom", json!({})).await).await;
    assert_eq!(v["state"], "FAILURE");
    assert_eq!(v["error"], "boom goes the task");

    // The registered time limit, and one given with the submission.
    let v = h.wait(&h.submit("limited", json!({})).await).await;
    assert_eq!(
        (v["state"].as_str(), v["error"].as_str()),
        (Some("FAILURE"), Some("time limit exceeded"))
    );
    let v = h
        .wait(&h.submit("spin", json!({"time_limit_ms": 5})).await)
        .await;
    assert_eq!(v["error"], "time limit exceeded");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_retry_state() {
    let fx = unix_node(|n| n).await;
    let h = &fx.http;
    // The registered policy: fails twice, succeeds on the third attempt.
    let v = h.wait(&h.submit("flaky", json!({"args": 2})).await).await;
    assert_eq!(v["state"], "SUCCESS", "{v}");
    assert_eq!(v["attempts"], 3);

    // A policy given with the submission: attempts run out, the last error stays.
    let v = h
        .wait(&h.submit("fail", json!({"args": "nope", "retry": {"max_attempts": 3, "backoff_ms": 1, "multiplier": 2, "jitter": 0.5}})).await)
        .await;
    assert_eq!(
        (v["state"].as_str(), v["attempts"].as_u64()),
        (Some("FAILURE"), Some(3))
    );
    assert_eq!(v["error"], "nope");

    // RETRY while it waits for its backoff; a cancel wins there.
    let id = h
        .submit(
            "fail",
            json!({"args": "again", "retry": {"max_attempts": 5, "backoff_ms": 3_600_000}}),
        )
        .await;
    let v = h.wait_state(&id, "RETRY").await;
    assert_eq!(v["attempts"], 1);
    assert!(v.get("error").is_none());
    let c = h.cancel(&id).await;
    assert_eq!(c, json!({"id": id, "revoked": true, "state": "REVOKED"}));
    let v = h.info(&id).await;
    assert_eq!(
        (v["state"].as_str(), v["error"].as_str()),
        (Some("REVOKED"), Some("cancelled"))
    );
    // A second cancel: nothing to revoke.
    assert_eq!(h.cancel(&id).await["revoked"], false);
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_running_and_finished() {
    let fx = unix_node(|n| n.workers(1)).await;
    let h = &fx.http;
    let running = h.submit("block", json!({})).await;
    fx.started(&running).await;
    let queued = h.submit("add", json!({"args": [1, 2]})).await;
    assert_eq!(h.info(&queued).await["state"], "PENDING");

    assert_eq!(
        h.cancel(&queued).await,
        json!({"id": queued, "revoked": true, "state": "REVOKED"})
    );
    // Running: cancellation is requested; it stays STARTED until it ends.
    assert_eq!(
        h.cancel(&running).await,
        json!({"id": running, "revoked": true, "state": "STARTED"})
    );
    fx.gate.open();
    let v = h.wait(&running).await;
    assert_eq!(v["state"], "REVOKED");

    let done = h.submit("add", json!({"args": [1, 2]})).await;
    h.wait(&done).await;
    assert_eq!(
        h.cancel(&done).await,
        json!({"id": done, "revoked": false, "state": "SUCCESS"})
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_schedules() {
    let fx = unix_node(|n| n).await;
    let h = &fx.http;
    let r = h
        .post("/v1/tasks/add", r#"{"args": [1, 2], "delay_ms": 50}"#)
        .await;
    assert_eq!(r.status, 202);
    let v = r.json();
    assert_eq!(v["state"], "SCHEDULED");
    let v = h.wait(v["id"].as_str().unwrap()).await;
    assert_eq!(v["result"], 3);
    let waited = v["finished_at_ms"].as_u64().unwrap() - v["submitted_at_ms"].as_u64().unwrap();
    assert!(waited >= 49, "ran after {waited} ms");
    // delay_ms 0 is no delay.
    let r = h
        .post("/v1/tasks/add", r#"{"args": [1, 2], "delay_ms": 0}"#)
        .await;
    assert_eq!(r.json()["state"], "PENDING");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_queued_work() {
    let fx = unix_node(|n| n.workers(1)).await;
    let h = &fx.http;
    let blocker = h.submit("block", json!({})).await;
    fx.started(&blocker).await;
    let mut ids = Vec::new();
    for (tag, prio) in [
        ("low", "low"),
        ("normal", "normal"),
        ("high", "high"),
        ("low2", "low"),
    ] {
        ids.push(
            h.submit("order", json!({"args": tag, "priority": prio}))
                .await,
        );
    }
    fx.gate.open();
    for id in &ids {
        assert_eq!(h.wait(id).await["state"], "SUCCESS");
    }
    assert_eq!(*fx.order.lock().unwrap(), ["high", "normal", "low", "low2"]);
    fx.shutdown().await;
}

// ---------------------------------------------------------------- the result store

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_after_ttl_and_capacity() {
    let fx = unix_node(|n| n.result_ttl(Duration::from_millis(100))).await;
    let h = &fx.http;
    let id = h.submit("add", json!({"args": [1, 2]})).await;
    assert_eq!(h.wait(&id).await["state"], "SUCCESS");
    let r = wait_for(|| async {
        let r = h.get(&format!("/v1/tasks/{id}")).await;
        (r.status == 404).then_some(r)
    })
    .await;
    assert_eq!(
        r.error(),
        format!("unknown task id \"{id}\" (results are kept for 100ms)")
    );
    assert_eq!(
        h.call("DELETE", &format!("/v1/tasks/{id}"), None)
            .await
            .status,
        404
    );
    fx.shutdown().await;

    // Capacity: the oldest finished record goes first; in-flight ones are never evicted.
    let fx = unix_node(|n| n.max_results(2).workers(2)).await;
    let h = &fx.http;
    let blocked = h.submit("block", json!({})).await;
    fx.started(&blocked).await;
    let mut done = Vec::new();
    for i in 0..3 {
        let id = h.submit("add", json!({"args": [i, 0]})).await;
        assert_eq!(h.wait(&id).await["result"], i);
        done.push(id);
    }
    assert_eq!(
        h.get(&format!("/v1/tasks/{}", done[0])).await.status,
        404,
        "oldest finished went"
    );
    let listed = h.get("/v1/tasks").await.json();
    let ids = listed_ids(&listed);
    assert_eq!(
        ids,
        [done[2].as_str(), done[1].as_str(), blocked.as_str()],
        "in flight stays"
    );
    fx.gate.open();
    assert_eq!(h.wait(&blocked).await["state"], "SUCCESS");
    assert_eq!(h.get(&format!("/v1/tasks/{}", done[1])).await.status, 404);
    assert!(h
        .get("/metrics")
        .await
        .text()
        .contains("weft_service_results_stored 2"));
    fx.shutdown().await;
}

/// The ids of a `GET /v1/tasks` answer, in its order.
fn listed_ids(listed: &Value) -> Vec<&str> {
    listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_results_and_list_answers_are_bounded_in_bytes() {
    // Each failure carries a 1 MB message, and its args (the message) are kept too: a
    // record weighs 2 MB; the finished records may hold 7 MB together, a list answer 3 MB.
    const MB: usize = 1_000_000;
    let fx = unix_node(|n| {
        n.max_body_bytes(2 * MB)
            .max_result_bytes(7 * MB)
            .max_list_bytes(3 * MB)
            .workers(2)
    })
    .await;
    let h = &fx.http;
    let message = "m".repeat(MB);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let id = h.submit("fail", json!({ "args": message })).await;
        assert_eq!(h.wait(&id).await["state"], "FAILURE");
        ids.push(id);
    }
    // Oldest first: three weigh just over 6 MB, four would be over the budget.
    for old in &ids[..3] {
        assert_eq!(h.get(&format!("/v1/tasks/{old}")).await.status, 404);
    }
    for kept in &ids[3..] {
        let info = h.info(kept).await;
        assert_eq!(
            info["error"].as_str().map(str::len),
            Some(MB),
            "read by id in full"
        );
    }
    let metrics = h.get("/metrics").await.text();
    let bytes: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_service_results_bytes "))
        .expect("weft_service_results_bytes in /metrics")
        .trim()
        .parse()
        .unwrap();
    assert!((6 * MB..=7 * MB).contains(&bytes), "{bytes} bytes kept");
    // A list stops at its byte budget (newest first) and says so.
    let listed = h.get("/v1/tasks?limit=100").await.json();
    assert_eq!(
        listed_ids(&listed),
        [ids[5].as_str()],
        "one 2 MB record fits in 3 MB"
    );
    assert_eq!(listed["truncated"], true);
    // A result larger than a list answer may hold is still read in full by its id.
    let large = h
        .submit("fail", json!({ "args": "l".repeat(MB + MB / 2) }))
        .await;
    assert_eq!(h.wait(&large).await["state"], "FAILURE");
    let info = h.info(&large).await;
    assert_eq!(info["error"].as_str().map(str::len), Some(MB + MB / 2));
    fx.shutdown().await;
}

// ---------------------------------------------------------------- bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_reason() {
    let fx = unix_node(|n| n.max_body_bytes(1024)).await;
    let h = &fx.http;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/v1/tasks/add", "{", 400, "invalid request body"),
        ("/v1/tasks/add", "", 400, "invalid request body"),
        ("/v1/tasks/add", "[1, 2]", 400, "invalid request body"),
        ("/v1/tasks/add", "null", 400, "invalid request body"),
        (
            "/v1/tasks/add",
            r#"{"args": ["a", 1]}"#,
            400,
            "invalid args for task \"add\"",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1]}"#,
            400,
            "invalid args for task \"add\"",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "bogus": 1}"#,
            400,
            "unknown field `bogus`",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "priority": "urgent"}"#,
            400,
            "unknown variant `urgent`",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "priority": 1}"#,
            400,
            "invalid request body",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "delay_ms": -5}"#,
            400,
            "invalid request body",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "delay_ms": 1.5}"#,
            400,
            "invalid request body",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "delay_ms": 18446744073709551616}"#,
            400,
            "invalid request body",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "delay_ms": 1e30}"#,
            400,
            "invalid request body",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "delay_ms": 18446744073709551615}"#,
            400,
            "delay_ms 18446744073709551615 is too large",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "time_limit_ms": -1}"#,
            400,
            "invalid request body",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "retry": {"jitter": 2}}"#,
            400,
            "jitter",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "retry": {"multiplier": 3}}"#,
            400,
            "multiplier",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "retry": {"max_attempts": -1}}"#,
            400,
            "invalid request body",
        ),
        (
            "/v1/tasks/add",
            r#"{"args": [1, 2], "retry": {"tries": 1}}"#,
            400,
            "unknown field `tries`",
        ),
        ("/v1/tasks/nope", "{}", 404, "unknown task \"nope\""),
    ];
    for (path, body, status, msg) in cases {
        let r = h.post(path, body).await;
        assert_eq!(r.status, *status, "{path} {body}: {}", r.text());
        assert!(
            r.error().contains(msg),
            "{path} {body}: {:?} lacks {msg:?}",
            r.error()
        );
    }
    let r = h.post("/v1/tasks/nope", "{}").await;
    assert!(r.json()["tasks"]
        .as_array()
        .unwrap()
        .contains(&json!("add")));

    // Over the body limit.
    let big = format!(r#"{{"args": [1, 2], "pad": "{}"}}"#, "x".repeat(2000));
    let r = h.post("/v1/tasks/add", &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.error().contains("1024 bytes"));

    // Ids, waits, limits, routes, methods.
    let bad_gets: &[(&str, u16, &str)] = &[
        (
            "/v1/tasks/not-a-uuid",
            404,
            "unknown task id \"not-a-uuid\"",
        ),
        (
            "/v1/tasks/00000000-0000-4000-8000-000000000000",
            404,
            "results are kept for 1h",
        ),
        (
            "/v1/tasks/00000000-0000-4000-8000-000000000000?wait=abc",
            400,
            "bad wait",
        ),
        (
            "/v1/tasks/00000000-0000-4000-8000-000000000000?wait=-1",
            400,
            "bad wait",
        ),
        ("/v1/tasks?limit=-1", 400, "bad limit"),
        ("/v1/tasks?limit=x", 400, "bad limit"),
        ("/v2/nothing", 404, "no such endpoint"),
    ];
    for (path, status, msg) in bad_gets {
        let r = h.get(path).await;
        assert_eq!(r.status, *status, "{path}: {}", r.text());
        assert!(
            r.error().contains(msg),
            "{path}: {:?} lacks {msg:?}",
            r.error()
        );
    }
    let r = h.call("PUT", "/v1/tasks/add", Some(b"{}")).await;
    assert_eq!(r.status, 405);
    assert!(r.error().contains("PUT"));
    assert_eq!(
        h.get("/v1/tasks?limit=5000").await.status,
        200,
        "limits above the cap are capped"
    );

    // Nothing was accepted; every refusal was counted; the node still works.
    assert_eq!(h.get("/v1/tasks").await.json()["tasks"], json!([]));
    let text = h.get("/metrics").await.text();
    assert!(
        text.contains("weft_submissions_rejected_total{reason=\"unknown_task\"} 2"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "weft_submissions_rejected_total{{reason=\"bad_request\"}} {}",
            cases.len()
        )),
        "{text}"
    );
    assert!(text.contains("weft_service_submitted_total 0"));
    let id = h.submit("add", json!({"args": [2, 2]})).await;
    assert_eq!(h.wait(&id).await["result"], 4);
    fx.shutdown().await;
}

// ---------------------------------------------------------------- back-pressure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lane_answers_429_and_loses_nothing() {
    let fx = unix_node(|n| n.workers(1).max_queued(2)).await;
    let h = &fx.http;
    let blocker = h.submit("block", json!({})).await;
    fx.started(&blocker).await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..50 {
        let r = h
            .post("/v1/tasks/add", &json!({"args": [i, 1]}).to_string())
            .await;
        match r.status {
            202 => accepted.push((i, r.json()["id"].as_str().unwrap().to_owned())),
            429 => {
                assert_eq!(r.header("retry-after"), Some("1"));
                assert!(r.error().contains("normal lane is full"), "{}", r.error());
                refused += 1;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert_eq!(accepted.len(), 2, "max_queued(2)");
    assert_eq!(refused, 48);
    // Another lane still has room.
    let hi = h
        .submit("add", json!({"args": [0, 0], "priority": "high"}))
        .await;
    // Delayed work waits in the timer, not in the lane.
    let later = h
        .submit("add", json!({"args": [0, 0], "delay_ms": 1}))
        .await;
    fx.gate.open();
    for (i, id) in &accepted {
        let v = h.wait(id).await;
        assert_eq!(v["result"], i + 1, "every accepted task ran");
    }
    assert_eq!(h.wait(&hi).await["state"], "SUCCESS");
    assert_eq!(h.wait(&later).await["state"], "SUCCESS");
    let text = h.get("/metrics").await.text();
    assert!(
        text.contains("weft_submissions_rejected_total{reason=\"full\"} 48"),
        "{text}"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_answers_429() {
    let fx = unix_node(|n| n.workers(1).max_in_flight(2)).await;
    let h = &fx.http;
    let a = h.submit("block", json!({})).await;
    let b = h
        .submit("add", json!({"args": [1, 1], "delay_ms": 3_600_000}))
        .await;
    let r = h.post("/v1/tasks/add", r#"{"args": [1, 1]}"#).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.error().contains("in-flight limit"));
    assert!(h
        .get("/metrics")
        .await
        .text()
        .contains("weft_service_in_flight 2"));
    // A finished task frees its slot.
    assert_eq!(h.cancel(&b).await["revoked"], true);
    let c = h.submit("add", json!({"args": [1, 1]})).await;
    fx.gate.open();
    h.wait(&a).await;
    assert_eq!(h.wait(&c).await["result"], 2);
    fx.shutdown().await;
}

// ---------------------------------------------------------------- shutdown and sockets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_answers_waiters() {
    let fx = unix_node(|n| n.workers(1)).await;
    let h = fx.http.clone();
    let running = h.submit("block", json!({})).await;
    fx.started(&running).await;
    let queued = h.submit("add", json!({"args": [5, 5]})).await;
    let delayed = h
        .submit("add", json!({"args": [5, 5], "delay_ms": 3_600_000}))
        .await;
    let waiters: Vec<_> = [running.clone(), queued.clone(), delayed.clone()]
        .into_iter()
        .map(|id| {
            let h = h.clone();
            tokio::spawn(async move { h.get(&format!("/v1/tasks/{id}?wait=60s")).await.json() })
        })
        .collect();
    // The listener closes at shutdown: let the waiters get in first.
    h.wait_metric("weft_service_waiters 3").await;
    let gate = fx.gate.clone();
    let Endpoint::Unix(path) = fx.node.endpoint().clone() else {
        panic!()
    };
    let stopper = tokio::spawn(fx.node.shutdown());
    gate.open();
    stopper.await.unwrap();
    let answers: Vec<Value> = futures_all(waiters).await;
    let state = |id: &str| {
        answers
            .iter()
            .find(|v| v["id"] == id)
            .map(|v| v["state"].clone())
    };
    assert_eq!(state(&running), Some(json!("SUCCESS")));
    assert_eq!(
        state(&queued),
        Some(json!("SUCCESS")),
        "drain runs queued work"
    );
    assert_eq!(
        state(&delayed),
        Some(json!("REVOKED")),
        "delayed work is revoked"
    );
    assert!(!path.exists());
    if let Some(d) = fx.dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

async fn futures_all(hs: Vec<tokio::task::JoinHandle<Value>>) -> Vec<Value> {
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancel_mode_revokes_queued_work() {
    let fx = unix_node(|n| n.workers(1).shutdown_mode(ShutdownMode::Cancel)).await;
    let h = fx.http.clone();
    let running = h.submit("block", json!({})).await;
    fx.started(&running).await;
    let queued = h.submit("add", json!({"args": [5, 5]})).await;
    let waiter = {
        let (h, id) = (h.clone(), queued.clone());
        tokio::spawn(async move { h.get(&format!("/v1/tasks/{id}?wait=60s")).await.json() })
    };
    h.wait_metric("weft_service_waiters 1").await;
    let gate = fx.gate.clone();
    let stopper = tokio::spawn(fx.node.shutdown());
    let v = waiter.await.unwrap();
    assert_eq!(v["state"], "REVOKED");
    assert_eq!(v["error"], "the node shut down before the task ran");
    gate.open();
    stopper.await.unwrap();
    if let Some(d) = fx.dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_replaced_live_socket_refused() {
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("n.sock");
    // A stale socket: its listener is gone, the file stays.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let node = ephemeral_node(Registry::new())
        .workers(1)
        .unix(&path)
        .start()
        .await
        .unwrap();
    let h = Http::new(&node);
    assert_eq!(h.get("/healthz").await.status, 200);

    // A live one.
    let err = ephemeral_node(Registry::new())
        .workers(1)
        .unix(&path)
        .start()
        .await
        .unwrap_err();
    assert!(err.is_in_use(), "{err}");
    assert!(err.to_string().contains("already listening"), "{err}");
    assert_eq!(
        h.get("/healthz").await.status,
        200,
        "the first node is untouched"
    );
    node.shutdown().await;
    assert!(!path.exists());

    // Not a socket.
    std::fs::write(&path, "precious").unwrap();
    let err = ephemeral_node(Registry::new())
        .workers(1)
        .unix(&path)
        .start()
        .await
        .unwrap_err();
    assert!(
        err.is_config() && err.to_string().contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// While draining, the node still accepts connections and answers them: new submissions
/// and `/healthz` with 503, reads as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_new_connections_are_answered_503() {
    let fx = unix_node(|n| n.workers(1).drain_timeout(HANG)).await;
    let h = fx.http.clone();
    let running = h.submit("block", json!({})).await;
    fx.started(&running).await;
    let gate = fx.gate.clone();
    let stopper = tokio::spawn(fx.node.shutdown());
    let r = wait_for(|| async {
        let r = h.get("/healthz").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(r.json()["status"], "draining");
    let r = h.post("/v1/tasks/add", r#"{"args": [1, 2]}"#).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.error().contains("shutting down"), "{}", r.error());
    assert_eq!(h.info(&running).await["state"], "STARTED");
    gate.open();
    stopper.await.unwrap();
    if let Some(d) = fx.dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Shutdown ends within the drain timeout even while a task runs on: the long-polls are
/// answered (with the task still `STARTED`) and the socket removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_the_drain_timeout_while_tasks_run() {
    let drain = Duration::from_millis(800);
    let fx = unix_node(|n| n.workers(1).drain_timeout(drain)).await;
    let h = fx.http.clone();
    let running = h.submit("block", json!({})).await;
    fx.started(&running).await;
    let waiter = {
        let (h, id) = (h.clone(), running.clone());
        tokio::spawn(async move { h.get(&format!("/v1/tasks/{id}?wait=60s")).await.json() })
    };
    h.wait_metric("weft_service_waiters 1").await;
    let Endpoint::Unix(path) = fx.node.endpoint().clone() else {
        panic!()
    };
    let began = Instant::now();
    fx.node.shutdown().await;
    let took = began.elapsed();
    // Within the drain timeout; the margin is only for a loaded machine's scheduling.
    assert!(took < drain + Duration::from_secs(2), "took {took:?}");
    assert_eq!(waiter.await.unwrap()["state"], "STARTED");
    assert!(!path.exists());
    fx.gate.open();
    if let Some(d) = fx.dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Runs `child_node_until_signalled` (a node in the foreground, `Node::run_with`) in a
/// child process with a task that never ends, and signals it: SIGTERM ends it within the
/// drain timeout; SIGTERM then SIGINT ends it at once, with status 130.
#[test]
fn signals_end_the_node_in_time() {
    use std::io::BufRead;
    for (drain_ms, signals) in [(800u64, &["TERM"][..]), (60_000, &["TERM", "INT"][..])] {
        let dir = temp_dir();
        let socket = dir.join("n.sock");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_node_until_signalled",
                "--ignored",
                "--nocapture",
            ])
            .env("WEFT_SOCKET", &socket)
            .env("WEFT_TEST_DRAIN_MS", drain_ms.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.any(|l| l.unwrap().contains("node ready")),
            "the child never got ready"
        );
        let client = weft::service::Client::unix(&socket);
        let task = client
            .submit("forever", json!(null), Default::default())
            .unwrap();
        common_wait(|| client.status(&task.id, None).unwrap().state.to_string() == "STARTED");
        let kill = |sig: &str| {
            let ok = std::process::Command::new("sh")
                .args(["-c", &format!("kill -{sig} {}", child.id())])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{sig}");
        };
        let began = Instant::now();
        kill(signals[0]);
        if signals.len() > 1 {
            // Draining: a new connection is answered 503.
            common_wait(|| client.health().is_err_and(|e| e.status() == Some(503)));
            kill(signals[1]);
        }
        let status = child.wait().unwrap();
        let took = began.elapsed();
        if signals.len() > 1 {
            assert_eq!(status.code(), Some(130), "{status:?}");
            assert!(took < Duration::from_secs(10), "took {took:?}");
        } else {
            assert!(status.success(), "{status:?}");
            assert!(
                took >= Duration::from_millis(drain_ms / 2),
                "exited after {took:?}: it did not drain"
            );
            assert!(
                took < Duration::from_millis(drain_ms) + Duration::from_secs(2),
                "exited after {took:?} (drain {drain_ms} ms)"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Re-checks `cond` until it holds; fails after `HANG`.
fn common_wait(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {HANG:?}"
        );
        std::thread::yield_now();
    }
}

#[test]
#[ignore = "run by signals_end_the_node_in_time"]
fn child_node_until_signalled() {
    let drain: u64 = std::env::var("WEFT_TEST_DRAIN_MS")
        .unwrap()
        .parse()
        .unwrap();
    let registry = Registry::new().task("forever", |(): ()| -> Result<(), String> {
        loop {
            std::thread::park();
        }
    });
    ephemeral_node(registry)
        .workers(1)
        .drain_timeout(Duration::from_millis(drain))
        .run_with(|_| println!("node ready"))
        .unwrap();
}

/// Only root can give a directory to another user: the ownership cases run only there
/// (CI runs as root).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A socket directory another local user prepared (open to all, or, as root, theirs) is
/// refused, and nothing is bound in it; the node creates a missing one with mode 0700.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_socket_directory_is_refused() {
    let mut cases = vec![("mode 0777", 0o777, None), ("mode 0770", 0o770, None)];
    if is_root() {
        cases.push(("owned by 65534", 0o700, Some(65534)));
    }
    for (what, mode, owner) in cases {
        let dir = temp_dir();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
        }
        let err = ephemeral_node(Registry::new())
            .workers(1)
            .unix(dir.join("n.sock"))
            .start()
            .await
            .unwrap_err();
        assert!(err.is_unsafe_socket_dir(), "{what}: {err}");
        assert!(
            err.to_string().contains("refusing the socket directory"),
            "{what}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{what}: nothing is bound in it"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // A missing directory is created, mode 0700, and used.
    let dir = temp_dir().join("a").join("b");
    let node = ephemeral_node(Registry::new())
        .workers(1)
        .unix(dir.join("n.sock"))
        .start()
        .await
        .unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(Http::new(&node).get("/healthz").await.status, 200);
    node.shutdown().await;
    std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap()).unwrap();
}

/// Runs `child_refuses_a_loose_default_dir` with `XDG_RUNTIME_DIR` (the default socket
/// directory) set to a directory of mode 0755: fine for another directory, not for the
/// default one.
#[test]
fn the_default_socket_directory_must_be_0700() {
    let dir = temp_dir();
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_refuses_a_loose_default_dir",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove("WEFT_SOCKET")
        .env("XDG_RUNTIME_DIR", &dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "run by the_default_socket_directory_must_be_0700 with XDG_RUNTIME_DIR set"]
fn child_refuses_a_loose_default_dir() {
    let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR").expect("XDG_RUNTIME_DIR"));
    assert_eq!(weft::service::default_socket_path(), dir.join("weft.sock"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let err = ephemeral_node(Registry::new())
            .workers(1)
            .start()
            .await
            .unwrap_err();
        assert!(err.is_unsafe_socket_dir(), "{err}");
        assert!(err.to_string().contains("must be 0700"), "{err}");
        assert!(!dir.join("weft.sock").exists());
        // Named explicitly, it is still the default directory, judged by the same rule.
        let err = ephemeral_node(Registry::new())
            .workers(1)
            .unix(dir.join("other.sock"))
            .start()
            .await
            .unwrap_err();
        assert!(err.is_unsafe_socket_dir(), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let node = ephemeral_node(Registry::new())
            .workers(1)
            .start()
            .await
            .unwrap();
        assert_eq!(Http::new(&node).get("/healthz").await.status, 200);
        node.shutdown().await;
    });
}

/// Runs `child_uses_weft_socket` in a child process with `WEFT_SOCKET` set (this process's
/// environment is never changed: tests run on many threads).
#[test]
fn weft_socket_env_sets_the_default_path() {
    let dir = temp_dir();
    let path = dir.join("env.sock");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_uses_weft_socket",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WEFT_SOCKET", &path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
    assert!(!path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "run by weft_socket_env_sets_the_default_path with WEFT_SOCKET set"]
fn child_uses_weft_socket() {
    let path = PathBuf::from(std::env::var_os("WEFT_SOCKET").expect("WEFT_SOCKET"));
    assert_eq!(weft::service::default_socket_path(), path);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = ephemeral_node(Registry::new())
            .workers(1)
            .start()
            .await
            .unwrap();
        assert_eq!(node.endpoint(), &Endpoint::Unix(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Http::new(&node).get("/healthz").await.status, 200);
        node.shutdown().await;
    });
}

// ---------------------------------------------------------------- HTTP limits

/// A node on loopback TCP, configured by `f`.
async fn tcp_node(f: impl FnOnce(Node) -> Node) -> (Fixture, std::net::SocketAddr) {
    let gate = Gate::default();
    let order = Arc::default();
    let node = f(ephemeral_node(registry(&gate, &order))
        .workers(2)
        .tcp("127.0.0.1:0".parse().unwrap()))
    .start()
    .await
    .unwrap();
    let Endpoint::Tcp(addr) = node.endpoint().clone() else {
        unreachable!()
    };
    let fx = Fixture {
        http: Http::new(&node),
        node,
        gate,
        order,
        dir: None,
    };
    (fx, addr)
}

/// Reads one answer from a kept-alive connection (a `content-length` body).
async fn read_answer(s: &mut tokio::net::TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return parse(&buf[..end + 4 + len]);
            }
        }
        let n = tokio::time::timeout(HANG, s.read(&mut chunk))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the node closes `s` (EOF or reset); returns what it sent before that.
async fn closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(HANG, s.read(&mut chunk)).await {
            Err(_) => panic!("the node did not close the connection in {HANG:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return buf,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Slow loris: a connection that trickles its request's head, a byte at a time, is closed
/// once the header timeout has passed since it opened, however steadily it trickles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_closed_after_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let (fx, addr) = tcp_node(|n| n.header_timeout(timeout)).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    let head =
        b"GET /healthz HTTP/1.1\r\nhost: weft\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0;
    let mut buf = [0u8; 64];
    let got = loop {
        tokio::select! {
            r = s.read(&mut buf) => break r.unwrap_or(0),
            _ = tick.tick() => {
                // The trickle goes on for as long as the node takes (the head never ends).
                let byte = &head[sent % head.len()..sent % head.len() + 1];
                let _ = s.write_all(if sent < head.len() { byte } else { b"a" }).await;
                sent += 1;
            }
        }
    };
    let took = opened.elapsed();
    assert_eq!(got, 0, "closed without an answer");
    assert!(took >= timeout, "closed after {took:?}, before the timeout");
    assert!(took < Duration::from_secs(20), "closed only after {took:?}");
    fx.http
        .wait_metric("weft_service_connections_closed_total{reason=\"header_timeout\"} 1")
        .await;
    assert_eq!(fx.http.get("/healthz").await.status, 200);
    fx.shutdown().await;
}

/// A kept-alive connection stays open between requests for the idle timeout, not the
/// (shorter) header timeout, and is closed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (header, idle) = (Duration::from_millis(200), Duration::from_millis(1500));
    let (fx, addr) = tcp_node(|n| n.header_timeout(header).idle_timeout(idle)).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: weft\r\n\r\n")
            .await
            .unwrap();
        let r = read_answer(&mut s).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let answered = Instant::now();
    assert!(closed(&mut s).await.is_empty());
    let took = answered.elapsed();
    assert!(
        took >= idle,
        "closed after {took:?}: before the idle timeout"
    );
    assert!(
        took < idle + Duration::from_secs(20),
        "closed only after {took:?}"
    );
    fx.http
        .wait_metric("weft_service_connections_closed_total{reason=\"idle_timeout\"} 1")
        .await;
    fx.shutdown().await;
}

/// A POST whose body never comes is answered 408 once the body timeout has passed, and
/// its connection closed; so is one whose body stops halfway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_comes_is_answered_408_after_the_body_timeout() {
    let timeout = Duration::from_millis(300);
    let (fx, addr) = tcp_node(|n| n.body_timeout(timeout)).await;
    for partial in ["", r#"{"args": ["#] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /v1/tasks/add HTTP/1.1\r\nhost: weft\r\ncontent-type: application/json\r\n\
             content-length: 20\r\n\r\n{partial}"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let sent = Instant::now();
        let answer = closed(&mut s).await;
        let took = sent.elapsed();
        let r = parse(&answer);
        assert_eq!(r.status, 408, "{partial:?}: {}", r.text());
        assert!(
            r.error().contains("did not arrive within 300ms"),
            "{}",
            r.error()
        );
        assert!(took >= timeout, "answered after {took:?}");
        assert!(
            took < Duration::from_secs(20),
            "answered only after {took:?}"
        );
    }
    fx.shutdown().await;
}

/// A `Content-Length` over the limit is answered 413 before any of the body is read (no
/// `100 Continue` to an `Expect: 100-continue`), before authentication, and the
/// connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_before_it_is_read() {
    let (fx, addr) = tcp_node(|n| n.max_body_bytes(100).token("s3cret")).await;
    for expect in ["", "expect: 100-continue\r\n"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /v1/tasks/add HTTP/1.1\r\nhost: weft\r\ncontent-type: application/json\r\n\
             {expect}content-length: 1000000\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let answer = closed(&mut s).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        assert!(!text.contains("100 Continue"), "{text}");
        let r = parse(&answer);
        assert_eq!(r.status, 413, "{expect:?}: {text}");
        assert_eq!(r.header("connection"), Some("close"));
        assert!(r.error().contains("over the limit of 100 bytes"), "{text}");
    }
    // Within the limit, the token is asked for as before.
    let r = fx.http.post("/v1/tasks/add", r#"{"args": [1, 2]}"#).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let mut h = fx.http.clone();
    h.token = Some("s3cret".into());
    h.wait_metric("weft_submissions_rejected_total{reason=\"bad_request\"} 2")
        .await;
    fx.shutdown().await;
}

/// Requests hyper cannot parse are answered with the API's JSON errors, like every other
/// error, before authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_answered_as_json() {
    let (fx, _) = tcp_node(|n| n.token("s3cret")).await;
    let at = fx.node.endpoint().clone();
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nhost: weft\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let cases: [(&[u8], u16, &str); 4] = [
        (b"NOT AN HTTP REQUEST\r\n\r\n", 400, "malformed"),
        (
            b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n",
            400,
            "malformed",
        ),
        (
            b"GET /healthz HTTP/9.9\r\nhost: weft\r\n\r\n",
            400,
            "malformed",
        ),
        (huge.as_bytes(), 431, "too large"),
    ];
    for (req, status, says) in cases {
        let r = raw(&at, req).await;
        let shown = String::from_utf8_lossy(&req[..req.len().min(40)]).into_owned();
        assert_eq!(r.status, status, "{shown:?}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{shown:?}"
        );
        assert!(r.error().contains(says), "{shown:?}: {}", r.error());
    }
    fx.shutdown().await;
}

/// Past the connection cap, the connections idle the longest are closed to make room, so
/// `/healthz` still answers while more connections than the cap sit idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_the_oldest_idle_are_closed() {
    let cap = 8;
    let (fx, addr) = tcp_node(|n| n.max_connections(cap).header_timeout(HANG)).await;
    let mut idle = Vec::new();
    for _ in 0..3 * cap {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..3 {
        assert_eq!(fx.http.get("/healthz").await.status, 200);
    }
    // The oldest went first; the node holds at most `cap`.
    assert!(closed(&mut idle[0]).await.is_empty());
    let text = fx.http.get("/metrics").await.text();
    let open: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("weft_service_connections "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open <= cap, "{open} open connections, cap {cap}");
    assert!(
        text.lines().any(|l| l
            .strip_prefix("weft_service_connections_closed_total{reason=\"evicted\"} ")
            .is_some_and(|n| n.parse::<usize>().unwrap() >= 2 * cap)),
        "{text}"
    );
    fx.shutdown().await;
}

/// At the cap with a request in progress on every connection, a new connection is
/// answered 503 (JSON) and closed; none of those requests is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_busy_new_ones_are_refused() {
    let (fx, addr) = tcp_node(|n| n.max_connections(2)).await;
    let id = fx.http.submit("block", json!({})).await;
    fx.started(&id).await;
    let poll = format!("GET /v1/tasks/{id}?wait=60s HTTP/1.1\r\nhost: weft\r\n\r\n");
    // Whether both long-polls are in progress can only be seen by a third connection, and
    // that one evicts a long-poll whose head the node has not read yet: then try again.
    let mut tries = 0;
    let (mut busy, refused) = loop {
        tries += 1;
        assert!(tries <= 100, "never saw both long-polls in progress");
        // Admitted first (a request each), then given a long-poll each.
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: weft\r\n\r\n")
                .await
                .unwrap();
            if read_answer(&mut s).await.status != 200 {
                continue;
            }
            s.write_all(poll.as_bytes()).await.unwrap();
            busy.push(s);
        }
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = probe
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: weft\r\nconnection: close\r\n\r\n")
            .await;
        let r = parse(&closed(&mut probe).await);
        if busy.len() == 2 && r.status == 503 {
            break (busy, r);
        }
    };
    assert!(
        refused.error().contains("too many open connections"),
        "{}",
        refused.error()
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    fx.gate.open();
    for s in &mut busy {
        let r = read_answer(s).await;
        assert_eq!(r.json()["state"], "SUCCESS", "{}", r.text());
    }
    drop(busy);
    wait_for(|| async { (fx.http.get("/healthz").await.status == 200).then_some(()) }).await;
    fx.shutdown().await;
}

/// The defaults the README and the docs state.
#[test]
fn http_limit_defaults_are_the_documented_ones() {
    use weft::service::*;
    assert_eq!(DEFAULT_HEADER_TIMEOUT, Duration::from_secs(10));
    assert_eq!(DEFAULT_BODY_TIMEOUT, Duration::from_secs(30));
    assert_eq!(DEFAULT_IDLE_TIMEOUT, Duration::from_secs(60));
    assert_eq!(DEFAULT_MAX_CONNECTIONS, 1024);
    assert_eq!(DEFAULT_MAX_BODY_BYTES, 1 << 20);
}

/// Zero limits are refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_http_limits_are_refused() {
    type Configure = fn(Node) -> Node;
    let configs: [(&str, Configure); 4] = [
        ("header_timeout", |n| n.header_timeout(Duration::ZERO)),
        ("body_timeout", |n| n.body_timeout(Duration::ZERO)),
        ("idle_timeout", |n| n.idle_timeout(Duration::ZERO)),
        ("max_connections", |n| n.max_connections(0)),
    ];
    for (what, f) in configs {
        let err = f(ephemeral_node(Registry::new()).tcp("127.0.0.1:0".parse().unwrap()))
            .start()
            .await
            .unwrap_err();
        assert!(err.is_config() && err.to_string().contains(what), "{err}");
    }
}

// ---------------------------------------------------------------- fuzzing

fn fuzz_node() -> &'static (tokio::runtime::Runtime, Endpoint) {
    static NODE: std::sync::OnceLock<(tokio::runtime::Runtime, Endpoint)> =
        std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let node = rt.block_on(async {
            ephemeral_node(registry(&Gate::default(), &Arc::default()))
                .workers(2)
                .max_body_bytes(4096)
                .tcp("127.0.0.1:0".parse().unwrap())
                .start()
                .await
                .unwrap()
        });
        let at = node.endpoint().clone();
        // Kept running for the whole test binary.
        std::mem::forget(node);
        (rt, at)
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("args"),
        Just("priority"),
        Just("delay_ms"),
        Just("time_limit_ms"),
        Just("retry"),
        Just("x"),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::btree_map(field, json_value(), 0..4).prop_map(|m| {
            let mut m: serde_json::Map<String, Value> =
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            // Keep the node's work bounded: no long delays or retries.
            m.remove("delay_ms");
            m.remove("retry");
            Value::Object(m).to_string().into_bytes()
        }),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("add"),
            Just("fail"),
            Just("boom"),
            Just("flaky"),
            Just("nope"),
            Just("%ff"),
            Just("a%20b")
        ]
        .prop_map(|n| format!("/v1/tasks/{n}")),
        "[a-z0-9/?=&%._-]{0,24}".prop_map(|p| format!("/{p}")),
        "[0-9a-f-]{0,36}".prop_map(|id| format!("/v1/tasks/{id}?wait=0.01")),
        Just("/v1/tasks?limit=99999999999999999999999".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_never_get_a_5xx(
        method in prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("PUT")],
        path in path(),
        body in body(),
    ) {
        let (rt, at) = fuzz_node();
        let r = rt.block_on(raw(at, &build(method, &path, Some(&body), None)));
        prop_assert!(r.status < 500, "{method} {path} {:?} -> {} {}", String::from_utf8_lossy(&body), r.status, r.text());
        if r.status >= 400 {
            prop_assert!(r.json()["error"].is_string(), "{}", r.text());
        }
        let h = rt.block_on(raw(at, &build("GET", "/healthz", None, None)));
        prop_assert_eq!(h.status, 200);
    }
}
