//! [`Worker`]: consumes Celery queues (on Redis, or on RabbitMQ with the feature `amqp`)
//! and runs the named tasks of a [`Registry`] on a weft [`Pool`].

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use super::backend::DEFAULT_RESULT_EXPIRES;
use super::control::Revoked;
use super::protocol::{format_iso8601, parse_iso8601, ProtocolError, TaskMessage, TaskResult};
use super::redis::{self as redis_transport, RedisTransport};
use super::transport::{BrokerKind, Consume, Settle, Settlement, Transport};
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
///   acknowledged before they start, so a task may run twice either way: when its worker
///   died after the run and before the acknowledgement, or, on RabbitMQ, when the
///   connection dropped (the broker delivers again what the connection held; the worker
///   drops its own not-started copies then, but one already running finishes).
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
///   gets the channel closed (the worker reconnects; the broker delivers the channel's
///   messages again); so a task still waiting for its ETA after
///   [`amqp_hold_limit`](Self::amqp_hold_limit) (default 15 minutes) is sent again (the
///   same message, straight to the queue it came from, confirmed by the broker) and its old
///   delivery acknowledged: a far ETA goes around the queue every 15 minutes, and is never
///   lost. The same timeout applies to a late-acknowledged task that runs longer, or a
///   message queued in the pool that long: raise the broker's `consumer_timeout` for such
///   work. The prefetch bound is a channel-wide `basic.qos` (`global`), which RabbitMQ's
///   classic queues support and quorum queues do not.
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
/// * **Shutdown** ([`RunningWorker::shutdown`]), warm as Celery's: stops taking messages,
///   waits for the running tasks (as long as they run), and puts back on their queues the
///   messages of every task that had not started (queued in the pool, or waiting for an
///   ETA). Held messages keep their heartbeat meanwhile (Redis).
/// * **A dead or unreachable broker**: the consumer retries with a backoff (up to 5 s)
///   on a new connection, the finisher retries a failed write three times, and what it
///   could not settle is delivered again later (Redis: after the visibility timeout;
///   RabbitMQ: when the connection closes). Nothing is acknowledged before its result is
///   written, except a task acknowledged early as it starts.
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
            result_expires: DEFAULT_RESULT_EXPIRES,
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
        match BrokerKind::of(&self.url, self.backend.as_deref())? {
            BrokerKind::Redis => {
                let transport = RedisTransport {
                    client: redis::Client::open(self.url.as_str())?,
                    visibility_timeout: self.visibility_timeout,
                    restore_interval: self.restore_interval,
                    result_expires: self.result_expires,
                };
                self.run(transport)
            }
            #[cfg(feature = "amqp")]
            BrokerKind::Amqp { backend } => {
                let transport = super::amqp::AmqpTransport {
                    url: self.url.clone(),
                    backend: redis::Client::open(backend.as_str())?,
                    result_expires: self.result_expires,
                    max_priority: self.max_priority,
                    hold_limit: self.hold_limit,
                };
                self.run(transport)
            }
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
        let names: Vec<String> = self.queues.iter().map(|(q, _)| q.clone()).collect();
        let (consumer, settler) = transport.open(&hostname, &names, self.prefetch)?;
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

    /// A warm shutdown, as Celery's: stops taking messages, waits for the tasks that are
    /// running to finish (their results written and acknowledged; this blocks as long as
    /// they run), and puts back on their queues the messages of every task that had not
    /// started (queued in the pool, or waiting for an ETA). Returns how many were put back.
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
        // Tasks not started are taken back: their messages stay held, to be put back.
        for task in self.shared.live.lock().values() {
            task.withdraw();
        }
        // Waits for the running tasks; the withdrawn ones return at once if run.
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
    /// The tasks handed to the pool and maybe not finished, by the worker's sequence
    /// number of their message, for revoke, the hold limit, a lost broker connection and
    /// shutdown (finished ones are pruned at each upkeep).
    live: Mutex<HashMap<u64, Live>>,
}

/// [`Live::state`]: handed to the pool, not started.
const WAITING: u8 = 0;
/// [`Live::state`]: the task has started (it runs, or has run).
const STARTED: u8 = 1;
/// [`Live::state`]: taken back before it started; it will not run (if the pool runs it
/// anyway, it returns at once), and whoever took it back settles its message.
const WITHDRAWN: u8 = 2;

