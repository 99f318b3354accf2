//! [`Pool`], its [`Builder`], and the task options builder [`TaskBuilder`].

use std::fmt;
use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::bound::Bound;
use crate::job::StackJob;
use crate::lanes::{LocalQueues, Priority};
use crate::latch::ThreadLatch;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::scope::Scope;
use crate::shared::{Hook, Refused, Shared};
use crate::sleep::MAX_WORKERS;
use crate::task::body::{Body, Limited, Once, RetryAny, Retrying, ShouldRetry};
use crate::task::JoinHandle;
use crate::time::periodic::PeriodicState;
use crate::time::periodic_handle::Periodic;
use crate::worker::WorkerThread;

/// The environment variable read for the default worker count (like rayon's
/// `RAYON_NUM_THREADS`). Unset, empty, zero or unparsable: one worker per core.
pub const NUM_THREADS_ENV: &str = "WEFT_NUM_THREADS";

/// A work-stealing thread pool with priority lanes.
///
/// `Pool` is a cheap handle (`Clone` is one reference-count increment); every clone drives
/// the same workers. When the last handle is dropped the pool shuts down gracefully, as
/// [`shutdown`](Self::shutdown) does.
///
/// ```
/// use weft::{Pool, Priority};
///
/// let pool = Pool::builder().workers(2).build().unwrap();
/// let a = pool.spawn(|| 1);
/// let b = pool.task().priority(Priority::High).spawn(|| 2);
/// assert_eq!(a.join().unwrap() + b.join().unwrap(), 3);
/// assert_eq!(pool.install(|| weft::current_thread_index().is_some()), true);
/// ```
#[derive(Clone)]
pub struct Pool {
    handle: Arc<PoolHandle>,
}

/// Owns the user's side of the pool; dropping the last one shuts the pool down.
struct PoolHandle {
    shared: Arc<Shared>,
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        self.shared.shutdown(false);
    }
}

