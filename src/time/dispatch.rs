//! The seam between the timer and the pool whose timers it keeps.

use super::driver::Timer;
use crate::job::JobRef;
use crate::metrics::Counters;

/// What the timer driver and its senders need of the pool: the pool's `Shared`
/// implements it.
pub(crate) trait Dispatch: Send + Sync + 'static {
    /// The pool's timer (its inbox and hand-off).
    fn timer(&self) -> &Timer;

    /// The counter block the current thread writes.
    fn counters(&self) -> &Counters;

    /// Queues a timer that came due in `lane`: a task made QUEUED again, or a run of a
    /// periodic schedule.
    fn push_due(&self, lane: usize, job: JobRef);

    /// True once the pool shut down and its workers are leaving: the driver resolves
    /// what is left and exits.
    fn is_shut_down(&self) -> bool;

    /// The driver thread finished its work (the pool's shutdown waits for it).
    fn driver_exited(&self);
}
