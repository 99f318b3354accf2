//! [`Worker`]: consumes Celery queues (on Redis, or on RabbitMQ with the feature `amqp`)
//! and runs the named tasks of a [`Registry`] on a weft [`Pool`].

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use super::control::Revoked;
use super::protocol::{format_iso8601, parse_iso8601, ProtocolError, TaskMessage, TaskResult};
use super::redis::{self as redis_transport, RedisTransport};
use super::transport::{Consume, Settle, Settlement, Transport};
use super::Error;
use crate::registry::Registry;
use crate::{Pool, Priority};

/// A Celery worker made of weft: takes messages from Celery queues, runs each named task
/// of its [`Registry`] on its own [`Pool`], writes the result where Celery's Redis result
/// backend keeps it, and acknowledges the message.
///
/// The broker is chosen by the URL given to [`Worker::new`]: `redis://` (kombu's Redis
/// transport; the same Redis is the result backend) or, with the feature `amqp`,
/// `amqp://` (RabbitMQ; results go to the Redis named by [`backend`](Self::backend)).
/// Everything below holds for both, unless it names one.
///
/// * **Queues and lanes.** Each queue is bound to a weft lane ([`Priority`]): a worker
///   consuming `high` → High, `celery` → Normal, `bulk` → Low runs urgent work first, and
///   takes from the higher lanes' queues first. Within a queue the message priority orders
///   delivery: on Redis 0 is served first (kombu's sub-lists 0, 3, 6, 9); on RabbitMQ a
///   higher priority first, and only on a queue declared with `x-max-priority`
///   ([`max_priority`](Self::max_priority)).
/// * **Arguments.** See [`TaskMessage::registry_args`]: `add(2, 3)` reaches a task
///   registered as `|(x, y): (i64, i64)|`; a call without arguments also fits `|(): ()|`.
/// * **Outcomes.** `Ok(v)` is `SUCCESS` with `v`; an `Err(e)` or a panic is `FAILURE`,
///   raised in Python as `RuntimeError(message)`; an unknown task name is `FAILURE` with
///   Celery's `NotRegistered`; arguments that do not fit the task are `FAILURE` too.
/// * **Acknowledgement.** As in Celery, a message is acknowledged as its task starts,
///   unless the task's [`TaskOptions::acks_late`](crate::registry::TaskOptions::acks_late)
///   (or the worker's [`acks_late`](Self::acks_late)) says after it finished and its
///   result was written. With late acks a worker that dies loses nothing: its messages are
///   delivered again (at-least-once); with early acks the tasks it was running are lost.
///   Messages not yet started (queued in the pool, waiting for an ETA) are never
///   acknowledged before they start.
/// * **Bad messages** (not JSON, a content type other than JSON, bad base64, missing
///   headers) never run and never stop the worker: each goes to the dead-letter place (the
///   Redis list `weft.dead_letter`; on RabbitMQ the exchange and queue `weft.dead_letter`)
///   with its reason, and a `FAILURE` is written when its id is known.
/// * **ETA / countdown**: the task waits in weft's timing wheel, not in the broker, and
///   does not count against the prefetch limit (on RabbitMQ the channel's `basic.qos` is
///   raised by one per waiting ETA task, as Celery does).
/// * **Held messages.** On Redis, while the worker holds a message (running, queued, or
///   waiting for its ETA) it refreshes the message's `unacked_index` score every second (or
///   every third of a visibility timeout under 3 s), so the restore sweep never
///   re-delivers the message of a live worker (kombu issue 337, duplicated ETA tasks),
///   while a dead worker's messages come back after the visibility timeout. On RabbitMQ a
///   delivery held longer than the broker's `consumer_timeout` (30 minutes by default)
///   would get the channel closed; so a task still waiting for its ETA after
///   [`amqp_hold_limit`](Self::amqp_hold_limit) (default 15 minutes) is sent again (the
///   same message, confirmed by the broker) and its old delivery acknowledged: a far ETA
///   goes around the queue every 15 minutes, and is never lost.
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
    backend: Option<String>,
    registry: Registry,
    queues: Vec<(String, Priority)>,
    workers: Option<usize>,
    prefetch: usize,
    result_expires: Duration,
    visibility_timeout: Duration,
    restore_interval: Duration,
    hostname: Option<String>,
    acks_late: bool,
    max_priority: Option<u8>,
    hold_limit: Duration,
}