impl Pool {
    /// A builder with defaults: one worker per core (or [`NUM_THREADS_ENV`]).
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The global pool behind `weft::spawn`, `weft::join` and `weft::scope`, built on
    /// first use (see [`Builder::build_global`]). Shutting it down affects every user of
    /// those functions in the process: afterwards their spawns are refused.
    ///
    /// ```
    /// let pool = weft::Pool::global();
    /// assert!(pool.num_workers() >= 1);
    /// weft::spawn(|| ()).join().unwrap();
    /// assert!(pool.metrics().completed >= 1);
    /// ```
    pub fn global() -> &'static Pool {
        crate::global::pool()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Spawns `f` in the normal lane and returns its handle.
    ///
    /// From a worker of this pool the task goes on that worker's own deque; from anywhere
    /// else on the lane's injector. After shutdown the spawn is refused: the handle
    /// resolves at once to a shut-down [`JoinError`](crate::JoinError), and `f` is dropped.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let h = pool.spawn(|| "done");
    /// assert_eq!(h.join().unwrap(), "done");
    /// ```
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.shared().spawn(Priority::Normal, f)
    }

    /// Spawns `f` in the normal lane unless the lane is full (see
    /// [`Builder::max_queued`]) or the pool is shut down: then the error hands `f` back.
    /// In an unbounded pool only shutdown refuses.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// assert_eq!(pool.try_spawn(|| 3).unwrap().join().unwrap(), 3);
    /// pool.shutdown();
    /// let err = pool.try_spawn(|| 4).unwrap_err();
    /// assert!(err.is_shutdown());
    /// assert_eq!(err.into_inner()(), 4);
    /// ```
    pub fn try_spawn<F, T>(&self, f: F) -> Result<JoinHandle<T>, TrySpawnError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.task().try_spawn(f)
    }

    /// Options for the next task: `pool.task().priority(Priority::High).spawn(f)`.
    pub fn task(&self) -> TaskBuilder<'_> {
        TaskBuilder::new(self.shared())
    }

    /// Runs `f` on one of the pool's workers and returns its value (as rayon's `install`),
    /// blocking the caller meanwhile. Inside `f`, `weft::spawn`, `weft::join` and
    /// `weft::scope` use this pool. A panic in `f` is re-raised here.
    ///
    /// Called from a worker of this pool, `f` just runs. After shutdown, `f` runs on the
    /// calling thread instead (there are no workers left to run it).
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(2).build().unwrap();
    /// let (a, b) = pool.install(|| weft::join(|| 1, || 2));
    /// assert_eq!(a + b, 3);
    /// ```
    pub fn install<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let shared = self.shared();
        if shared.current_worker().is_some() || shared.is_closed() {
            return f();
        }
        let job = StackJob::new(move |_| f(), ThreadLatch::new());
        // SAFETY: `job` lives on this frame, which waits below until its latch is set; the
        // queue's reference is the only one. A job that races shutdown is run by a drain.
        shared.push(Priority::Normal.lane(), unsafe { job.as_job_ref() }, false);
        crate::latch::block_until(&job.latch, None);
        job.into_result()
    }

    /// Runs `op` with a [`Scope`] whose spawned tasks may borrow from the caller's stack;
    /// returns after `op` and every task spawned in the scope finished. A panic in `op` or in
    /// any scoped task is re-raised here, after all of them finished.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(2).build().unwrap();
    /// let mut parts = [0u64; 4];
    /// pool.scope(|s| {
    ///     for (i, p) in parts.iter_mut().enumerate() {
    ///         s.spawn(move |_| *p = (i as u64 + 1) * 10);
    ///     }
    /// });
    /// assert_eq!(parts, [10, 20, 30, 40]);
    /// ```
    pub fn scope<'scope, OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce(&Scope<'scope>) -> R,
    {
        crate::scope::run(self.shared(), op)
    }

    /// Fork-join on this pool: see [`weft::join`](crate::join).
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(2).build().unwrap();
    /// assert_eq!(pool.join(|| 1, || 2), (1, 2));
    /// ```
    pub fn join<A, B, RA, RB>(&self, a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        self.install(|| crate::join(a, b))
    }

    /// A snapshot of the pool's counters and queue depths.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// pool.spawn(|| ()).join().unwrap();
    /// assert_eq!(pool.metrics().completed, 1);
    /// ```
    pub fn metrics(&self) -> Metrics {
        self.shared().metrics()
    }

    /// The number of worker threads.
    pub fn num_workers(&self) -> usize {
        self.shared().num_workers()
    }

    /// Shuts the pool down gracefully: refuses new spawns from now on, lets the workers
    /// finish everything already queued, and joins them. Every outstanding handle resolves.
    /// Idempotent; a concurrent second call waits for the first.
    ///
    /// Called from one of the pool's own workers (or if the last `Pool` handle is dropped
    /// there), it stops intake and wakes the workers but returns without joining any
    /// thread: joining its own thread, or a peer that may be waiting on it, would deadlock.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(2).build().unwrap();
    /// let queued: Vec<_> = (0..100).map(|i| pool.spawn(move || i)).collect();
    /// pool.shutdown();
    /// // Queued work still ran.
    /// assert_eq!(queued.into_iter().map(|h| h.join().unwrap()).sum::<i32>(), 4950);
    /// ```
    pub fn shutdown(&self) {
        self.shared().shutdown(false);
    }

    /// Shuts the pool down now: refuses new spawns, resolves every task still queued as
    /// shut down without running it, lets running tasks finish, and joins the workers.
    /// Scoped jobs, `join` halves and `install` closures are not tasks: a caller is blocked
    /// on them, so they still run.
    ///
    /// ```
    /// use std::sync::mpsc::channel;
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let (started_tx, started_rx) = channel();
    /// let (go_tx, go_rx) = channel::<()>();
    /// let running = pool.spawn(move || {
    ///     started_tx.send(()).unwrap();
    ///     go_rx.recv().unwrap();
    ///     "ran"
    /// });
    /// started_rx.recv().unwrap();
    /// let queued = pool.spawn(|| "never runs");
    /// let p = pool.clone();
    /// let stopper = std::thread::spawn(move || p.shutdown_now());
    /// assert!(queued.join().unwrap_err().is_shutdown());
    /// go_tx.send(()).unwrap(); // let the running task finish
    /// stopper.join().unwrap();
    /// assert_eq!(running.join().unwrap(), "ran");
    /// ```
    pub fn shutdown_now(&self) {
        self.shared().shutdown(true);
    }

    /// Shuts down gracefully, as [`shutdown`](Self::shutdown), but waits at most
    /// `timeout` for queued work to finish. If time runs out, every task still queued is
    /// resolved as shut down (as [`shutdown_now`](Self::shutdown_now) does) and counted in
    /// the report; threads still busy with a running task are left to finish on their own
    /// (a later `shutdown` joins them). Timers and retries waiting for their deadline are
    /// resolved as shut down either way, and periodic schedules cancelled. Called from one
    /// of the pool's own workers it waits for nothing (see `shutdown`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel::<()>();
    /// let (started_tx, started_rx) = std::sync::mpsc::channel();
    /// let busy = pool.spawn(move || { started_tx.send(()).unwrap(); rx.recv().unwrap() });
    /// started_rx.recv().unwrap();
    /// let queued = pool.spawn(|| "never");
    /// let later = pool.task().delay(Duration::from_secs(3600)).spawn(|| "never");
    ///
    /// // Long enough for the timer thread, woken at once, to have exited on a busy machine.
    /// let report = pool.shutdown_timeout(Duration::from_millis(300));
    /// assert_eq!(report.cancelled, 1);
    /// assert_eq!(report.timers_dropped, 1);
    /// assert!(report.threads_still_running >= 1); // the worker running `busy`
    /// assert!(queued.join().unwrap_err().is_shutdown());
    /// assert!(later.join().unwrap_err().is_shutdown());
    ///
    /// tx.send(()).unwrap();
    /// busy.join().unwrap();
    /// pool.shutdown(); // joins the last thread
    /// ```
    pub fn shutdown_timeout(&self, timeout: Duration) -> ShutdownReport {
        let shared = self.shared();
        let deadline = Instant::now().checked_add(timeout);
        shared.close(false);
        let on_own_worker = shared.current_worker().is_some();
        let mut still_running = if on_own_worker {
            shared.num_workers() + crate::shared::POOL_THREADS_BESIDE_WORKERS
        } else {
            shared.join_threads(deadline)
        };
        let mut cancelled = 0;
        if still_running > 0 {
            // Time ran out: resolve what is still queued instead of waiting for it.
            let before = shared.metrics().cancelled;
            shared.close(true);
            cancelled = shared.metrics().cancelled - before;
            if !on_own_worker {
                still_running = shared.join_threads(Some(Instant::now()));
            }
        }
        ShutdownReport {
            metrics: shared.metrics(),
            cancelled,
            timers_dropped: shared.timer.dropped(),
            threads_still_running: still_running,
        }
    }
}

