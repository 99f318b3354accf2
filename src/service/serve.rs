//! The node's HTTP/1.1 server: accepts connections, bounds how long each may take and how
//! many may be open, and hands requests to the router (`http.rs`). All of it happens
//! before a request is routed, so before authentication.
//!
//! # Actors
//!
//! - The **accept loop** ([`serve`]) owns the listener and the table of open connections
//!   ([`Table`]); it alone admits and evicts.
//! - One **connection task** per connection drives hyper's `serve_connection` beside its
//!   **watchdog**, which closes the connection when its phase's deadline passes.
//! - hyper calls the **service** for each request; [`Io`] sees every byte read and
//!   written.
//!
//! # A connection's phases
//!
//! | phase | entered when | deadline |
//! | --- | --- | --- |
//! | `Head` | accepted; or a byte arrives while `Idle` | `since` + [`Limits::header_timeout`] |
//! | `Active(n)` | hyper calls the service (the request's head is read) | none: the body has [`Limits::body_timeout`] (a [`TimedBody`]), a long-poll ends by itself |
//! | `Idle` | the last response is ready (`Active(1)` ends) | `since` + [`Limits::idle_timeout`] |
//!
//! Invariants:
//! 1. Only a connection in `Head` or `Idle` (no request in progress) is evicted: no
//!    answer is ever cut off by the cap.
//! 2. The table never holds more than [`Limits::max_connections`] connections: at the
//!    cap, a new connection evicts the one longest in `Head` or `Idle`; if every one is
//!    `Active`, the new connection is answered `503` and closed.
//! 3. A request's body is read within [`Limits::body_timeout`] of its head, or reading it
//!    fails with [`BodyTimeout`] (answered `408`, connection closed).
//! 4. hyper's own answers to requests it cannot parse (400, 414, 431, with an empty body)
//!    are rewritten by [`Io`] into the API's JSON errors.
//!
//! Opening files past the process's limit (`EMFILE`) also evicts per rule 2, so a node
//! with a low open-file limit keeps accepting, and answering `/healthz`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The largest request head (request line and headers) read; a larger one is answered
/// `431` (hyper's read buffer is capped at this, so an unfinished head holds no more).
pub(crate) const MAX_HEAD_BYTES: usize = 32 << 10;

/// How long and how many: the node's HTTP limits (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Counters of connections, for `/metrics`.
#[derive(Default)]
pub(crate) struct ConnStats {
    /// Connections in the table (at most `max_connections`, invariant 2); one evicted is
    /// no longer counted, though its socket closes a moment later.
    pub open: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub evicted: AtomicU64,
    pub refused: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A listener: a Unix or TCP socket.
pub(crate) trait Listener: Send + 'static {
    /// The accepted stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        // Small request/response pairs: don't let Nagle hold them back.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Head(Instant),
    Active(usize),
    Idle(Instant),
}