impl Worker {
    /// A worker for the broker at `url` (`redis://host:port/db`, or with the feature
    /// `amqp` `amqp://user:password@host:port/vhost`), running `registry`'s tasks,
    /// consuming the queue `celery` (Normal lane) until [`queue`](Self::queue) names
    /// others.
    pub fn new(url: impl Into<String>, registry: Registry) -> Worker {
        Worker {
            url: url.into(),
            backend: None,
            registry,
            queues: Vec::new(),
            workers: None,
            prefetch: 0,
            result_expires: redis_transport::DEFAULT_RESULT_EXPIRES,
            visibility_timeout: redis_transport::DEFAULT_VISIBILITY_TIMEOUT,
            restore_interval: Duration::from_secs(10),
            hostname: None,
            acks_late: false,
            max_priority: None,
            hold_limit: Duration::from_secs(15 * 60),
        }
    }

    /// The Redis result backend (`redis://...`), for an AMQP broker (which cannot keep
    /// results). A Redis broker is its own result backend; naming another is an error.
    pub fn backend(mut self, url: impl Into<String>) -> Self {
        self.backend = Some(url.into());
        self
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

    /// When messages of tasks whose [`TaskOptions`](crate::registry::TaskOptions) do not
    /// say are acknowledged: after the task finished (`true`) or as it starts (`false`,
    /// the default, as Celery's `task_acks_late`).
    pub fn acks_late(mut self, late: bool) -> Self {
        self.acks_late = late;
        self
    }

    /// How long results are kept (default one day, Celery's `result_expires`).
    pub fn result_expires(mut self, d: Duration) -> Self {
        self.result_expires = d;
        self
    }

    /// Redis: a message unacknowledged for longer is put back on its queue by the restore
    /// sweep (default one hour, kombu's `visibility_timeout`).
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }

    /// Redis: how often this worker runs the restore sweep (default 10 s).
    pub fn restore_interval(mut self, d: Duration) -> Self {
        self.restore_interval = d;
        self
    }

    /// RabbitMQ: the consumed queues are declared with `x-max-priority` = `n` (Celery's
    /// `task_queue_max_priority`), so that message priorities order delivery. Every
    /// declaration of a queue must agree: a queue that exists with other arguments makes
    /// RabbitMQ refuse the worker (`PRECONDITION_FAILED`). Default: none, like Celery's
    /// `celery` queue. Ignored on Redis.
    pub fn max_priority(mut self, n: u8) -> Self {
        self.max_priority = Some(n);
        self
    }

    /// RabbitMQ: how long a delivery of a task waiting for its ETA is held before it is
    /// sent again and acknowledged (default 15 minutes; keep it under the broker's
    /// `consumer_timeout`, 30 minutes by default). Ignored on Redis.
    pub fn amqp_hold_limit(mut self, d: Duration) -> Self {
        self.hold_limit = d;
        self
    }

