//! [`Periodic`], the user's handle of a periodic schedule (the schedule itself is in
//! `periodic.rs`).

use std::fmt;
use std::sync::Arc;

use super::driver::Dispatch;
use super::periodic::PeriodicState;
use crate::loom::Ordering;

/// A running periodic schedule, made by [`TaskBuilder::every`](crate::TaskBuilder::every).
///
/// Runs its closure every period, measured from the previous *scheduled* time, not from
/// when the last run ended, so it does not drift. A run that would start while the
/// previous one is still queued or running, or a tick that has already passed (the pool was
/// busy), is skipped and counted in [`missed`](Self::missed): runs never pile up. A
/// panicking run is counted in [`panics`](Self::panics) and the schedule goes on.
///
/// Dropping the `Periodic` cancels the schedule (as dropping tokio's `Interval` stops it);
/// [`detach`](Self::detach) keeps it running until the pool shuts down, which cancels every
/// schedule.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let pool = weft::Pool::builder().workers(1).build().unwrap();
/// let ticks = Arc::new(AtomicU32::new(0));
/// let t = ticks.clone();
/// let every = pool.task().every(Duration::from_millis(1), move || {
///     t.fetch_add(1, Ordering::SeqCst);
/// });
/// while every.runs() < 3 {
///     std::thread::yield_now();
/// }
/// assert!(every.cancel());
/// assert!(ticks.load(Ordering::SeqCst) >= 3);
/// ```
pub struct Periodic {
    schedule: Arc<PeriodicState>,
    pool: Arc<dyn Dispatch>,
    detached: bool,
}

impl Periodic {
    pub(crate) fn new(schedule: Arc<PeriodicState>, pool: Arc<dyn Dispatch>) -> Periodic {
        Periodic {
            schedule,
            pool,
            detached: false,
        }
    }

    /// Stops the schedule: once this returns, no new run starts (a run already running
    /// may finish). Returns true if this call stopped it, false if it was already stopped
    /// (by an earlier `cancel`, or by shutdown).
    pub fn cancel(&self) -> bool {
        if !self.schedule.cancel() {
            return false;
        }
        // Drop the wheel entry now rather than at its next tick.
        self.pool
            .timer()
            .cancel_periodic(self.schedule.clone(), &*self.pool);
        true
    }

    /// True once the schedule was stopped.
    pub fn is_cancelled(&self) -> bool {
        self.schedule.is_cancelled()
    }

    /// Runs that returned normally.
    pub fn runs(&self) -> u64 {
        self.schedule.runs.load(Ordering::Relaxed)
    }

    /// Ticks skipped: the previous run was still queued or running, or the tick had
    /// already passed.
    pub fn missed(&self) -> u64 {
        self.schedule.missed.load(Ordering::Relaxed)
    }

    /// Runs that panicked (the schedule went on).
    pub fn panics(&self) -> u64 {
        self.schedule.panics.load(Ordering::Relaxed)
    }

    /// Lets the schedule run until the pool shuts down, without a handle.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        if !self.detached {
            self.cancel();
        }
    }
}

impl fmt::Debug for Periodic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Periodic")
            .field("runs", &self.runs())
            .field("missed", &self.missed())
            .field("panics", &self.panics())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
