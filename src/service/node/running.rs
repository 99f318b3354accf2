//! [`RunningNode`]: a node that is serving, and its shutdown.

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::bind::SocketGuard;
use super::{Endpoint, ShutdownMode};
use crate::service::app::App;
use crate::Pool;

/// A node that is serving; made by [`Node::start`](super::Node::start).
///
/// Call [`shutdown`](Self::shutdown) to stop it gracefully. Dropping it without that stops
/// the listener and removes the socket file, but leaves the pool to finish on its own.
pub struct RunningNode {
    pub(super) endpoint: Endpoint,
    pub(super) app: Arc<App>,
    pub(super) stop_tx: watch::Sender<bool>,
    pub(super) server: Option<tokio::task::JoinHandle<()>>,
    pub(super) socket: Option<SocketGuard>,
    pub(super) shutdown_mode: ShutdownMode,
    pub(super) drain_timeout: Duration,
}

impl RunningNode {
    /// Where the node listens (for TCP, with the port actually bound).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The pool running the tasks (for its [`metrics`](Pool::metrics), say).
    pub fn pool(&self) -> &Pool {
        &self.app.pool
    }

    /// Serves until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Shuts down gracefully, within the drain timeout: answers new submissions and
    /// `/healthz` 503 (`{"status": "draining"}`), still accepting connections so that
    /// they get that answer; per the [`ShutdownMode`], runs or revokes the queued tasks
    /// (delayed ones and retries still waiting are revoked) for the drain timeout less
    /// a reserve (a quarter of it, at most 1 s); then answers every long-poll still
    /// waiting, stops accepting, lets open requests finish until the drain timeout ends
    /// (then closes them), and removes the socket file.
    ///
    /// Tasks still running when it returns are not waited for: they keep their worker
    /// threads until the process exits, and their records stay `STARTED`. A durable node
    /// writes everything out before it returns and closes its store: the tasks still
    /// running, and (in [`ShutdownMode::Drain`]) the ones it did not run, stay unfinished
    /// there and run at the next start (the running ones counted as interrupted).
    pub async fn shutdown(mut self) {
        let start = Instant::now();
        let deadline = start + self.drain_timeout;
        // The drain leaves a part of the time for answering and closing.
        let reserve = (self.drain_timeout / 4).min(CLOSE_RESERVE);
        let drain = self.drain_timeout - reserve;
        // New submissions (and /healthz) are answered 503 from here on; the listener
        // stays open so that new connections get that answer.
        self.app.closing.store(true, Ordering::Release);
        // The pool's shutdown blocks: run it on a thread of its own, not on the runtime
        // (a blocking task would hold up the runtime's own drop if a task never ends).
        let (tx, rx) = oneshot::channel();
        let pool = self.app.pool.clone();
        let mode = self.shutdown_mode;
        let spawned = std::thread::Builder::new()
            .name("weft-service-shutdown".into())
            .spawn(move || {
                let still_running = match mode {
                    ShutdownMode::Drain => pool.shutdown_timeout(drain).threads_still_running,
                    ShutdownMode::Cancel => {
                        pool.shutdown_now();
                        0
                    }
                };
                let _ = tx.send(still_running);
            });
        let drained = match spawned {
            Ok(_) => matches!(
                tokio::time::timeout_at((start + drain).into(), rx).await,
                Ok(Ok(0))
            ),
            Err(_) => false,
        };
        self.app.wait_idle(start + drain).await;
        self.app.stopping.send_replace(true);
        self.stop_tx.send_replace(true);
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            let at = deadline.max(Instant::now() + MIN_CLOSE);
            if tokio::time::timeout_at(at.into(), server).await.is_err() {
                abort.abort();
            }
        }
        if let Some(s) = self.socket.take() {
            s.remove();
        }
        if let Some(j) = &self.app.journal {
            // Everything written so far reaches the disk; what did not finish stays there
            // for the next start.
            let (_, left) = self.app.store.counts();
            let kept = self.app.store.unfinished();
            if let Err(e) = j.close().await {
                eprintln!("weft node: the store could not be closed cleanly: {e}");
            } else if kept > 0 {
                eprintln!("weft node: {kept} unfinished tasks ({left} of them still running) are kept in the store; they run at the next start");
            }
        }
        if !drained {
            // Tasks still run: the pool's last handle, dropped, would wait for them (and
            // hold up the process's exit). Leave them to the process's end instead.
            std::mem::forget(self.app.pool.clone());
        }
    }
}

/// The part of the drain timeout (at most) kept for answering long-polls and closing
/// connections once the pool's drain ends; a quarter of it when shorter.
const CLOSE_RESERVE: Duration = Duration::from_secs(1);
/// The least time connections get to finish their answers at shutdown.
const MIN_CLOSE: Duration = Duration::from_millis(100);

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.app.closing.store(true, Ordering::Release);
        self.stop_tx.send_replace(true);
        self.app.stopping.send_replace(true);
        if let Some(s) = self.socket.take() {
            s.remove();
        }
    }
}

impl fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningNode")
            .field("endpoint", &self.endpoint)
            .field("shutdown_mode", &self.shutdown_mode)
            .finish_non_exhaustive()
    }
}
