//! [`Builder`]: configures a [`Pool`] and starts its worker and timer threads.

use std::fmt;
use std::sync::Arc;
use std::thread;

use super::error::ErrorKind;
use super::{BuildError, Pool, PoolHandle};
use crate::bound::Bound;
use crate::lanes::LocalQueues;
use crate::shared::{Hook, Shared};
use crate::sleep::MAX_WORKERS;
use crate::worker::WorkerThread;

/// The environment variable read for the default worker count (like rayon's
/// `RAYON_NUM_THREADS`). Unset, empty, zero or unparsable: one worker per core.
pub const NUM_THREADS_ENV: &str = "WEFT_NUM_THREADS";

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
    /// ([`queued_high`](crate::Metrics::queued_high) etc.), and how often submitters were
    /// [`refused`](crate::Metrics::refused) or [`blocked`](crate::Metrics::blocked).
    ///
    /// `n` must be at least 1 (else `build` fails).
    ///
    /// [`TaskBuilder::try_spawn`]: crate::TaskBuilder::try_spawn
    /// [`TrySpawnError`]: crate::TrySpawnError
    /// [`Metrics`]: crate::Metrics
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
        super::global::set(self)
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