/// A task handed to the pool.
struct Live {
    id: String,
    handle: crate::JoinHandle<()>,
    /// [`WAITING`], then [`STARTED`] (by the task) or [`WITHDRAWN`] (by the worker): the
    /// one compare-and-swap that decides whether it runs.
    state: Arc<AtomicU8>,
    key: Option<u64>,
    counted: bool,
    /// For a task waiting for its ETA on a broker with a hold limit: its message (to be
    /// sent again to the queue it came from) and when it was taken.
    eta: Option<(TaskMessage, Instant)>,
    /// The consumer's connection generation it came on.
    generation: u64,
}

impl Live {
    /// Takes the task back if it has not started; true if it will never run.
    fn withdraw(&self) -> bool {
        let taken = self
            .state
            .compare_exchange(WAITING, WITHDRAWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if taken {
            // Out of the pool's queue or timer if it is still there.
            let _ = self.handle.cancel();
        }
        taken
    }
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
        let mut settled = Vec::new();
        for (seq, task) in live.iter().filter(|(_, t)| ids.contains(&t.id)) {
            if task.withdraw() {
                // Never to run: its message is settled here.
                if !task.counted {
                    self.eta_waiting.fetch_sub(1, Ordering::Relaxed);
                }
                let _ = done.send(Done::end(
                    task.id.clone(),
                    task.key,
                    TaskResult::Revoked("revoked".into()),
                    task.counted,
                ));
                settled.push(*seq);
            } else if terminate && task.state.load(Ordering::SeqCst) == STARTED {
                // Running: asked to stop (`checkpoint` says so from now on).
                let _ = task.handle.cancel();
            }
        }
        for seq in settled {
            live.remove(&seq);
        }
    }

    /// The broker connection was lost (generation `current` now): the not-started tasks of
    /// older connections are dropped without settling, as the broker delivers their
    /// messages again (running ones finish; their acknowledgements go nowhere).
    fn abandon_before<T>(&self, current: u64, held: &Held<T>) {
        let mut live = self.live.lock();
        let mut held = held.lock();
        let mut freed = 0;
        live.retain(|_, task| {
            if task.generation >= current || !task.withdraw() {
                return true;
            }
            if let Some(k) = task.key {
                held.remove(&k);
            }
            if task.counted {
                freed += 1;
            } else {
                self.eta_waiting.fetch_sub(1, Ordering::Relaxed);
            }
            false
        });
        if freed > 0 {
            let mut n = self.in_flight.lock();
            *n = n.saturating_sub(freed);
            self.room.notify_one();
        }
    }
}

struct Config {
    registry: Registry,
    lanes: HashMap<String, Priority>,
    prefetch: usize,
    acks_late: bool,
}

/// What the consumer and the tasks tell the finisher: a settlement of the message held
/// under a key of `held` (the finisher swaps the key for the message's tag).
struct Done {
    settle: Settlement<u64>,
    /// True if the message counted against the prefetch limit (a task's end frees it).
    counted: bool,
}

impl Done {
    /// A final result (a task's end, or a message settled without running: revoked,
    /// expired, unknown).
    fn end(id: String, key: Option<u64>, result: TaskResult, counted: bool) -> Done {
        Done {
            settle: Settlement::Result {
                id,
                result,
                tag: key,
            },
            counted,
        }
    }

    /// A settlement that frees no prefetch slot.
    fn uncounted(settle: Settlement<u64>) -> Done {
        Done {
            settle,
            counted: false,
        }
    }
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
    let mut seq = 0u64;
    let mut generation = consumer.generation();
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
    shared: &Shared,
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
}

