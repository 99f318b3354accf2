//! [`Worker`]: consumes Celery queues (on Redis, or on RabbitMQ with the feature `amqp`)
//! and runs the named tasks of a [`Registry`] on a weft [`Pool`].
//!
//! A running worker is three threads around a pool: the consumer (`intake.rs`: takes
//! messages, screens them and spawns their tasks, whose runs `run.rs` plans and builds;
//! `queues.rs`: the queues it consumes, added and cancelled at run time), the finisher
//! (`finisher.rs`: settles results and acknowledgements in batches) and remote control
//! (the transport's); what they share is in `live.rs`. This file holds the builder and `start`/`run`;
//! `running.rs` [`RunningWorker`]'s shutdown and its run until a signal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::backend::DEFAULT_RESULT_EXPIRES;
use super::control::Revoked;
use super::error::Error;
use super::events::{self, Clock, Events};
use super::redis::{self as redis_transport, RedisTransport};
use super::source::Source;
use super::transport::{BrokerKind, Transport};
use crate::registry::Registry;
use crate::{Pool, Priority};

mod builtins;
mod finisher;
mod intake;
mod limits;
mod live;
mod panel;
mod queues;
mod run;
mod running;
#[cfg(test)]
mod tests;

use finisher::finisher;
use intake::{consume, Config};
use live::{Done, Held, Monitor, WorkerShared};
use panel::WorkerPanel;
pub use running::{RunningWorker, Stopped};

