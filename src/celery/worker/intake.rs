//! The consumer thread: [`consume`] takes messages while there is prefetch room, does the
//! [`upkeep`] (heartbeat, restore sweep, pruning, the hold limit), applies the queue
//! changes remote control asked ([`apply_queue_changes`]), and hands each message
//! to [`take`], which refuses it, settles it unrun (revoked, expired, unknown, arguments
//! that do not fit) or spawns its task on the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::super::events::{py_repr, py_tuple_repr};
use super::super::protocol::{parse_iso8601, ProtocolError, TaskMessage};
use super::super::result::TaskResult;
use super::super::transport::{Consume, Settlement};
use super::live::{Done, Held, Live, TaskInfo, WorkerShared, WAITING};
use super::queues::apply_queue_changes;
use super::run::{build_run, plan, Plan, Tracked};
use crate::registry::{Invoke, Registered, Registry};
use crate::{Pool, Priority};

pub(super) struct Config {
    pub(super) registry: Registry,
    /// The built-ins that run from their message ([`builtins::run_with_message`]).
    pub(super) message_builtins: Vec<&'static str>,
    pub(super) lanes: HashMap<String, Priority>,
    pub(super) prefetch: usize,
    pub(super) acks_late: bool,
    /// The broker redelivers to a live worker ([`Consume::redelivers`]): starts are
    /// remembered ([`Started`](super::live::Started)).
    pub(super) track_starts: bool,
}

pub(super) fn consume<C: Consume>(
    mut consumer: C,
    mut cfg: Config,
    pool: Pool,
    shared: Arc<WorkerShared>,
    held: Held<C::Tag>,
    done: mpsc::Sender<Done>,
    parked: mpsc::Sender<C>,
) {
    cfg.track_starts = consumer.redelivers();
    let upkeep_every = consumer.upkeep_interval();
    let wait = upkeep_every.min(Duration::from_millis(250));
    let mut last_upkeep = Instant::now();
    let mut backoff = Duration::from_millis(20);
    let mut seq = 0u64;
    let mut generation = consumer.generation();
    while !shared.stop.load(Ordering::Acquire) {
        let room = {
            let mut n = shared.in_flight.lock();
            while n.room(cfg.prefetch) == 0
                && !shared.stop.load(Ordering::Acquire)
                && !shared.queues_asked.load(Ordering::Relaxed)
            {
                // Woken for the upkeep and queue changes even while full.
                if shared.room.wait_for(&mut n, wait).timed_out() {
                    break;
                }
            }
            n.room(cfg.prefetch)
        };
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if last_upkeep.elapsed() >= upkeep_every {
            last_upkeep = Instant::now();
            upkeep(&mut consumer, &held, &shared, &done);
        }
        apply_queue_changes(&mut consumer, &mut cfg.lanes, &shared);
        if room == 0 {
            continue;
        }
        consumer.set_prefetch(cfg.prefetch + shared.eta_waiting.load(Ordering::Relaxed));
        let batch = match consumer.fetch(room, wait) {
            Ok(batch) => {
                backoff = Duration::from_millis(20);
                batch
            }
            Err(_) => {
                // At most a quarter second: work resumes promptly once the broker answers.
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(250));
                continue;
            }
        };
        // A new broker connection: what the old one held is delivered again.
        if consumer.generation() != generation {
            generation = consumer.generation();
            shared.abandon_before(generation, &held);
        }
        for incoming in batch {
            seq += 1;
            let key = incoming.tag.map(|tag| {
                held.lock().insert(seq, tag);
                seq
            });
            let taken = Taken {
                seq,
                key,
                generation,
                queue: incoming.queue,
                redelivered: incoming.redelivered,
            };
            take(&cfg, &pool, &shared, &done, taken, incoming.message);
        }
    }
    // No more deliveries; the connection stays open (and on Redis the held messages'
    // heartbeat goes on, in the finisher) until the finisher has settled and put back
    // what it holds: on AMQP, closing the channel would hand every unacknowledged delivery
    // back at once.
    consumer.stop_consuming();
    let _ = parked.send(consumer);
}

