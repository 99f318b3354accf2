//! [`Worker`]: consumes Celery queues on Redis and runs the named tasks of a
//! [`Registry`] on a weft [`Pool`].

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use super::control::{self, Revoked};
use super::protocol::{format_iso8601, parse_iso8601, ProtocolError, TaskMessage, TaskResult};
use super::redis as transport;
use super::Error;
use crate::registry::Registry;
use crate::{Pool, Priority};

/// A Celery worker made of weft: takes messages from Redis queues (kombu's layout, acks
/// late), runs each named task of its [`Registry`] on its own [`Pool`], writes the result
/// where Celery's Redis result backend keeps it, then acknowledges the message.
///
/// * **Queues and lanes.** Each queue is bound to a weft lane ([`Priority`]): a worker
///   consuming `high` → High, `celery` → Normal, `bulk` → Low runs urgent work first.
///   Within a queue the message priority orders delivery (kombu's sub-lists; 0 first).
/// * **Arguments.** See [`TaskMessage::registry_args`]: `add(2, 3)` reaches a task
///   registered as `|(x, y): (i64, i64)|`.
/// * **Outcomes.** `Ok(v)` is `SUCCESS` with `v`; an `Err(e)` or a panic is `FAILURE`,
///   raised in Python as `RuntimeError(message)`; an unknown task name is `FAILURE` with
///   Celery's `NotRegistered`; arguments that do not fit the task are `FAILURE` too.
/// * **Bad messages** (not JSON, a content type other than JSON, bad base64, missing
///   headers) never run and never stop the worker: each goes to the dead-letter list
///   (`weft.dead_letter`) with its reason, and a `FAILURE` is written when its id is known.
/// * **ETA / countdown**: the task waits in weft's timing wheel, not in Redis, and does
///   not count against the prefetch limit.
/// * **Heartbeat.** While the worker holds a message (running, queued, or waiting for its
///   ETA) it refreshes the message's `unacked_index` score every second (or every third of
///   a visibility timeout under 3 s), so the restore sweep never re-delivers the message of a live worker (kombu
///   issue 337, duplicated ETA tasks), while a dead worker's messages come back after the
///   visibility timeout.
/// * **Retries** (Celery's semantics): a failed run of a task registered with a
///   [`RetryPolicy`](crate::RetryPolicy) that allows more attempts than the message's
///   `retries + 1` is sent again (same id, `retries + 1`, an ETA after the policy's delay),
///   with `RETRY` recorded; Python's `AsyncResult.get()` keeps waiting for the final state.
/// * **Time limits**: the shortest of the message's `timelimit` (soft, hard) and the
///   registry's [`TaskOptions::time_limit`](crate::registry::TaskOptions::time_limit) is
///   the run's weft time limit: [`checkpoint`](crate::checkpoint) tells the task to stop,
///   and a run that ends past it is `FAILURE` with Celery's `TimeLimitExceeded`.
/// * **Remote control** ([`control`](super::control)): answers `app.control.ping()` and
///   honours `app.control.revoke(id)` for tasks not yet started (queued, or waiting for
///   their ETA: they end `REVOKED` at once, without running, and a message of that id
///   taken later is not run either); `revoke(id, terminate=True)` also asks a running task
///   to stop ([`checkpoint`](crate::checkpoint) returns `Err` in it; weft cannot kill a
///   thread, so a task that never checks runs to its end) and it ends `REVOKED`.
/// * **Shutdown** ([`RunningWorker::shutdown`]): stops taking messages, lets tasks already
///   taken finish, and puts back on their queue the messages whose tasks did not run
///   (waiting for their ETA).
///
/// ```no_run
/// use weft::celery::Worker;
/// use weft::registry::Registry;
///
/// let registry = Registry::new().task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y));
/// let worker = Worker::new("redis://127.0.0.1:6379/0", registry).start().unwrap();
/// // ... later
/// worker.shutdown();
/// ```
pub struct Worker {
    url: String,
    registry: Registry,
    queues: Vec<(String, Priority)>,
    workers: Option<usize>,
    prefetch: usize,
    result_expires: Duration,
    visibility_timeout: Duration,
    restore_interval: Duration,
    hostname: Option<String>,
}