    /// Connects, builds the pool and starts consuming.
    pub fn start(mut self) -> Result<RunningWorker, Error> {
        if self.queues.is_empty() {
            self.queues.push(("celery".into(), Priority::Normal));
        }
        // Queues in lane order, so that the higher lanes' queues are taken from first.
        self.queues
            .sort_by_key(|(_, lane)| std::cmp::Reverse(*lane));
        let scheme = self.url.split_once("://").map_or("", |(s, _)| s);
        match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" => {
                if self.backend.as_ref().is_some_and(|b| *b != self.url) {
                    return Err(Error::Config(
                        "a Redis broker is its own result backend: do not name another".into(),
                    ));
                }
                let transport = RedisTransport {
                    client: redis::Client::open(self.url.as_str())?,
                    visibility_timeout: self.visibility_timeout,
                    restore_interval: self.restore_interval,
                    result_expires: self.result_expires,
                };
                self.run(transport)
            }
            #[cfg(feature = "amqp")]
            "amqp" | "amqps" => {
                let Some(backend) = &self.backend else {
                    return Err(Error::Config(
                        "an AMQP broker needs a Redis result backend: Worker::backend(\"redis://...\")"
                            .into(),
                    ));
                };
                let transport = super::amqp::AmqpTransport {
                    url: self.url.clone(),
                    backend: redis::Client::open(backend.as_str())?,
                    result_expires: self.result_expires,
                    max_priority: self.max_priority,
                    hold_limit: self.hold_limit,
                };
                self.run(transport)
            }
            #[cfg(not(feature = "amqp"))]
            "amqp" | "amqps" => Err(Error::Config(
                "weft was built without the feature `amqp`".into(),
            )),
            other => Err(Error::Config(format!(
                "unknown broker URL scheme {other:?} (expected redis:// or amqp://)"
            ))),
        }
    }

    fn run<T: Transport>(mut self, transport: T) -> Result<RunningWorker, Error> {
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
        let names: Vec<String> = self.queues.iter().map(|(q, _)| q.clone()).collect();
        let (consumer, settler) = transport.open(&names, self.prefetch)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            in_flight: Mutex::new(0),
            room: Condvar::new(),
            eta_waiting: Arc::new(AtomicUsize::new(0)),
            revoked: Arc::new(Revoked::new()),
            live: Mutex::new(HashMap::new()),
        });
        let held: Held<T::Tag> = Arc::new(Mutex::new(HashMap::new()));
        let hostname = self.hostname.take().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into());
            format!("weft-{}@{host}", std::process::id())
        });
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let control = {
            let shared = shared.clone();
            let hostname = hostname.clone();
            let done = done_tx.clone();
            let transport = transport.clone();
            thread::Builder::new()
                .name("weft-celery-control".into())
                .spawn(move || {
                    transport.serve_control(
                        hostname,
                        &|ids, terminate| shared.revoke(ids, terminate, &done),
                        &|| shared.stop.load(Ordering::Acquire),
                        ready_tx,
                    )
                })?
        };
        // Remote control works once `start` returns (or after 5 s if the broker is slow).
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        let (parked_tx, parked_rx) = mpsc::channel::<T::Consumer>();
        let finisher = {
            let shared = shared.clone();
            let held = held.clone();
            thread::Builder::new()
                .name("weft-celery-ack".into())
                .spawn(move || finisher(settler, done_rx, held, shared, parked_rx))?
        };
        let consumer = {
            let shared = shared.clone();
            let pool = pool.clone();
            let cfg = Config {
                registry: self.registry,
                lanes: self.queues.into_iter().collect(),
                prefetch: self.prefetch,
                acks_late: self.acks_late,
            };
            thread::Builder::new()
                .name("weft-celery-consume".into())
                .spawn(move || consume(consumer, cfg, pool, shared, held, done_tx, parked_tx))?
        };
        Ok(RunningWorker {
            pool,
            shared,
            hostname,
            consumer: Some(consumer),
            finisher: Some(finisher),
            control: Some(control),
        })
    }
}

/// A started [`Worker`].
pub struct RunningWorker {
    pool: Pool,
    shared: Arc<Shared>,
    hostname: String,
    consumer: Option<thread::JoinHandle<()>>,
    finisher: Option<thread::JoinHandle<usize>>,
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
        if let Some(c) = self.consumer.take() {
            let _ = c.join();
        }
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        // Finishes due work; ETA timers are resolved as shut down without running.
        self.pool.shutdown();
        // Every sender of `Done` is gone: the finisher drains, puts back what is still
        // held, and ends.
        self.finisher.take().map_or(0, |f| f.join().unwrap_or(0))
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        if self.consumer.is_some() {
            self.stop();
        }
    }
}

/// The messages taken and not settled, by the worker's own key, with what acknowledges
/// each.
type Held<T> = Arc<Mutex<HashMap<u64, T>>>;