/// What [`Pool::shutdown_timeout`] did.
///
/// ```
/// let pool = weft::Pool::builder().workers(2).build().unwrap();
/// pool.spawn(|| ()).join().unwrap();
/// let report = pool.shutdown_timeout(std::time::Duration::from_secs(60));
/// assert_eq!(report.threads_still_running, 0);
/// assert_eq!(report.metrics.completed, 1);
/// println!("{report:?}");
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The pool's counters when the call returned (lifetime totals).
    pub metrics: Metrics,
    /// Queued tasks resolved as shut down because time ran out (0 if everything finished
    /// in time). Counted from the pool's `cancelled` counter across the cancelling step,
    /// so a concurrent `cancel()` elsewhere would be included.
    pub cancelled: u64,
    /// Delayed tasks, retries waiting for their next attempt, and periodic schedules that
    /// were still waiting in the timer and were resolved (or cancelled) instead. Final once
    /// the timer thread was joined (it is woken first and normally exits at once).
    pub timers_dropped: u64,
    /// Pool threads (workers and the timer thread) that had not exited when the call
    /// returned: those still running a task when time ran out. 0 when every thread was
    /// joined in time.
    pub threads_still_running: usize,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.num_workers())
            .field("closed", &self.shared().is_closed())
            .finish()
    }
}

/// Options for one task; made by [`Pool::task`].
///
/// ```
/// use weft::Priority;
/// let pool = weft::Pool::builder().workers(1).build().unwrap();
/// let h = pool.task().priority(Priority::Low).spawn(|| 5);
/// assert_eq!(h.join().unwrap(), 5);
/// ```
#[must_use = "a TaskBuilder does nothing until `spawn` is called"]
pub struct TaskBuilder<'a> {
    target: Target<'a>,
    priority: Priority,
    when: When,
    time_limit: Option<Duration>,
}

/// When a task may start.
#[derive(Clone, Copy, Debug)]
enum When {
    Now,
    At(Instant),
    /// Past anything an `Instant` can hold: never on its own.
    Never,
}

/// Which pool a `TaskBuilder` spawns on.
#[derive(Clone, Copy)]
enum Target<'a> {
    Pool(&'a Arc<Shared>),
    /// Decided at `spawn`: the current worker's pool, else the global pool. Nothing is
    /// borrowed, so the builder may move to another thread.
    Current,
}