/// A Celery worker made of weft: takes messages from Celery queues, runs each named task
/// of its [`Registry`] on its own [`Pool`], writes the result where Celery's Redis result
/// backend keeps it, and acknowledges the message.
///
/// The broker is chosen by the URL given to [`Worker::new`]: `redis://` (kombu's Redis
/// transport; the same Redis is the result backend), `sentinel://` (the same behind Redis
/// Sentinel, see [`sentinel_master`](Self::sentinel_master)) or, with the feature `amqp`,
/// `amqp://` (RabbitMQ; results go to the Redis named by [`backend`](Self::backend), which
/// may be a `sentinel://` one). Everything below holds for both, unless it names one.
///
/// * **Queues and lanes.** Each queue is bound to a weft lane ([`Priority`]): a worker
///   consuming `high` → High, `celery` → Normal, `bulk` → Low runs urgent work first, and
///   takes from the higher lanes' queues first. Within a queue the message priority orders
///   delivery: on Redis 0 is served first (kombu's sub-lists 0, 3, 6, 9); on RabbitMQ a
///   higher priority first, and only on a queue declared with `x-max-priority`
///   ([`max_priority`](Self::max_priority)).
/// * **Arguments.** See
///   [`TaskMessage::registry_args`](super::TaskMessage::registry_args): `add(2, 3)`
///   reaches a task registered as `|(x, y): (i64, i64)|`; a call without arguments also
///   fits `|(): ()|`.
/// * **Outcomes.** `Ok(v)` is `SUCCESS` with `v`; an `Err(e)` or a panic is `FAILURE`,
///   raised in Python as `RuntimeError(message)`; an unknown task name is `FAILURE` with
///   Celery's `NotRegistered`; arguments that do not fit the task are `FAILURE` too.
/// * **Acknowledgement.** As in Celery, a message is acknowledged as its task starts,
///   unless the task's [`TaskOptions::acks_late`](crate::registry::TaskOptions::acks_late)
///   (or the worker's [`acks_late`](Self::acks_late)) says after it finished and its
///   result was written. With late acks a worker that dies loses nothing: its messages are
///   delivered again (at-least-once); with early acks the tasks it was running are lost.
///   Messages not yet started (queued in the pool, waiting for an ETA) are never
///   acknowledged before they start, so a task may run twice either way when its worker
///   died after the run and before the acknowledgement. A live worker runs no task twice:
///   on RabbitMQ, when a connection dropped and the broker delivers again what it held,
///   the worker drops its own not-started copies and acknowledges, without running, the
///   copies of tasks it had started (it remembers its last 65,536 starts).
/// * **Bad messages** (not JSON, a content type other than JSON, bad base64, missing
///   headers) never run and never stop the worker: each goes to the dead-letter place (the
///   Redis list `weft.dead_letter`; on RabbitMQ the exchange and queue `weft.dead_letter`)
///   with its reason, and a `FAILURE` is written when its id is known.
/// * **ETA / countdown**: the task waits in weft's timing wheel and does not count against
///   the prefetch limit. On RabbitMQ the prefetch is always a per-consumer `basic.qos`
///   (`global` false, as Celery 5.5+ sets it), one consumer per queue. With classic queues
///   it is raised by one per waiting ETA task, as Celery raises its prefetch (a
///   per-consumer `basic.qos` reaches only consumers started after it, so the consumers
///   are started again under the new bound). With quorum queues
///   (`queue_type`, feature `amqp`) ETA tasks wait in the broker (native delayed
///   delivery, to the whole second; the worker holds a task that last second until its
///   `eta`) and the prefetch is static, as Celery's.
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
///   work. With quorum queues such a copy goes through native delayed delivery, so it
///   waits in the broker for the rest of its delay.
/// * **Retries** (Celery's semantics): a failed run of a task registered with a
///   [`RetryPolicy`](crate::RetryPolicy) that allows more attempts than the message's
///   `retries + 1` is sent again (same id, `retries + 1`, an ETA after the policy's delay,
///   itself as `parent_id`, as Celery's `self.retry()`),
///   with `RETRY` recorded; Python's `AsyncResult.get()` keeps waiting for the final state.
/// * **Time limits**: the shortest of the message's `timelimit` (soft, hard) and the
///   registry's [`TaskOptions::time_limit`](crate::registry::TaskOptions::time_limit) is
///   the run's weft time limit: [`checkpoint`](crate::checkpoint) tells the task to stop,
///   and a run that ends past it is `FAILURE` with Celery's `TimeLimitExceeded`.
/// * **Remote control** ([`control`](super::control)): `celery inspect`, `celery
///   control`, `app.control.*` and Flower reach the worker, which answers only requests
///   addressed to it (no destination, or its [`hostname`](Self::hostname)), in Celery's
///   reply shapes: `ping`, `stats` (`total`: tasks started per name; `pool`'s
///   `max-concurrency`: the pool's threads; `broker`, `prefetch_count`, `pid`, `clock`,
///   `uptime`, `rusage`), `active`, `reserved` (taken, waiting for a thread or their rate
///   limit), `scheduled` (waiting for their ETA), `registered` (`add [rate_limit=10/s]`),
///   `revoked`, `active_queues`, `conf`, `query_task`, `report`, `clock`, `hello` (Celery's
///   mingle: the revoked ids are exchanged with a starting worker). It honours
///   `revoke(id)` for tasks not yet started (queued, or waiting for their ETA: they end
///   `REVOKED` at once, without running, and a message of that id taken later is not run
///   either); `revoke(id, terminate=True)` also asks a running task to stop
///   ([`checkpoint`](crate::checkpoint) returns `Err` in it; weft cannot kill a thread, so
///   a task that never checks runs to its end) and it ends `REVOKED`. `rate_limit`
///   (Celery's per-worker token bucket of capacity 1: `"5/s"` spaces a task's starts
///   200 ms apart; `""` or `"0"` removes it; the registry's
///   [`TaskOptions::rate_limit`](crate::registry::TaskOptions::rate_limit) sets one from
///   the start), `time_limit` (the task's limit becomes the shorter of `soft` and `hard`),
///   `enable_events` / `disable_events`, `heartbeat`, `add_consumer` / `cancel_consumer`
///   and `shutdown` (a warm shutdown: the worker stops taking messages,
///   [`RunningWorker::wait_for_signal`] and so [`run`](Self::run) return, and
///   `worker-offline` is sent). `pool_grow`, `pool_shrink`, `autoscale`, `pool_restart`
///   (weft's pool has a fixed number of threads), Python's debugging commands, unknown
///   commands, and requests with missing or wrong arguments get `{"error": ...}`, as
///   Celery answers them, and the worker carries on.
/// * **Events** (Celery's, [`task_events`](Self::task_events)): `worker-online`,
///   `worker-heartbeat` every 2 s and `worker-offline` always; task events
///   (`task-received`, `-started`, `-succeeded`, `-failed`, `-retried`, `-revoked`,
///   `-rejected`) once enabled. On Redis they are published on kombu's fanout channels
///   `/<db>.celeryev/<routing key>`, on RabbitMQ on the topic exchange `celeryev`, as
///   Celery's prefork workers send them (task events as `task.multi` lists); `celery
///   events` and Flower show them. Sending never holds a task up: events wait in a
///   bounded outbox (8,192; the oldest dropped past it) for one publishing thread, and
///   are dropped while the broker cannot be reached.
/// * **Shutdown** ([`RunningWorker::shutdown`]), warm as Celery's: stops taking messages,
///   waits for the running tasks (as long as they run, or until
///   [`shutdown_timeout`](Self::shutdown_timeout)), and puts back on their queues the
///   messages of every task that had not started (queued in the pool, or waiting for an
///   ETA), retried until the broker answers. Held messages keep their heartbeat meanwhile
///   (Redis).
/// * **A dead, restarted, stalled or unreachable broker** (or, on RabbitMQ, Redis result
///   backend), while the worker lives: nothing is lost, left held or run twice. The
///   consumer retries on a new connection every quarter second at most. A batch of results
///   and acknowledgements that cannot be written is kept and handed again, oldest first,
///   until it is written (memory stays bounded: prefetch room is freed only by written
///   results), and written once even if a failed try took effect (Redis: a marker in the
///   same `MULTI`, read after fencing the old connection off with `CLIENT KILL ID`). A
///   take whose answer was lost is put back (Redis: the consumer's take record). A
///   connection whose command failed or timed out ([`command_timeout`](Self::command_timeout))
///   is never used again. On RabbitMQ, copies the broker delivers again of tasks this
///   worker started are acknowledged without running.
/// * **Redis Sentinel** (`sentinel://`): every connection (consumer, finisher, wake-up
///   tracker, remote control) asks the sentinels for the current master when it connects
///   and reconnects, skips a master the sentinels flag down and uses only a Redis whose
///   `ROLE` is `master`; so after a failover the worker reconnects to the promoted replica
///   without a restart, re-subscribes remote control and its wake-ups, and runs every task
///   sent after the failover. What the old master had not yet replicated when it died
///   (Redis replication is asynchronous) is lost with it: messages, results,
///   acknowledgements (a message taken again after the failover runs again).
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
    #[cfg(feature = "amqp")]
    queue_type: super::amqp::QueueType,
    hold_limit: Duration,
    shutdown_timeout: Option<Duration>,
    command_timeout: Duration,
    sentinel_master: Option<String>,
    task_events: bool,
    /// The Redis of the shared rate limits (the broker's, or the result backend's), set
    /// by `start`.
    limiter: Option<Source>,
}

