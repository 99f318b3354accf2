//! What the worker's threads share about the messages it holds: [`WorkerShared`] (stop flag,
//! prefetch room, ETA count, revoked ids, the [`Live`] tasks, the queues consumed and the
//! changes to them asked by remote control), [`Held`] (the messages taken and not settled,
//! with what acknowledges each) and [`Done`] (what the consumer and the tasks tell the
//! finisher).
//!
//! A task handed to the pool is [`WAITING`] until one compare-and-swap decides it: the task
//! moves it to [`STARTED`] as it runs, or the worker to [`WITHDRAWN`] (revoke, the hold
//! limit, a lost connection, shutdown) and then settles its message itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::{json, Value};

use super::super::canvas::after::{after, Sent};
use super::super::control::Revoked;
use super::super::events::{Clock, Events};
use super::super::protocol::TaskMessage;
use super::super::result::TaskResult;
use super::super::transport::Settlement;
use super::limits::{RateLimits, SharedLimits};
use crate::Priority;

/// The messages taken and not settled, by the worker's own key, with what acknowledges
/// each.
pub(super) type Held<T> = Arc<Mutex<HashMap<u64, T>>>;

pub(super) struct WorkerShared {
    pub(super) stop: AtomicBool,
    /// The prefetch count: messages taken and not settled, ETA tasks not counted.
    pub(super) in_flight: Mutex<InFlight>,
    /// Signalled when [`InFlight::room`] may have grown (and at shutdown).
    pub(super) room: Condvar,
    /// Tasks waiting for their ETA (they hold a message but not a prefetch slot).
    pub(super) eta_waiting: Arc<AtomicUsize>,
    /// Task ids revoked by remote control.
    pub(super) revoked: Arc<Revoked>,
    /// The tasks handed to the pool and maybe not finished, by the worker's sequence
    /// number of their message, for revoke, the hold limit, a lost broker connection and
    /// shutdown (finished ones are pruned at each upkeep).
    pub(super) live: Mutex<HashMap<u64, Live>>,
    /// The tasks this worker started, where the broker may deliver their messages again
    /// (AMQP): see [`Started`].
    pub(super) started: Arc<Mutex<Started>>,
    /// Set by a shutdown with a timeout: when it passes, the finisher stops waiting for
    /// running tasks and for an unreachable broker, puts back what it still holds, and ends.
    pub(super) deadline: Mutex<Option<Instant>>,
    /// The worker's node name, as remote control and events show it.
    pub(super) hostname: String,
    /// The queues consumed now, highest lane first, with the lane of each; written only by
    /// the consumer thread, as it applies a [`QueueChange`] (`queues.rs`).
    pub(super) queues: Mutex<Vec<(String, Priority)>>,
    /// The changes to the queues asked ([`change_queues`](Self::change_queues)) and not
    /// yet applied, oldest first.
    pub(super) queue_changes: Mutex<QueueChanges>,
    /// Set by [`change_queues`](Self::change_queues), cleared by the consumer thread as it
    /// looks at `queue_changes`: ends its wait for prefetch room.
    pub(super) queues_asked: AtomicBool,
    /// What monitoring sees: events, the clock, counters, per-task overrides.
    pub(super) monitor: Monitor,
    /// The tasks' rate limits (the registry's, then the `rate_limit` command's).
    pub(super) limits: RateLimits,
    /// The rate limits shared by every worker on the same Redis (the registry's).
    pub(super) shared_limits: SharedLimits,
}

/// What monitoring (events and remote control) shares with the worker's threads.
pub(super) struct Monitor {
    /// The worker's events ([`events`](crate::celery::events)).
    pub(super) events: Arc<Events>,
    /// The worker's Lamport clock (events and control replies).
    pub(super) clock: Arc<Clock>,
    /// Tasks started, by name, since the worker started (`stats`' `total`).
    /// One counter per task the worker runs, made at its start (no lock per task).
    totals: HashMap<String, AtomicU64>,
    /// Tasks started since the worker started (the heartbeat's `processed`).
    pub(super) processed: AtomicU64,
    /// Tasks running now (the heartbeat's `active`).
    pub(super) active: AtomicUsize,
    /// Time limits set by the `time_limit` command, by task name (`None`: no limit),
    /// replacing the registry's.
    time_limits: Mutex<HashMap<String, Option<Duration>>>,
    /// Whether `time_limits` holds any entry (so that a worker without them takes no
    /// lock per task).
    time_limits_set: AtomicBool,
    /// The `shutdown` command's request ([`Halt`]).
    pub(super) halt: Mutex<Halt>,
    /// Signalled when [`halt`](Self::halt) changes.
    pub(super) halted: Condvar,
    /// When the worker started.
    pub(super) started_at: Instant,
}

