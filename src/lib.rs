//! weft: an in-process, work-stealing task scheduler with priority lanes and join handles.
//!
//! weft runs closures on a pool of worker threads, as rayon does, and gives every task a
//! [`JoinHandle`] that can be joined, awaited or cancelled, with three priority lanes and
//! a starvation guard. Tasks can wait for a deadline, repeat on a period, or be retried
//! with backoff, all driven by one timer thread per pool over a hierarchical timing
//! wheel. The free functions [`spawn`], [`join`], [`scope`] and [`task`] use the current
//! worker's pool, or a global pool built lazily on first use.
//!
//! # A tour
//!
//! ```
//! use weft::{Pool, Priority};
//!
//! // A pool with two workers (the global pool has one per core, or WEFT_NUM_THREADS).
//! let pool = Pool::builder().workers(2).build().unwrap();
//!
//! // Spawn: one allocation; the handle resolves to the value, a panic, or cancellation.
//! let answer = pool.spawn(|| 6 * 7);
//! assert_eq!(answer.join().unwrap(), 42);
//!
//! // Priorities: high work is searched first; low work is never starved.
//! let urgent = pool.task().priority(Priority::High).spawn(|| "urgent");
//! assert_eq!(urgent.join().unwrap(), "urgent");
//!
//! // Panics are caught and reported through the handle; the worker lives on.
//! assert!(pool.spawn(|| panic!("oops")).join().unwrap_err().is_panic());
//!
//! // Fork-join without allocation, as rayon::join.
//! fn sum(v: &[u64]) -> u64 {
//!     if v.len() <= 1024 { return v.iter().sum(); }
//!     let (l, r) = v.split_at(v.len() / 2);
//!     let (a, b) = weft::join(|| sum(l), || sum(r));
//!     a + b
//! }
//! let v: Vec<u64> = (1..=100_000).collect();
//! assert_eq!(pool.install(|| sum(&v)), 5_000_050_000);
//!
//! // Scoped tasks may borrow from the stack.
//! let mut halves = [0u64; 2];
//! pool.scope(|s| {
//!     let (a, b) = halves.split_at_mut(1);
//!     s.spawn(|_| a[0] = v[..50_000].iter().sum());
//!     s.spawn(|_| b[0] = v[50_000..].iter().sum());
//! });
//! assert_eq!(halves[0] + halves[1], 5_000_050_000);
//!
//! // Handles are futures too, for any async runtime.
//! let h = pool.spawn(|| 1);
//! let _fut: &dyn std::future::Future<Output = Result<i32, weft::JoinError>> = &h;
//!
//! // Time: delays, periodic schedules, retries with backoff.
//! use std::time::Duration;
//! let later = pool.task().delay(Duration::from_millis(5)).spawn(|| "later");
//! assert_eq!(later.join().unwrap(), "later");
//! let every = pool.task().every(Duration::from_millis(1), || {});
//! while every.runs() < 2 { std::thread::yield_now(); }
//! every.cancel();
//! let mut n = 0;
//! let retried = pool
//!     .task()
//!     .retry(weft::RetryPolicy::fixed(Duration::from_millis(1)))
//!     .spawn(move || { n += 1; if n < 2 { Err("flaky") } else { Ok(n) } });
//! assert_eq!(retried.join().unwrap(), Ok(2));
//!
//! // Metrics: lifetime counters summed from per-worker blocks, and queue depths.
//! let m = pool.metrics();
//! assert!(m.spawned >= 4 && m.panicked == 1);
//!
//! // Shutdown finishes queued work, joins the workers, and refuses new spawns.
//! pool.shutdown();
//! assert!(pool.spawn(|| ()).join().unwrap_err().is_shutdown());
//! ```
//!
//! # How a worker finds work
//!
//! Each lane (high, normal, low) has a global injector for tasks submitted from outside
//! the pool; each worker has, per lane, a FIFO deque for tasks it spawned and a LIFO deque
//! for `join` halves. A worker looks, lane by lane in priority order: at its own deques,
//! then at the lane's injector (taking a batch), then at other workers' deques, starting at
//! a random victim. On every 16th and 32nd pick of a 32-pick cycle it starts with the
//! normal, respectively the low lane instead: under a flood of high work each lower lane
//! still gets one pick in 32 per worker, and lower lanes together never take more than one
//! pick in 16 while higher work waits.
//!
//! Fine-grained `join` halves reach that LIFO deque late, by heartbeat scheduling (as
//! Spice and chili do). While a worker's joins come less than about 400 ns apart, a join
//! records its second half in a list only its worker sees, at no atomic cost (most of them,
//! below the three outermost recorded halves, are plain calls), and runs it itself right
//! after the first half if nobody took it; about every 100 µs of joining (a clock read,
//! amortised over the joins) the worker moves its oldest recorded half, the one with the
//! most work under it, to the deque, where idle workers steal it. So fine-grained
//! recursion costs about what the sequential code does. Coarser joins go to the deque at
//! once, as rayon's do; before any blocking wait a worker moves all it holds.
//!
//! A worker that finds nothing searches a few more rounds (yielding in between), then
//! parks. A spawn wakes one parked worker only when no worker is searching, so an idle
//! pool uses no CPU and a burst of spawns does not wake every thread at once.
//!
//! # What happens when
//!
//! - **A task panics:** the panic is caught, counted in [`Metrics::panicked`], and returned
//!   by its handle as a [`JoinError`]; the worker thread carries on.
//! - **A handle is dropped:** the task is detached; it still runs, and its output is dropped.
//! - **`cancel` is called:** a task that has not started never will, and its handle resolves
//!   to a cancelled error. A running task is not interrupted (`cancel` returns false) but
//!   asked to stop: [`checkpoint`] returns `Err` inside it, and its handle resolves to the
//!   cancelled error when it ends (a retrying task is not retried).
//! - **A time limit passes** ([`TaskBuilder::time_limit`], per run): [`checkpoint`] returns
//!   `Err` inside the task, and a run that ends after its limit resolves its handle to a
//!   time-limit error ([`JoinError::is_time_limit`]). weft never kills a thread.
//! - **A `Drop` panics** (a task's closure or output, dropped by weft): the panic is
//!   caught and counted ([`drop_panics`], [`Metrics::drop_panics`]) wherever it happens
//!   (a worker, the thread calling `cancel`, shutdown, the thread dropping a handle); it
//!   never kills a worker, unwinds out of weft's API, or hangs shutdown.
//! - **[`Pool::shutdown`]:** new spawns are refused (their handles resolve to a shut-down
//!   error at once), queued tasks still run, the workers exit and are joined. Every handle
//!   resolves. [`Pool::shutdown_now`] resolves queued tasks as shut down instead of
//!   running them; [`Pool::shutdown_timeout`] waits a bounded time, then does so, and
//!   returns a [`ShutdownReport`]. Dropping the last `Pool` handle is a `shutdown`. Called
//!   from one of the pool's own workers, shutdown does not join any thread (that could
//!   deadlock).
//! - **A full queue:** by default queues are unbounded (memory is the limit).
//!   [`Builder::max_queued`] bounds each lane: [`Pool::try_spawn`] then refuses with a
//!   [`TrySpawnError`] that hands the closure back, and `spawn` waits for room (a worker
//!   runs queued work while it waits). Shutdown releases waiting submitters, whose spawns
//!   are refused.
//! - **A delayed task:** waits in the pool's timer and joins its lane once its deadline has
//!   passed, never before (deadlines round up to the timer's 1 ms tick). Due tasks enter
//!   their lane in deadline order. `cancel` while it waits removes it from the timer at
//!   once. A delay past what an `Instant` can hold (`Duration::MAX`) never fires on its own.
//! - **A retried task:** on `Err` it goes back to the timer for the policy's backoff, in the
//!   same allocation and under the same handle; `cancel` wins while it waits. A panic is not
//!   retried. The handle resolves to the first `Ok`, or to the last `Err` when the attempts
//!   run out or the predicate declines.
//! - **A periodic schedule:** runs every period, counted from the previous *scheduled* time
//!   (no drift). A tick that comes while the previous run is still queued or running, or
//!   that has already passed because the pool was busy, is skipped and counted in
//!   [`Periodic::missed`]: a late schedule never piles up runs. A panicking run is counted
//!   and the schedule goes on.
//! - **Timers at shutdown:** `shutdown` (and `shutdown_now`) resolves every task still
//!   waiting for its deadline or its next retry as shut down, and cancels every periodic
//!   schedule; tasks already queued still run (`shutdown`) or are resolved too
//!   (`shutdown_now`).
//! - **Join on a worker:** the worker runs other queued work while it waits, so nested
//!   joins cannot deadlock the pool, even with one worker. A `join`'s second half may not
//!   be offered to other workers before the first half returns (it is shared on a
//!   heartbeat, or when the worker blocks in weft): one half must not wait, outside weft,
//!   for the other.
//!
//! Within one lane, tasks submitted from one thread start in submission order when one
//! worker takes them; with several workers, roughly so.
//!
//! # How the crate is built
//!
//! A map for contributors; each file's own docs hold the details. Paths are under `src/`.
//!
//! **Parts, from the bottom up.** Nothing below the pool knows the pool: the task and the
//! timer reach it through one small trait each.
//!
//! | part | owns |
//! | --- | --- |
//! | `loom.rs`, `util.rs` | the std/loom switch of every atomic; the unwind helpers (`drop_quietly`, `drop_counted`, `AbortOnPanic`, `panic_message`) and xorshift |
//! | `metrics.rs`, `latch.rs`, `job.rs` | per-worker counters; one-shot latches and `latch::block_until`, the one blocking wait (run work on a worker, else park); `JobRef`, what a queue carries (four kinds of job) |
//! | `task/` | a task: `header.rs` (what others see of it), `state.rs` (the state word), `raw.rs` (the allocation and the harness), `body.rs`, `frame.rs` (what this thread runs: checkpoints, time limits), `handle.rs` ([`JoinHandle`]); `schedule.rs`: the `Schedule` seam, all it knows of its owner |
//! | `time/` | `wheel.rs` (the timing wheel), `driver.rs` (the timer thread and its `Dispatch` seam to the pool), periodic schedules |
//! | `lane.rs`, `lanes.rs`, `bound.rs`, `sleep.rs` | [`Priority`] and `Lane`; the lanes' deques and injectors and the search order; `max_queued` admission; the sleep protocol |
//! | **the hub**: `shared.rs`, `worker.rs` | `Shared`, one pool's state, which every worker and `Pool` handle points at, implements `Schedule` and `Dispatch`, routes pushes and owns shutdown; `WorkerThread`, the find-run-park loop. The two import each other, and are the only files of the core that do |
//! | `pool/`, `scope.rs`, `join/` | the public API over the hub: [`Pool`], [`Builder`], [`TaskBuilder`], the global pool (`pool/global.rs`), [`Scope`], [`join`] with its heartbeat |
//! | `registry.rs`, `service/`, `celery/` | named tasks (features); the node-local service; Celery's protocol (`celery/mod.rs` and `celery/worker/mod.rs` describe their parts) |
//!
//! **A spawn.** [`spawn`] → `pool::global::with_current_or_global` → `Shared::spawn` →
//! `task::raw::allocate` (one allocation, QUEUED, two references: handle and queue) →
//! `Shared::push` (the current worker's deque, else the lane's injector; wakes a parked
//! worker if none is searching, `sleep.rs`) → a worker's `WorkerThread::find_work`
//! (`Lanes::find`) → `WorkerThread::execute` → `task::frame::enter` → the task vtable's
//! `execute` (`raw.rs`: claim, `Body::attempt` under `catch_unwind`, `complete`, wake the
//! joiner) → [`JoinHandle::join`] → `latch::block_until`.
//!
//! **A retry.** The attempt returns `Attempt::Retry` (`body.rs`, `Retrying`) →
//! `Cell::reschedule` (`raw.rs`: RUNNING → SCHEDULED) → `Schedule::retry_after` (on
//! `Shared`) → `Timer::insert` → the driver thread (`time/driver.rs`, `run`, `fire_due`) →
//! `task::header::fire` → `Dispatch::push_due` → a worker runs the next attempt in the same
//! allocation. A `cancel` meanwhile wins: `Schedule::cancel_retry` → `Timer::cancel`.
//!
//! **A join.** [`join`] (`join/mod.rs`) on a worker records `b` as a `StackJob` in the
//! worker's private frames (`join/frames.rs`), runs `a`, then runs `b` inline, or, if the
//! heartbeat (`join/heartbeat.rs`) shared it and a thief took it, waits on its `SpinLatch`
//! running other work (`WorkerThread::wait_until`). Off a worker it runs inside
//! [`Pool::install`] of the global pool.
//!
//! **A Celery message** (feature `redis`). The consumer thread (`celery/worker/intake.rs`,
//! `consume`) fetches from the transport (`celery/redis/transport.rs` or
//! `celery/amqp/`), decodes it (`TaskMessage::decode`, `celery/protocol.rs`), screens it
//! (`screen`: revoked, expired, ETA), finds the task in the registry (`registry.rs`) and spawns its run
//! (`spawn`, planned by `celery/worker/run.rs`) on the worker's [`Pool`]; the run's result
//! and what follows it in a workflow (`celery/canvas/after.rs`) go to the finisher thread
//! (`celery/worker/finisher.rs`), which writes results and acknowledges messages in
//! batches through the transport's settler.
//!
//! **Numbered invariants and protocols** live with the state they guard: the task state
//! word (`task/state.rs`), the sleep and shutdown hand-offs (`sleep.rs`, `shared.rs`), the
//! timer hand-off and loop (`time/driver.rs`), the wheel (`time/wheel.rs`), periodic runs
//! (`time/periodic.rs`), `join` (`join/mod.rs`), the service's store, journal, event
//! stream and connections (`service/store.rs`, `journal.rs`, `live.rs`, `serve.rs`,
//! `socket.rs`), and Celery's beat, rate limits and Sentinel (`celery/beat/mod.rs`,
//! `celery/worker/limits.rs`, `celery/sentinel.rs`).
//!
//! **Where tests go.** Unit tests in a `#[cfg(test)] mod tests` at the end of their file
//! while the file is short (about 150 lines), else in a `tests.rs` of their own:
//! `x/tests.rs` for `x.rs` or `x/mod.rs` (e.g. `time/wheel/tests.rs`); loom
//! and shuttle models in `<module>/tests/loom_*.rs` (`cfg(loom)`; the task's models run the
//! real harness, `task/tests/loom_raw.rs`); tests of the public API, and fault tests that
//! start brokers or processes, in the crate's `tests/` folder, sharing `tests/common/`.
//!
//! # Cargo features
//!
//! The default build depends only on crossbeam-deque, crossbeam-utils and parking_lot.
//!
//! - `service`: `weft::service`, the node-local HTTP+JSON service: a [`Pool`] running
//!   named tasks (`service::Registry`) behind a Unix socket (or TCP), with a result store, long
//!   polls, cancellation and Prometheus metrics (axum, tokio, serde).
//! - `cli`: the `weft` command-line client of a node (adds clap and indicatif to `service`).
//! - `redis`: `weft::celery`, Celery's protocol v2 over Redis: workers and a client that
//!   interoperate with Python Celery (redis, serde, base64, uuid).
//! - `amqp`: the same over RabbitMQ / AMQP 0-9-1, results in Redis (adds lapin, driven by
//!   its async-global-executor runtime; no tokio).

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![doc(test(attr(deny(warnings))))]