struct Shared {
    stop: AtomicBool,
    /// Messages taken and not finished, ETA tasks not counted.
    in_flight: Mutex<usize>,
    room: Condvar,
    /// Tasks waiting for their ETA (they hold a message but not a prefetch slot).
    eta_waiting: Arc<AtomicUsize>,
    /// Task ids revoked by remote control.
    revoked: Arc<Revoked>,
    /// The tasks handed to the pool and maybe not finished, by task id, for revoke and the
    /// hold limit (finished ones are pruned at each upkeep).
    live: Mutex<HashMap<String, Live>>,
}

/// A task handed to the pool.
struct Live {
    handle: crate::JoinHandle<()>,
    /// Set by the task as it starts (before it looks at the revoked set).
    started: Arc<AtomicBool>,
    key: Option<u64>,
    counted: bool,
    /// For a task waiting for its ETA on a broker with a hold limit: its message, to send
    /// again, and when it was taken.
    eta: Option<(TaskMessage, Instant)>,
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
            // `revoked` is set first: a task that starts after this load sees it and ends
            // `REVOKED` unrun, so cancelling a task that is just starting asks nothing of
            // user code. Without `terminate` a running task is left alone; `cancel`
            // returns true only for one that had not started, which is then never to
            // run: settled here.
            if (terminate || !task.started.load(Ordering::SeqCst)) && task.handle.cancel() {
                if !task.counted {
                    self.eta_waiting.fetch_sub(1, Ordering::Relaxed);
                }
                let _ = done.send(Done::End {
                    id: id.clone(),
                    key: task.key,
                    result: TaskResult::Revoked("revoked".into()),
                    counted: task.counted,
                    retry: None,
                });
                live.remove(id);
            }
        }
    }
}

struct Config {
    registry: Registry,
    lanes: HashMap<String, Priority>,
    prefetch: usize,
    acks_late: bool,
}

/// What the consumer and the tasks tell the finisher.
enum Done {
    /// Acknowledge now: the task is starting (acks early).
    Ack { key: u64 },
    /// A task's end (or a message settled without running: revoked, expired, unknown).
    End {
        id: String,
        /// The message, if it is still held (not acknowledged as the task started).
        key: Option<u64>,
        result: TaskResult,
        /// True if it counted against the prefetch limit.
        counted: bool,
        /// The message to send again instead of a final result (Celery's retry).
        retry: Option<TaskMessage>,
    },
    /// A message that is not a task.
    Refuse {
        queue: String,
        raw: Vec<u8>,
        reason: String,
        result: Option<(String, TaskResult)>,
        key: Option<u64>,
    },
    /// Send again and acknowledge (an ETA task held for the broker's hold limit).
    Republish { message: TaskMessage, key: u64 },
}

fn consume<C: Consume>(
    mut consumer: C,
    cfg: Config,
    pool: Pool,
    shared: Arc<Shared>,
    held: Held<C::Tag>,
    done: mpsc::Sender<Done>,
    parked: mpsc::Sender<C>,
) {
    let upkeep_every = consumer.upkeep_interval();
    let wait = upkeep_every.min(Duration::from_millis(250));
    let mut last_upkeep = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut next_key = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        let room = {
            let mut n = shared.in_flight.lock();
            while *n >= cfg.prefetch && !shared.stop.load(Ordering::Acquire) {
                // Woken for the upkeep even while full.
                if shared.room.wait_for(&mut n, wait).timed_out() {
                    break;
                }
            }
            cfg.prefetch.saturating_sub(*n)
        };
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if last_upkeep.elapsed() >= upkeep_every {
            last_upkeep = Instant::now();
            upkeep(&mut consumer, &held, &shared, &done);
        }
        if room == 0 {
            continue;
        }
        consumer.set_prefetch(cfg.prefetch + shared.eta_waiting.load(Ordering::Relaxed));
        let batch = match consumer.fetch(room, wait) {
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
        for incoming in batch {
            let key = incoming.tag.map(|tag| {
                next_key += 1;
                held.lock().insert(next_key, tag);
                next_key
            });
            take(
                &cfg,
                &pool,
                &shared,
                &done,
                incoming.queue,
                incoming.message,
                key,
            );
        }
    }
    // Kept open until the finisher has settled and put back what it holds (on AMQP,
    // closing the channel would hand every unacknowledged delivery back at once).
    let _ = parked.send(consumer);
}

