//! `Shared`: the state of one pool that every worker and every `Pool` handle points at.
//!
//! It routes new jobs (the current worker's local deque, or an injector), runs the sleep
//! protocol's pusher side, and owns the shutdown sequence:
//!
//! 1. `closed` is set (new spawns are refused from then on) and CLOSED is set in the sleep
//!    state, waking every sleeper;
//! 2. workers keep running what is queued (`shutdown`) or resolve it as shut down
//!    (`shutdown_now`), then leave ALIVE and drain once more (see `sleep.rs`);
//! 3. the caller joins the worker threads (unless it is one of them), then drains whatever
//!    a racing spawn left behind.
//!
//! Worker threads hold an `Arc<Shared>`; `Pool` handles hold it through a `PoolHandle`
//! whose drop starts a graceful shutdown.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_deque::Steal;
use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

use crate::job::JobRef;
use crate::lane::{Lane, Priority};
use crate::lanes::Lanes;
use crate::loom::{AtomicBool, Ordering};
use crate::metrics::{CounterSet, Counters, Metrics};
use crate::sleep::Sleep;
use crate::task::body::{Body, Once};
use crate::task::header::TaskRef;
use crate::task::raw;
use crate::task::schedule::Schedule;
use crate::task::state::State;
use crate::task::JoinHandle;
use crate::time::driver::{Dispatch, Timer, NEVER};
use crate::worker::WorkerThread;

/// Why a submission was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The lane is at its `max_queued` limit (`try_spawn` only).
    Full,
    /// The pool is shut down (or shut down while the caller waited for room).
    Shutdown,
}

/// Threads of a pool besides its workers: the timer driver.
pub(crate) const POOL_THREADS_BESIDE_WORKERS: usize = 1;

/// A start or stop hook; gets the worker's index.
pub(crate) type Hook = Arc<dyn Fn(usize) + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) lanes: Lanes,
    pub(crate) sleep: Sleep,
    pub(crate) counters: CounterSet,
    pub(crate) timer: Timer,
    /// Read by every spawn, written once: kept off the busy sleep-state line.
    closed: CachePadded<AtomicBool>,
    /// Set by `shutdown_now`: workers resolve queued tasks instead of running them.
    cancel_queued: CachePadded<AtomicBool>,
    /// Worker threads not yet joined. Whoever joins holds the lock until done, so a second
    /// `shutdown` waits for the first.
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    /// Pool threads (workers and timer) that have finished their work, and the condition
    /// `shutdown_timeout` waits on.
    exited: Mutex<usize>,
    exited_cv: Condvar,
    start_hook: Option<Hook>,
    stop_hook: Option<Hook>,
    num_workers: usize,
}

impl Shared {
    pub(crate) fn new(
        lanes: Lanes,
        num_workers: usize,
        start_hook: Option<Hook>,
        stop_hook: Option<Hook>,
    ) -> Shared {
        Shared {
            lanes,
            sleep: Sleep::new(num_workers),
            counters: CounterSet::new(num_workers),
            timer: Timer::new(),
            closed: CachePadded::new(AtomicBool::new(false)),
            cancel_queued: CachePadded::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
            exited: Mutex::new(0),
            exited_cv: Condvar::new(),
            start_hook,
            stop_hook,
            num_workers,
        }
    }

    pub(crate) fn set_threads(&self, threads: Vec<thread::JoinHandle<()>>) {
        *self.threads.lock() = threads;
    }

    pub(crate) fn num_workers(&self) -> usize {
        self.num_workers
    }