impl<'a> TaskBuilder<'a> {
    pub(crate) fn new(shared: &'a Arc<Shared>) -> Self {
        TaskBuilder {
            target: Target::Pool(shared),
            priority: Priority::Normal,
            when: When::Now,
            time_limit: None,
        }
    }

    pub(crate) fn current() -> TaskBuilder<'static> {
        TaskBuilder {
            target: Target::Current,
            priority: Priority::Normal,
            when: When::Now,
            time_limit: None,
        }
    }

    /// The lane the task waits in (default [`Priority::Normal`]).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Starts the task no earlier than `delay` from now: it waits in the pool's timer, then
    /// joins its lane. A delay too large for an `Instant` (such as `Duration::MAX`) means
    /// "never on its own": the task stays cancellable and resolves as shut down when the
    /// pool shuts down.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let start = Instant::now();
    /// let h = pool.task().delay(Duration::from_millis(20)).spawn(move || start.elapsed());
    /// assert!(h.join().unwrap() >= Duration::from_millis(20));
    /// ```
    pub fn delay(mut self, delay: Duration) -> Self {
        self.when = Instant::now()
            .checked_add(delay)
            .map_or(When::Never, When::At);
        self
    }

    /// Starts the task no earlier than `at` (a deadline in the past: at once).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let at = Instant::now() + Duration::from_millis(10);
    /// let h = pool.task().at(at).spawn(Instant::now);
    /// assert!(h.join().unwrap() >= at);
    /// ```
    pub fn at(mut self, at: Instant) -> Self {
        self.when = When::At(at);
        self
    }

    /// A soft time limit for each run of the task (Celery's `soft_time_limit`), counted
    /// from when the run starts (not while it waits in a queue); each retry attempt gets
    /// the whole limit again. weft never interrupts a task: once the limit passed,
    /// [`checkpoint`](crate::checkpoint) returns `Err` so the task can stop early, and a
    /// run that ends after its limit (whatever it returns; a panic stays a panic) resolves
    /// the handle to a [`JoinError`](crate::JoinError) with `is_time_limit()`, is not
    /// retried, and counts in [`Metrics::timed_out`]. Applies to `spawn`, `try_spawn` and
    /// retrying tasks; periodic runs ([`every`](Self::every)) have no time limit.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let quick = pool.task().time_limit(Duration::from_secs(60)).spawn(|| 1);
    /// assert_eq!(quick.join().unwrap(), 1);
    /// ```
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Spawns the task with these options; see [`Pool::spawn`].
    pub fn spawn<F, T>(self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if let (When::Now, None) = (self.when, self.time_limit) {
            let priority = self.priority;
            return self.with_shared(|shared| shared.spawn(priority, f));
        }
        self.submit(Once(f), false)
            .unwrap_or_else(|(body, _)| Shared::refused(body))
    }

    /// As [`spawn`](Self::spawn), but a full lane (see [`Builder::max_queued`]) or a shut
    /// down pool refuses: the error hands `f` back. A delayed task is never refused for a
    /// full lane (it waits in the timer).
    pub fn try_spawn<F, T>(self, f: F) -> Result<JoinHandle<T>, TrySpawnError<F>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.submit(Once(f), true)
            .map_err(|(body, why)| TrySpawnError::new(body.0, why))
    }

    /// Submits `body` with these options (a time limit wraps it in `Limited`); see
    /// `Shared::submit`. A refused body comes back unwrapped.
    fn submit<B: Body>(
        &self,
        body: B,
        try_only: bool,
    ) -> Result<JoinHandle<B::Output>, (B, Refused)> {
        let (priority, start) = (self.priority, self.start());
        self.with_shared(|shared| match self.time_limit {
            None => shared.submit(priority, start, body, try_only),
            Some(limit) => shared
                .submit(priority, start, Limited::new(body, limit), try_only)
                .map_err(|(limited, why)| (limited.into_inner(), why)),
        })
    }

    /// Runs `f` every `period`, first after one period (or at the time set with
    /// [`delay`](Self::delay) or [`at`](Self::at)), in this builder's lane, until the
    /// returned [`Periodic`] is cancelled or dropped, or the pool shuts down. Periods are
    /// measured from the previous scheduled time (no drift); a late tick is coalesced, not
    /// queued twice, and counted in [`Periodic::missed`]. A zero period is taken as the
    /// timer's resolution, 1 ms, never a busy loop. After shutdown the schedule is
    /// refused: it comes back already cancelled and never runs.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let p = pool.task().every(Duration::ZERO, || {});
    /// while p.runs() < 5 {
    ///     std::thread::yield_now();
    /// }
    /// drop(p); // stops the schedule
    /// ```
    pub fn every<F>(self, period: Duration, f: F) -> Periodic
    where
        F: FnMut() + Send + 'static,
    {
        let (lane, when) = (self.priority.lane(), self.when);
        self.with_shared(|shared| {
            let ticks = u64::try_from(period.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            let schedule = Arc::new(PeriodicState::new(Box::new(f), ticks, lane));
            if shared.is_closed() {
                schedule.cancel();
            } else {
                let first = match when {
                    When::Now => shared
                        .timer
                        .tick_ceil(Instant::now())
                        .saturating_add(schedule.period),
                    When::At(at) => shared.timer.tick_ceil(at),
                    When::Never => crate::time::driver::NEVER,
                };
                shared
                    .timer
                    .insert_periodic(first, schedule.clone(), &**shared);
            }
            Periodic::new(schedule, shared.clone())
        })
    }

    /// Retries the task on `Err`, with `policy`'s backoff, until it returns `Ok`, the
    /// attempts run out, or the predicate set with
    /// [`retry_if`](RetryBuilder::retry_if) declines. See [`RetryBuilder::spawn`].
    pub fn retry(self, policy: RetryPolicy) -> RetryBuilder<'a, RetryAny> {
        RetryBuilder {
            task: self,
            policy,
            should_retry: RetryAny,
        }
    }

    /// Runs `f` with the pool this builder spawns on (for `Current`: the calling worker's
    /// pool, else the global pool), without letting the borrow escape.
    fn with_shared<R>(&self, f: impl FnOnce(&Arc<Shared>) -> R) -> R {
        match self.target {
            Target::Pool(shared) => f(shared),
            Target::Current => match WorkerThread::current() {
                Some(w) => f(&w.shared),
                None => f(crate::global::pool().shared()),
            },
        }
    }

    fn start(&self) -> Option<Instant> {
        match self.when {
            When::Now => Some(Instant::now()),
            When::At(at) => Some(at),
            When::Never => None,
        }
    }
}

