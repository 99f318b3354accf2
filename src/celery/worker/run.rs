//! A task's run, planned and built: [`plan`] decides a message's lane, ETA delay, time
//! limit, acknowledgement and retry policy; [`build_run`] makes the body the pool runs
//! (withdrawn, revoked or expired: not run; acknowledged early as it starts unless acks are
//! late; its outcome a result or Celery's retry, reported to the finisher).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::super::events::py_repr;
use super::super::protocol::{format_iso8601, parse_iso8601, TaskMessage};
use super::super::result::TaskResult;
use super::super::transport::Settlement;
use super::builtins;
use super::intake::revoked_event;
use super::intake::Config;
use super::live::{Done, TaskInfo, WorkerShared, STARTED, WAITING};
use crate::registry::{Invoke, Registered};
use crate::{Priority, RetryPolicy};

/// How a task runs: what [`plan`] decides and [`build_run`] and [`spawn`] follow.
pub(super) struct Plan {
    /// The lane of the queue it came from.
    pub(super) lane: Priority,
    /// How long it waits for its ETA ([`eta_delay`]).
    pub(super) delay: Option<Duration>,
    /// Whether it counts against the prefetch limit (it does not wait for an ETA).
    pub(super) counted: bool,
    pub(super) time_limit: Option<Duration>,
    pub(super) acks_late: bool,
    pub(super) policy: Option<RetryPolicy>,
    /// For a task waiting for its ETA: the copy of its message to send again at the hold
    /// limit, and when it was taken.
    pub(super) eta: Option<(TaskMessage, Instant)>,
    /// The message of a chord's header part ([`Live::chord_part`]).
    pub(super) chord_part: Option<Box<TaskMessage>>,
    /// A built-in that runs from its message ([`builtins::run_with_message`]).
    pub(super) builtin: bool,
    /// Its start is remembered ([`Config::track_starts`]).
    pub(super) track_starts: bool,
    /// How much longer than its ETA (or than now) it waits for its rate limit's next
    /// start ([`RateLimits`](super::limits::RateLimits)).
    pub(super) rate_wait: Option<Duration>,
}

/// What the worker and the task share about its run: the compare-and-swap state that
/// decides whether it runs ([`WAITING`], [`STARTED`]) and what remote control shows.
pub(super) struct Tracked {
    pub(super) state: Arc<AtomicU8>,
    pub(super) info: Arc<TaskInfo>,
}

/// Plans the run of `msg` from `queue`: its lane, ETA delay and count, time limit,
/// acknowledgement and retry policy (the registry's options, else the worker's).
pub(super) fn plan(
    cfg: &Config,
    entry: &Registered,
    msg: &TaskMessage,
    queue: &str,
    delay: Option<Duration>,
    counted: bool,
    time_limit_set: Option<Option<Duration>>,
) -> Plan {
    let lane = cfg.lanes.get(queue).copied().unwrap_or_default();
    let policy = entry.options.get_retry();
    let acks_late = entry.options.get_acks_late().unwrap_or(cfg.acks_late);
    // The shortest of the message's soft and hard limits and the task's own (set by the
    // `time_limit` command, else the registry's).
    let time_limit = [msg.timelimit.1, msg.timelimit.0]
        .into_iter()
        .flatten()
        .filter(|s| *s > 0.0)
        .filter_map(|s| Duration::try_from_secs_f64(s).ok())
        .chain(time_limit_set.unwrap_or_else(|| entry.options.get_time_limit()))
        .min();
    let eta = delay.map(|_| {
        // A copy sent again goes straight to the queue it came from (not through its
        // exchange: a fanout would copy it to every queue again).
        let mut copy = msg.clone();
        copy.exchange = String::new();
        copy.routing_key = queue.to_owned();
        (copy, Instant::now())
    });
    let in_chord = msg.group.is_some() && msg.embed.get("chord").is_some_and(|c| !c.is_null());
    Plan {
        lane,
        delay,
        counted,
        time_limit,
        acks_late,
        policy,
        eta,
        chord_part: in_chord.then(|| Box::new(msg.clone())),
        builtin: cfg.message_builtins.contains(&msg.task.as_str()),
        track_starts: cfg.track_starts,
        rate_wait: None,
    }
}

