//! A client for the node's HTTP API: [`Client`] (blocking) and [`AsyncClient`] (tokio).
//!
//! Both speak HTTP/1.1 + JSON to a node over its Unix socket ([`Client::unix`], see
//! [`default_socket_path`](super::default_socket_path)) or over TCP ([`Client::tcp`]), send
//! a bearer token if given one, and keep connections alive between requests. Every
//! request ends in a typed answer or a [`ClientError`] that tells an unreachable node from
//! a refusal (with the status code and the node's message), a malformed answer and a
//! timeout.
//!
//! A submission refused with `429 Too Many Requests` (a full lane, or the node's in-flight
//! limit) is retried after the node's `Retry-After`, up to
//! [`with_busy_retries`](Client::with_busy_retries) times (3 by default).
//!
//! ```no_run
//! use std::time::Duration;
//! use weft::service::client::{State, SubmitOptions};
//! use weft::service::{default_socket_path, Client};
//!
//! let client = Client::unix(default_socket_path());
//! let task = client.submit("add", serde_json::json!([2, 3]), SubmitOptions::new())?;
//! let info = client.wait(&task.id, Duration::from_secs(60))?;
//! assert_eq!(info.state, State::Success);
//! assert_eq!(info.result, Some(serde_json::json!(5)));
//! # Ok::<(), weft::service::client::ClientError>(())
//! ```

mod duration;
mod error;
mod events;
mod transport;
mod types;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use hyper::Method;
use serde::de::DeserializeOwned;

pub use duration::{parse_duration, ParseDurationError};
pub use error::ClientError;
pub use events::{Event, EventStream};
pub use types::{
    Cancellation, RegisteredTask, RetryOptions, State, SubmitOptions, Submitted, TaskInfo,
};

use transport::{encode_segment, Target, Transport};

/// The longest `?wait=` the node honours; longer waits are split into several polls.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a request may take beyond any wait it asks for, unless set with
/// [`Client::with_request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a `429` answer is retried, unless set with [`Client::with_busy_retries`].
pub const DEFAULT_BUSY_RETRIES: u32 = 3;
/// The pause before retrying a `429` answer that carries no `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest pause honoured from a `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// A long-poll that returns unfinished sooner than this is followed by a short pause
/// before the next, so that a node which ignores `?wait=` is not polled in a tight loop.
const MIN_POLL: Duration = Duration::from_millis(10);
/// That pause.
const POLL_PAUSE: Duration = Duration::from_millis(50);

/// An async client for the node's HTTP API; see the [module docs](self).
///
/// Cloning is cheap and clones share their idle connections. A connection is driven by
/// the tokio runtime that opened it, so keep a client within one runtime.
///
/// ```no_run
/// # #[allow(dead_code)]
/// # async fn demo() -> Result<(), weft::service::client::ClientError> {
/// use weft::service::client::{AsyncClient, SubmitOptions};
///
/// let client = AsyncClient::tcp("http://127.0.0.1:7070")?.with_token("s3cret");
/// let task = client.submit("add", serde_json::json!([1, 2]), SubmitOptions::new()).await?;
/// let info = client.wait(&task.id, std::time::Duration::from_secs(10)).await?;
/// println!("{} -> {:?}", info.state, info.result);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncClient {
    transport: Arc<Transport>,
    token: Option<Arc<str>>,
    request_timeout: Duration,
    busy_retries: u32,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("target", &self.transport.target().describe())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("request_timeout", &self.request_timeout)
            .field("busy_retries", &self.busy_retries)
            .finish()
    }
}

impl AsyncClient {
    /// A client for the node listening on the Unix socket at `path`. Connects on first
    /// use.
    pub fn unix(path: impl Into<PathBuf>) -> AsyncClient {
        AsyncClient::new(Target::Unix(path.into()))
    }

    /// A client for the node at `url`: `http://host:port` (or `host:port`). Fails only if
    /// the URL cannot be read; connects on first use.
    pub fn tcp(url: &str) -> Result<AsyncClient, ClientError> {
        Ok(AsyncClient::new(Target::parse_url(url)?))
    }