/// The consumer's periodic care: the transport's (Redis heartbeat and sweep), pruning
/// finished tasks, and sending again ETA tasks held for the broker's hold limit.
fn upkeep<C: Consume>(
    consumer: &mut C,
    held: &Held<C::Tag>,
    shared: &Shared,
    done: &mpsc::Sender<Done>,
) {
    {
        let held = held.lock();
        let tags: Vec<&C::Tag> = held.values().collect();
        consumer.upkeep(&tags);
    }
    let mut live = shared.live.lock();
    live.retain(|_, t| !t.handle.is_finished());
    let Some(limit) = consumer.hold_limit() else {
        return;
    };
    let due: Vec<String> = live
        .iter()
        .filter(|(_, t)| t.eta.as_ref().is_some_and(|(_, at)| at.elapsed() >= limit))
        .map(|(id, _)| id.clone())
        .collect();
    for id in due {
        let Some(task) = live.remove(&id) else {
            continue;
        };
        // Only a task that has not started is sent again (`cancel` says so).
        if task.started.load(Ordering::SeqCst) || !task.handle.cancel() {
            live.insert(id, task);
            continue;
        }
        shared.eta_waiting.fetch_sub(1, Ordering::Relaxed);
        if let (Some(key), Some((mut message, _))) = (task.key, task.eta) {
            message.delivery_tag = uuid::Uuid::new_v4().to_string();
            let _ = done.send(Done::Republish { message, key });
        }
    }
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

/// Starts the task of one message taken (`key`: its entry in `held`).
fn take(
    cfg: &Config,
    pool: &Pool,
    shared: &Shared,
    done: &mpsc::Sender<Done>,
    queue: String,
    message: Result<TaskMessage, super::transport::Refused>,
    key: Option<u64>,
) {
    let lane = cfg.lanes.get(&queue).copied().unwrap_or_default();
    let msg = match message {
        Ok(m) => m,
        Err(refused) => {
            let result = refused.id.map(|id| (id, refusal_result(&refused.error)));
            let _ = done.send(Done::Refuse {
                queue,
                raw: refused.raw,
                reason: refused.error.to_string(),
                result,
                key,
            });
            return;
        }
    };
    let settle_now = |result: TaskResult, counted: bool| Done::End {
        id: msg.id.clone(),
        key,
        result,
        counted,
        retry: None,
    };
    if shared.revoked.contains(&msg.id) {
        let _ = done.send(settle_now(TaskResult::Revoked("revoked".into()), false));
        return;
    }
    let now = SystemTime::now();
    if let Some(exp) = msg.expires.as_deref().and_then(parse_iso8601) {
        if exp <= now {
            let _ = done.send(settle_now(TaskResult::Revoked("expired".into()), false));
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
        let _ = done.send(settle_now(TaskResult::not_registered(&msg.task), counted));
        return;
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
    let mut attempt = match attempt {
        Ok(a) => a,
        Err(e) => {
            let result = TaskResult::Failure {
                exc_type: "TypeError".into(),
                exc_module: "builtins".into(),
                exc_message: format!("{}: invalid arguments: {e}", msg.task),
                traceback: None,
            };
            let _ = done.send(settle_now(result, counted));
            return;
        }
    };
    let policy = entry.options.get_retry();
    let acks_late = entry.options.get_acks_late().unwrap_or(cfg.acks_late);
    // The shortest of the message's soft and hard limits and the registry's default.
    let time_limit = [msg.timelimit.1, msg.timelimit.0]
        .into_iter()
        .flatten()
        .filter(|s| *s > 0.0)
        .filter_map(|s| Duration::try_from_secs_f64(s).ok())
        .chain(entry.options.get_time_limit())
        .min();
    let id = msg.id.clone();
    let eta = delay.map(|_| (msg.clone(), Instant::now()));
    if !counted {
        shared.eta_waiting.fetch_add(1, Ordering::Relaxed);
    }
    let tx = done.clone();
    let revoked = shared.revoked.clone();
    let started = Arc::new(AtomicBool::new(false));
    let started_here = started.clone();
    let eta_waiting = Arc::clone(&shared.eta_waiting);
    let run = move || {
        started_here.store(true, Ordering::SeqCst);
        if !counted {
            eta_waiting.fetch_sub(1, Ordering::Relaxed);
        }
        let id = msg.id.clone();
        // Revoked meanwhile, or expired while it waited for its ETA: not run.
        let expired = msg
            .expires
            .as_deref()
            .and_then(parse_iso8601)
            .is_some_and(|exp| exp <= SystemTime::now());
        if expired || revoked.contains(&id) {
            let why = if expired { "expired" } else { "revoked" };
            let _ = tx.send(Done::End {
                id,
                key,
                result: TaskResult::Revoked(why.into()),
                counted,
                retry: None,
            });
            return;
        }
        // Acks early: acknowledged as it starts; the result comes later.
        let key = match key {
            Some(k) if !acks_late => {
                let _ = tx.send(Done::Ack { key: k });
                None
            }
            other => other,
        };
        let result = match catch_unwind(AssertUnwindSafe(&mut attempt)) {
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
            Err(p) => TaskResult::error(
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "task panicked".into()),
            ),
        };
        // Celery's retry: a failed run of a task whose registry options allow more
        // attempts is sent again with `retries + 1` and a new ETA.
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
        let _ = tx.send(Done::End {
            id,
            key,
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
    // The handle is kept for revoke; the task reports through `done`. A task the pool
    // never runs (shut down while waiting for its ETA) stays held and is put back.
    match task.try_spawn(run) {
        Ok(handle) => {
            shared.live.lock().insert(
                id,
                Live {
                    handle,
                    started,
                    key,
                    counted,
                    eta,
                },
            );
        }
        Err(_) => {
            if counted {
                *shared.in_flight.lock() -= 1;
            } else {
                shared.eta_waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

fn finisher<S: Settle>(
    mut settler: S,
    done: mpsc::Receiver<Done>,
    held: Held<S::Tag>,
    shared: Arc<Shared>,
    parked: mpsc::Receiver<impl Send>,
) -> usize {
    // Whatever finished meanwhile is settled in one batch (one round trip on Redis).
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
        let mut counted = 0;
        let settlements: Vec<Settlement<S::Tag>> = {
            let mut held = held.lock();
            let mut tag = |key: Option<u64>| key.and_then(|k| held.remove(&k));
            batch
                .drain(..)
                .filter_map(|d| match d {
                    Done::Ack { key } => tag(Some(key)).map(Settlement::Ack),
                    Done::End {
                        id,
                        key,
                        result,
                        counted: c,
                        retry,
                    } => {
                        counted += usize::from(c);
                        let tag = tag(key);
                        Some(match (retry, &result) {
                            (Some(next), TaskResult::Failure { exc_message, .. }) => {
                                Settlement::Retry {
                                    next,
                                    reason: exc_message.clone(),
                                    tag,
                                }
                            }
                            _ => Settlement::Result { id, result, tag },
                        })
                    }
                    Done::Refuse {
                        queue,
                        raw,
                        reason,
                        result,
                        key,
                    } => Some(Settlement::Refuse {
                        queue,
                        raw,
                        reason,
                        result,
                        tag: tag(key),
                    }),
                    Done::Republish { message, key } => {
                        tag(Some(key)).map(|tag| Settlement::Republish { message, tag })
                    }
                })
                .collect()
        };
        settler.settle(settlements);
        if counted > 0 {
            let mut n = shared.in_flight.lock();
            *n = n.saturating_sub(counted);
            shared.room.notify_one();
        }
    }
    // Shutdown: what is still held never ran.
    let left: Vec<S::Tag> = held.lock().drain().map(|(_, t)| t).collect();
    let restored = settler.requeue(left);
    drop(parked);
    restored
}