/// The consumer's periodic care: the transport's (Redis: the heartbeat of held messages
/// and the restore sweep), pruning finished tasks, and sending again ETA tasks held for
/// the broker's hold limit.
fn upkeep<C: Consume>(
    consumer: &mut C,
    held: &Held<C::Tag>,
    shared: &WorkerShared,
    done: &mpsc::Sender<Done>,
) {
    {
        let held = held.lock();
        let tags: Vec<&C::Tag> = held.values().collect();
        consumer.upkeep(&tags);
    }
    consumer.sweep();
    let mut live = shared.live.lock();
    live.retain(|_, t| !t.handle.is_finished());
    let Some(limit) = consumer.hold_limit() else {
        return;
    };
    let now = SystemTime::now();
    let mut settled = Vec::new();
    for (seq, task) in live.iter_mut() {
        let Some((message, at)) = &task.eta else {
            continue;
        };
        if at.elapsed() < limit || !task.withdraw() {
            continue;
        }
        shared.eta_waiting.fetch_sub(1, Ordering::Relaxed);
        settled.push(*seq);
        let Some(key) = task.key else { continue };
        let expired = message
            .expires
            .as_deref()
            .and_then(parse_iso8601)
            .is_some_and(|exp| exp <= now);
        let _ = done.send(if expired {
            Done::end(
                task.id.clone(),
                Some(key),
                TaskResult::Revoked("expired".into()),
                false,
            )
        } else {
            let mut message = message.clone();
            message.delivery_tag = uuid::Uuid::new_v4().to_string();
            Done::uncounted(Settlement::Republish { message, tag: key })
        });
    }
    for seq in settled {
        live.remove(&seq);
    }
}

/// Celery's `task-received` event of `msg` (when task events are on).
fn received(shared: &WorkerShared, msg: &TaskMessage) {
    shared.monitor.events.task("task-received", |e| {
        e.insert("uuid", &msg.id);
        e.insert("name", &msg.task);
        match &msg.argsrepr {
            Some(a) => e.insert("args", a),
            None => e.insert("args", py_tuple_repr(&msg.args)),
        }
        match &msg.kwargsrepr {
            Some(k) => e.insert("kwargs", k),
            None => e.insert("kwargs", py_repr(&Value::Object(msg.kwargs.clone()))),
        }
        e.insert("root_id", &msg.root_id);
        e.insert("parent_id", &msg.parent_id);
        e.insert("retries", msg.retries);
        e.insert("eta", &msg.eta);
        e.insert("expires", &msg.expires);
    });
}

/// Celery's `task-revoked` event (`terminated`: stopped while it ran; `expired`: its
/// `expires` passed).
pub(super) fn revoked_event(shared: &WorkerShared, id: &str, terminated: bool, expired: bool) {
    shared.monitor.events.task("task-revoked", |e| {
        e.insert("uuid", id);
        e.insert("terminated", terminated);
        e.insert("signum", terminated.then_some(15));
        e.insert("expired", expired);
    });
}

/// The `FAILURE` written for a message refused unread.
fn refusal_result(e: &ProtocolError) -> TaskResult {
    match e {
        ProtocolError::ContentType(_) => TaskResult::Failure {
            exc_type: "ContentDisallowed".into(),
            exc_module: "kombu.exceptions".into(),
            exc_message: e.to_string(),
            traceback: None,
        },
        _ => TaskResult::error(e.to_string()),
    }
}

/// Where a message taken came from.
struct Taken {
    /// The worker's sequence number of the message.
    seq: u64,
    /// Its entry in `held` (`seq`), if it has something to acknowledge.
    key: Option<u64>,
    /// The consumer's connection generation it came on.
    generation: u64,
    queue: String,
    /// Delivered again by the broker.
    redelivered: bool,
}