    fn new(target: Target) -> AsyncClient {
        AsyncClient {
            transport: Arc::new(Transport::new(target)),
            token: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            busy_retries: DEFAULT_BUSY_RETRIES,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> AsyncClient {
        self.token = Some(Arc::from(token.into()));
        self
    }

    /// Gives up on a request that has no answer `timeout` after it was sent (beyond any
    /// wait it asked the node for). Default [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> AsyncClient {
        self.request_timeout = timeout;
        self
    }

    /// Retries a request refused with `429` this many times, after the node's
    /// `Retry-After` (at most 10 s; 1 s if absent). Default [`DEFAULT_BUSY_RETRIES`].
    pub fn with_busy_retries(mut self, retries: u32) -> AsyncClient {
        self.busy_retries = retries;
        self
    }

    /// Submits task `name` with `args` (`POST /v1/tasks/{name}`).
    pub async fn submit(
        &self,
        name: &str,
        args: serde_json::Value,
        options: SubmitOptions,
    ) -> Result<Submitted, ClientError> {
        let body = serde_json::to_vec(&options.to_body(args))
            .map_err(|e| ClientError::invalid_input(format!("args: {e}")))?;
        let path = format!("/v1/tasks/{}", encode_segment(name));
        self.json(Method::POST, &path, Some(Bytes::from(body)), Duration::ZERO)
            .await
    }

    /// The task's current [`TaskInfo`] (`GET /v1/tasks/{id}`). With `wait`, the node holds
    /// the answer until the task finishes or `wait` (at most [`MAX_WAIT`]) ends, then
    /// answers either way.
    pub async fn status(&self, id: &str, wait: Option<Duration>) -> Result<TaskInfo, ClientError> {
        let mut path = format!("/v1/tasks/{}", encode_segment(id));
        let wait = wait.map(|w| w.min(MAX_WAIT));
        if let Some(w) = wait {
            path.push_str("?wait=");
            path.push_str(&duration::format_millis(w));
        }
        self.json(Method::GET, &path, None, wait.unwrap_or_default())
            .await
    }

    /// Waits until the task finishes, long-polling [`status`](Self::status) as often as
    /// `timeout` needs, and returns its final [`TaskInfo`]; whether it succeeded is in
    /// [`TaskInfo::state`]. If `timeout` ends first, fails with an error for which
    /// [`ClientError::is_timeout`] holds.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<TaskInfo, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let started = Instant::now();
            let left = deadline.saturating_duration_since(started);
            let info = self.status(id, Some(left)).await?;
            if info.state.is_finished() {
                return Ok(info);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::timeout(format!(
                    "task {id} still {} after {}",
                    info.state,
                    human(timeout)
                )));
            }
            if now - started < MIN_POLL {
                tokio::time::sleep(POLL_PAUSE.min(deadline - now)).await;
            }
        }
    }

    /// Asks the node to cancel the task (`DELETE /v1/tasks/{id}`).
    pub async fn cancel(&self, id: &str) -> Result<Cancellation, ClientError> {
        let path = format!("/v1/tasks/{}", encode_segment(id));
        self.json(Method::DELETE, &path, None, Duration::ZERO).await
    }

    /// The most recent tasks, newest first (`GET /v1/tasks?limit=N`; the node's default
    /// limit is 100, its maximum 1000).
    pub async fn tasks(&self, limit: Option<usize>) -> Result<Vec<TaskInfo>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Tasks {
            tasks: Vec<TaskInfo>,
        }
        let path = match limit {
            Some(n) => format!("/v1/tasks?limit={n}"),
            None => "/v1/tasks".to_owned(),
        };
        let t: Tasks = self.json(Method::GET, &path, None, Duration::ZERO).await?;
        Ok(t.tasks)
    }

    /// The tasks the node can run (`GET /v1/registry`).
    pub async fn registry(&self) -> Result<Vec<RegisteredTask>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Registry {
            tasks: Vec<RegisteredTask>,
        }
        let r: Registry = self
            .json(Method::GET, "/v1/registry", None, Duration::ZERO)
            .await?;
        Ok(r.tasks)
    }

    /// The node's metrics in Prometheus text format (`GET /metrics`).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let res = self
            .call(Method::GET, "/metrics", None, Duration::ZERO)
            .await?;
        String::from_utf8(res.body.to_vec())
            .map_err(|_| ClientError::bad_response("metrics are not UTF-8"))
    }

    /// Opens the node's event stream (`GET /v1/events`): `task` events as tasks change
    /// state, a `stats` event at once and then every second.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let open = self
            .transport
            .open_stream("/v1/events", self.token.as_deref());
        let res = tokio::time::timeout(self.request_timeout, open)
            .await
            .map_err(|_| {
                ClientError::timeout(format!(
                    "no answer from {} to GET /v1/events within {}",
                    self.transport.target().describe(),
                    human(self.request_timeout)
                ))
            })??;
        match res {
            Ok(body) => Ok(EventStream::new(body)),
            Err(res) => Err(status_error(res)),
        }
    }

    /// Succeeds if the node answers `GET /healthz` with `{"status": "ok"}`.
    pub async fn health(&self) -> Result<(), ClientError> {
        #[derive(serde::Deserialize)]
        struct Health {
            status: String,
        }
        let h: Health = self
            .json(Method::GET, "/healthz", None, Duration::ZERO)
            .await?;
        if h.status == "ok" {
            Ok(())
        } else {
            Err(ClientError::bad_response(format!(
                "health status {:?}",
                h.status
            )))
        }
    }

    /// [`call`](Self::call), then the body read as `T`.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        wait: Duration,
    ) -> Result<T, ClientError> {
        let res = self.call(method, path, body, wait).await?;
        serde_json::from_slice(&res.body).map_err(|e| {
            ClientError::bad_response(format!(
                "{path}: {e} in {:?}",
                String::from_utf8_lossy(&res.body[..res.body.len().min(200)])
            ))
        })
    }

    /// One request with the timeout and the `429` retries; a success status or an error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        wait: Duration,
    ) -> Result<transport::Response, ClientError> {
        let limit = self.request_timeout.saturating_add(wait);
        let mut retries = self.busy_retries;
        loop {
            let send =
                self.transport
                    .send(method.clone(), path, self.token.as_deref(), body.clone());
            let res = tokio::time::timeout(limit, send).await.map_err(|_| {
                ClientError::timeout(format!(
                    "no answer from {} to {method} {path} within {}",
                    self.transport.target().describe(),
                    human(limit)
                ))
            })??;
            if res.status.is_success() {
                return Ok(res);
            }
            let err = status_error(res);
            match err.status() {
                Some(429) if retries > 0 => {
                    retries -= 1;
                    let pause = err
                        .retry_after()
                        .unwrap_or(DEFAULT_RETRY_AFTER)
                        .min(MAX_RETRY_AFTER);
                    tokio::time::sleep(pause).await;
                }
                _ => return Err(err),
            }
        }
    }
}

