//! Periodic schedules: a schedule's shared state and the run job the driver queues (the
//! user's handle, `Periodic`, is in `periodic_handle.rs`).
//!
//! The driver keeps one wheel entry per schedule, due at the next scheduled tick. When it
//! fires, the driver queues a run job in the schedule's lane (unless a run is still queued
//! or running: then this tick is *coalesced* and counted as missed), and reinserts the
//! entry at `previous scheduled tick + period`, so lateness never accumulates (no drift).
//! Ticks already in the past are skipped and counted as missed, so a late schedule never
//! queues a burst of runs.
//!
//! | bit | name | set by | cleared by |
//! | --- | --- | --- | --- |
//! | 0 | `QUEUED` | the driver, when it queues a run | the run, when it starts (or is dropped) |
//! | 1 | `RUNNING` | the run, when it starts | the run, when it ends |
//! | 2 | `CANCELLED` | `Periodic::cancel`, drop, or shutdown | never |
//!
//! A run starts only by a CAS from `QUEUED` without `CANCELLED`, so once `cancel` has set
//! `CANCELLED` no run starts; one already running finishes.

use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::job::{JobHeader, JobRef, JobVtable};
use crate::lane::Lane;
use crate::loom::{AtomicU64, AtomicU8, Ordering};
use crate::metrics::Counters;
use crate::util::AbortOnPanic;

const QUEUED: u8 = 1 << 0;
const RUNNING: u8 = 1 << 1;
const CANCELLED: u8 = 1 << 2;

/// The shared state of one schedule.
pub(crate) struct PeriodicState {
    body: Mutex<Box<dyn FnMut() + Send>>,
    state: AtomicU8,
    /// Runs that returned normally (read by the handle).
    pub(super) runs: AtomicU64,
    /// Ticks skipped: a run still queued or running, or the tick already past.
    pub(super) missed: AtomicU64,
    /// Runs that panicked.
    pub(super) panics: AtomicU64,
    /// The period in ticks (at least 1).
    pub(crate) period: u64,
    pub(crate) lane: Lane,
}

impl PeriodicState {
    pub(crate) fn new(body: Box<dyn FnMut() + Send>, period: u64, lane: Lane) -> PeriodicState {
        PeriodicState {
            body: Mutex::new(body),
            state: AtomicU8::new(0),
            runs: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            period: period.max(1),
            lane,
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) & CANCELLED != 0
    }

    /// Sets CANCELLED; true if this call did it.
    pub(crate) fn cancel(&self) -> bool {
        // AcqRel: after this, no run can win its start CAS.
        self.state.fetch_or(CANCELLED, Ordering::AcqRel) & CANCELLED == 0
    }

    pub(crate) fn add_missed(&self, n: u64) {
        self.missed.fetch_add(n, Ordering::Relaxed);
    }

    /// The driver's fire: returns a run job to queue, or `None` if the previous run is
    /// still queued or running (counted as missed) or the schedule is cancelled.
    pub(crate) fn try_queue_run(self: &Arc<Self>) -> Option<JobRef> {
        let s = self.state.load(Ordering::Acquire);
        if s & CANCELLED != 0 {
            return None;
        }
        if s & (QUEUED | RUNNING) != 0 {
            self.add_missed(1);
            return None;
        }
        // Only the driver sets QUEUED, so no other thread races this bit.
        self.state.fetch_or(QUEUED, Ordering::AcqRel);
        Some(RunJob::into_job_ref(self.clone()))
    }
}

impl Drop for PeriodicState {
    fn drop(&mut self) {
        // The last reference may go on the driver thread, a worker or the handle's
        // thread: a panicking `Drop` of the user's closure must not unwind there.
        let body = std::mem::replace(self.body.get_mut(), Box::new(|| {}));
        crate::util::drop_quietly(body);
    }
}

/// A queued run of a schedule; a job of its own kind (see `job.rs`): executing it runs the
/// body once; discarding it (shutdown) skips the run.
#[repr(C)]
struct RunJob {
    header: JobHeader,
    schedule: Arc<PeriodicState>,
}

impl RunJob {
    const VTABLE: JobVtable = JobVtable {
        execute: Self::execute,
        discard: Self::discard,
        is_task: false,
    };

    fn into_job_ref(schedule: Arc<PeriodicState>) -> JobRef {
        let job = Box::new(RunJob {
            header: JobHeader {
                vtable: &Self::VTABLE,
            },
            schedule,
        });
        // SAFETY: a leaked box, live until `execute` or `discard` frees it; header first.
        unsafe { JobRef::new(NonNull::from(Box::leak(job)).cast()) }
    }

    /// # Safety
    /// `this` came from `into_job_ref` and is owned by the caller.
    unsafe fn take(this: NonNull<JobHeader>) -> Box<RunJob> {
        // SAFETY: the leaked box from `into_job_ref`, owned by the caller.
        unsafe { Box::from_raw(this.cast::<RunJob>().as_ptr()) }
    }

    /// # Safety
    /// As for `take`.
    unsafe fn execute(this: NonNull<JobHeader>, _counters: &Counters) {
        // SAFETY: the caller's contract.
        let job = unsafe { Self::take(this) };
        let s = &job.schedule;
        let mut cur = s.state.load(Ordering::Acquire);
        loop {
            if cur & CANCELLED != 0 {
                s.state.fetch_and(!QUEUED, Ordering::AcqRel);
                return;
            }
            // AcqRel: pairs with `cancel`; exactly one of {cancel, this start} is first.
            match s.state.compare_exchange_weak(
                cur,
                (cur & !QUEUED) | RUNNING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        let abort = AbortOnPanic;
        let mut body = s.body.lock();
        match panic::catch_unwind(AssertUnwindSafe(&mut *body)) {
            Ok(()) => s.runs.fetch_add(1, Ordering::Relaxed),
            Err(payload) => {
                crate::util::drop_quietly(payload);
                s.panics.fetch_add(1, Ordering::Relaxed)
            }
        };
        drop(body);
        s.state.fetch_and(!RUNNING, Ordering::AcqRel);
        std::mem::forget(abort);
    }

    /// # Safety
    /// As for `take`.
    unsafe fn discard(this: NonNull<JobHeader>, _counters: &Counters) {
        // SAFETY: the caller's contract.
        let job = unsafe { Self::take(this) };
        job.schedule.state.fetch_and(!QUEUED, Ordering::AcqRel);
    }
}