/// The task's body: runs the attempt unless it was withdrawn, revoked or expired meanwhile,
/// acknowledges early unless acks are late, turns its outcome into a result (or Celery's
/// retry), and reports through `done`.
pub(super) fn build_run(
    shared: &Arc<WorkerShared>,
    done: &mpsc::Sender<Done>,
    mut msg: TaskMessage,
    key: Option<u64>,
    mut attempt: Invoke,
    plan: &Plan,
    tracked: &Tracked,
) -> impl FnOnce() + Send + 'static {
    let info = Arc::clone(&tracked.info);
    let (counted, acks_late, policy) = (plan.counted, plan.acks_late, plan.policy);
    let builtin = plan.builtin;
    let started = plan.track_starts.then(|| shared.started.clone());
    let tx = done.clone();
    let revoked = shared.revoked.clone();
    let state_here = tracked.state.clone();
    let eta_waiting = Arc::clone(&shared.eta_waiting);
    let shared = Arc::clone(shared);
    move || {
        if state_here
            .compare_exchange(WAITING, STARTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return; // withdrawn: settled by whoever took it back
        }
        if !counted {
            eta_waiting.fetch_sub(1, Ordering::Relaxed);
        }
        let id = msg.id.clone();
        let retries = msg.retries;
        if let Some(started) = &started {
            started.lock().start(&id, retries);
        }
        // Once its result is handed to the finisher: copies delivered meanwhile are
        // acknowledged after it.
        let end = |tx: &mpsc::Sender<Done>| {
            if let Some(started) = &started {
                for k in started.lock().end(&id, retries) {
                    let _ = tx.send(Done::uncounted(Settlement::Ack(k)));
                }
            }
        };
        // Revoked meanwhile, or expired while it waited for its ETA: not run.
        let expired = msg
            .expires
            .as_deref()
            .and_then(parse_iso8601)
            .is_some_and(|exp| exp <= SystemTime::now());
        if expired || revoked.contains(&id) {
            revoked_event(&shared, &id, false, expired);
            let why = if expired { "expired" } else { "revoked" };
            let revoked = TaskResult::Revoked(why.into());
            let _ = tx.send(Done::finished(&mut msg, key, revoked, counted, None));
            end(&tx);
            return;
        }
        // Acks early: acknowledged as it starts, which frees its prefetch slot as in
        // Celery (see `InFlight`); the result comes later.
        let mut started_early = false;
        info.start();
        let monitor = &shared.monitor;
        monitor.started(&msg.task);
        let key = match key {
            Some(k) if !acks_late => {
                info.acknowledge();
                let _ = tx.send(Done::uncounted(Settlement::Ack(k)));
                if counted {
                    shared.start_early();
                    started_early = true;
                }
                None
            }
            other => other,
        };
        monitor.events.task("task-started", |e| {
            e.insert("uuid", &id);
        });
        let began = Instant::now();
        let mut result = match catch_unwind(AssertUnwindSafe(&mut attempt)) {
            // Revoked with `terminate` while it ran.
            Ok(_) if crate::checkpoint().is_err_and(|c| c.is_cancel_requested()) => {
                TaskResult::Revoked("terminated".into())
            }
            // A run that ended past its time limit fails, whatever it returned.
            Ok(_) if crate::checkpoint().is_err_and(|c| c.is_time_limit()) => TaskResult::Failure {
                exc_type: "TimeLimitExceeded".into(),
                exc_module: "celery.exceptions".into(),
                exc_message: "time limit exceeded".into(),
                traceback: None,
            },
            Ok(Ok(v)) => TaskResult::Success(v),
            Ok(Err(e)) => TaskResult::error(e),
            Err(p) => TaskResult::error(crate::util::panic_message(&*p).unwrap_or("task panicked")),
        };
        // A built-in that runs from its message (its entry only checked the call).
        let mut sent = None;
        if builtin && matches!(result, TaskResult::Success(_)) {
            match builtins::run_with_message(&msg) {
                Ok((value, s)) => {
                    result = TaskResult::Success(value);
                    sent = s;
                }
                Err(e) => result = TaskResult::error(e.0),
            }
        }
        // Celery's retry: a failed run of a task whose registry options allow more
        // attempts is sent again with `retries + 1`, a new ETA and itself as parent.
        let next_try = msg.retries.saturating_add(1);
        let retry = match (&result, policy) {
            (TaskResult::Failure { .. }, Some(p)) if next_try < p.attempts() => {
                let mut next = msg.clone();
                next.retries = next_try;
                // Celery's retry is sent from inside the task: its parent is itself.
                next.parent_id = Some(next.id.clone());
                next.eta = Some(format_iso8601(
                    SystemTime::now() + p.delay_before(next.retries),
                ));
                next.delivery_tag = uuid::Uuid::new_v4().to_string();
                Some(next)
            }
            _ => None,
        };
        monitor.ended();
        ended_event(&shared, &id, &result, retry.is_some(), began.elapsed());
        let mut done = match retry {
            Some(next) => Done {
                settle: Settlement::Retry {
                    next,
                    failure: result,
                    tag: key,
                },
                counted,
                started: false,
            },
            None => Done::finished(&mut msg, key, result, counted, sent),
        };
        done.started = started_early;
        let _ = tx.send(done);
        end(&tx);
    }
}

/// Celery's event for a run's end: `task-succeeded` (`result` as Python's repr,
/// `runtime` in seconds), `task-failed` or, when it is sent again, `task-retried`
/// (`exception` as Python's repr of the exception, `traceback`), `task-revoked` when it
/// was stopped while it ran.
fn ended_event(
    shared: &WorkerShared,
    id: &str,
    result: &TaskResult,
    retried: bool,
    runtime: Duration,
) {
    let events = &shared.monitor.events;
    if !events.task_events() {
        return;
    }
    match result {
        TaskResult::Success(v) => events.task("task-succeeded", |e| {
            e.insert("uuid", id);
            e.insert("result", py_repr(v));
            e.insert("runtime", runtime.as_secs_f64());
        }),
        TaskResult::Failure {
            exc_type,
            exc_message,
            traceback,
            ..
        } => {
            let kind = if retried {
                "task-retried"
            } else {
                "task-failed"
            };
            events.task(kind, |e| {
                e.insert("uuid", id);
                e.insert(
                    "exception",
                    format!("{exc_type}({})", py_repr(&json!(exc_message))),
                );
                match traceback {
                    Some(t) => e.insert("traceback", t),
                    None => e.insert("traceback", format!("{exc_type}: {exc_message}")),
                }
            })
        }
        TaskResult::Revoked(why) => revoked_event(shared, id, why == "terminated", false),
        TaskResult::Retry(_) => {}
    }
}
