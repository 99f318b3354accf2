//! [`TaskBuilder`] and [`RetryBuilder`]: the options of one task (lane, start time, time
//! limit, retries, period) and the spawns that apply them.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TrySpawnError;
use crate::lane::Priority;
use crate::retry::RetryPolicy;
use crate::shared::{Refused, Shared};
use crate::task::body::{Body, Limited, Once, RetryAny, Retrying, ShouldRetry};
use crate::task::JoinHandle;
use crate::time::periodic::PeriodicState;
use crate::time::periodic_handle::Periodic;

/// Options for one task; made by [`Pool::task`].
///
/// [`Pool::task`]: crate::Pool::task
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
    /// [`Metrics::timed_out`]: crate::Metrics::timed_out
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
    ///
    /// [`Pool::spawn`]: crate::Pool::spawn
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
    ///
    /// [`Builder::max_queued`]: crate::Builder::max_queued
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
            Target::Current => super::global::with_current_or_global(f),
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

impl<P> fmt::Debug for RetryBuilder<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("task", &self.task)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}