impl Worker {
    /// A worker for the Redis at `url`, running `registry`'s tasks, consuming the queue
    /// `celery` (Normal lane) until [`queue`](Self::queue) names others.
    pub fn new(url: impl Into<String>, registry: Registry) -> Worker {
        Worker {
            url: url.into(),
            registry,
            queues: Vec::new(),
            workers: None,
            prefetch: 0,
            result_expires: transport::DEFAULT_RESULT_EXPIRES,
            visibility_timeout: transport::DEFAULT_VISIBILITY_TIMEOUT,
            restore_interval: Duration::from_secs(10),
            hostname: None,
        }
    }

    /// The node name remote control sees (`celery inspect ping` lists it; a
    /// `destination` selects it). Default: `weft-<pid>@<host>`.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Consumes `queue`, running its tasks in `lane`. Call once per queue.
    pub fn queue(mut self, queue: impl Into<String>, lane: Priority) -> Self {
        self.queues.push((queue.into(), lane));
        self
    }

    /// The pool's worker threads (default: [`default_workers`](crate::default_workers)).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// At most this many messages taken and not finished at once, ETA tasks not counted
    /// (default: 4 per pool worker, Celery's `worker_prefetch_multiplier`).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// How long results are kept (default one day, Celery's `result_expires`).
    pub fn result_expires(mut self, d: Duration) -> Self {
        self.result_expires = d;
        self
    }

    /// A message unacknowledged for longer is put back on its queue by the restore sweep
    /// (default one hour, kombu's `visibility_timeout`).
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }

    /// How often this worker runs the restore sweep (default 10 s).
    pub fn restore_interval(mut self, d: Duration) -> Self {
        self.restore_interval = d;
        self
    }

    /// Connects, builds the pool and starts consuming.
    pub fn start(mut self) -> Result<RunningWorker, Error> {
        if self.queues.is_empty() {
            self.queues.push(("celery".into(), Priority::Normal));
        }
        let client = redis::Client::open(self.url.as_str())?;
        let mut consume_conn = client.get_connection()?;
        let finish_conn = client.get_connection()?;
        let _: () = redis::cmd("PING").query(&mut consume_conn)?;
        let mut builder = Pool::builder();
        if let Some(n) = self.workers {
            builder = builder.workers(n);
        }
        builder = builder.thread_name(|i| format!("weft-celery-{i}"));
        let pool = builder
            .build()
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        if self.prefetch == 0 {
            self.prefetch = pool.num_workers() * 4;
        }
        // Queues in lane order, so that BRPOP prefers the higher lanes' queues.
        self.queues
            .sort_by_key(|(_, lane)| std::cmp::Reverse(*lane));
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            in_flight: Mutex::new(0),
            room: Condvar::new(),
            held: Mutex::new(HashMap::new()),
            revoked: Arc::new(Revoked::new()),
            live: Mutex::new(HashMap::new()),
            wake: transport::Wake::new(),
        });
        let hostname = self.hostname.take().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into());
            format!("weft-{}@{host}", std::process::id())
        });
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let (subscribed_tx, subscribed_rx) = mpsc::channel();
        let control = {
            let shared = shared.clone();
            let client = client.clone();
            let hostname = hostname.clone();
            let done = done_tx.clone();
            thread::Builder::new()
                .name("weft-celery-control".into())
                .spawn(move || {
                    control::serve(
                        client,
                        hostname,
                        |ids, terminate| shared.revoke(ids, terminate, &done),
                        || shared.stop.load(Ordering::Acquire),
                        subscribed_tx,
                    )
                })?
        };
        // Remote control works once `start` returns (or after 5 s if Redis is slow).
        let _ = subscribed_rx.recv_timeout(Duration::from_secs(5));
        let finisher = {
            let shared = shared.clone();
            let expires = self.result_expires;
            thread::Builder::new()
                .name("weft-celery-ack".into())
                .spawn(move || finisher(finish_conn, done_rx, shared, expires))?
        };
        let keys = transport::consume_keys(
            &self
                .queues
                .iter()
                .map(|(q, _)| q.as_str())
                .collect::<Vec<_>>(),
        );
        let tracker = {
            let shared = shared.clone();
            let client = client.clone();
            let keys = keys.clone();
            thread::Builder::new()
                .name("weft-celery-track".into())
                .spawn(move || {
                    transport::track(&client, &keys, &shared.wake, || {
                        shared.stop.load(Ordering::Acquire)
                    })
                })?
        };
        let consumer = {
            let shared = shared.clone();
            let pool = pool.clone();
            let cfg = Consume {
                registry: self.registry,
                key_queues: keys
                    .iter()
                    .map(|k| transport::queue_of_list(k).to_owned())
                    .collect(),
                keys,
                lanes: self.queues.into_iter().collect(),
                prefetch: self.prefetch,
                visibility_timeout: self.visibility_timeout,
                restore_interval: self.restore_interval,
                result_expires: self.result_expires,
            };
            thread::Builder::new()
                .name("weft-celery-consume".into())
                .spawn(move || consume(consume_conn, cfg, pool, shared, done_tx))?
        };
        Ok(RunningWorker {
            client,
            pool,
            shared,
            hostname,
            consumer: Some(consumer),
            tracker: Some(tracker),
            finisher: Some(finisher),
            control: Some(control),
        })
    }
}

