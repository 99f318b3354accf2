//! The node's shared state behind every request: the pool, the registry, the store, the
//! counters; and how an accepted task is spawned and resolved.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::{mpsc, watch, Notify};

use super::journal::{Final, Journal, JournalTx, NewRow, Op, StoreError};
use super::live::Live;
use super::serve::ConnStats;
use super::store::{now_ms, CancelReply, CancelRequest, FinalOutcome, Finished, Record, Store};
use super::submission::SubmitRequest;
use super::wire::State;
use super::Registry;
use crate::registry::Invoke;
use crate::{JoinError, JoinHandle, Pool, Priority, RetryPolicy};

/// Counters of the service itself (the pool keeps its own).
#[derive(Default)]
pub(crate) struct ServiceCounters {
    pub submitted: AtomicU64,
    pub rejected_full: AtomicU64,
    pub rejected_in_flight: AtomicU64,
    pub rejected_bad_request: AtomicU64,
    pub rejected_unknown_task: AtomicU64,
    /// Submissions refused because the durable store could not write them.
    pub rejected_store: AtomicU64,
    /// Writes to the durable store that failed (each is tried again or answered).
    pub store_errors: AtomicU64,
}

impl ServiceCounters {
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
pub(crate) enum SubmitRefused {
    /// The node's in-flight limit is reached.
    InFlight,
    /// The lane is full.
    Full,
    /// The node (its pool) is shutting down.
    Closing,
    /// The durable store could not write the task (a full disk, say).
    Store(StoreError),
}

/// Why a submission cannot be planned.
pub(crate) enum Plan {
    UnknownTask,
    /// Arguments that do not fit the task, or a bad option: what is wrong.
    Bad(String),
}

/// How long a resolver waits before writing a final state again, at first and at most.
const FINISH_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

pub(crate) struct App {
    pub pool: Pool,
    pub registry: Registry,
    pub store: Store,
    pub token: Option<String>,
    pub max_body_bytes: usize,
    /// The most a `GET /v1/tasks` answer lists, in record weight (`store.rs`).
    pub max_list_bytes: usize,
    pub counters: ServiceCounters,
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
    /// The durable store; `None` for an ephemeral node.
    pub journal: Option<Journal>,
    /// Tasks shut down before they finished stay unfinished in the durable store, to run
    /// after the next start (a durable node draining), instead of being revoked.
    pub keep_unfinished: bool,
    /// The event stream and the service's live figures (`live.rs`).
    pub live: Arc<Live>,
}

impl App {
    /// Checks a submission of task `name` and turns it into an attempt and its options.
    pub fn plan(&self, name: &str, req: SubmitRequest) -> Result<(Invoke, Spawn), Plan> {
        let entry = self.registry.get(name).ok_or(Plan::UnknownTask)?;
        let attempt = entry
            .prepare(req.args)
            .map_err(|e| Plan::Bad(format!("invalid args for task {name:?}: {e}")))?;
        let defaults = entry.options;
        let delay = match req.delay_ms {
            Some(ms) => {
                let d = Duration::from_millis(ms);
                let fits =
                    now_ms().checked_add(ms).is_some() && Instant::now().checked_add(d).is_some();
                if !fits {
                    return Err(Plan::Bad(format!(
                        "delay_ms {ms} is too large (past what the node's clock can hold)"
                    )));
                }
                Some(d)
            }
            None => None,
        };
        let retry = match req.retry {
            Some(spec) => Some(spec.policy().map_err(Plan::Bad)?),
            None => defaults.get_retry(),
        };
        let spawn = Spawn {
            priority: req.priority.map_or(defaults.get_priority(), Into::into),
            delay,
            time_limit: req
                .time_limit_ms
                .map(Duration::from_millis)
                .or(defaults.get_time_limit()),
            retry,
        };
        Ok((attempt, spawn))
    }

    fn journal(&self) -> Option<&JournalTx> {
        self.journal.as_ref().map(Journal::tx)
    }

