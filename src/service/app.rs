//! The node's shared state behind every request: the pool, the registry, the store, the
//! counters; and how an accepted task is spawned and resolved.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use super::serve::ConnStats;
use super::store::{CancelReply, CancelRequest, Outcome, Record, Store};
use super::wire::State;
use super::Registry;
use crate::registry::Attempt;
use crate::{JoinError, JoinHandle, Pool, Priority, RetryPolicy};

/// Counters of the service itself (the pool keeps its own).
#[derive(Default)]
pub(crate) struct Counters {
    pub submitted: AtomicU64,
    pub rejected_full: AtomicU64,
    pub rejected_in_flight: AtomicU64,
    pub rejected_bad_request: AtomicU64,
    pub rejected_unknown_task: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Options of one submission, after validation.
pub(crate) struct Spawn {
    pub priority: Priority,
    pub delay: Option<Duration>,
    pub time_limit: Option<Duration>,
    pub retry: Option<RetryPolicy>,
}

/// Why a spawn was refused.
pub(crate) enum Refused {
    /// The node's in-flight limit is reached.
    InFlight,
    /// The lane is full.
    Full,
    /// The node (its pool) is shutting down.
    Closing,
}

pub(crate) struct App {
    pub pool: Pool,
    pub registry: Registry,
    pub store: Store,
    pub token: Option<String>,
    pub max_body_bytes: usize,
    /// The most a `GET /v1/tasks` answer lists, in record weight (`store.rs`).
    pub max_list_bytes: usize,
    pub counters: Counters,
    /// Set when shutdown begins: submissions answer 503.
    pub closing: AtomicBool,
    /// True once long-polls must answer at once (the end of shutdown).
    pub stopping: watch::Sender<bool>,
    /// Long-polls in progress.
    pub waiters: AtomicU64,
    /// Notified whenever an in-flight slot is given back.
    pub idle: Notify,
    /// The HTTP server's connection counters (`serve.rs`).
    pub connections: Arc<ConnStats>,
}

impl App {
    /// Spawns an accepted task: reserves an in-flight slot, spawns on the pool (never
    /// waiting for room), makes the record visible and starts its resolver. A refused
    /// spawn leaves nothing behind.
    pub fn spawn(
        self: &Arc<Self>,
        name: &str,
        mut attempt: Attempt,
        opts: Spawn,
    ) -> Result<Arc<Record>, Refused> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Refused::Closing);
        }
        if !self.store.reserve() {
            return Err(Refused::InFlight);
        }
        let initial = if opts.delay.is_some_and(|d| !d.is_zero()) {
            State::Scheduled
        } else {
            State::Pending
        };
        let (record, cancel_rx) = Record::new(name, initial);
        let max_attempts = opts.retry.map_or(1, |p| p.attempts());
        let rec = record.clone();
        let run = move || {
            let n = rec.start_attempt();
            let out = attempt();
            // No RETRY when the run is past its time limit or asked to stop: weft will
            // not retry it.
            if out.is_err() && n < max_attempts && crate::checkpoint().is_ok() {
                rec.mark_retry();
            }
            out
        };
        let mut task = self.pool.task().priority(opts.priority);
        if let Some(d) = opts.delay {
            task = task.delay(d);
        }
        if let Some(limit) = opts.time_limit {
            task = task.time_limit(limit);
        }
        let spawned = match opts.retry {
            Some(policy) => task.retry(policy).try_spawn(run),
            None => task.try_spawn(run),
        };
        match spawned {
            Ok(handle) => {
                self.store.insert(&record);
                Counters::bump(&self.counters.submitted);
                tokio::spawn(resolve(self.clone(), record.clone(), handle, cancel_rx));
                Ok(record)
            }
            Err(e) => {
                self.store.release();
                self.idle.notify_waiters();
                Err(if e.is_full() {
                    Refused::Full
                } else {
                    Refused::Closing
                })
            }
        }
    }

    /// Waits until no task is in flight, or until `deadline`.
    pub async fn wait_idle(&self, deadline: Instant) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.store.counts().1 == 0 {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return;
            }
        }
    }
}

type Output = Result<serde_json::Value, String>;

/// Awaits the task's handle, answers cancellation requests meanwhile, and writes the
/// outcome into the record (the only writer of final states).
async fn resolve(
    app: Arc<App>,
    record: Arc<Record>,
    mut handle: JoinHandle<Output>,
    mut cancel_rx: mpsc::Receiver<CancelRequest>,
) {
    let result = loop {
        tokio::select! {
            r = &mut handle => break r,
            Some(reply) = cancel_rx.recv() => {
                let won = handle.cancel();
                if won {
                    // The handle resolves at once; finish before answering, so the
                    // answer shows REVOKED.
                    let r = (&mut handle).await;
                    app.store.finish(&record, outcome(r));
                    app.idle.notify_waiters();
                    let _ = reply.send(CancelReply { won, finished: false });
                    return;
                }
                let _ = reply.send(CancelReply { won, finished: handle.is_finished() });
            }
        }
    };
    app.store.finish(&record, outcome(result));
    app.idle.notify_waiters();
}

fn outcome(r: Result<Output, JoinError>) -> Outcome {
    match r {
        Ok(Ok(v)) => Outcome::Success(v),
        Ok(Err(e)) => Outcome::Failure(e),
        Err(e) if e.is_time_limit() => Outcome::Failure("time limit exceeded".into()),
        Err(e) if e.is_panic() => {
            Outcome::Failure(e.panic_message().unwrap_or("task panicked").to_owned())
        }
        Err(e) if e.is_cancelled() => Outcome::Revoked("cancelled".into()),
        Err(e) if e.is_shutdown() => {
            Outcome::Revoked("the node shut down before the task ran".into())
        }
        Err(e) => Outcome::Failure(e.to_string()),
    }
}