impl fmt::Debug for TaskBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("priority", &self.priority)
            .field("when", &self.when)
            .field("time_limit", &self.time_limit)
            .finish()
    }
}

/// A task that is retried on `Err`; made by [`TaskBuilder::retry`].
///
/// ```
/// use std::time::Duration;
/// use weft::RetryPolicy;
///
/// let pool = weft::Pool::builder().workers(1).build().unwrap();
/// let mut calls = 0;
/// let h = pool
///     .task()
///     .retry(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(5))
///     .spawn(move || {
///         calls += 1;
///         if calls < 3 { Err(format!("attempt {calls} failed")) } else { Ok(calls) }
///     });
/// while !h.is_finished() {
///     std::thread::yield_now();
/// }
/// assert_eq!(h.attempts(), 3);
/// assert_eq!(h.join().unwrap(), Ok(3));
/// ```
#[must_use = "a RetryBuilder does nothing until `spawn` is called"]
pub struct RetryBuilder<'a, P = RetryAny> {
    task: TaskBuilder<'a>,
    policy: RetryPolicy,
    should_retry: P,
}

impl<'a, P> RetryBuilder<'a, P> {
    /// Retries only errors for which `predicate` returns true; any other error ends the
    /// task at once with that error.
    ///
    /// ```
    /// use weft::RetryPolicy;
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let h = pool
    ///     .task()
    ///     .retry(RetryPolicy::fixed(std::time::Duration::ZERO).max_attempts(10))
    ///     .retry_if(|e: &&str| *e == "transient")
    ///     .spawn(|| Err::<(), _>("fatal"));
    /// let handle_result = h.join().unwrap();
    /// assert_eq!(handle_result, Err("fatal"));
    /// ```
    pub fn retry_if<Q>(self, predicate: Q) -> RetryBuilder<'a, Q> {
        RetryBuilder {
            task: self.task,
            policy: self.policy,
            should_retry: predicate,
        }
    }

    /// Spawns `f`, running it until it returns `Ok`, or until the policy's attempts run out
    /// or the predicate declines: the handle then resolves to `Ok(Err(last_error))`.
    /// Between attempts the task waits in the timer for the policy's backoff, where
    /// `cancel` wins. A panic is not retried: the handle resolves to the panic.
    /// [`JoinHandle::attempts`] tells how many runs started. After shutdown a failed
    /// attempt is not retried: the handle resolves as shut down.
    pub fn spawn<F, T, E>(self, f: F) -> JoinHandle<Result<T, E>>
    where
        F: FnMut() -> Result<T, E> + Send + 'static,
        P: ShouldRetry<E>,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (task, body) = self.into_body(f);
        task.submit(body, false)
            .unwrap_or_else(|(body, _)| Shared::refused(body))
    }

    /// As [`spawn`](Self::spawn), but a full lane or a shut-down pool refuses: the error
    /// hands `f` back (see [`TaskBuilder::try_spawn`]).
    pub fn try_spawn<F, T, E>(self, f: F) -> Result<JoinHandle<Result<T, E>>, TrySpawnError<F>>
    where
        F: FnMut() -> Result<T, E> + Send + 'static,
        P: ShouldRetry<E>,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (task, body) = self.into_body(f);
        task.submit(body, true)
            .map_err(|(body, why)| TrySpawnError::new(body.f, why))
    }

    /// The task's options and its retrying body.
    fn into_body<F>(self, f: F) -> (TaskBuilder<'a>, Retrying<F, P>) {
        let body = Retrying {
            f,
            should_retry: self.should_retry,
            policy: self.policy,
            seed: retry_seed(),
        };
        (self.task, body)
    }
}