/// A started [`Worker`].
pub struct RunningWorker {
    client: redis::Client,
    pool: Pool,
    shared: Arc<Shared>,
    hostname: String,
    consumer: Option<thread::JoinHandle<()>>,
    tracker: Option<thread::JoinHandle<()>>,
    finisher: Option<thread::JoinHandle<()>>,
    control: Option<thread::JoinHandle<()>>,
}

impl RunningWorker {
    /// The node name remote control sees.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Stops taking messages, lets the tasks already taken and due finish (their results
    /// written and acknowledged), and puts back on their queues the messages whose tasks
    /// did not run (waiting for an ETA). Returns how many were put back.
    pub fn shutdown(mut self) -> usize {
        self.stop()
    }

    fn stop(&mut self) -> usize {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.room.notify_all();
        self.shared.wake.bump();
        if let Some(c) = self.consumer.take() {
            let _ = c.join();
        }
        if let Some(t) = self.tracker.take() {
            let _ = t.join();
        }
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        // Finishes due work; ETA timers are resolved as shut down without running.
        self.pool.shutdown();
        // The consumer's sender and every task's are gone: the finisher drains and ends.
        if let Some(f) = self.finisher.take() {
            let _ = f.join();
        }
        let held: Vec<String> = self.shared.held.lock().drain().map(|(t, _)| t).collect();
        let mut restored = 0;
        if let Ok(mut conn) = self.client.get_connection() {
            for tag in held {
                if transport::restore_by_tag(&mut conn, &tag).unwrap_or(false) {
                    restored += 1;
                }
            }
        }
        restored
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        if self.consumer.is_some() {
            self.stop();
        }
    }
}

struct Shared {
    stop: AtomicBool,
    /// Messages taken and not finished, ETA tasks not counted.
    in_flight: Mutex<usize>,
    room: Condvar,
    /// Delivery tags this worker holds unacknowledged, with their task id.
    held: Mutex<HashMap<String, String>>,
    /// Task ids revoked by remote control.
    revoked: Arc<Revoked>,
    /// The tasks handed to the pool and maybe not finished, by task id, for revoke
    /// (finished ones are pruned at each heartbeat).
    live: Mutex<HashMap<String, Live>>,
    /// Moved on when a consumed list may have a new message.
    wake: transport::Wake,
}

/// A task handed to the pool.
struct Live {
    handle: crate::JoinHandle<()>,
    /// Set by the task as it starts (before it looks at the revoked set).
    started: Arc<AtomicBool>,
    tag: Option<String>,
    counted: bool,
}