/// Starts the task of one message taken, in named steps: [`refuse`] a message that is not
/// a task; [`screen`] out a revoked or expired one; count it against the prefetch limit
/// unless it waits for an ETA ([`eta_delay`]); [`fit`] its arguments to its registered
/// task; [`plan`] its run; [`build_run`]; [`spawn`] it on the pool.
fn take(
    cfg: &Config,
    pool: &Pool,
    shared: &Arc<WorkerShared>,
    done: &mpsc::Sender<Done>,
    taken: Taken,
    message: Result<TaskMessage, super::super::transport::RefusedMessage>,
) {
    let mut msg = match message {
        Ok(m) => m,
        Err(refused) => return refuse(shared, done, taken.queue, taken.key, refused),
    };
    // Retries and hold-limit copies go back to the queue it came from.
    if msg.routing_key.is_empty() {
        msg.routing_key = taken.queue.clone();
    }
    if taken.redelivered && cfg.track_starts {
        // A copy of a task this worker started: acknowledged (once the run's result is
        // written), not run twice.
        match shared.started.lock().copy(&msg.id, msg.retries, taken.key) {
            None => {}
            Some(true) => {
                if let Some(k) = taken.key {
                    let _ = done.send(Done::uncounted(Settlement::Ack(k)));
                }
                return;
            }
            Some(false) => return,
        }
    }
    let Some(now) = screen(shared, done, &msg, taken.key) else {
        return;
    };
    let info = Arc::new(TaskInfo::new(&msg, &taken.queue, taken.redelivered));
    received(shared, &msg);
    let delay = eta_delay(&msg, now);
    let counted = delay.is_none();
    // Counted before the registry is asked: a task settled unrun below frees its slot.
    if counted {
        shared.in_flight.lock().taken += 1;
    }
    let Some((entry, attempt)) = fit(cfg, shared, done, &msg, taken.key, counted) else {
        return;
    };
    let time_limit = shared.monitor.time_limit(&msg.task);
    let mut plan = plan(cfg, entry, &msg, &taken.queue, delay, counted, time_limit);
    // The rate limits' next start, from when it is due (at once, or at its ETA): the
    // worker's own, then the one shared by the fleet.
    if shared.limits.any() || shared.shared_limits.any() {
        let due = Instant::now() + delay.unwrap_or_default();
        let mut start = shared.limits.reserve(&msg.task, due);
        if shared.shared_limits.any() {
            let stopping = || shared.stop.load(Ordering::Acquire);
            start = shared.shared_limits.reserve(&msg.task, start, &stopping);
        }
        plan.rate_wait = Some(start.saturating_duration_since(due)).filter(|d| !d.is_zero());
    }
    let id = msg.id.clone();
    if !counted {
        shared.eta_waiting.fetch_add(1, Ordering::Relaxed);
    }
    let tracked = Tracked {
        state: Arc::new(AtomicU8::new(WAITING)),
        info,
    };
    let run = build_run(shared, done, msg, taken.key, attempt, &plan, &tracked);
    spawn(pool, shared, &taken, plan, id, tracked, run);
}

/// A message that is not a task never runs: it goes to the dead-letter place with its
/// reason, with a `FAILURE` when its id is known ([`refusal_result`]).
fn refuse(
    shared: &WorkerShared,
    done: &mpsc::Sender<Done>,
    queue: String,
    key: Option<u64>,
    refused: super::super::transport::RefusedMessage,
) {
    if let Some(id) = &refused.id {
        shared.monitor.events.task("task-rejected", |e| {
            e.insert("uuid", id);
            e.insert("requeue", false);
        });
    }
    let result = refused.id.map(|id| (id, refusal_result(&refused.error)));
    let _ = done.send(Done::uncounted(Settlement::Refuse {
        queue,
        raw: refused.raw,
        reason: refused.error.to_string(),
        result,
        tag: key,
    }));
}

/// The final result of `msg`, settled without running it (a revoked one still counts as
/// its chord's part, as in Celery).
fn settle_now(msg: &TaskMessage, key: Option<u64>, result: TaskResult, counted: bool) -> Done {
    if matches!(result, TaskResult::Revoked(_)) {
        return Done::finished(&mut msg.clone(), key, result, counted, None);
    }
    Done::end(msg.id.clone(), key, result, counted)
}