impl Worker {
    /// A worker for the broker at `url` (`redis://host:port/db`,
    /// `sentinel://host:port;sentinel://host:port/db` with
    /// [`sentinel_master`](Self::sentinel_master), or with the feature `amqp`
    /// `amqp://user:password@host:port/vhost`), running `registry`'s tasks,
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
            #[cfg(feature = "amqp")]
            queue_type: super::amqp::QueueType::Classic,
            hold_limit: Duration::from_secs(15 * 60),
            shutdown_timeout: None,
            command_timeout: redis_transport::COMMAND_TIMEOUT,
            sentinel_master: None,
            task_events: false,
            limiter: None,
        }
    }

    /// The master's name under Redis Sentinel (Celery's transport option `master_name`, in
    /// `broker_transport_options` and `result_backend_transport_options`): required when
    /// the broker or the result backend is a `sentinel://` URL (kombu's: sentinels
    /// separated by `;`, each `sentinel://[user:password@]host[:port][/db]`, port 26379 by
    /// default, the database and password those of the first one, for the master); ignored
    /// otherwise.
    ///
    /// ```no_run
    /// use weft::celery::Worker;
    /// use weft::registry::Registry;
    ///
    /// let registry = Registry::new().task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y));
    /// let worker = Worker::new("sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0", registry)
    ///     .sentinel_master("mymaster")
    ///     .start()
    ///     .unwrap();
    /// worker.shutdown();
    /// ```
    pub fn sentinel_master(mut self, name: impl Into<String>) -> Self {
        self.sentinel_master = Some(name.into());
        self
    }

    /// The Redis result backend (`redis://...`, or `sentinel://...` with
    /// [`sentinel_master`](Self::sentinel_master)), for an AMQP broker (which cannot keep
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

    /// At most this many messages unacknowledged at once, ETA tasks not counted (default: 4
    /// per pool worker, Celery's `worker_prefetch_multiplier`). As in Celery, a message
    /// acknowledged early frees its slot as its task starts; a late-acknowledged one holds
    /// it until its result is written. Messages taken whose results are not yet written are
    /// bounded too, at twice this many.
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

    /// RabbitMQ: the type of the consumed queues (default
    /// [`Classic`](super::amqp::QueueType::Classic), Celery's default). With
    /// [`Quorum`](super::amqp::QueueType::Quorum) the worker declares what a Celery 5.5+
    /// worker declares with `task_default_queue_type="quorum"` and
    /// `task_default_exchange_type="topic"`: each queue a quorum queue bound to a topic
    /// exchange of its name, and native delayed delivery (see
    /// [`amqp`](super::amqp)'s module doc), so that a Python worker or client and this
    /// one may start in either order. Countdown and ETA tasks then wait in the broker;
    /// the prefetch is static (no channel-wide QoS on quorum queues). Every declaration of
    /// a queue must agree: a queue that exists as the other type makes RabbitMQ refuse the
    /// worker (`PRECONDITION_FAILED`). Quorum queues take no
    /// [`max_priority`](Self::max_priority). Ignored on Redis.
    #[cfg(feature = "amqp")]
    pub fn queue_type(mut self, t: super::amqp::QueueType) -> Self {
        self.queue_type = t;
        self
    }

    /// RabbitMQ: how long a delivery of a task waiting for its ETA is held before it is
    /// sent again and acknowledged (default 15 minutes; keep it under the broker's
    /// `consumer_timeout`, 30 minutes by default). Ignored on Redis.
    pub fn amqp_hold_limit(mut self, d: Duration) -> Self {
        self.hold_limit = d;
        self
    }

    /// The longest a shutdown (warm: [`RunningWorker::shutdown`], the first signal of
    /// [`run`](Self::run), or dropping the [`RunningWorker`]) waits, for running tasks and
    /// for an unreachable broker together. When it passes, the worker stops waiting: the
    /// messages it still holds are put back on their queues (those of tasks still running
    /// too, if they are acknowledged late, as Celery's cold shutdown puts them back: they
    /// may run again elsewhere, so let the process exit), results not written by then are
    /// not written, and the shutdown returns. Default: none (wait as long as the tasks run
    /// and until the broker answers, as Celery's warm shutdown does).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = Some(d);
        self
    }

    /// How long one Redis command (broker or result backend) may wait for an answer
    /// before the worker gives up on its connection and tries again on a new one
    /// (default 30 s). A command given up on leaves nothing held: what it took is found
    /// and put back, what it wrote is written once.
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }

    /// Sends task events from the start (Celery's `worker_send_task_events`, `celery
    /// worker -E`); default off, as Celery's: they are turned on and off at run time by
    /// the `enable_events` and `disable_events` broadcasts (Flower sends `enable_events`
    /// every few seconds). Worker events (`worker-online`, `worker-heartbeat` every 2 s,
    /// `worker-offline`) are always sent. See [`Worker`]'s monitoring notes.
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = on;
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
                let source = Source::open(&self.url, self.sentinel_master.as_deref())?
                    .command_timeout(self.command_timeout);
                self.limiter = Some(source.clone());
                let transport = RedisTransport {
                    source,
                    visibility_timeout: self.visibility_timeout,
                    restore_interval: self.restore_interval,
                    result_expires: self.result_expires,
                };
                self.start_on(transport)
            }
            #[cfg(feature = "amqp")]
            BrokerKind::Amqp { backend } => {
                let backend = Source::open(&backend, self.sentinel_master.as_deref())?
                    .command_timeout(self.command_timeout);
                self.limiter = Some(backend.clone());
                let transport = super::amqp::AmqpTransport {
                    url: self.url.clone(),
                    backend,
                    result_expires: self.result_expires,
                    max_priority: self.max_priority,
                    queue_type: self.queue_type,
                    hold_limit: self.hold_limit,
                };
                self.start_on(transport)
            }
        }
    }

    fn start_on<T: Transport>(mut self, transport: T) -> Result<RunningWorker, Error> {
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
        let hostname = self.hostname.take().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into());
            format!("weft-{}@{host}", std::process::id())
        });
        let conf = self.conf(pool.num_workers());
        let report = self.report();
        let (registry, message_builtins) = builtins::with_builtins(self.registry);
        let clock = Arc::new(Clock::default());
        let events = Arc::new(Events::new(&hostname, self.task_events, clock.clone()));
        let shared = Arc::new(WorkerShared {
            stop: AtomicBool::new(false),
            in_flight: Mutex::new(live::InFlight::default()),
            room: Condvar::new(),
            eta_waiting: Arc::new(AtomicUsize::new(0)),
            revoked: Arc::new(Revoked::new()),
            live: Mutex::new(HashMap::new()),
            deadline: Mutex::new(None),
            started: Arc::new(Mutex::new(live::Started::default())),
            hostname: hostname.clone(),
            queues: Mutex::new(self.queues.clone()),
            monitor: Monitor::new(events.clone(), clock, registry.names()),
            limits: limits::RateLimits::new(&registry),
            shared_limits: limits::SharedLimits::new(&registry, self.limiter.take()),
            queue_changes: Mutex::new(live::QueueChanges::default()),
            queues_asked: AtomicBool::new(false),
        });
        let held: Held<T::Tag> = Arc::new(Mutex::new(HashMap::new()));
        let names: Vec<String> = self.queues.iter().map(|(q, _)| q.clone()).collect();
        let (consumer, settler) = transport.open(&hostname, &names, self.prefetch)?;
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let events_thread = {
            let shared = shared.clone();
            let mut sink = transport.events(&hostname);
            thread::Builder::new()
                .name("weft-celery-events".into())
                .spawn(move || {
                    let m = &shared.monitor;
                    let load = || events::Load {
                        active: m.active.load(Ordering::Relaxed),
                        processed: m.processed.load(Ordering::Relaxed),
                    };
                    events::send_loop(&m.events, &mut sink, &load, events::HEARTBEAT)
                })?
        };
        let control = {
            let mut tasks: Vec<String> = registry.names().map(str::to_owned).collect();
            tasks.sort();
            let panel = WorkerPanel {
                shared: shared.clone(),
                done: done_tx.clone(),
                tasks,
                concurrency: pool.num_workers(),
                prefetch: self.prefetch,
                broker: panel::broker_info(&self.url),
                conf,
                report,
            };
            let hostname = hostname.clone();
            let transport = transport.clone();
            thread::Builder::new()
                .name("weft-celery-control".into())
                .spawn(move || {
                    transport.serve_control(
                        hostname,
                        &panel,
                        &|| panel.shared.stop.load(Ordering::Acquire),
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
                registry,
                message_builtins,
                lanes: self.queues.into_iter().collect(),
                prefetch: self.prefetch,
                acks_late: self.acks_late,
                track_starts: false,
            };
            thread::Builder::new()
                .name("weft-celery-consume".into())
                .spawn(move || consume(consumer, cfg, pool, shared, held, done_tx, parked_tx))?
        };
        Ok(RunningWorker {
            pool: Some(pool),
            shared,
            shutdown_timeout: self.shutdown_timeout,
            hostname,
            consumer: Some(consumer),
            finisher: Some(finisher),
            control: Some(control),
            events: Some(events_thread),
        })
    }
}

