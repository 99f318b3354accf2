//! [`Node`]: a pool and a registry served over HTTP, configured and started here; its
//! listener is bound in `bind.rs`, its errors are `error.rs`'s [`ServiceError`], and a
//! started node is `running.rs`'s [`RunningNode`] (shutdown).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::app::{App, ServiceCounters};
use super::journal::{Journal, OpenError};
use super::recover::recover;
use super::serve::{serve, Limits};
use super::store::Store;
use super::{default_data_dir, default_socket_path, Registry};
use crate::Pool;

mod bind;
mod error;
mod running;

use bind::{bind_unix, Bound};
use error::ErrorKind;
pub use error::ServiceError;
pub use running::RunningNode;

/// Where a node listens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// A Unix domain socket at this path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

/// What shutdown does with work that has not run yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Run the queued tasks first, for at most the drain timeout. What is left then
    /// (queued tasks, delayed ones and retries still waiting) is revoked on an ephemeral
    /// node, and kept in the store for the next start on a durable one.
    #[default]
    Drain,
    /// Revoke every task that has not started (durable or not).
    Cancel,
}

/// Where a node keeps its tasks.
#[derive(Clone, Debug)]
enum Data {
    /// [`default_data_dir`].
    Default,
    Dir(PathBuf),
    /// In memory only.
    Ephemeral,
}

#[derive(Clone, Debug)]
enum Listen {
    /// `None`: [`default_socket_path`].
    Unix(Option<PathBuf>),
    Tcp(SocketAddr),
}

/// A node: a [`Pool`] running the tasks of a [`Registry`], served over HTTP/1.1 + JSON.
///
/// Configure it with the chained setters, then [`start`](Self::start) it on the current
/// tokio runtime (a [`RunningNode`] comes back), or [`run`](Self::run) it in the
/// foreground until SIGINT or SIGTERM. By default it listens on a Unix socket at
/// [`default_socket_path`] and keeps its tasks in a durable store in
/// [`default_data_dir`] (see [`ephemeral`](Self::ephemeral)).
///
/// ```
/// use weft::service::{Node, Registry};
///
/// let registry = Registry::new().task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y));
/// let dir = std::env::temp_dir().join(format!("weft-doc-{}", std::process::id()));
/// let rt = tokio::runtime::Runtime::new().unwrap();
/// rt.block_on(async {
///     let node = Node::new(registry)
///         .workers(1)
///         .unix(dir.join("node.sock"))
///         .data_dir(dir.join("data"))
///         .start()
///         .await
///         .unwrap();
///     assert_eq!(node.endpoint().to_string(), format!("unix:{}", dir.join("node.sock").display()));
///     node.shutdown().await;
/// });
/// assert!(!dir.join("node.sock").exists(), "the socket file is removed");
/// assert!(dir.join("data/tasks.sqlite3").exists(), "the store stays");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct Node {
    registry: Registry,
    pool: Option<Pool>,
    workers: Option<usize>,
    max_queued: usize,
    listen: Listen,
    token: Option<String>,
    result_ttl: Duration,
    max_results: usize,
    max_result_bytes: usize,
    max_list_bytes: usize,
    max_in_flight: usize,
    max_body_bytes: usize,
    header_timeout: Duration,
    body_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    shutdown_mode: ShutdownMode,
    drain_timeout: Duration,
    data: Data,
    max_store_bytes: Option<u64>,
}

/// The exit status of a process that [`Node::run`] ends on a second signal
/// (128 + SIGINT, as a shell reports an interrupted command).
pub const SECOND_SIGNAL_EXIT: i32 = 130;