/// A fresh seed for a retrying task's jitter.
fn retry_seed() -> u64 {
    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SEED.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9)
        | 1
}

/// A spawn refused by [`try_spawn`](Pool::try_spawn): the lane was full, or the pool shut
/// down. Nothing is lost: [`into_inner`](Self::into_inner) hands the closure back.
pub struct TrySpawnError<F> {
    f: F,
    why: Refused,
}

impl<F> TrySpawnError<F> {
    fn new(f: F, why: Refused) -> Self {
        TrySpawnError { f, why }
    }

    /// The lane was at its [`max_queued`](Builder::max_queued) limit.
    pub fn is_full(&self) -> bool {
        self.why == Refused::Full
    }

    /// The pool is shut down.
    pub fn is_shutdown(&self) -> bool {
        self.why == Refused::Shutdown
    }

    /// The closure that was not spawned.
    pub fn into_inner(self) -> F {
        self.f
    }
}

impl<F> fmt::Debug for TrySpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrySpawnError")
            .field("why", &self.why)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Display for TrySpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.why {
            Refused::Full => "the task's lane is full (max_queued)",
            Refused::Shutdown => "the pool is shut down",
        })
    }
}

impl<F> std::error::Error for TrySpawnError<F> {}

impl<P> fmt::Debug for RetryBuilder<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("task", &self.task)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

type NameFn = Box<dyn FnMut(usize) -> String>;

/// Configures and builds a [`Pool`].
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// let started = Arc::new(AtomicUsize::new(0));
/// let s = started.clone();
/// let pool = weft::Pool::builder()
///     .workers(3)
///     .thread_name(|i| format!("my-worker-{i}"))
///     .stack_size(4 << 20)
///     .on_thread_start(move |_index| { s.fetch_add(1, Ordering::SeqCst); })
///     .build()
///     .unwrap();
/// let name = pool.install(|| std::thread::current().name().map(str::to_owned));
/// assert!(name.unwrap().starts_with("my-worker-"));
/// pool.shutdown();
/// assert_eq!(started.load(Ordering::SeqCst), 3);
/// ```
#[must_use = "a Builder does nothing until `build` is called"]
pub struct Builder {
    workers: Option<usize>,
    thread_name: Option<NameFn>,
    stack_size: Option<usize>,
    max_queued: Option<usize>,
    on_start: Option<Hook>,
    on_stop: Option<Hook>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// Defaults: [`default_workers`] workers, threads named `weft-worker-{i}`, the
    /// platform's default stack size, no hooks.
    pub fn new() -> Builder {
        Builder {
            workers: None,
            thread_name: None,
            stack_size: None,
            max_queued: None,
            on_start: None,
            on_stop: None,
        }
    }

    /// The number of worker threads: at least 1, at most 65535 (else `build` fails).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Names worker `i`'s thread. The pool's timer thread is named with index `workers`
    /// (default names: `weft-worker-{i}` and `weft-timer`).
    pub fn thread_name(mut self, name: impl FnMut(usize) -> String + 'static) -> Self {
        self.thread_name = Some(Box::new(name));
        self
    }

