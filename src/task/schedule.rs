//! The seam between a task and the pool that runs it.
//!
//! The harness in `raw.rs` needs four things of whoever accepted a task, and [`Schedule`]
//! is all it knows of it: whether it still takes work, the counters of the thread running
//! the task, a timer for the next attempt of a retrying task, and a way to drop a
//! cancelled retry's timer entry early. The pool's `Shared` implements it; the loom model
//! of the task (`tests/loom_raw.rs`) implements it with a stand-in, so that it runs the
//! real harness. (The same seam as tokio's `task::Schedule`.)

use std::time::Duration;

use super::header::TaskRef;
use crate::job::JobRef;
use crate::lane::Lane;
use crate::metrics::Counters;

/// What a task needs of its owner (the pool that accepted it).
///
/// A task reaches its owner only while the owner is alive: a claimer runs it from one of
/// the owner's queues or its timer, and a canceller holds the handle of a task waiting in
/// them (invariants 5 and 6 of `state.rs`).
pub(crate) trait Schedule: Sync + 'static {
    /// True once the owner refuses new work: a failed attempt then resolves the task as
    /// shut down instead of retrying.
    fn is_closed(&self) -> bool;

    /// The counter block the current thread writes.
    fn counters(&self) -> &Counters;

    /// Takes `job`, the queued reference of a task that is now SCHEDULED, and makes it
    /// QUEUED again in `lane` once `delay` passed (or resolves it at shutdown).
    fn retry_after(&self, delay: Duration, job: JobRef, lane: Lane);

    /// A SCHEDULED task was cancelled: drop its timer entry now. `task` is an extra
    /// reference that keeps the address from being reused until the entry is gone.
    fn cancel_retry(&self, task: TaskRef);
}

/// The owner of a task that never had one (a spawn refused by a closed pool): such a task
/// is born COMPLETE, so nothing ever asks its owner anything, and the type has no values.
pub(crate) enum Unowned {}

impl Schedule for Unowned {
    fn is_closed(&self) -> bool {
        match *self {}
    }

    fn counters(&self) -> &Counters {
        match *self {}
    }

    fn retry_after(&self, _: Duration, _: JobRef, _: Lane) {
        match *self {}
    }

    fn cancel_retry(&self, _: TaskRef) {
        match *self {}
    }
}