/// An error answer as a [`ClientError`], with the node's `error` text if it sent one.
fn status_error(res: transport::Response) -> ClientError {
    let body: Option<serde_json::Value> = serde_json::from_slice(&res.body).ok();
    let message = body
        .as_ref()
        .and_then(|b| b.get("error"))
        .and_then(|e| e.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&res.body).trim().to_owned();
            if text.is_empty() {
                res.status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                text
            }
        });
    ClientError::status_error(res.status.as_u16(), message, body, res.retry_after)
}

/// `1.5s`, `500ms`, `60s`: a duration for messages.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// A blocking client for the node's HTTP API; see the [module docs](self).
///
/// Runs its requests on a small single-threaded tokio runtime of its own, built on first
/// use, so it must not be called from inside an async runtime (use [`AsyncClient`]
/// there). One client serves its requests one at a time; give each thread its own for
/// throughput.
///
/// ```no_run
/// use weft::service::{default_socket_path, Client};
///
/// let client = Client::unix(default_socket_path()).with_token("s3cret");
/// for task in client.registry()? {
///     println!("{}", task.name);
/// }
/// print!("{}", client.metrics()?);
/// # Ok::<(), weft::service::client::ClientError>(())
/// ```
#[derive(Debug)]
pub struct Client {
    inner: AsyncClient,
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl Client {
    /// A client for the node listening on the Unix socket at `path`. Connects on first
    /// use.
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client::from_async(AsyncClient::unix(path))
    }