mod bound;
#[cfg(feature = "redis")]
pub mod celery;
mod job;
mod join;
mod lane;
mod lanes;
mod latch;
mod loom;
mod metrics;
mod pool;
#[cfg(any(feature = "service", feature = "redis"))]
pub mod registry;
mod retry;
mod scope;
#[cfg(feature = "service")]
pub mod service;
mod shared;
mod sleep;
mod task;
mod time;
mod util;
mod worker;

pub use join::join;
pub use lane::Priority;
pub use metrics::Metrics;
pub use pool::{
    default_workers, BuildError, Builder, Pool, RetryBuilder, ShutdownReport, TaskBuilder,
    TrySpawnError, NUM_THREADS_ENV,
};
pub use retry::{RetryPolicy, DEFAULT_MAX_ATTEMPTS};
pub use scope::Scope;
pub use task::{Cancelled, JoinError, JoinHandle, RetryAny, ShouldRetry};
pub use time::periodic_handle::Periodic;

use pool::global;
use worker::WorkerThread;

/// Internals exposed for weft's own benchmarks (`benches/timer.rs`). Not a stable API:
/// anything here may change in any release.
#[doc(hidden)]
pub mod __bench {
    pub use crate::time::wheel::{Key, Wheel};
}

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Spawns `f` on the current worker's pool, or on the global pool when called from
/// outside any pool. See [`Pool::spawn`].
///
/// ```
/// let h = weft::spawn(|| 2 + 2);
/// assert_eq!(h.join().unwrap(), 4);
/// ```
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    global::with_current_or_global(|shared| shared.spawn(Priority::Normal, f))
}

