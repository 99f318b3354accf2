//! [`Pool`], its [`Builder`], and the task options builder [`TaskBuilder`].
//!
//! One file each:
//! - `mod.rs`: [`Pool`], the user's cheap handle, and [`ShutdownReport`];
//! - `builder.rs`: [`Builder`], which starts the worker and timer threads, and
//!   [`default_workers`];
//! - `task_builder.rs`: [`TaskBuilder`] and [`RetryBuilder`], the options of one task;
//! - `error.rs`: [`BuildError`] and [`TrySpawnError`];
//! - `global.rs`: the global pool behind `weft::spawn`, `weft::join` and `weft::scope`.
//!
//! Every `Pool` clone holds one `Arc<PoolHandle>`; the worker and timer threads hold the
//! pool's `Arc<Shared>` directly. So the pool shuts down gracefully when the last `Pool`
//! clone is dropped, whatever its threads still hold. The global pool lives in a
//! `OnceLock` and is never dropped.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::job::StackJob;
use crate::lane::Priority;
use crate::latch::ThreadLatch;
use crate::metrics::Metrics;
use crate::scope::Scope;
use crate::shared::Shared;
use crate::task::JoinHandle;

mod builder;
mod error;
pub(crate) mod global;
mod task_builder;

pub use builder::{default_workers, Builder, NUM_THREADS_ENV};
pub use error::{BuildError, TrySpawnError};
pub use task_builder::{RetryBuilder, TaskBuilder};

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
        global::pool()
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