/// Settles `msg` unrun (`REVOKED`) if it was revoked or has expired; otherwise returns the
/// time it was screened at, which its ETA is measured from.
fn screen(
    shared: &WorkerShared,
    done: &mpsc::Sender<Done>,
    msg: &TaskMessage,
    key: Option<u64>,
) -> Option<SystemTime> {
    if shared.revoked.contains(&msg.id) {
        revoked_event(shared, &msg.id, false, false);
        let _ = done.send(settle_now(
            msg,
            key,
            TaskResult::Revoked("revoked".into()),
            false,
        ));
        return None;
    }
    let now = SystemTime::now();
    if let Some(exp) = msg.expires.as_deref().and_then(parse_iso8601) {
        if exp <= now {
            revoked_event(shared, &msg.id, false, true);
            let _ = done.send(settle_now(
                msg,
                key,
                TaskResult::Revoked("expired".into()),
                false,
            ));
            return None;
        }
    }
    Some(now)
}

/// How long `msg` waits for its ETA from `now`: `None` without one, or once it has passed
/// (a task that waits is not counted against the prefetch limit).
fn eta_delay(msg: &TaskMessage, now: SystemTime) -> Option<Duration> {
    msg.eta
        .as_deref()
        .and_then(parse_iso8601)
        .and_then(|eta| eta.duration_since(now).ok())
        .filter(|d| !d.is_zero())
}

/// Fits the arguments of `msg` to its registered task: the task's entry and the attempt
/// to run, or `None` once `msg` is settled as `FAILURE` (Celery's `NotRegistered` for an
/// unknown name, `TypeError` for arguments that do not fit).
fn fit<'r>(
    cfg: &'r Config,
    shared: &WorkerShared,
    done: &mpsc::Sender<Done>,
    msg: &TaskMessage,
    key: Option<u64>,
    counted: bool,
) -> Option<(&'r Registered, Invoke)> {
    let Some(entry) = cfg.registry.get(&msg.task) else {
        // As Celery's `on_unknown_task`.
        shared.monitor.events.task("task-failed", |e| {
            e.insert("uuid", &msg.id);
            e.insert(
                "exception",
                format!("NotRegistered({})", py_repr(&json!(msg.task))),
            );
        });
        let _ = done.send(settle_now(
            msg,
            key,
            TaskResult::not_registered(&msg.task),
            counted,
        ));
        return None;
    };
    let args = msg.registry_args();
    let no_args = args.as_array().is_some_and(Vec::is_empty);
    // A call without arguments also fits a task that takes `()`.
    let attempt = entry.prepare(args).or_else(|e| {
        if no_args {
            entry.prepare(Value::Null).map_err(|_| e)
        } else {
            Err(e)
        }
    });
    let attempt = match attempt {
        Ok(a) => a,
        Err(e) => {
            let result = TaskResult::Failure {
                exc_type: "TypeError".into(),
                exc_module: "builtins".into(),
                exc_message: format!("{}: invalid arguments: {e}", msg.task),
                traceback: None,
            };
            let _ = done.send(settle_now(msg, key, result, counted));
            return None;
        }
    };
    Some((entry, attempt))
}

/// Hands the run to the pool as planned and records it as [`Live`] under the message's
/// sequence number; a run the pool refuses (shut down) gives its count back.
fn spawn(
    pool: &Pool,
    shared: &WorkerShared,
    taken: &Taken,
    plan: Plan,
    id: String,
    tracked: Tracked,
    run: impl FnOnce() + Send + 'static,
) {
    let mut task = pool.task().priority(plan.lane);
    let wait = plan.delay.unwrap_or_default() + plan.rate_wait.unwrap_or_default();
    if !wait.is_zero() {
        task = task.delay(wait);
    }
    if let Some(limit) = plan.time_limit {
        task = task.time_limit(limit);
    }
    // The handle is kept for revoke; the task reports through `done`. A task the pool
    // never runs (shut down while waiting for its ETA) stays held and is put back.
    match task.try_spawn(run) {
        Ok(handle) => {
            shared.live.lock().insert(
                taken.seq,
                Live {
                    id,
                    info: tracked.info,
                    handle,
                    state: tracked.state,
                    key: taken.key,
                    counted: plan.counted,
                    eta: plan.eta,
                    generation: taken.generation,
                    chord_part: plan.chord_part,
                },
            );
        }
        Err(_) => {
            if plan.counted {
                shared.in_flight.lock().taken -= 1;
            } else {
                shared.eta_waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
