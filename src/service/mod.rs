//! The node-local service (feature `service`): a [`Pool`](crate::Pool) running the named
//! tasks of a [`Registry`], reachable over HTTP/1.1 + JSON on a Unix socket (or TCP), and
//! its [`Client`] (the `weft` command-line client, feature `cli`, is built on it).
//!
//! # The API
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/tasks/{name}` with `{"args": .., "priority": "high", "delay_ms": .., "time_limit_ms": .., "retry": {..}}` | `202 {"id", "name", "state"}` |
//! | `GET /v1/tasks/{id}[?wait=5s]` | `200` [`TaskInfo`]; with `wait`, once finished or when the wait ends (at most 60 s) |
//! | `DELETE /v1/tasks/{id}` | `200 {"id", "revoked", "state"}` |
//! | `GET /v1/tasks?limit=N` | `200 {"tasks": [TaskInfo, ..]}`, newest first |
//! | `GET /v1/registry` | `200 {"tasks": [{"name", "priority"}, ..]}` |
//! | `GET /v1/events` | server-sent events: `task` (a task's state changed: its record without result and args) and `stats` (lanes, workers, counts; every second) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | `200 {"status": "ok", "token_required": false}` (no token needed) |
//! | `GET /` | the dashboard (no token needed to load it; it asks for one when the node has one) |
//!
//! Errors are `{"error": "<what is wrong>"}`: 400 for a malformed body, arguments that do
//! not fit the task, a bad option; 404 for an unknown task name, an unknown or expired id;
//! 413 for a body over the limit; 429 (with `Retry-After: 1`) when the task's lane is full
//! or the node's in-flight limit is reached; 503 while shutting down (submissions, and
//! `/healthz` with `{"status": "draining"}`); 507 when the durable store cannot write the
//! task (a full disk; nothing was accepted); 401 for a missing or
//! wrong bearer token when the node has one. Before any of that (so before
//! authentication), the HTTP server bounds every connection: a request that is not
//! valid HTTP is answered 400 (its headers over 32 KiB: 431); a `Content-Length` over the
//! limit 413, before the body is read; a body that does not arrive within
//! [`Node::body_timeout`] 408; a head not read within [`Node::header_timeout`], or an idle
//! spell past [`Node::idle_timeout`], closes the connection; and at most
//! [`Node::max_connections`] are open (then the one idle the longest is closed, or a new
//! one answered 503).
//!
//! # A task's life
//!
//! `PENDING` (queued) or `SCHEDULED` (waiting for its delay) → `STARTED` (an attempt runs)
//! → `RETRY` (it failed and another attempt comes) → `STARTED` ... → `SUCCESS`,
//! `FAILURE` (the task's error, a panic's message, or `"time limit exceeded"`) or
//! `REVOKED` (cancelled, or, on an ephemeral node, shut down before it ran). Every
//! accepted task reaches a final state; the node never drops one. Finished records are
//! kept for the result TTL and up to a number ([`Node::result_ttl`],
//! [`Node::max_results`]); then `GET` answers 404.
//!
//! # Durability
//!
//! A node is durable unless built [`ephemeral`](Node::ephemeral): every accepted task is
//! in an SQLite database in its data directory ([`Node::data_dir`], else
//! [`default_data_dir`]), written and synced before the `202` (group commit), its final
//! state written before it is shown; the node reads the store back before it serves. After
//! a crash (kill -9, a power cut) or a restart, what a client saw is still true: finished
//! results stay readable for their TTL, and unfinished tasks run again, at least once
//! ([`TaskInfo::interrupted`] says when one was running). See [`Node::ephemeral`] for the
//! details, a full disk and a corrupt store.
//!
//! ```
//! use weft::service::{Node, Registry};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let registry = Registry::new().task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y));
//! let rt = tokio::runtime::Runtime::new().unwrap();
//! rt.block_on(async {
//!     let node = Node::new(registry).ephemeral().workers(1).tcp("127.0.0.1:0".parse().unwrap()).start().await.unwrap();
//!     let weft::service::Endpoint::Tcp(addr) = node.endpoint().clone() else { unreachable!() };
//!     let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
//!     let body = r#"{"args": [2, 3]}"#;
//!     s.write_all(format!("POST /v1/tasks/add HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
//!         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
//!     let mut answer = String::new();
//!     s.read_to_string(&mut answer).await.unwrap();
//!     assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
//!     node.shutdown().await;
//! });
//! ```

mod app;
pub mod client;
mod dashboard;
mod http;
mod journal;
mod live;
mod node;
mod prom;
mod recover;
mod serve;
mod socket;
mod store;
mod submission;
mod wire;

use std::path::PathBuf;

pub use crate::registry::{Registry, TaskOptions};
pub use client::Client;
pub use node::{
    Endpoint, Node, RunningNode, ServiceError, ShutdownMode, DEFAULT_BODY_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_LIST_BYTES, DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_RESULTS, DEFAULT_MAX_RESULT_BYTES, DEFAULT_RESULT_TTL, SECOND_SIGNAL_EXIT,
};
pub use wire::{State, TaskInfo};

/// The environment variable naming the node's socket.
pub const SOCKET_ENV: &str = "WEFT_SOCKET";

/// The environment variable naming the node's data directory.
pub const DATA_DIR_ENV: &str = "WEFT_DATA_DIR";

/// Where a durable node keeps its tasks by default: `$WEFT_DATA_DIR` if set, else
/// `$XDG_STATE_HOME/weft`, else `$HOME/.local/state/weft`; `None` if none of those is set.
/// The store is one SQLite database, `tasks.sqlite3`, beside a `lock` file held by the
/// node using the directory (see [`Node::ephemeral`] for what is kept).
///
/// ```
/// if let Some(dir) = weft::service::default_data_dir() {
///     assert!(dir.ends_with("weft") || std::env::var_os("WEFT_DATA_DIR").is_some());
/// }
/// ```
pub fn default_data_dir() -> Option<PathBuf> {
    let set = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = set(DATA_DIR_ENV) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = set("XDG_STATE_HOME") {
        return Some(PathBuf::from(d).join("weft"));
    }
    set("HOME").map(|h| PathBuf::from(h).join(".local/state/weft"))
}

/// Where the node listens and the client connects by default: `$WEFT_SOCKET` if set, else
/// `$XDG_RUNTIME_DIR/weft.sock` if that is set, else `/tmp/weft-$UID/weft.sock`.
///
/// The node and the [`Client`] refuse a default socket directory (`$XDG_RUNTIME_DIR`, or
/// `/tmp/weft-$UID`) that is not the user's own with mode 0700, and any other socket
/// directory that group or others may write to or that belongs to another user (but
/// root): whoever can write to the directory can put a socket of their own in the
/// node's place.
///
/// ```
/// let p = weft::service::default_socket_path();
/// assert!(p.ends_with("weft.sock") || std::env::var_os("WEFT_SOCKET").is_some());
/// ```
pub fn default_socket_path() -> PathBuf {
    let set = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = set(SOCKET_ENV) {
        return PathBuf::from(p);
    }
    socket::default_dir().join("weft.sock")
}