    /// A client for the node at `url`: `http://host:port` (or `host:port`). Fails only if
    /// the URL cannot be read; connects on first use.
    pub fn tcp(url: &str) -> Result<Client, ClientError> {
        Ok(Client::from_async(AsyncClient::tcp(url)?))
    }

    fn from_async(inner: AsyncClient) -> Client {
        Client {
            inner,
            runtime: OnceLock::new(),
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(self, token: impl Into<String>) -> Client {
        Client::from_async(self.inner.with_token(token))
    }

    /// See [`AsyncClient::with_request_timeout`].
    pub fn with_request_timeout(self, timeout: Duration) -> Client {
        Client::from_async(self.inner.with_request_timeout(timeout))
    }

    /// See [`AsyncClient::with_busy_retries`].
    pub fn with_busy_retries(self, retries: u32) -> Client {
        Client::from_async(self.inner.with_busy_retries(retries))
    }

    /// Submits task `name` with `args`; see [`AsyncClient::submit`].
    pub fn submit(
        &self,
        name: &str,
        args: serde_json::Value,
        options: SubmitOptions,
    ) -> Result<Submitted, ClientError> {
        self.block_on(self.inner.submit(name, args, options))
    }

    /// The task's current state, long-polling up to `wait`; see [`AsyncClient::status`].
    pub fn status(&self, id: &str, wait: Option<Duration>) -> Result<TaskInfo, ClientError> {
        self.block_on(self.inner.status(id, wait))
    }

    /// Waits until the task finishes or `timeout` ends; see [`AsyncClient::wait`].
    pub fn wait(&self, id: &str, timeout: Duration) -> Result<TaskInfo, ClientError> {
        self.block_on(self.inner.wait(id, timeout))
    }

    /// Asks the node to cancel the task; see [`AsyncClient::cancel`].
    pub fn cancel(&self, id: &str) -> Result<Cancellation, ClientError> {
        self.block_on(self.inner.cancel(id))
    }

    /// The most recent tasks, newest first; see [`AsyncClient::tasks`].
    pub fn tasks(&self, limit: Option<usize>) -> Result<Vec<TaskInfo>, ClientError> {
        self.block_on(self.inner.tasks(limit))
    }

    /// The tasks the node can run; see [`AsyncClient::registry`].
    pub fn registry(&self) -> Result<Vec<RegisteredTask>, ClientError> {
        self.block_on(self.inner.registry())
    }

    /// The node's metrics in Prometheus text format; see [`AsyncClient::metrics`].
    pub fn metrics(&self) -> Result<String, ClientError> {
        self.block_on(self.inner.metrics())
    }

    /// Succeeds if the node is up; see [`AsyncClient::health`].
    pub fn health(&self) -> Result<(), ClientError> {
        self.block_on(self.inner.health())
    }

    /// The node's event stream, as an iterator that blocks for each event; see
    /// [`AsyncClient::events`]. It ends when the node ends the stream.
    pub fn events(&self) -> Result<Events<'_>, ClientError> {
        let stream = self.block_on(self.inner.events())?;
        Ok(Events {
            client: self,
            stream,
        })
    }

    fn block_on<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let runtime = match self.runtime.get() {
            Some(rt) => rt,
            None => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                    .map_err(|e| {
                        ClientError::unreachable("(no runtime: cannot start tokio)".into(), e)
                    })?;
                self.runtime.get_or_init(|| rt)
            }
        };
        runtime.block_on(fut)
    }
}

/// The node's events, one at a time; made by [`Client::events`].
pub struct Events<'a> {
    client: &'a Client,
    stream: EventStream,
}

impl Iterator for Events<'_> {
    type Item = Result<Event, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let stream = &mut self.stream;
        self.client.block_on(stream.next()).transpose()
    }
}