impl Shared {
    /// `app.control.revoke(ids, terminate=...)`: each id is remembered as revoked (a
    /// message of it taken later ends `REVOKED` unrun). A task of this worker that has not
    /// started (queued, or waiting for its ETA) is cancelled in the pool and ends `REVOKED`
    /// now, not at its ETA. With `terminate`, a running task is asked to stop
    /// ([`checkpoint`](crate::checkpoint) returns `Err` in it) and ends `REVOKED`
    /// whatever it returns.
    fn revoke(&self, ids: &[String], terminate: bool, done: &mpsc::Sender<Done>) {
        for id in ids {
            self.revoked.add(id);
        }
        let mut live = self.live.lock();
        for id in ids {
            let Some(task) = live.get(id) else { continue };
            // `revoked` is set first: a task that starts after this load sees it and
            // ends `REVOKED` unrun, so a cancel of a task just starting asks nothing of
            // user code.
            // Without `terminate` a running task is left alone; `cancel` returns true only
            // for one that had not started, which is then never to run: settled here.
            if (terminate || !task.started.load(Ordering::SeqCst)) && task.handle.cancel() {
                let _ = done.send(Done {
                    id: id.clone(),
                    tag: task.tag.clone(),
                    result: TaskResult::Revoked("revoked".into()),
                    counted: task.counted,
                    retry: None,
                });
                live.remove(id);
            }
        }
    }
}

struct Consume {
    registry: Registry,
    keys: Vec<String>,
    /// The queue of each of `keys`.
    key_queues: Vec<String>,
    lanes: HashMap<String, Priority>,
    prefetch: usize,
    visibility_timeout: Duration,
    restore_interval: Duration,
    result_expires: Duration,
}

/// A finished task, for the finisher to write and acknowledge.
struct Done {
    id: String,
    tag: Option<String>,
    result: TaskResult,
    /// True if it counted against the prefetch limit.
    counted: bool,
    /// The message to send again instead of a final result (Celery's retry).
    retry: Option<TaskMessage>,
}