/// Whether remote control asked the worker to shut down.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Halt {
    /// Running.
    Running,
    /// `shutdown` came: the consumer stopped; whoever waits for the worker
    /// ([`RunningWorker::wait_for_signal`](super::RunningWorker::wait_for_signal)) shuts it
    /// down.
    Asked,
    /// The worker has stopped: nobody waits any more.
    Over,
}

impl Monitor {
    /// The monitor of a worker running the tasks `names`.
    pub(super) fn new<'a>(
        events: Arc<Events>,
        clock: Arc<Clock>,
        names: impl Iterator<Item = &'a str>,
    ) -> Monitor {
        Monitor {
            events,
            clock,
            totals: names.map(|n| (n.to_owned(), AtomicU64::new(0))).collect(),
            processed: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            time_limits: Mutex::new(HashMap::new()),
            time_limits_set: AtomicBool::new(false),
            halt: Mutex::new(Halt::Running),
            halted: Condvar::new(),
            started_at: Instant::now(),
        }
    }

    /// A task of `name` starts.
    pub(super) fn started(&self, name: &str) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        // Only registered tasks start.
        if let Some(n) = self.totals.get(name) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tasks started by name, those that did (`stats`' `total`).
    pub(super) fn totals(&self) -> impl Iterator<Item = (&str, u64)> {
        self.totals
            .iter()
            .map(|(k, n)| (k.as_str(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
    }

    /// The time limit the `time_limit` command set for `name`, if it set one (`Some(None)`:
    /// no limit).
    pub(super) fn time_limit(&self, name: &str) -> Option<Option<Duration>> {
        if !self.time_limits_set.load(Ordering::Acquire) {
            return None;
        }
        self.time_limits.lock().get(name).copied()
    }

    /// The `time_limit` command: `name`'s limit is `limit` from now on.
    pub(super) fn set_time_limit(&self, name: &str, limit: Option<Duration>) {
        self.time_limits.lock().insert(name.to_owned(), limit);
        self.time_limits_set.store(true, Ordering::Release);
    }

    /// A task that started has ended.
    pub(super) fn ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Moves [`halt`](Self::halt) to `to` unless it is [`Halt::Over`]; whether it moved.
    pub(super) fn set_halt(&self, to: Halt) -> bool {
        let mut h = self.halt.lock();
        if *h == Halt::Over {
            return false;
        }
        *h = to;
        self.halted.notify_all();
        true
    }
}

/// What remote control shows of a task the worker holds (Celery's `Request.info()`);
/// its id is its [`Live`]'s. Kept cheap to make: the JSON is built only when asked.
pub(super) struct TaskInfo {
    pub(super) name: String,
    pub(super) args: Value,
    pub(super) kwargs: Value,
    /// Where it came from: the exchange and queue, its priority, whether delivered again.
    exchange: String,
    queue: String,
    pub(super) priority: u8,
    redelivered: bool,
    /// Its ETA as the message gave it.
    pub(super) eta: Option<String>,
    /// When it started, as seconds since the epoch (`f64` bits); 0 before.
    time_start: AtomicU64,
    /// Its message has been acknowledged.
    acknowledged: AtomicBool,
}

impl TaskInfo {
    pub(super) fn new(msg: &TaskMessage, queue: &str, redelivered: bool) -> TaskInfo {
        TaskInfo {
            name: msg.task.clone(),
            args: Value::Array(msg.args.clone()),
            kwargs: Value::Object(msg.kwargs.clone()),
            exchange: msg.exchange.clone(),
            queue: queue.to_owned(),
            priority: msg.priority,
            redelivered,
            eta: msg.eta.clone(),
            time_start: AtomicU64::new(0),
            acknowledged: AtomicBool::new(false),
        }
    }

    /// It starts now.
    pub(super) fn start(&self) {
        self.time_start
            .store(crate::celery::events::now().to_bits(), Ordering::Relaxed);
    }

    /// Its message was acknowledged.
    pub(super) fn acknowledge(&self) {
        self.acknowledged.store(true, Ordering::Relaxed);
    }

    /// Celery's `Request.info()`: `{"id", "name", "args", "kwargs", "type", "hostname",
    /// "time_start", "acknowledged", "delivery_info", "worker_pid"}` (`time_start` and
    /// `worker_pid` null until it starts).
    pub(super) fn info(&self, id: &str, hostname: &str) -> Value {
        let start = self.time_start.load(Ordering::Relaxed);
        let started = start != 0;
        json!({
            "id": id,
            "name": self.name,
            "args": self.args,
            "kwargs": self.kwargs,
            "type": self.name,
            "hostname": hostname,
            "time_start": started.then(|| f64::from_bits(start)),
            "acknowledged": self.acknowledged.load(Ordering::Relaxed),
            "delivery_info": {
                "exchange": self.exchange,
                "routing_key": self.queue,
                "priority": self.priority,
                "redelivered": self.redelivered,
            },
            "worker_pid": started.then(std::process::id),
        })
    }
}

/// A change to the queues a worker consumes, asked by remote control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum QueueChange {
    /// Consume this queue too (Celery's `add_consumer`), in the Normal lane.
    Add(String),
    /// Stop consuming this queue (Celery's `cancel_consumer`).
    Cancel(String),
}

/// [`WorkerShared::queue_changes`].
#[derive(Default, Debug)]
pub(super) struct QueueChanges {
    /// Not yet applied, oldest first: one the broker refused stays first, tried again at
    /// the consumer's next turn.
    pub(super) pending: Vec<QueueChange>,
    /// The last error of the first one, logged once.
    pub(super) error: Option<String>,
}

/// The prefetch count ([`WorkerShared::in_flight`]), as Celery's: its prefetch limit counts
/// *unacknowledged* messages, so the slot of a message acknowledged early is free as its
/// task starts (running tasks are bounded by the pool's threads), while a late-acknowledged
/// one holds its slot until its result is written.
///
/// Invariants, under the lock:
/// 1. `started ≤ taken`: a task frees its slot at start ([`WorkerShared::start_early`]) only
///    once, and only if it counted; its result's [`Done`] says so (`started`), and the
///    finisher takes it off both counts once that result is written, never before.
/// 2. The consumer takes a message only while [`room`](Self::room) is not 0, so
///    `taken − started ≤ prefetch` (Celery's bound) and `taken ≤`
///    [`TAKEN_PER_PREFETCH`] `× prefetch`: the results waiting to be written (a batch the
///    finisher cannot write is kept, see `finisher.rs`) stay bounded while the result
///    backend is unreachable.
#[derive(Default, Debug)]
pub(super) struct InFlight {
    /// Messages taken whose results (or settlements) are not yet written.
    pub(super) taken: usize,
    /// Of those, the ones acknowledged early as their task started.
    pub(super) started: usize,
}

/// The most messages taken and not yet written, per prefetch slot (invariant 2 of
/// [`InFlight`]).
pub(super) const TAKEN_PER_PREFETCH: usize = 2;

impl InFlight {
    /// How many more messages may be taken under `prefetch` (invariant 2).
    pub(super) fn room(&self, prefetch: usize) -> usize {
        let unacked = self.taken.saturating_sub(self.started);
        prefetch
            .saturating_sub(unacked)
            .min((TAKEN_PER_PREFETCH * prefetch).saturating_sub(self.taken))
    }

    /// `counted` taken messages were written, `started` of them freed at their start.
    pub(super) fn written(&mut self, counted: usize, started: usize) {
        debug_assert!(started <= counted && counted <= self.taken && started <= self.started);
        self.taken = self.taken.saturating_sub(counted);
        self.started = self.started.saturating_sub(started);
    }
}

/// The tasks (id and retry number) this worker started, remembered where the broker
/// delivers a message again to a live worker (AMQP, after its connection closed: an
/// acknowledgement sent on it may have been lost). A copy of a task that started here is
/// not run again: it is acknowledged once the first run's result is written. The last
/// [`Started::CAPACITY`] starts are remembered.
#[derive(Default)]
pub(super) struct Started {
    runs: HashMap<(String, u32), Run>,
    order: std::collections::VecDeque<(String, u32)>,
}

/// A task in [`Started`].
enum Run {
    /// Running; the keys of copies delivered meanwhile, acknowledged when it ends.
    Running(Vec<u64>),
    /// Its result was handed to the finisher.
    Ended,
}

impl Started {
    /// How many starts are remembered.
    pub(super) const CAPACITY: usize = 1 << 16;

    /// The task `(id, retries)` starts.
    pub(super) fn start(&mut self, id: &str, retries: u32) {
        let k = (id.to_owned(), retries);
        if self
            .runs
            .insert(k.clone(), Run::Running(Vec::new()))
            .is_none()
        {
            self.order.push_back(k);
            if self.order.len() > Self::CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.runs.remove(&old);
                }
            }
        }
    }

    /// The task `(id, retries)` ended (its result already sent to the finisher): the
    /// copies delivered meanwhile, to acknowledge now.
    pub(super) fn end(&mut self, id: &str, retries: u32) -> Vec<u64> {
        match self.runs.get_mut(&(id.to_owned(), retries)) {
            Some(run) => match std::mem::replace(run, Run::Ended) {
                Run::Running(copies) => copies,
                Run::Ended => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    /// A copy of `(id, retries)` came with `key`: `None` if that task never started here
    /// (run the copy); else `Some(true)` if the copy is to be acknowledged now (the run
    /// ended), `Some(false)` if it waits for the run's end.
    pub(super) fn copy(&mut self, id: &str, retries: u32, key: Option<u64>) -> Option<bool> {
        match self.runs.get_mut(&(id.to_owned(), retries))? {
            Run::Ended => Some(true),
            Run::Running(copies) => {
                copies.extend(key);
                Some(false)
            }
        }
    }
}

/// [`Live::state`]: handed to the pool, not started.
pub(super) const WAITING: u8 = 0;
/// [`Live::state`]: the task has started (it runs, or has run).
pub(super) const STARTED: u8 = 1;
/// [`Live::state`]: taken back before it started; it will not run (if the pool runs it
/// anyway, it returns at once), and whoever took it back settles its message.
pub(super) const WITHDRAWN: u8 = 2;

/// A task handed to the pool.
pub(super) struct Live {
    pub(super) id: String,
    /// What remote control shows of it.
    pub(super) info: Arc<TaskInfo>,
    pub(super) handle: crate::JoinHandle<()>,
    /// [`WAITING`], then [`STARTED`] (by the task) or [`WITHDRAWN`] (by the worker): the
    /// one compare-and-swap that decides whether it runs.
    pub(super) state: Arc<AtomicU8>,
    pub(super) key: Option<u64>,
    pub(super) counted: bool,
    /// For a task waiting for its ETA on a broker with a hold limit: its message (to be
    /// sent again to the queue it came from) and when it was taken.
    pub(super) eta: Option<(TaskMessage, Instant)>,
    /// The consumer's connection generation it came on.
    pub(super) generation: u64,
    /// The message of a chord's header part: revoked before it runs, it still counts as
    /// its chord's (failed) part, as in Celery.
    pub(super) chord_part: Option<Box<TaskMessage>>,
}

impl Live {
    /// Takes the task back if it has not started; true if it will never run.
    pub(super) fn withdraw(&self) -> bool {
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

impl WorkerShared {
    /// A counted task acknowledged early has started: its prefetch slot is free
    /// ([`InFlight`]); its result's [`Done`] must say so (`started`).
    pub(super) fn start_early(&self) {
        self.in_flight.lock().started += 1;
        self.room.notify_one();
    }

    /// Asks the consumer thread to add or cancel a queue (applied at its next turn, within
    /// 250 ms; `queues.rs`). Adding a queue consumed already, or cancelling one not
    /// consumed, changes nothing; cancelling the last one leaves a worker that takes
    /// nothing until one is added. A change the broker refuses is logged and tried again
    /// at each turn, before the changes asked after it.
    pub(super) fn change_queues(&self, change: QueueChange) {
        self.queue_changes.lock().pending.push(change);
        // Relaxed: read by the consumer under `in_flight`'s lock, taken below before the
        // notification.
        self.queues_asked.store(true, Ordering::Relaxed);
        let _n = self.in_flight.lock();
        self.room.notify_all();
    }

    /// True once a shutdown's deadline has passed.
    pub(super) fn past_deadline(&self) -> bool {
        self.deadline.lock().is_some_and(|d| Instant::now() >= d)
    }

    /// `app.control.revoke(ids, terminate=...)`: each id is remembered as revoked (a
    /// message of it taken later ends `REVOKED` unrun). A task of this worker that has not
    /// started (queued, or waiting for its ETA) is cancelled in the pool and ends `REVOKED`
    /// now, not at its ETA. With `terminate`, a running task is asked to stop
    /// ([`checkpoint`](crate::checkpoint) returns `Err` in it) and ends `REVOKED`
    /// whatever it returns.
    pub(super) fn revoke(&self, ids: &[String], terminate: bool, done: &mpsc::Sender<Done>) {
        for id in ids {
            self.revoked.add(id);
        }
        let mut live = self.live.lock();
        let mut settled = Vec::new();
        for (seq, task) in live.iter().filter(|(_, t)| ids.contains(&t.id)) {
            if task.withdraw() {
                // Never to run: its message is settled here.
                super::intake::revoked_event(self, &task.id, false, false);
                if !task.counted {
                    self.eta_waiting.fetch_sub(1, Ordering::Relaxed);
                }
                let revoked = TaskResult::Revoked("revoked".into());
                let _ = done.send(match &task.chord_part {
                    Some(msg) => {
                        Done::finished(&mut msg.clone(), task.key, revoked, task.counted, None)
                    }
                    None => Done::end(task.id.clone(), task.key, revoked, task.counted),
                });
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
    pub(super) fn abandon_before<T>(&self, current: u64, held: &Held<T>) {
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
            n.taken = n.taken.saturating_sub(freed);
            self.room.notify_one();
        }
    }
}

/// What the consumer and the tasks tell the finisher: a settlement of the message held
/// under a key of `held` (the finisher swaps the key for the message's tag).
pub(super) struct Done {
    pub(super) settle: Settlement<u64>,
    /// True if the message counted against the prefetch limit (a task's end frees it).
    pub(super) counted: bool,
    /// True if its task freed its prefetch slot as it started ([`WorkerShared::start_early`]).
    pub(super) started: bool,
}

impl Done {
    /// A final result (a task's end, or a message settled without running: revoked,
    /// expired, unknown).
    pub(super) fn end(id: String, key: Option<u64>, result: TaskResult, counted: bool) -> Done {
        Done {
            settle: Settlement::Result {
                id,
                result,
                tag: key,
                flow: None,
            },
            counted,
            started: false,
        }
    }

    /// The final result of `msg`, with what follows it in its workflow
    /// ([`after`](crate::celery::canvas::after::after); `sent`: what the task itself sent).
    /// The rest of a chain is moved out of `msg`'s embed.
    pub(super) fn finished(
        msg: &mut TaskMessage,
        key: Option<u64>,
        mut result: TaskResult,
        counted: bool,
        sent: Option<Sent>,
    ) -> Done {
        let flow = after(msg, &mut result, sent);
        Done {
            settle: Settlement::Result {
                id: msg.id.clone(),
                result,
                tag: key,
                flow,
            },
            counted,
            started: false,
        }
    }

    /// A settlement that frees no prefetch slot.
    pub(super) fn uncounted(settle: Settlement<u64>) -> Done {
        Done {
            settle,
            counted: false,
            started: false,
        }
    }
}