    /// The stack size of each worker thread, in bytes.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Bounds each lane to `n` queued jobs (default: unbounded, like rayon and tokio).
    ///
    /// When a lane is full, [`Pool::try_spawn`] (and [`TaskBuilder::try_spawn`]) refuses
    /// with a [`TrySpawnError`] that hands the closure back, and plain `spawn` waits for
    /// room: off the pool it blocks the calling thread; on one of the pool's workers it
    /// runs queued work meanwhile (blocking there could deadlock). A spawn waiting for room
    /// when the pool shuts down is refused like any spawn after shutdown.
    ///
    /// Only new tasks that start now wait for room. Delayed tasks are admitted when they
    /// are spawned (they wait in the timer, not in a lane); when they come due, as with
    /// retries and periodic runs, they join their lane even if it is full, since they were
    /// accepted already, and count toward its depth. So do scope jobs. `join` halves are
    /// never counted. [`Metrics`] shows the depth of each lane
    /// ([`queued_high`](Metrics::queued_high) etc.), and how often submitters were
    /// [`refused`](Metrics::refused) or [`blocked`](Metrics::blocked).
    ///
    /// `n` must be at least 1 (else `build` fails).
    ///
    /// ```
    /// use std::sync::mpsc::channel;
    /// let pool = weft::Pool::builder().workers(1).max_queued(1).build().unwrap();
    /// let (started_tx, started_rx) = channel();
    /// let (go_tx, go_rx) = channel::<()>();
    /// let busy = pool.spawn(move || { started_tx.send(()).unwrap(); go_rx.recv().unwrap() });
    /// started_rx.recv().unwrap(); // the worker is busy, the lane is empty
    /// let queued = pool.try_spawn(|| 1).unwrap();
    /// let refused = pool.try_spawn(|| 2).unwrap_err();
    /// assert!(refused.is_full());
    /// let f = refused.into_inner(); // nothing is lost: the closure comes back
    /// assert_eq!(f(), 2);
    /// go_tx.send(()).unwrap();
    /// busy.join().unwrap();
    /// assert_eq!(queued.join().unwrap(), 1);
    /// assert_eq!(pool.metrics().refused, 1);
    /// ```
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = Some(n);
        self
    }

    /// Runs on each worker thread when it starts, with its index. It may spawn tasks. A
    /// panic in it is caught (and printed by the panic hook); the worker starts anyway.
    pub fn on_thread_start(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_start = Some(Arc::new(f));
        self
    }

    /// Runs on each worker thread right before it exits, with its index. A panic in it is
    /// caught.
    pub fn on_thread_stop(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_stop = Some(Arc::new(f));
        self
    }

    /// Starts the worker threads.
    ///
    /// ```
    /// assert!(weft::Pool::builder().workers(0).build().unwrap_err().is_zero_workers());
    /// ```
    pub fn build(self) -> Result<Pool, BuildError> {
        let n = self.workers.unwrap_or_else(default_workers);
        if n == 0 {
            return Err(BuildError {
                kind: ErrorKind::ZeroWorkers,
            });
        }
        if n > MAX_WORKERS {
            return Err(BuildError {
                kind: ErrorKind::TooManyWorkers(n),
            });
        }
        if self.max_queued == Some(0) {
            return Err(BuildError {
                kind: ErrorKind::ZeroQueue,
            });
        }
        let (locals, stealers): (Vec<_>, Vec<_>) = (0..n).map(|_| LocalQueues::new()).unzip();
        let shared = Arc::new(Shared::new(
            crate::lanes::Lanes::new(stealers, self.max_queued.map(|n| Box::new(Bound::new(n)))),
            n,
            self.on_start,
            self.on_stop,
        ));
        let pool = Pool {
            handle: Arc::new(PoolHandle {
                shared: shared.clone(),
            }),
        };
        // Every thread the pool needs: the workers, then the timer (named with index `n`).
        let mut name = self.thread_name;
        let mut name_of = |index: usize, default: String| match &mut name {
            Some(f) => f(index),
            None => default,
        };
        let all = n + crate::shared::POOL_THREADS_BESIDE_WORKERS;
        let mut bodies: Vec<(String, Box<dyn FnOnce() + Send>)> = Vec::with_capacity(all);
        for (index, local) in locals.into_iter().enumerate() {
            let s = shared.clone();
            let body = Box::new(move || WorkerThread::run(index, s, local));
            bodies.push((name_of(index, format!("weft-worker-{index}")), body));
        }
        let s = shared.clone();
        let timer = Box::new(move || crate::time::driver::run(s));
        bodies.push((name_of(n, "weft-timer".to_owned()), timer));

        let mut threads = Vec::with_capacity(all);
        for (thread_name, body) in bodies {
            let mut b = thread::Builder::new().name(thread_name);
            if let Some(size) = self.stack_size {
                b = b.stack_size(size);
            }
            match b.spawn(body) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Stop and join the threads already started; nothing was queued yet. The
                    // ones never started count as exited, or the join would wait for them.
                    for _ in threads.len()..all {
                        shared.thread_exited();
                    }
                    shared.set_threads(threads);
                    drop(pool);
                    return Err(BuildError {
                        kind: ErrorKind::Spawn(e),
                    });
                }
            }
        }
        shared.set_threads(threads);
        Ok(pool)
    }

    /// Builds the global pool behind `weft::spawn`, `weft::join` and `weft::scope` with
    /// these settings. Must come before their first use; after that (or a second call) it
    /// returns an error and changes nothing.
    ///
    /// ```
    /// // In this doctest the global pool is still unbuilt, so this succeeds...
    /// weft::Pool::builder().workers(2).build_global().unwrap();
    /// assert_eq!(weft::spawn(|| 7).join().unwrap(), 7);
    /// // ...and a second configuration is refused.
    /// let err = weft::Pool::builder().build_global().unwrap_err();
    /// assert!(err.is_global_already_initialized());
    /// ```
    pub fn build_global(self) -> Result<(), BuildError> {
        crate::global::set(self)
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.workers)
            .field("stack_size", &self.stack_size)
            .field("max_queued", &self.max_queued)
            .finish_non_exhaustive()
    }
}