fn consume(
    mut conn: redis::Connection,
    cfg: Consume,
    pool: Pool,
    shared: Arc<Shared>,
    done: mpsc::Sender<Done>,
) {
    let mut last_sweep = Instant::now();
    let mut last_beat = Instant::now();
    // Held messages' `unacked_index` scores are refreshed this often, so that no sweep
    // (ours or another worker's) restores a message whose worker is alive.
    // At most every second: other workers may sweep with a shorter visibility timeout.
    let beat =
        (cfg.visibility_timeout / 3).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let wait = beat.min(Duration::from_secs(1));
    let mut backoff = Duration::from_millis(100);
    while !shared.stop.load(Ordering::Acquire) {
        {
            let mut n = shared.in_flight.lock();
            while *n >= cfg.prefetch && !shared.stop.load(Ordering::Acquire) {
                // Woken to beat the held messages' heartbeat even while full.
                if shared.room.wait_for(&mut n, wait).timed_out() {
                    break;
                }
            }
            if *n >= cfg.prefetch {
                drop(n);
                if last_beat.elapsed() >= beat {
                    last_beat = Instant::now();
                    let tags: Vec<String> = shared.held.lock().keys().cloned().collect();
                    let _ = transport::heartbeat(&mut conn, &tags);
                    shared.live.lock().retain(|_, t| !t.handle.is_finished());
                }
                continue;
            }
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
        }
        if last_beat.elapsed() >= beat {
            last_beat = Instant::now();
            let tags: Vec<String> = shared.held.lock().keys().cloned().collect();
            let _ = transport::heartbeat(&mut conn, &tags);
            shared.live.lock().retain(|_, t| !t.handle.is_finished());
        }
        if last_sweep.elapsed() >= cfg.restore_interval {
            last_sweep = Instant::now();
            let _ = transport::restore_visible(&mut conn, cfg.visibility_timeout);
        }
        let seen = shared.wake.generation();
        let room = cfg.prefetch.saturating_sub(*shared.in_flight.lock()).max(1);
        let batch = match transport::pop_and_record(&mut conn, &cfg.keys, &cfg.key_queues, room) {
            Ok(batch) => {
                backoff = Duration::from_millis(100);
                batch
            }
            Err(_) => {
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if batch.is_empty() {
            shared.wake.wait(seen, wait);
            continue;
        }
        for (list, raw) in batch {
            take(&mut conn, &cfg, &pool, &shared, &done, &list, raw);
        }
    }
}

/// Starts the task of one message taken (and recorded unacknowledged) from `list`.
fn take(
    conn: &mut redis::Connection,
    cfg: &Consume,
    pool: &Pool,
    shared: &Shared,
    done: &mpsc::Sender<Done>,
    list: &str,
    raw: Vec<u8>,
) {
    {
        let queue = transport::queue_of_list(list).to_owned();
        let lane = cfg.lanes.get(&queue).copied().unwrap_or_default();
        let envelope: Result<Value, ProtocolError> =
            serde_json::from_slice(&raw).map_err(|e| ProtocolError::Json(e.to_string()));
        let msg = envelope
            .as_ref()
            .map_err(Clone::clone)
            .and_then(TaskMessage::from_envelope);
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                let reason = e.to_string();
                let envelope = envelope.ok();
                let field = |ptr: &str| {
                    envelope
                        .as_ref()
                        .and_then(|v| v.pointer(ptr)?.as_str().map(str::to_owned))
                };
                // Recorded unacknowledged by the pop if it had a delivery tag: acked here.
                let tag = field("/properties/delivery_tag");
                let _ = transport::dead_letter(conn, &queue, &raw, &reason, tag.as_deref());
                if let Some(id) = field("/headers/id") {
                    let result = match e {
                        ProtocolError::ContentType(_) => TaskResult::Failure {
                            exc_type: "ContentDisallowed".into(),
                            exc_module: "kombu.exceptions".into(),
                            exc_message: reason,
                            traceback: None,
                        },
                        _ => TaskResult::error(reason),
                    };
                    let _ = transport::finish(conn, &id, &result, cfg.result_expires, None);
                }
                return;
            }
        };
        // Acks late: the pop recorded it as unacknowledged before anything runs.
        let tag = (!msg.delivery_tag.is_empty()).then(|| msg.delivery_tag.clone());
        if let Some(tag) = &tag {
            shared.held.lock().insert(tag.clone(), msg.id.clone());
        }
        if shared.revoked.contains(&msg.id) {
            let _ = done.send(Done {
                id: msg.id,
                tag,
                result: TaskResult::Revoked("revoked".into()),
                counted: false,
                retry: None,
            });
            return;
        }
        let now = SystemTime::now();
        if let Some(exp) = msg.expires.as_deref().and_then(parse_iso8601) {
            if exp <= now {
                let _ = done.send(Done {
                    id: msg.id,
                    tag,
                    result: TaskResult::Revoked("expired".into()),
                    counted: false,
                    retry: None,
                });
                return;
            }
        }
        let delay = msg
            .eta
            .as_deref()
            .and_then(parse_iso8601)
            .and_then(|eta| eta.duration_since(now).ok())
            .filter(|d| !d.is_zero());
        let counted = delay.is_none();
        if counted {
            *shared.in_flight.lock() += 1;
        }
        let Some(entry) = cfg.registry.get(&msg.task) else {
            let result = TaskResult::not_registered(&msg.task);
            let _ = done.send(Done {
                id: msg.id,
                tag,
                result,
                counted,
                retry: None,
            });
            return;
        };
        let args = msg.registry_args();
        let no_args = args.as_array().is_some_and(Vec::is_empty);
        // A call without arguments also fits a task that takes `()`.
        let attempt = match entry.prepare(args).or_else(|e| {
            if no_args {
                entry.prepare(Value::Null).map_err(|_| e)
            } else {
                Err(e)
            }
        }) {
            Ok(a) => a,
            Err(e) => {
                let result = TaskResult::Failure {
                    exc_type: "TypeError".into(),
                    exc_module: "builtins".into(),
                    exc_message: format!("{}: invalid arguments: {e}", msg.task),
                    traceback: None,
                };
                let _ = done.send(Done {
                    id: msg.id,
                    tag,
                    result,
                    counted,
                    retry: None,
                });
                return;
            }
        };
        let tx = done.clone();
        let policy = entry.options.get_retry();
        // The shortest of the message's soft and hard limits and the registry's default.
        let time_limit = [msg.timelimit.1, msg.timelimit.0]
            .into_iter()
            .flatten()
            .filter(|s| *s > 0.0)
            .filter_map(|s| Duration::try_from_secs_f64(s).ok())
            .chain(entry.options.get_time_limit())
            .min();
        let mut attempt = attempt;
        let msg_id = msg.id.clone();
        let revoked = shared.revoked.clone();
        let started = Arc::new(AtomicBool::new(false));
        let started_here = started.clone();
        let live_tag = tag.clone();
        let run = move || {
            let id = msg.id.clone();
            started_here.store(true, Ordering::SeqCst);
            if revoked.contains(&id) {
                let _ = tx.send(Done {
                    id,
                    tag,
                    result: TaskResult::Revoked("revoked".into()),
                    counted,
                    retry: None,
                });
                return;
            }
            let result = match catch_unwind(AssertUnwindSafe(&mut attempt)) {
                // Revoked with `terminate` while it ran.
                Ok(_) if crate::checkpoint().is_err_and(|c| c.is_cancel_requested()) => {
                    TaskResult::Revoked("terminated".into())
                }
                // A run that ended past its time limit fails, whatever it returned.
                Ok(_) if crate::checkpoint().is_err_and(|c| c.is_time_limit()) => {
                    TaskResult::Failure {
                        exc_type: "TimeLimitExceeded".into(),
                        exc_module: "celery.exceptions".into(),
                        exc_message: "time limit exceeded".into(),
                        traceback: None,
                    }
                }
                Ok(Ok(v)) => TaskResult::Success(v),
                Ok(Err(e)) => TaskResult::error(e),
                Err(p) => TaskResult::error(
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "task panicked".into()),
                ),
            };
            // Celery's retry: a failed run of a task whose registry options allow
            // more attempts is sent again with `retries + 1` and a new ETA.
            let retry = match (&result, policy) {
                (TaskResult::Failure { .. }, Some(p)) if msg.retries + 1 < p.attempts() => {
                    let mut next = msg;
                    next.retries += 1;
                    next.eta = Some(format_iso8601(
                        SystemTime::now() + p.delay_before(next.retries),
                    ));
                    next.delivery_tag = uuid::Uuid::new_v4().to_string();
                    Some(next)
                }
                _ => None,
            };
            let _ = tx.send(Done {
                id,
                tag,
                result,
                counted,
                retry,
            });
        };
        let mut task = pool.task().priority(lane);
        if let Some(d) = delay {
            task = task.delay(d);
        }
        if let Some(limit) = time_limit {
            task = task.time_limit(limit);
        }
        // The handle is not kept: the task reports through `done`. A task the pool never
        // runs (shut down while waiting for its ETA) stays unacknowledged and is put back.
        let id = msg_id;
        match task.try_spawn(run) {
            Ok(handle) => {
                shared.live.lock().insert(
                    id,
                    Live {
                        handle,
                        started,
                        tag: live_tag,
                        counted,
                    },
                );
            }
            Err(_) if counted => *shared.in_flight.lock() -= 1,
            Err(_) => {}
        }
    }
}