/// Task options for the pool of the thread that calls `spawn` on them: the current
/// worker's pool, or the global pool. See [`Pool::task`].
///
/// ```
/// let h = weft::task().priority(weft::Priority::High).spawn(|| 1);
/// assert_eq!(h.join().unwrap(), 1);
/// ```
pub fn task() -> TaskBuilder<'static> {
    TaskBuilder::current()
}

/// Runs `op` in a scope of the current worker's pool, or of the global pool. See
/// [`Pool::scope`].
///
/// ```
/// let data = vec![1, 2, 3];
/// let mut total = 0;
/// weft::scope(|s| {
///     s.spawn(|_| total = data.iter().sum());
/// });
/// assert_eq!(total, 6);
/// ```
pub fn scope<'scope, OP, R>(op: OP) -> R
where
    OP: FnOnce(&Scope<'scope>) -> R,
{
    global::with_current_or_global(|shared| scope::run(shared, op))
}

/// Asks whether the task running on this thread should stop: `Err` once its handle
/// requested cancellation ([`JoinHandle::cancel`] on a running task) or its
/// [`time_limit`](TaskBuilder::time_limit) passed. Call it now and then in long-running
/// tasks and return early on `Err`; weft never interrupts a task by force.
///
/// Once it said so (or once cancellation was requested or the limit passed at all), the
/// task's handle resolves to the cancelled or time-limit [`JoinError`] whatever the task
/// returns; a cancellation or limit that comes after the task returned changes nothing.
/// It answers for the innermost task this thread runs: inside a `join` half or scope job
/// run by another worker it sees no task, and outside any pool it returns `Ok(())`.
///
/// ```
/// use std::sync::mpsc::channel;
/// let pool = weft::Pool::builder().workers(1).build().unwrap();
/// let (started_tx, started_rx) = channel();
/// let h = pool.spawn(move || {
///     started_tx.send(()).unwrap();
///     let mut rounds = 0u64;
///     while weft::checkpoint().is_ok() {
///         rounds += 1; // a slice of a long computation
///         std::thread::yield_now();
///     }
///     rounds
/// });
/// started_rx.recv().unwrap();
/// assert!(!h.cancel(), "already running: cancellation is requested instead");
/// assert!(h.join().unwrap_err().is_cancelled());
/// ```
pub fn checkpoint() -> Result<(), Cancelled> {
    task::frame::checkpoint()
}

/// Panics caught from the `Drop` of task closures and outputs in this process, in every
/// pool. weft drops user values where a panic must not escape (a worker, shutdown,
/// `cancel`, a `JoinHandle` dropped with an unread output): such a panic is caught,
/// printed by the panic hook, and counted here, and in the pool's
/// [`Metrics::drop_panics`] where the pool is known to be alive. It never kills a worker
/// or unwinds out of weft's API.
///
/// ```
/// struct Loud;
/// impl Drop for Loud {
///     fn drop(&mut self) { panic!("drop"); }
/// }
/// let pool = weft::Pool::builder().workers(1).build().unwrap();
/// let before = weft::drop_panics();
/// let h = pool.spawn(|| Loud);
/// while !h.is_finished() { std::thread::yield_now(); }
/// drop(h); // drops the unread output: the panic is caught here
/// assert_eq!(weft::drop_panics(), before + 1);
/// ```
pub fn drop_panics() -> u64 {
    util::drop_panics()
}

/// The index of the current worker thread in its pool (`0..workers`), or `None` when
/// called from outside any weft pool.
///
/// ```
/// assert_eq!(weft::current_thread_index(), None);
/// let pool = weft::Pool::builder().workers(2).build().unwrap();
/// assert!(pool.install(|| weft::current_thread_index().unwrap() < 2));
/// ```
pub fn current_thread_index() -> Option<usize> {
    WorkerThread::current().map(|w| w.index)
}