/// Default for [`Node::header_timeout`]: 10 s.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Node::body_timeout`]: 30 s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Node::idle_timeout`]: 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for [`Node::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default for [`Node::result_ttl`]: one hour (Celery's `result_expires`, a day there).
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(3600);
/// Default for [`Node::max_results`].
pub const DEFAULT_MAX_RESULTS: usize = 10_000;
/// Default for [`Node::max_result_bytes`]: 64 MiB.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 << 20;
/// Default for [`Node::max_list_bytes`]: 8 MiB.
pub const DEFAULT_MAX_LIST_BYTES: usize = 8 << 20;
/// Default for [`Node::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// Default for [`Node::max_queued`].
pub const DEFAULT_MAX_QUEUED: usize = 1024;
/// Default for [`Node::max_body_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default for [`Node::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Node {
    /// A node serving `registry`, with the defaults: a pool of
    /// [`default_workers`](crate::default_workers) workers whose lanes hold
    /// [`DEFAULT_MAX_QUEUED`] tasks each, the default Unix socket, no token.
    pub fn new(registry: Registry) -> Node {
        Node {
            registry,
            pool: None,
            workers: None,
            max_queued: DEFAULT_MAX_QUEUED,
            listen: Listen::Unix(None),
            token: None,
            result_ttl: DEFAULT_RESULT_TTL,
            max_results: DEFAULT_MAX_RESULTS,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            max_list_bytes: DEFAULT_MAX_LIST_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_mode: ShutdownMode::Drain,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            data: Data::Default,
            max_store_bytes: None,
        }
    }

    /// Keeps the node's tasks in a durable store in `dir` (created with mode 0700 if
    /// missing) instead of [`default_data_dir`]. See [`ephemeral`](Self::ephemeral) for
    /// what durable means.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data = Data::Dir(dir.into());
        self
    }

    /// Keeps the node's tasks in memory only: a crash or a restart forgets every task.
    ///
    /// By default a node is durable: it writes each task to an SQLite database in its
    /// data directory ([`data_dir`](Self::data_dir), else [`default_data_dir`]) before it
    /// answers `202` (one sync for all the submissions that arrive together), and a final
    /// state before it shows it, so kill -9 undoes nothing a client has seen. At start it
    /// reads the store back before it serves: finished tasks are readable for the rest of
    /// their TTL; unfinished ones run again (at least once: a task that was running counts
    /// its attempts across the restart and says `"interrupted": 1`), delayed ones at their
    /// due time. A graceful shutdown leaves the tasks it did not run (queued past the drain
    /// timeout, delayed, waiting for a retry, or still running) to the next start, rather
    /// than revoking them. A write the disk refuses answers the submission `507` and
    /// accepts nothing. One node per data directory.
    ///
    /// ```
    /// let node = weft::service::Node::new(weft::service::Registry::new()).ephemeral();
    /// assert!(format!("{node:?}").contains("Ephemeral"));
    /// ```
    pub fn ephemeral(mut self) -> Self {
        self.data = Data::Ephemeral;
        self
    }

    /// Caps the durable store's database file at about `bytes`; past it, writes fail as on
    /// a full disk (submissions answered `507`) until eviction frees room (default: no cap
    /// but the disk's).
    pub fn max_store_bytes(mut self, bytes: u64) -> Self {
        self.max_store_bytes = Some(bytes);
        self
    }

    /// Runs the tasks on `pool` instead of building one (`workers` and `max_queued` are
    /// then ignored). Build it with [`Builder::max_queued`](crate::Builder::max_queued) so a
    /// full lane answers 429 instead of queueing without bound. The node shuts it down when
    /// it stops.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Worker threads of the node's pool.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Bounds each lane of the node's pool (default [`DEFAULT_MAX_QUEUED`]): a submission
    /// to a full lane is answered 429.
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n;
        self
    }

    /// Listens on a Unix socket at `path` (mode 0600; missing directories are created with
    /// mode 0700). [`start`](Self::start) refuses a directory that belongs to another user
    /// (but root) or that group or others may write to.
    pub fn unix(mut self, path: impl Into<PathBuf>) -> Self {
        self.listen = Listen::Unix(Some(path.into()));
        self
    }

    /// Listens on TCP at `addr` (port 0: any free port; see [`RunningNode::endpoint`]). A
    /// non-loopback address needs a [`token`](Self::token).
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.listen = Listen::Tcp(addr);
        self
    }

    /// Requires `Authorization: Bearer <token>` on every request but `GET /healthz`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long a finished task's record is kept (default [`DEFAULT_RESULT_TTL`]).
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// The most finished records kept; beyond it the oldest go first (default
    /// [`DEFAULT_MAX_RESULTS`]).
    pub fn max_results(mut self, n: usize) -> Self {
        self.max_results = n;
        self
    }

    /// The most bytes the finished records may hold together: their results and errors as
    /// JSON, plus about 256 bytes each. Beyond it the oldest go first, but the newest
    /// finished record is kept whatever it weighs, so a large result stays readable by its
    /// id until the next task finishes (default [`DEFAULT_MAX_RESULT_BYTES`]).
    ///
    /// ```
    /// let node = weft::service::Node::new(weft::service::Registry::new())
    ///     .max_result_bytes(16 << 20)
    ///     .max_list_bytes(1 << 20);
    /// let shown = format!("{node:?}");
    /// assert!(shown.contains("max_result_bytes: 16777216"));
    /// assert!(shown.contains("max_list_bytes: 1048576"));
    /// ```
    pub fn max_result_bytes(mut self, n: usize) -> Self {
        self.max_result_bytes = n;
        self
    }

    /// The most bytes of records one `GET /v1/tasks` lists (weighed as for
    /// [`max_result_bytes`](Self::max_result_bytes)); a list cut short by it says
    /// `"truncated": true`, and the records left out are still readable by id. At least
    /// one record is listed (default [`DEFAULT_MAX_LIST_BYTES`]).
    pub fn max_list_bytes(mut self, n: usize) -> Self {
        self.max_list_bytes = n;
        self
    }

    /// The most tasks accepted and not finished (delayed ones included); beyond it
    /// submissions are answered 429 (default [`DEFAULT_MAX_IN_FLIGHT`]).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// The largest request body; a larger one is answered 413 (default
    /// [`DEFAULT_MAX_BODY_BYTES`]), before any of it is read when its `Content-Length`
    /// says so (and then without `100 Continue` to an `Expect: 100-continue`).
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// How long a connection may take to send a request's head (request line and
    /// headers), from when it is opened or from the first byte after an idle spell;
    /// then it is closed without an answer (default [`DEFAULT_HEADER_TIMEOUT`]).
    pub fn header_timeout(mut self, d: Duration) -> Self {
        self.header_timeout = d;
        self
    }

    /// How long a request's body may take to arrive, from the end of its head; then the
    /// request is answered 408 and the connection closed (default
    /// [`DEFAULT_BODY_TIMEOUT`]).
    pub fn body_timeout(mut self, d: Duration) -> Self {
        self.body_timeout = d;
        self
    }

    /// How long a keep-alive connection may stay idle (no request in progress) before it
    /// is closed (default [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// The most connections open at once (default [`DEFAULT_MAX_CONNECTIONS`]). At the
    /// cap, a new connection closes the one idle the longest (or sending its request's
    /// head the longest); if every one has a request in progress, the new one is
    /// answered 503 and closed. Running out of file descriptors evicts the same way.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// What shutdown does with queued work (default [`ShutdownMode::Drain`]).
    pub fn shutdown_mode(mut self, mode: ShutdownMode) -> Self {
        self.shutdown_mode = mode;
        self
    }

    /// How long shutdown may take (default [`DEFAULT_DRAIN_TIMEOUT`]): queued and running
    /// work gets all of it but a reserve (a quarter, at most 1 s); then queued tasks are
    /// revoked, waiters answered with the state at that moment, and running tasks no
    /// longer waited for (see [`RunningNode::shutdown`]).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// Opens the durable store and reads it back (see [`ephemeral`](Self::ephemeral)),
    /// then binds and starts serving on the current tokio runtime (it needs the `net` and
    /// `time` drivers: a runtime built with `enable_all`).
    ///
    /// Fails if the socket's directory is not safe (see [`default_socket_path`]), if the
    /// socket is in use by a live node (a stale socket file is replaced), if another node
    /// holds the data directory ([`ServiceError::is_in_use`]), if the store cannot be read
    /// ([`ServiceError::is_store`]), if a non-loopback TCP address has no token, if a
    /// limit is zero, or if binding fails.
    pub async fn start(self) -> Result<RunningNode, ServiceError> {
        for (what, n) in [
            ("max_results", self.max_results),
            ("max_result_bytes", self.max_result_bytes),
            ("max_list_bytes", self.max_list_bytes),
            ("max_in_flight", self.max_in_flight),
            ("max_body_bytes", self.max_body_bytes),
            ("max_connections", self.max_connections),
        ] {
            if n == 0 {
                return Err(ServiceError::new(
                    ErrorKind::Config,
                    format!("{what} must be at least 1"),
                ));
            }
        }
        for (what, d) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ServiceError::new(
                    ErrorKind::Config,
                    format!("{what} must be more than zero"),
                ));
            }
        }
        if let Listen::Tcp(addr) = self.listen {
            if !addr.ip().is_loopback() && self.token.is_none() {
                return Err(ServiceError::new(
                    ErrorKind::TokenRequired,
                    format!("refusing to listen on {addr} without a token: a non-loopback address needs one"),
                ));
            }
        }
        let journal = match &self.data {
            Data::Ephemeral => None,
            Data::Default | Data::Dir(_) => {
                let dir = match &self.data {
                    Data::Dir(d) => d.clone(),
                    _ => default_data_dir().ok_or_else(|| {
                        ServiceError::new(
                            ErrorKind::Config,
                            "no data directory: set WEFT_DATA_DIR (or XDG_STATE_HOME, or HOME), \
                             give one with data_dir, or run ephemeral",
                        )
                    })?,
                };
                Some(
                    Journal::open(&dir, self.max_store_bytes).map_err(|e| match e {
                        OpenError::InUse(m) => ServiceError::new(ErrorKind::InUse, m),
                        OpenError::Corrupt(m) => ServiceError::new(ErrorKind::Store, m),
                        OpenError::Io(m) => ServiceError::new(ErrorKind::Io, m),
                    })?,
                )
            }
        };
        let bound = match &self.listen {
            Listen::Unix(path) => {
                let path = path.clone().unwrap_or_else(default_socket_path);
                Bound::Unix(bind_unix(&path)?)
            }
            Listen::Tcp(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .map_err(|e| ServiceError::io(format!("cannot listen on {addr}"), e))?;
                l.set_nonblocking(true)
                    .map_err(|e| ServiceError::io("cannot set up the listener", e))?;
                let l = tokio::net::TcpListener::from_std(l)
                    .map_err(|e| ServiceError::io("cannot set up the listener", e))?;
                Bound::Tcp(l)
            }
        };
        let pool = match self.pool {
            Some(p) => p,
            None => {
                let mut b = Pool::builder().max_queued(self.max_queued.max(1));
                if let Some(n) = self.workers {
                    b = b.workers(n);
                }
                b.build().map_err(|e| {
                    ServiceError::new(ErrorKind::Config, format!("cannot build the pool: {e}"))
                })?
            }
        };
        let (journal, stored) = match journal {
            Some((j, stored)) => (Some(j), stored),
            None => (None, Vec::new()),
        };
        let keep_unfinished = journal.is_some() && self.shutdown_mode == ShutdownMode::Drain;
        let app = Arc::new(App {
            pool,
            registry: self.registry,
            store: Store::new(
                self.result_ttl,
                self.max_results,
                self.max_in_flight,
                self.max_result_bytes,
                journal.as_ref().map(|j| j.tx().clone()),
            ),
            token: self.token,
            max_body_bytes: self.max_body_bytes,
            max_list_bytes: self.max_list_bytes,
            counters: ServiceCounters::default(),
            closing: AtomicBool::new(false),
            stopping: watch::Sender::new(false),
            waiters: AtomicU64::new(0),
            idle: Notify::new(),
            connections: Arc::default(),
            journal,
            keep_unfinished,
            live: Arc::default(),
        });
        tokio::spawn(super::live::stats_loop(app.clone()));
        if let Some(tx) = app.journal.as_ref().map(|j| j.tx().clone()) {
            // Read back before anything is served (`/healthz` included).
            let r = recover(&app, &tx, stored).await;
            if r.results + r.requeued + r.failed > 0 {
                eprintln!(
                    "weft node: store read back: {} results, {} tasks to run again ({} were \
                     running when the node stopped), {} that cannot run again, {} expired",
                    r.results, r.requeued, r.interrupted, r.failed, r.expired
                );
            }
        }
        let router = super::http::router(app.clone());
        let limits = Limits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = app.connections.clone();
        let (endpoint, socket, server) = match bound {
            Bound::Unix(s) => {
                let endpoint = Endpoint::Unix(s.path.clone());
                let server = tokio::spawn(serve(s.listener, router, limits, stats, stop_rx));
                (endpoint, Some(s.guard), server)
            }
            Bound::Tcp(l) => {
                let addr = l
                    .local_addr()
                    .map_err(|e| ServiceError::io("cannot read the bound address", e))?;
                let server = tokio::spawn(serve(l, router, limits, stats, stop_rx));
                (Endpoint::Tcp(addr), None, server)
            }
        };
        Ok(RunningNode {
            endpoint,
            app,
            stop_tx,
            server: Some(server),
            socket,
            shutdown_mode: self.shutdown_mode,
            drain_timeout: self.drain_timeout,
        })
    }

    /// Runs the node in the foreground on a runtime of its own until SIGINT or SIGTERM,
    /// then shuts it down gracefully (see [`RunningNode::shutdown`]); a second SIGINT or
    /// SIGTERM during that ends the process at once, with exit status
    /// [`SECOND_SIGNAL_EXIT`].
    pub fn run(self) -> Result<(), ServiceError> {
        self.run_with(|_| {})
    }

    /// As [`run`](Self::run), calling `on_ready` with the bound endpoint once it listens
    /// (to print where it listens, for instance).
    pub fn run_with(self, on_ready: impl FnOnce(&Endpoint)) -> Result<(), ServiceError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weft-service")
            .enable_all()
            .build()
            .map_err(|e| ServiceError::io("cannot start the runtime", e))?;
        rt.block_on(async move {
            let node = self.start().await?;
            on_ready(node.endpoint());
            node.run_until(async {
                shutdown_signal().await;
                // A second signal does not wait for the drain.
                tokio::spawn(async {
                    shutdown_signal().await;
                    eprintln!("weft node: second signal, exiting now");
                    std::process::exit(SECOND_SIGNAL_EXIT);
                });
            })
            .await;
            Ok(())
        })
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("registry", &self.registry)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("result_ttl", &self.result_ttl)
            .field("max_results", &self.max_results)
            .field("max_result_bytes", &self.max_result_bytes)
            .field("max_list_bytes", &self.max_list_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("shutdown_mode", &self.shutdown_mode)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