    /// The current thread's worker, if it belongs to this pool.
    #[inline]
    pub(crate) fn current_worker(&self) -> Option<&'static WorkerThread> {
        WorkerThread::current().filter(|w| std::ptr::eq(Arc::as_ptr(&w.shared), self))
    }

    /// The counter block the current thread writes.
    #[inline]
    pub(crate) fn counters(&self) -> &Counters {
        match self.current_worker() {
            Some(w) => self.counters.worker(w.index),
            None => self.counters.external(),
        }
    }

    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        // Acquire: pairs with the Release in `close`.
        self.closed.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn is_cancelling_queued(&self) -> bool {
        self.cancel_queued.load(Ordering::Relaxed)
    }

    /// Spawns a task: one allocation, one push, one fence (in a bounded pool, first a slot:
    /// the caller waits for one).
    pub(crate) fn spawn<F, T>(&self, priority: Priority, func: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.lanes.bound.is_some() {
            return self.spawn_bounded(priority, func);
        }
        if self.is_closed() {
            // SAFETY: a refused task's only reference is the handle's, of output type `T`.
            return unsafe { JoinHandle::from_raw(raw::allocate_refused(Once(func))) };
        }
        let (job, handle) = raw::allocate(func, self, priority.lane());
        self.push(priority.lane(), job, true);
        // SAFETY: `allocate` returns the handle's reference to a task with output `T`.
        unsafe { JoinHandle::from_raw(handle) }
    }

    /// `spawn` in a bounded pool: kept out of line, so the unbounded fast path stays small
    /// enough to inline.
    #[cold]
    #[inline(never)]
    fn spawn_bounded<F, T>(&self, priority: Priority, func: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_body(priority, Some(Instant::now()), Once(func))
    }

    /// Spawns a task with any body, to start at `at`: now (an instant already past), later
    /// (it waits in the timer), or never on its own (`None`; it can still be cancelled).
    /// In a bounded pool a task that starts now waits for room in its lane.
    pub(crate) fn spawn_body<B: Body>(
        &self,
        priority: Priority,
        at: Option<Instant>,
        body: B,
    ) -> JoinHandle<B::Output> {
        self.submit(priority, at, body, false)
            .unwrap_or_else(|(body, _)| Shared::refused(body))
    }

    /// The handle of a spawn refused by a closed pool: resolved as shut down; `body` is
    /// dropped now.
    pub(crate) fn refused<B: Body>(body: B) -> JoinHandle<B::Output> {
        // SAFETY: a refused task's only reference is the handle's, output `B::Output`.
        unsafe { JoinHandle::from_raw(raw::allocate_refused(body)) }
    }

    /// Submits a task with any body, to start at `at` (see `spawn_body`). A closed pool
    /// hands the body back with the reason; so does a full lane if `try_only`, where
    /// otherwise the caller waits for room.
    pub(crate) fn submit<B: Body>(
        &self,
        priority: Priority,
        at: Option<Instant>,
        body: B,
        try_only: bool,
    ) -> Result<JoinHandle<B::Output>, (B, Refused)> {
        if self.is_closed() {
            return Err((body, Refused::Shutdown));
        }
        let lane = priority.lane();
        let handle = match at {
            Some(at) if at <= Instant::now() => {
                if let Err(why) = self.admit(lane, try_only) {
                    return Err((body, why));
                }
                let (job, handle) = raw::allocate_body(body, State::new(), self, lane);
                self.push(lane, job, true);
                handle
            }
            _ => {
                let deadline = at.map_or(NEVER, |at| self.timer.tick_ceil(at));
                let (job, handle) = raw::allocate_body(body, State::new_scheduled(), self, lane);
                let counters = self.counters();
                counters.bump(&counters.spawned);
                self.timer.insert(deadline, job, lane, self);
                handle
            }
        };
        // SAFETY: `allocate_body` returns the handle's reference, output `B::Output`.
        Ok(unsafe { JoinHandle::from_raw(handle) })
    }

    /// Takes a slot in `lane` of a bounded pool (anything goes in an unbounded one). When
    /// full: refuses if `try_only`, else waits (a worker of this pool runs queued work
    /// meanwhile), until there is room or the pool closes.
    fn admit(&self, lane: Lane, try_only: bool) -> Result<(), Refused> {
        let Some(bound) = &self.lanes.bound else {
            return Ok(());
        };
        if bound.try_acquire(lane) {
            return Ok(());
        }
        let counters = self.counters();
        if try_only {
            counters.bump(&counters.refused);
            return Err(Refused::Full);
        }
        counters.bump(&counters.blocked);
        let admitted = match self.current_worker() {
            Some(w) => {
                // Waiting here without working could deadlock (the tasks that would free
                // the lane may need this worker), so run queued work instead.
                let backoff = crossbeam_utils::Backoff::new();
                loop {
                    if bound.try_acquire(lane) {
                        break true;
                    }
                    if self.is_closed() {
                        break false;
                    }
                    if w.run_one() {
                        backoff.reset();
                    } else {
                        // The lane is full, so its jobs are on their way between queues.
                        backoff.snooze();
                    }
                }
            }
            None => bound.acquire_blocking(lane, || self.is_closed()),
        };
        if admitted {
            Ok(())
        } else {
            Err(Refused::Shutdown)
        }
    }

    /// Queues `job` in `lane`: on the current worker's deque if it is one of ours, else on
    /// the injector. Counts a spawn if `count_spawn`.
    ///
    /// `count_spawn` is true exactly for new tasks from `spawn`, which took their slot in
    /// a bounded lane already (`admit`); anything else is counted here, admitted or not
    /// (see `bound.rs`), before it becomes visible to a popper.
    pub(crate) fn push(&self, lane: Lane, job: JobRef, count_spawn: bool) {
        if !count_spawn {
            if let Some(bound) = &self.lanes.bound {
                bound.force_acquire(lane);
            }
        }
        match self.current_worker() {
            Some(w) => {
                let c = w.counters();
                if count_spawn {
                    c.bump(&c.spawned);
                }
                crate::util::jitter();
                w.push_spawned(lane, job);
                // With the fence: a task may block waiting for the one it spawned, so an
                // idle worker must not miss it (sleep.rs, step 1).
                self.after_push(c);
            }
            None => {
                let c = self.counters.external();
                if count_spawn {
                    c.bump(&c.spawned);
                }
                crate::util::jitter();
                self.lanes.inject(lane, job);
                self.after_push(c);
            }
        }
    }

    /// The pusher's side of the sleep protocol, plus the shutdown race (see `sleep.rs`).
    #[inline]
    pub(crate) fn after_push(&self, counters: &Counters) {
        let s = self.sleep.notify_after_push(counters);
        if s.is_closed() && s.alive() == 0 {
            // Every worker has left: nobody else will see what we pushed.
            self.drain();
        }
    }

    /// Takes every queued job out and discards it (tasks resolve as shut down; stack and
    /// scope jobs run here, since a caller is blocked on them).
    pub(crate) fn drain(&self) {
        let counters = self.counters();
        for lane in Lane::ALL {
            loop {
                match self.lanes.injectors[lane].steal() {
                    Steal::Success(job) => {
                        self.lanes.taken(lane);
                        job.discard(counters);
                    }
                    Steal::Retry => continue,
                    Steal::Empty => break,
                }
            }
        }
        for stealers in self.lanes.stealers.iter() {
            stealers.drain(|job, lane, counted| {
                if counted {
                    self.lanes.taken(lane);
                }
                job.discard(counters);
            });
        }
    }

    /// Starts shutdown; see the module docs. Returns after the workers exited, unless called
    /// from one of them.
    pub(crate) fn shutdown(&self, cancel_queued: bool) {
        self.close(cancel_queued);
        if self.current_worker().is_some() {
            // Joining our own thread (or peers that may wait on us) would deadlock.
            return;
        }
        self.join_threads(None);
        self.drain();
    }

    /// Steps 1 (and, with `cancel_queued`, the discarding) of the shutdown sequence.
    pub(crate) fn close(&self, cancel_queued: bool) {
        if cancel_queued {
            self.cancel_queued.store(true, Ordering::Relaxed);
        }
        // Release: pairs with the Acquire in `is_closed`.
        self.closed.store(true, Ordering::Release);
        self.sleep.close();
        // The driver resolves pending timers as shut down, then exits.
        self.timer.wake();
        // Submitters waiting for room give up (their spawns are refused).
        if let Some(bound) = &self.lanes.bound {
            bound.wake_all();
        }
        if cancel_queued {
            self.drain();
        }
    }

    /// Waits until every pool thread (workers and timer) has exited, or `deadline`
    /// passes, then joins those that exited. Returns how many are still running. Threads
    /// not joined stay listed, so a later `shutdown` joins them.
    pub(crate) fn join_threads(&self, deadline: Option<Instant>) -> usize {
        let total = self.num_workers + POOL_THREADS_BESIDE_WORKERS;
        let mut exited = self.exited.lock();
        while *exited < total {
            match deadline {
                None => self.exited_cv.wait(&mut exited),
                Some(d) => {
                    if self.exited_cv.wait_until(&mut exited, d).timed_out() {
                        break;
                    }
                }
            }
        }
        let still_running = total - *exited;
        drop(exited);
        let mut threads = self.threads.lock();
        // A thread counts itself exited (`thread_exited`) before it ends: it still drops
        // its worker state and its `Arc<Shared>` and runs its thread-local destructors, so
        // `is_finished` can be false for a thread that has nothing left to wait for. Once
        // every thread has counted itself out, join them all (none can block on a task),
        // as `shutdown` promises; only when time ran out with some still busy, join just
        // those already finished and leave the rest listed for a later `shutdown`.
        let (done, running): (Vec<_>, Vec<_>) = if still_running == 0 {
            (threads.drain(..).collect(), Vec::new())
        } else {
            threads.drain(..).partition(|t| t.is_finished())
        };
        *threads = running;
        drop(threads);
        for t in done {
            // A pool thread never panics (user panics are caught), so this is Ok.
            let _ = t.join();
        }
        still_running
    }

    /// Called by each pool thread as the last thing it does.
    pub(crate) fn thread_exited(&self) {
        *self.exited.lock() += 1;
        self.exited_cv.notify_all();
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let mut m = Metrics::default();
        self.counters.sum_into(&mut m);
        m.queued_high = self.lanes.len(Priority::High.lane()) as u64;
        m.queued_normal = self.lanes.len(Priority::Normal.lane()) as u64;
        m.queued_low = self.lanes.len(Priority::Low.lane()) as u64;
        m.workers = self.num_workers as u64;
        m.timers_pending = self.timer.pending();
        m.timers_fired = self.timer.fired();
        m
    }

    pub(crate) fn run_start_hook(&self, index: usize) {
        if let Some(h) = &self.start_hook {
            // A panicking hook is reported on stderr by the panic hook; the worker lives on.
            let _ = panic::catch_unwind(AssertUnwindSafe(|| h(index)));
        }
    }

    pub(crate) fn run_stop_hook(&self, index: usize) {
        if let Some(h) = &self.stop_hook {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| h(index)));
        }
    }
}

/// The pool as its timer's destination (`time/driver.rs`).
impl Dispatch for Shared {
    #[inline]
    fn timer(&self) -> &Timer {
        &self.timer
    }

    #[inline]
    fn counters(&self) -> &Counters {
        Shared::counters(self)
    }

    fn push_due(&self, lane: Lane, job: JobRef) {
        self.push(lane, job, false);
    }

    fn is_shut_down(&self) -> bool {
        self.sleep.is_closed()
    }

    fn driver_exited(&self) {
        self.thread_exited();
    }
}

/// The pool as its tasks' owner (`task/schedule.rs`).
impl Schedule for Shared {
    #[inline]
    fn is_closed(&self) -> bool {
        Shared::is_closed(self)
    }

    #[inline]
    fn counters(&self) -> &Counters {
        Shared::counters(self)
    }

    fn retry_after(&self, delay: Duration, job: JobRef, lane: Lane) {
        let deadline = Instant::now()
            .checked_add(delay)
            .map_or(NEVER, |at| self.timer.tick_ceil(at));
        self.timer.insert(deadline, job, lane, self);
    }

    fn cancel_retry(&self, task: TaskRef) {
        self.timer.cancel(task, self);
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