/// The default worker count: [`NUM_THREADS_ENV`] if it holds a positive integer, else
/// the number of cores (`std::thread::available_parallelism`), else 1.
///
/// ```
/// assert!(weft::default_workers() >= 1);
/// ```
pub fn default_workers() -> usize {
    std::env::var(NUM_THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Why a pool could not be built.
#[derive(Debug)]
pub struct BuildError {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    ZeroWorkers,
    TooManyWorkers(usize),
    ZeroQueue,
    Spawn(io::Error),
    GlobalAlreadyInitialized,
}

impl BuildError {
    pub(crate) fn global_already_initialized() -> BuildError {
        BuildError {
            kind: ErrorKind::GlobalAlreadyInitialized,
        }
    }

    /// The builder asked for zero workers.
    pub fn is_zero_workers(&self) -> bool {
        matches!(self.kind, ErrorKind::ZeroWorkers)
    }

    /// The builder asked for more than 65535 workers.
    ///
    /// ```
    /// let err = weft::Pool::builder().workers(1 << 20).build().unwrap_err();
    /// assert!(err.is_too_many_workers());
    /// ```
    pub fn is_too_many_workers(&self) -> bool {
        matches!(self.kind, ErrorKind::TooManyWorkers(_))
    }

    /// The builder set [`max_queued(0)`](Builder::max_queued): no task could ever be
    /// queued.
    ///
    /// ```
    /// let err = weft::Pool::builder().max_queued(0).build().unwrap_err();
    /// assert!(err.is_zero_queue());
    /// ```
    pub fn is_zero_queue(&self) -> bool {
        matches!(self.kind, ErrorKind::ZeroQueue)
    }

    /// The operating system refused to start a worker thread.
    pub fn is_spawn_failed(&self) -> bool {
        matches!(self.kind, ErrorKind::Spawn(_))
    }

    /// `build_global` was called after the global pool already existed.
    pub fn is_global_already_initialized(&self) -> bool {
        matches!(self.kind, ErrorKind::GlobalAlreadyInitialized)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::ZeroWorkers => f.write_str("a pool needs at least one worker"),
            ErrorKind::TooManyWorkers(n) => {
                write!(f, "{n} workers requested; a pool has at most {MAX_WORKERS}")
            }
            ErrorKind::ZeroQueue => f.write_str("max_queued must be at least 1"),
            ErrorKind::Spawn(e) => write!(f, "could not start a worker thread: {e}"),
            ErrorKind::GlobalAlreadyInitialized => {
                f.write_str("the global pool was already initialized")
            }
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Spawn(e) => Some(e),
            _ => None,
        }
    }
}