fn finisher(
    mut conn: redis::Connection,
    done: mpsc::Receiver<Done>,
    shared: Arc<Shared>,
    expires: Duration,
) {
    // Whatever finished meanwhile is written in one transaction (one round trip).
    const MAX_BATCH: usize = 256;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = done.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match done.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for d in &batch {
            match (&d.retry, &d.result) {
                (Some(next), TaskResult::Failure { exc_message, .. }) => {
                    transport::add_retry(&mut pipe, next, exc_message, expires, d.tag.as_deref())
                }
                _ => transport::add_finish(&mut pipe, &d.id, &d.result, expires, d.tag.as_deref()),
            }
        }
        // Retried a few times: a result not written leaves the message unacknowledged,
        // to be restored and run again (at-least-once).
        for i in 0..3 {
            if pipe.query::<()>(&mut conn).is_ok() {
                break;
            }
            thread::sleep(Duration::from_millis(100 << i));
        }
        let mut counted = 0;
        {
            let mut held = shared.held.lock();
            for d in batch.drain(..) {
                if let Some(tag) = &d.tag {
                    held.remove(tag);
                }
                counted += usize::from(d.counted);
            }
        }
        if counted > 0 {
            let mut n = shared.in_flight.lock();
            *n = n.saturating_sub(counted);
            shared.room.notify_one();
        }
    }
}