    /// Spawns an accepted task: reserves an in-flight slot, writes it to the durable store
    /// (and waits for that), spawns on the pool (never waiting for room), makes the record
    /// visible and starts its resolver. A refused spawn leaves nothing behind, on disk
    /// included. `request` is the submission's body, kept to run the task again after a
    /// restart.
    pub async fn spawn(
        self: &Arc<Self>,
        name: &str,
        attempt: Invoke,
        opts: Spawn,
        request: Bytes,
        args: serde_json::Value,
    ) -> Result<Arc<Record>, SubmitRefused> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitRefused::Closing);
        }
        if !self.store.reserve() {
            return Err(SubmitRefused::InFlight);
        }
        let delay = opts.delay.filter(|d| !d.is_zero());
        let initial = if delay.is_some() {
            State::Scheduled
        } else {
            State::Pending
        };
        let (record, cancel_rx) = Record::new(name, initial, Some(args));
        if let Some(j) = self.journal() {
            let row = NewRow {
                seq: record.seq,
                id: record.id,
                name: name.to_owned(),
                request: String::from_utf8_lossy(&request).into_owned(),
                state: initial,
                submitted_at_ms: record.submitted_at_ms,
                due_at_ms: delay.map(|d| {
                    record
                        .submitted_at_ms
                        .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                }),
                attempts: 0,
                interrupted: 0,
            };
            if let Err(e) = j.write(|ack| Op::Insert(row, ack)).await {
                ServiceCounters::bump(&self.counters.store_errors);
                self.store.release();
                self.idle.notify_waiters();
                return Err(SubmitRefused::Store(e));
            }
        }
        let max_attempts = opts.retry.map_or(1, |p| p.attempts());
        match self.launch(&record, attempt, opts, max_attempts, cancel_rx, true) {
            Ok(()) => {
                ServiceCounters::bump(&self.counters.submitted);
                Ok(record)
            }
            Err(why) => {
                if let Some(j) = self.journal() {
                    // Written but refused: taken back before the refusal is answered.
                    j.send(Op::Delete { seq: record.seq });
                    if j.write(Op::Flush).await.is_err() {
                        ServiceCounters::bump(&self.counters.store_errors);
                    }
                }
                self.store.release();
                self.idle.notify_waiters();
                Err(why)
            }
        }
    }

    /// Spawns `record`'s task on the pool (its slot is reserved, its row written), makes
    /// the record visible and starts its resolver. `max_attempts` counts the attempts made
    /// before a restart too. With `try_only` a full lane refuses; else the task waits in
    /// the timer and joins its lane whatever its room (for tasks accepted before a
    /// restart).
    pub fn launch(
        self: &Arc<Self>,
        record: &Arc<Record>,
        mut attempt: Invoke,
        opts: Spawn,
        max_attempts: u32,
        cancel_rx: mpsc::Receiver<CancelRequest>,
        try_only: bool,
    ) -> Result<(), SubmitRefused> {
        let rec = record.clone();
        let journal = self.journal().cloned();
        let live = self.live.clone();
        let run = move || {
            let n = rec.start_attempt();
            if let Some(j) = &journal {
                j.send(Op::Started {
                    seq: rec.seq,
                    attempts: n,
                    started_at_ms: rec.started_at_ms().unwrap_or_else(now_ms),
                });
            }
            live.running.fetch_add(1, Ordering::Relaxed);
            rec.announce(&live, None);
            let out = attempt();
            live.running.fetch_sub(1, Ordering::Relaxed);
            // No RETRY when the run is past its time limit or asked to stop: weft will
            // not retry it.
            if out.is_err() && n < max_attempts && crate::checkpoint().is_ok() {
                rec.mark_retry();
                if let Some(j) = &journal {
                    j.send(Op::Retry { seq: rec.seq });
                }
                rec.announce(&live, None);
            }
            out
        };
        let mut task = self.pool.task().priority(opts.priority);
        match (opts.delay, try_only) {
            (Some(d), _) => task = task.delay(d),
            // Through the timer, which never refuses for a full lane.
            (None, false) => task = task.delay(Duration::from_millis(1)),
            (None, true) => {}
        }
        if let Some(limit) = opts.time_limit {
            task = task.time_limit(limit);
        }
        let spawned = match opts.retry {
            Some(policy) => {
                // Attempts made before a restart count; at least one more runs.
                let left = max_attempts.saturating_sub(record.attempts()).max(1);
                task.retry(policy.max_attempts(left)).try_spawn(run)
            }
            None => task.try_spawn(run),
        };
        match spawned {
            Ok(handle) => {
                self.store.insert(record);
                record.announce(&self.live, Some(record.initial));
                tokio::spawn(resolve(self.clone(), record.clone(), handle, cancel_rx));
                Ok(())
            }
            Err(e) if e.is_full() => Err(SubmitRefused::Full),
            Err(_) => Err(SubmitRefused::Closing),
        }
    }

    /// Writes `record`'s final state to the durable store (trying again until it is
    /// written: rule 5 of `journal.rs`), then shows it, gives back its slot and wakes the
    /// waiters.
    pub async fn finish(&self, record: &Arc<Record>, outcome: FinalOutcome) {
        let done = Finished::from(outcome);
        if let Some(j) = self.journal() {
            let result = done.result.as_ref().map(|v| v.to_string());
            let mut wait = FINISH_RETRY.0;
            loop {
                let row = Final {
                    seq: record.seq,
                    state: done.state,
                    result: result.clone(),
                    error: done.error.clone(),
                    finished_at_ms: done.finished_at_ms,
                    attempts: record.attempts(),
                };
                match j.write(|ack| Op::Finish(row, ack)).await {
                    Ok(()) => break,
                    // The node is past its end: nothing will read the record any more.
                    Err(e) if e.closed => return,
                    Err(e) => {
                        ServiceCounters::bump(&self.counters.store_errors);
                        if wait == FINISH_RETRY.0 {
                            eprintln!(
                                "weft node: cannot write the final state of task {} ({e}); \
                                 trying again until it is written (it stays unfinished meanwhile)",
                                record.id
                            );
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(FINISH_RETRY.1);
                    }
                }
            }
        }
        let counter = match done.state {
            State::Success => &self.live.succeeded,
            State::Failure => &self.live.failed,
            _ => &self.live.revoked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.store.finish(record, done);
        record.announce(&self.live, None);
        self.idle.notify_waiters();
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
                    app.finish(&record, outcome(r)).await;
                    let _ = reply.send(CancelReply { won, finished: false });
                    return;
                }
                let _ = reply.send(CancelReply { won, finished: handle.is_finished() });
            }
        }
    };
    if app.keep_unfinished && matches!(&result, Err(e) if e.is_shutdown()) {
        // Stays unfinished on disk, and runs after the next start.
        app.store.release();
        app.idle.notify_waiters();
        return;
    }
    app.finish(&record, outcome(result)).await;
}

fn outcome(r: Result<Output, JoinError>) -> FinalOutcome {
    match r {
        Ok(Ok(v)) => FinalOutcome::Success(v),
        Ok(Err(e)) => FinalOutcome::Failure(e),
        Err(e) if e.is_time_limit() => FinalOutcome::Failure("time limit exceeded".into()),
        Err(e) if e.is_panic() => {
            FinalOutcome::Failure(e.panic_message().unwrap_or("task panicked").to_owned())
        }
        Err(e) if e.is_cancelled() => FinalOutcome::Revoked("cancelled".into()),
        Err(e) if e.is_shutdown() => {
            FinalOutcome::Revoked("the node shut down before the task ran".into())
        }
        Err(e) => FinalOutcome::Failure(e.to_string()),
    }
}