/// One connection's shared state: its phase, and whether it must close.
struct Conn {
    phase: Mutex<Phase>,
    /// Notified on every change of phase, and on eviction.
    changed: Notify,
    evicted: AtomicBool,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
            evicted: AtomicBool::new(false),
        }
    }

    /// Bytes arrived: if idle, a new request's head begins.
    fn on_read(&self) {
        let mut p = self.phase.lock();
        if let Phase::Idle(_) = *p {
            *p = Phase::Head(Instant::now());
            drop(p);
            self.changed.notify_waiters();
        }
    }

    fn begin_request(&self) {
        let mut p = self.phase.lock();
        *p = match *p {
            Phase::Active(n) => Phase::Active(n + 1),
            _ => Phase::Active(1),
        };
        drop(p);
        self.changed.notify_waiters();
    }

    fn end_request(&self) {
        let mut p = self.phase.lock();
        *p = match *p {
            Phase::Active(n) if n > 1 => Phase::Active(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
        drop(p);
        self.changed.notify_waiters();
    }

    /// Since when it has had no request in progress; `None` while it has one.
    fn idle_since(&self) -> Option<Instant> {
        match *self.phase.lock() {
            Phase::Head(t) | Phase::Idle(t) => Some(t),
            Phase::Active(_) => None,
        }
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

/// Why the watchdog closed a connection.
enum Closed {
    HeaderTimeout,
    IdleTimeout,
    Evicted,
}

/// Resolves when `conn` must close: its phase's deadline passed, or it was evicted.
async fn watchdog(conn: &Conn, limits: Limits) -> Closed {
    loop {
        let changed = conn.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if conn.evicted.load(Ordering::Relaxed) {
            return Closed::Evicted;
        }
        let deadline = match *conn.phase.lock() {
            Phase::Head(t) => Some((t + limits.header_timeout, Closed::HeaderTimeout)),
            Phase::Idle(t) => Some((t + limits.idle_timeout, Closed::IdleTimeout)),
            Phase::Active(_) => None,
        };
        match deadline {
            None => changed.await,
            Some((at, why)) => {
                if Instant::now() >= at {
                    return why;
                }
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
        }
    }
}

/// The open connections (invariant 2).
struct Table {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

impl Table {
    /// Evicts the connection longest without a request in progress; false if none.
    fn evict_oldest_idle(&self, conns: &mut HashMap<u64, Arc<Conn>>) -> bool {
        let victim = conns
            .iter()
            .filter_map(|(id, c)| c.idle_since().map(|t| (t, *id)))
            .min();
        match victim.and_then(|(_, id)| conns.remove(&id)) {
            Some(c) => {
                c.evict();
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `stop` turns true; then stops
/// accepting, closes the connections with no request in progress, lets the others finish
/// their request, and returns once every connection is closed.
pub(crate) async fn serve<L: Listener>(
    mut listener: L,
    router: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    mut stop: watch::Receiver<bool>,
) {
    let table = Arc::new(Table {
        conns: Mutex::new(HashMap::new()),
        next: AtomicU64::new(0),
    });
    let service = TowerToHyperService::new(router);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                // Out of file descriptors: make room by rule 2 and try again once it is
                // closed; other errors concern that one connection.
                let pause = if matches!(e.raw_os_error(), Some(23 | 24)) {
                    if table.evict_oldest_idle(&mut table.conns.lock()) {
                        bump(&stats.evicted);
                        Duration::from_millis(1)
                    } else {
                        Duration::from_millis(50)
                    }
                } else {
                    Duration::from_millis(1)
                };
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let conn = Arc::new(Conn::new());
        let id = table.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = table.conns.lock();
            if conns.len() >= limits.max_connections {
                if table.evict_oldest_idle(&mut conns) {
                    bump(&stats.evicted);
                } else {
                    drop(conns);
                    bump(&stats.refused);
                    tasks.spawn(refuse(io));
                    continue;
                }
            }
            conns.insert(id, conn.clone());
            // The gauge is the table's size (invariant 2), set under its lock: an evicted
            // connection stops counting when it leaves the table, not when its task ends.
            stats.open.store(conns.len() as u64, Ordering::Relaxed);
        }
        let (table, stats) = (table.clone(), stats.clone());
        let (service, stop) = (service.clone(), stop.clone());
        tasks.spawn(async move {
            let why = serve_one(io, &conn, service, limits, stop).await;
            match why {
                Some(Closed::HeaderTimeout) => bump(&stats.header_timeouts),
                Some(Closed::IdleTimeout) => bump(&stats.idle_timeouts),
                Some(Closed::Evicted) | None => {}
            }
            let mut conns = table.conns.lock();
            conns.remove(&id);
            stats.open.store(conns.len() as u64, Ordering::Relaxed);
        });
    }
    drop(listener);
    // Close every connection with no request in progress; the others finish theirs (see
    // `serve_one`).
    for c in table.conns.lock().values() {
        if c.idle_since().is_some() {
            c.evict();
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Drives one connection until it ends, its watchdog closes it (the reason comes back),
/// or shutdown closes it.
async fn serve_one<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    conn: &Arc<Conn>,
    service: TowerToHyperService<Router>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> Option<Closed> {
    let svc = Tracked {
        conn: conn.clone(),
        inner: service,
        body_timeout: limits.body_timeout,
    };
    let io = Io {
        inner: io,
        conn: conn.clone(),
        pending: Vec::new(),
        written: 0,
    };
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES)
        // The watchdog times the head: hyper's own timer would also close idle
        // keep-alive connections after the header timeout.
        .header_read_timeout(None);
    let http = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(http);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = http.as_mut() => return None,
            why = watchdog(conn, limits) => return Some(why),
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                if conn.idle_since().is_some() {
                    return None;
                }
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers a connection over the cap `503` and closes it (at most a second spent).
async fn refuse<I: AsyncWrite + Unpin>(mut io: I) {
    let body = serde_json::json!({
        "error": "the node has too many open connections; retry later"
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
}

/// The service hyper calls: marks the connection `Active` for the request's life and
/// gives the body its deadline (invariant 3).
#[derive(Clone)]
struct Tracked {
    conn: Arc<Conn>,
    inner: TowerToHyperService<Router>,
    body_timeout: Duration,
}

impl Service<hyper::Request<Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.conn.begin_request();
        let done = EndRequest(self.conn.clone());
        let deadline = Instant::now() + self.body_timeout;
        let req = req.map(|b| {
            Body::new(TimedBody {
                inner: b,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                timeout: self.body_timeout,
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            drop(done);
            res
        })
    }
}

/// Ends the request's `Active` phase when dropped (the response is ready, or the
/// request was abandoned).
struct EndRequest(Arc<Conn>);

impl Drop for EndRequest {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// Reading a request body took longer than the body timeout.
#[derive(Debug)]
pub(crate) struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {}",
            super::wire::human_duration(self.0)
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
struct TimedBody {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl HttpBody for TimedBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|r| r.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's stream as hyper sees it: reports reads to the watchdog and turns
/// hyper's own error answers into JSON (invariant 4).
struct Io<I> {
    inner: I,
    conn: Arc<Conn>,
    /// A rewritten answer not yet written whole, and how much of it is.
    pending: Vec<u8>,
    written: usize,
}

impl<I: AsyncWrite + Unpin> Io<I> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Io<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.on_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Io<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(json) = rewrite_hyper_error(buf) {
            self.pending = json;
            self.written = 0;
            // Taken whole: what is left is written by the next write or flush.
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes each answer's head as one buffer, which is what
    // `rewrite_hyper_error` looks at.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// hyper's own answer to a request it could not parse (a status line of 400, 414 or 431
/// and an empty body: every answer of the API has a JSON body) as the API's JSON error.
fn rewrite_hyper_error(buf: &[u8]) -> Option<Vec<u8>> {
    if !buf.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if head_end + 4 != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    let empty = lines.any(|l| l.eq_ignore_ascii_case("content-length: 0"));
    let message = match code {
        400 => "malformed HTTP request (request line or headers)".to_owned(),
        414 => "the request URI is too long".to_owned(),
        431 => format!("the request's headers are too large (over {MAX_HEAD_BYTES} bytes)"),
        _ => return None,
    };
    if !empty {
        return None;
    }
    let body = serde_json::json!({ "error": message }).to_string();
    Some(
        format!(
            "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests;