/// Starts the task of one message taken.
fn take(
    cfg: &Config,
    pool: &Pool,
    shared: &Shared,
    done: &mpsc::Sender<Done>,
    taken: Taken,
    message: Result<TaskMessage, super::transport::Refused>,
) {
    let Taken {
        seq,
        key,
        generation,
        queue,
    } = taken;
    let lane = cfg.lanes.get(&queue).copied().unwrap_or_default();
    let mut msg = match message {
        Ok(m) => m,
        Err(refused) => {
            let result = refused.id.map(|id| (id, refusal_result(&refused.error)));
            let _ = done.send(Done::uncounted(Settlement::Refuse {
                queue,
                raw: refused.raw,
                reason: refused.error.to_string(),
                result,
                tag: key,
            }));
            return;
        }
    };
    // Retries and hold-limit copies go back to the queue it came from.
    if msg.routing_key.is_empty() {
        msg.routing_key = queue.clone();
    }
    let settle_now =
        |result: TaskResult, counted: bool| Done::end(msg.id.clone(), key, result, counted);
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
    let eta = delay.map(|_| {
        // A copy sent again goes straight to the queue it came from (not through its
        // exchange: a fanout would copy it to every queue again).
        let mut copy = msg.clone();
        copy.exchange = String::new();
        copy.routing_key = queue.clone();
        (copy, Instant::now())
    });
    if !counted {
        shared.eta_waiting.fetch_add(1, Ordering::Relaxed);
    }
    let tx = done.clone();
    let revoked = shared.revoked.clone();
    let state = Arc::new(AtomicU8::new(WAITING));
    let state_here = state.clone();
    let eta_waiting = Arc::clone(&shared.eta_waiting);
    let run = move || {
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
        // Revoked meanwhile, or expired while it waited for its ETA: not run.
        let expired = msg
            .expires
            .as_deref()
            .and_then(parse_iso8601)
            .is_some_and(|exp| exp <= SystemTime::now());
        if expired || revoked.contains(&id) {
            let why = if expired { "expired" } else { "revoked" };
            let _ = tx.send(Done::end(id, key, TaskResult::Revoked(why.into()), counted));
            return;
        }
        // Acks early: acknowledged as it starts; the result comes later.
        let key = match key {
            Some(k) if !acks_late => {
                let _ = tx.send(Done::uncounted(Settlement::Ack(k)));
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
        let next_try = msg.retries.saturating_add(1);
        let retry = match (&result, policy) {
            (TaskResult::Failure { .. }, Some(p)) if next_try < p.attempts() => {
                let mut next = msg;
                next.retries = next_try;
                next.eta = Some(format_iso8601(
                    SystemTime::now() + p.delay_before(next.retries),
                ));
                next.delivery_tag = uuid::Uuid::new_v4().to_string();
                Some(next)
            }
            _ => None,
        };
        let _ = tx.send(match retry {
            Some(next) => Done {
                settle: Settlement::Retry {
                    next,
                    failure: result,
                    tag: key,
                },
                counted,
            },
            None => Done::end(id, key, result, counted),
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
                seq,
                Live {
                    id,
                    handle,
                    state,
                    key,
                    counted,
                    eta,
                    generation,
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

fn finisher<C: Consume>(
    mut settler: impl Settle<Tag = C::Tag>,
    done: mpsc::Receiver<Done>,
    held: Held<C::Tag>,
    shared: Arc<Shared>,
    parked: mpsc::Receiver<C>,
) -> usize {
    // Whatever finished meanwhile is settled in one batch (one round trip on Redis).
    const MAX_BATCH: usize = 256;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Once the consumer has stopped (shutdown), its upkeep goes on here until the end.
    let mut stopped: Option<C> = None;
    let mut last_upkeep = Instant::now();
    loop {
        let interval = stopped
            .as_ref()
            .map_or(Duration::from_secs(1), C::upkeep_interval);
        match done.recv_timeout(interval) {
            Ok(first) => batch.push(first),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if stopped.is_none() {
            stopped = parked.try_recv().ok();
        }
        if let Some(c) = stopped.as_mut() {
            if last_upkeep.elapsed() >= c.upkeep_interval() {
                last_upkeep = Instant::now();
                let held = held.lock();
                let tags: Vec<&C::Tag> = held.values().collect();
                c.upkeep(&tags);
            }
        }
        if batch.is_empty() {
            continue;
        }
        while batch.len() < MAX_BATCH {
            match done.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let counted = batch.iter().filter(|d| d.counted).count();
        let settlements: Vec<Settlement<C::Tag>> = {
            let mut held = held.lock();
            batch
                .drain(..)
                .filter_map(|d| d.settle.with_tag(|key| held.remove(&key)))
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
    let left: Vec<C::Tag> = held.lock().drain().map(|(_, t)| t).collect();
    let restored = settler.requeue(left);
    drop(stopped.or_else(|| parked.try_recv().ok()));
    restored
}