impl Worker {
    /// The settings `inspect conf` shows, under Celery's names.
    fn conf(&self, concurrency: usize) -> serde_json::Value {
        let backend = self.backend.as_deref().unwrap_or(&self.url);
        let mut transport_options = serde_json::json!({
            "visibility_timeout": self.visibility_timeout.as_secs_f64(),
        });
        if let Some(m) = &self.sentinel_master {
            transport_options["master_name"] = serde_json::json!(m);
        }
        serde_json::json!({
            "broker_url": panel::sanitize_url(&self.url),
            "result_backend": panel::sanitize_url(backend),
            "worker_concurrency": concurrency,
            "worker_prefetch_multiplier": self.prefetch.div_ceil(concurrency.max(1)),
            "task_acks_late": self.acks_late,
            "result_expires": self.result_expires.as_secs_f64(),
            "broker_transport_options": transport_options,
            "worker_send_task_events": self.task_events,
            "task_queues": self.queues.iter().map(|(q, _)| q.as_str()).collect::<Vec<_>>(),
        })
    }

    /// `inspect report`'s text, in the layout of Celery's `bugreport`.
    fn report(&self) -> String {
        let backend = self.backend.as_deref().unwrap_or(&self.url);
        let transport = self.url.split_once("://").map_or("redis", |(s, _)| s);
        format!(
            "software -> weft:{} (Rust)\nplatform -> system:{} arch:{}\nsettings -> \
             transport:{transport} results:{}\n",
            env!("CARGO_PKG_VERSION"),
            events::software_info()[2].1,
            std::env::consts::ARCH,
            panel::sanitize_url(backend),
        )
    }

    /// Starts the worker and runs it until SIGINT or SIGTERM
    /// ([`RunningWorker::wait_for_signal`]): a deployable worker binary is
    /// `fn main() { Worker::new(url, registry).run().unwrap(); }`.
    pub fn run(self) -> Result<Stopped, Error> {
        self.start()?.wait_for_signal()
    }
}
