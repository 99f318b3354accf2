//! What a task runs: a [`Body`] is attempted once (a plain `FnOnce` task) or several times
//! (a retrying `FnMut` task) within the same allocation.

use std::mem::ManuallyDrop;
use std::time::Duration;

use crate::retry::RetryPolicy;

/// The result of one attempt.
pub(crate) enum Attempt<O> {
    /// The body is gone (consumed or dropped); here is the output.
    Done(O),
    /// Run again after this delay; the body stays live.
    Retry(Duration),
}

/// A task's body.
pub(crate) trait Body: Send + 'static {
    type Output: Send + 'static;

    /// Runs attempt number `attempt` (1 for the first run).
    ///
    /// # Safety
    /// `body` is live. After `Done` it must be treated as gone. If this call unwinds, the
    /// caller calls `after_panic` with the same `body`.
    unsafe fn attempt(body: &mut ManuallyDrop<Self>, attempt: u32) -> Attempt<Self::Output>;

    /// Drops what an unwinding `attempt` left of the body.
    ///
    /// # Safety
    /// Called once, right after `attempt` unwound.
    unsafe fn after_panic(body: &mut ManuallyDrop<Self>);
}

/// A plain task: one `FnOnce`, consumed by its only attempt.
pub(crate) struct Once<F>(pub(crate) F);

impl<F, T> Body for Once<F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    type Output = T;

    unsafe fn attempt(body: &mut ManuallyDrop<Self>, _attempt: u32) -> Attempt<T> {
        // SAFETY: live on entry (contract); moved out here, and the caller treats it as gone
        // after `Done` or an unwind (the closure is dropped by the unwind itself).
        let f = unsafe { ManuallyDrop::take(body) };
        Attempt::Done((f.0)())
    }

    unsafe fn after_panic(_body: &mut ManuallyDrop<Self>) {
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

    unsafe fn attempt(body: &mut ManuallyDrop<Self>, attempt: u32) -> Attempt<Result<T, E>> {
        let this: &mut Self = body;
        match (this.f)() {
            Err(e) if attempt < this.policy.attempts() && this.should_retry.should_retry(&e) => {
                this.seed ^= this.seed << 13;
                this.seed ^= this.seed >> 7;
                this.seed ^= this.seed << 17;
                Attempt::Retry(this.policy.jittered_delay(attempt, this.seed))
            }
            result => {
                // SAFETY: live (contract); dropped once here, and the caller treats it as
                // gone after `Done`.
                let body = unsafe { ManuallyDrop::take(body) };
                super::raw::drop_quietly(body);
                Attempt::Done(result)
            }
        }
    }

    unsafe fn after_panic(body: &mut ManuallyDrop<Self>) {
        // SAFETY: `attempt` unwound from the closure or the predicate, before the body was
        // taken; it is live and dropped once here.
        super::raw::drop_quietly(unsafe { ManuallyDrop::take(body) });
    }
}
