//! What a task runs: a [`Body`] is attempted once (a plain `FnOnce` task) or several times
//! (a retrying `FnMut` task) within the same allocation.

use std::mem::ManuallyDrop;
use std::time::Duration;

use super::frame;
use crate::metrics::Counters;
use crate::retry::RetryPolicy;
use crate::util::{drop_counted, xorshift64};

/// The result of one attempt.
pub(crate) enum Attempt<O> {
    /// The body is gone (consumed or dropped); here is the output.
    Done(O),
    /// Run again after this delay; the body stays live.
    Retry(Duration),
    /// The run passed its time limit: the body is gone, and so is its output if any.
    TimedOut,
}

/// A task's body.
pub(crate) trait Body: Send + 'static {
    type Output: Send + 'static;

    /// Runs attempt number `attempt` (1 for the first run), on a worker, inside that
    /// worker's `execute` frame for this task. A panicking `Drop` of what it drops itself
    /// is caught and counted in `counters`.
    ///
    /// # Safety
    /// `body` is live. After `Done` or `TimedOut` it must be treated as gone. If this call
    /// unwinds, the caller calls `after_panic` with the same `body`.
    unsafe fn attempt(
        body: &mut ManuallyDrop<Self>,
        attempt: u32,
        counters: &Counters,
    ) -> Attempt<Self::Output>;

    /// Drops what an unwinding `attempt` left of the body.
    ///
    /// # Safety
    /// Called once, right after `attempt` unwound.
    unsafe fn after_panic(body: &mut ManuallyDrop<Self>, counters: &Counters);
}

/// A plain task: one `FnOnce`, consumed by its only attempt.
pub(crate) struct Once<F>(pub(crate) F);

impl<F, T> Body for Once<F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    type Output = T;

    unsafe fn attempt(body: &mut ManuallyDrop<Self>, _attempt: u32, _: &Counters) -> Attempt<T> {
        // SAFETY: live on entry (contract); moved out here, and the caller treats it as gone
        // after `Done` or an unwind (the closure is dropped by the unwind itself).
        let f = unsafe { ManuallyDrop::take(body) };
        Attempt::Done((f.0)())
    }

    unsafe fn after_panic(_body: &mut ManuallyDrop<Self>, _: &Counters) {
        // The closure was moved out before it ran; the unwind dropped it.
    }
}

/// Decides whether an error is worth another attempt. Implemented by [`RetryAny`] and by
/// every `FnMut(&E) -> bool + Send + 'static`.
pub trait ShouldRetry<E>: Send + 'static {
    /// True to retry after `error` (attempts permitting).
    fn should_retry(&mut self, error: &E) -> bool;
}

/// Retries on any error (the default of [`TaskBuilder::retry`](crate::TaskBuilder::retry)).
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryAny;

impl<E> ShouldRetry<E> for RetryAny {
    fn should_retry(&mut self, _error: &E) -> bool {
        true
    }
}

impl<E, P> ShouldRetry<E> for P
where
    P: FnMut(&E) -> bool + Send + 'static,
{
    fn should_retry(&mut self, error: &E) -> bool {
        self(error)
    }
}

/// A retrying task: an `FnMut` returning `Result`, run until it succeeds, the predicate
/// declines, or the policy's attempts run out.
pub(crate) struct Retrying<F, P> {
    pub(crate) f: F,
    pub(crate) should_retry: P,
    pub(crate) policy: RetryPolicy,
    /// Jitter randomness (xorshift state, never zero).
    pub(crate) seed: u64,
}

impl<F, P, T, E> Body for Retrying<F, P>
where
    F: FnMut() -> Result<T, E> + Send + 'static,
    P: ShouldRetry<E>,
    T: Send + 'static,
    E: Send + 'static,
{
    type Output = Result<T, E>;

    unsafe fn attempt(
        body: &mut ManuallyDrop<Self>,
        attempt: u32,
        counters: &Counters,
    ) -> Attempt<Result<T, E>> {
        let this: &mut Self = body;
        match (this.f)() {
            Err(e) if attempt < this.policy.attempts() && this.should_retry.should_retry(&e) => {
                this.seed = xorshift64(this.seed);
                Attempt::Retry(this.policy.jittered_delay(attempt, this.seed))
            }
            result => {
                // SAFETY: live (contract); dropped once here, and the caller treats it as
                // gone after `Done`.
                let body = unsafe { ManuallyDrop::take(body) };
                drop_counted(body, counters);
                Attempt::Done(result)
            }
        }
    }

    unsafe fn after_panic(body: &mut ManuallyDrop<Self>, counters: &Counters) {
        // SAFETY: `attempt` unwound from the closure or the predicate, before the body was
        // taken; it is live and dropped once here.
        drop_counted(unsafe { ManuallyDrop::take(body) }, counters);
    }
}

/// A body with a soft time limit per run (`TaskBuilder::time_limit`): each attempt gets
/// `limit` from its start. `checkpoint()` reports the limit once it passed; a run that
/// ends after it (however it ends, but for a panic) resolves the task as timed out.
pub(crate) struct Limited<B> {
    /// Dropped by `Limited`'s own `Drop` unless an attempt consumed it (module docs of
    /// `raw.rs`: the caller never drops a body after `Done` or `TimedOut`).
    pub(crate) body: ManuallyDrop<B>,
    pub(crate) limit: Duration,
}

impl<B> Limited<B> {
    pub(crate) fn new(body: B, limit: Duration) -> Self {
        Limited {
            body: ManuallyDrop::new(body),
            limit,
        }
    }

    /// The inner body, for a refused spawn handing it back.
    pub(crate) fn into_inner(self) -> B {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the body is moved out exactly once.
        unsafe { ManuallyDrop::take(&mut this.body) }
    }
}

impl<B> Drop for Limited<B> {
    fn drop(&mut self) {
        // SAFETY: a `Limited` is dropped as a whole only while its body is live (a task
        // drops a body it consumed by never dropping the `Limited` around it).
        unsafe { ManuallyDrop::drop(&mut self.body) }
    }
}

impl<B: Body> Body for Limited<B> {
    type Output = B::Output;

    unsafe fn attempt(
        body: &mut ManuallyDrop<Self>,
        attempt: u32,
        counters: &Counters,
    ) -> Attempt<B::Output> {
        frame::start_time_limit(body.limit);
        // SAFETY: our body is live (contract), so is the inner one; we pass on the contract.
        let result = unsafe { B::attempt(&mut body.body, attempt, counters) };
        if !frame::time_limit_passed() {
            return result;
        }
        match result {
            Attempt::Done(value) => drop_counted(value, counters),
            Attempt::Retry(_) => {
                // SAFETY: `Retry` left the inner body live; it is dropped once here, and
                // the caller treats ours as gone after `TimedOut`.
                drop_counted(unsafe { ManuallyDrop::take(&mut body.body) }, counters);
            }
            Attempt::TimedOut => {}
        }
        Attempt::TimedOut
    }

    unsafe fn after_panic(body: &mut ManuallyDrop<Self>, counters: &Counters) {
        // SAFETY: the inner attempt unwound through ours; the contract passes on.
        unsafe { B::after_panic(&mut body.body, counters) }
    }
}
