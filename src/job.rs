//! Jobs: what the queues carry.
//!
//! Every queue holds [`JobRef`]s: one pointer to a [`JobHeader`] at the start of some
//! job. Four kinds exist, each `#[repr(C)]` with the header first:
//!
//! | kind | lives | made by | freed by |
//! | --- | --- | --- | --- |
//! | task (`task::raw::Cell`) | heap, one allocation | `spawn` | the last task reference |
//! | [`StackJob`] | the stack of a thread blocked on its latch | `join`, `install` | that frame |
//! | [`HeapJob`] | heap | `Scope::spawn` | itself, after it ran |
//! | a periodic run (`time::periodic::RunJob`) | heap | the timer driver, when a schedule comes due | itself, when run or discarded |
//!
//! A `JobRef` in a queue owns the right to run the job exactly once. Whoever takes it out
//! calls either [`JobRef::execute`] (run it, on a worker) or [`JobRef::discard`] (the pool is
//! shutting down: a task resolves to "shut down", while stack and scope jobs still run,
//! because a caller is blocked on them and they may borrow its stack).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;

use crate::latch::Latch;
use crate::loom::UnsafeCell;
use crate::metrics::Counters;
use crate::util::AbortOnPanic;

/// The functions a queue needs to hand a job over.
pub(crate) struct JobVtable {
    /// Runs the job on the current thread.
    ///
    /// # Safety
    /// The caller owns the `JobRef` (took it out of a queue) and gives it up.
    pub(crate) execute: unsafe fn(NonNull<JobHeader>, &Counters),
    /// Resolves the job without running user work where it can (see the module docs).
    ///
    /// # Safety
    /// As for `execute`.
    pub(crate) discard: unsafe fn(NonNull<JobHeader>, &Counters),
    /// True for tasks (`task::raw`), whose header continues with a `task::raw::Header`.
    pub(crate) is_task: bool,
}

/// The first field of every job.
#[repr(C)]
pub(crate) struct JobHeader {
    /// Points at a `'static` table (for tasks, the first field of the task's larger table).
    pub(crate) vtable: *const JobVtable,
}

/// A type-erased, owned reference to a queued job. 8 bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct JobRef {
    ptr: NonNull<JobHeader>,
}

// SAFETY: every job kind is `Send` by construction: tasks and heap jobs require `F: Send`
// (and `T: Send`); stack jobs require their closures and results to be `Send`. A `JobRef`
// is the only handle that may run the job, so moving it between threads moves that right.
unsafe impl Send for JobRef {}

impl JobRef {
    /// Wraps a pointer to a job header.
    ///
    /// # Safety
    /// `ptr` points at a live job whose header's vtable fits it, and the caller gives the
    /// right to run it once to the returned `JobRef`.
    pub(crate) unsafe fn new(ptr: NonNull<JobHeader>) -> JobRef {
        JobRef { ptr }
    }

    /// Runs the job, consuming the reference.
    pub(crate) fn execute(self, counters: &Counters) {
        // SAFETY: a `JobRef` always points at a live job with a matching vtable (invariant
        // of `JobRef::new`), and we own it.
        unsafe {
            let vtable = &*self.ptr.as_ref().vtable;
            (vtable.execute)(self.ptr, counters)
        }
    }

    /// Resolves the job without running a task (see the module docs).
    pub(crate) fn discard(self, counters: &Counters) {
        // SAFETY: as in `execute`.
        unsafe {
            let vtable = &*self.ptr.as_ref().vtable;
            (vtable.discard)(self.ptr, counters)
        }
    }

    /// The header pointer, for identity comparisons.
    pub(crate) fn as_ptr(&self) -> NonNull<JobHeader> {
        self.ptr
    }
}

/// What a job left behind.
pub(crate) enum JobResult<R> {
    None,
    Ok(R),
    Panic(Box<dyn Any + Send>),
}

impl<R> JobResult<R> {
    /// Returns the value or re-raises the panic.
    pub(crate) fn into_return_value(self) -> R {
        match self {
            JobResult::Ok(r) => r,
            JobResult::Panic(p) => panic::resume_unwind(p),
            JobResult::None => unreachable!("job result read before the job ran"),
        }
    }
}

/// A job that lives on the stack of the thread that waits for it (`join`'s second half,
/// `install` from outside the pool).
///
/// Protocol: the owner pushes `as_job_ref()`, then either pops it back and calls
/// `run_inline`, or waits until `latch` is set by whoever ran it. The owner's frame outlives
/// the job because the owner never returns before one of those two happened.
#[repr(C)]
pub(crate) struct StackJob<L, F, R> {
    header: JobHeader,
    pub(crate) latch: L,
    func: UnsafeCell<Option<F>>,
    result: UnsafeCell<JobResult<R>>,
}

impl<L, F, R> StackJob<L, F, R>
where
    L: Latch,
    F: FnOnce(bool) -> R + Send,
    R: Send,
{
    const VTABLE: JobVtable = JobVtable {
        execute: Self::execute,
        discard: Self::execute,
        is_task: false,
    };

    pub(crate) fn new(func: F, latch: L) -> Self {
        StackJob {
            header: JobHeader {
                vtable: &Self::VTABLE,
            },
            latch,
            func: UnsafeCell::new(Some(func)),
            result: UnsafeCell::new(JobResult::None),
        }
    }

    /// A reference to push on a queue.
    ///
    /// # Safety
    /// `self` must stay where it is, alive, until the job ran (the latch is set) or the
    /// reference was popped back unexecuted; and at most one reference may be out at once.
    pub(crate) unsafe fn as_job_ref(&self) -> JobRef {
        // SAFETY: the header is the first field of a `#[repr(C)]` struct, so a pointer to
        // `self` is a pointer to it; liveness is the caller's promise.
        unsafe { JobRef::new(NonNull::from(self).cast()) }
    }

    /// Runs the closure on the owner's thread after popping the job back; no latch involved.
    pub(crate) fn run_inline(self, migrated: bool) -> R {
        let func = self.func.with_mut(|f| {
            // SAFETY: the job was popped back by its owner, so no other thread can reach it.
            unsafe { (*f).take() }
        });
        func.expect("stack job already ran")(migrated)
    }

    /// Takes the result once the latch is set; re-raises a panic from the closure.
    pub(crate) fn into_result(self) -> R {
        self.result
            .with_mut(|r| {
                // SAFETY: the latch is set, so the executing thread finished writing and never
                // touches the job again; the owner has exclusive access.
                unsafe { std::mem::replace(&mut *r, JobResult::None) }
            })
            .into_return_value()
    }

    /// # Safety
    /// `this` points at a live `StackJob<L, F, R>` whose reference the caller owns.
    unsafe fn execute(this: NonNull<JobHeader>, _counters: &Counters) {
        let this = this.cast::<Self>();
        // SAFETY: the caller owns the only reference (invariant of `as_job_ref`), and the
        // owner does not touch `func`/`result` until the latch is set.
        let this = unsafe { this.as_ref() };
        let abort = AbortOnPanic;
        let func = this.func.with_mut(|f| {
            // SAFETY: exclusive access, as above.
            unsafe { (*f).take() }
        });
        let func = func.expect("stack job already ran");
        let result = match panic::catch_unwind(AssertUnwindSafe(|| func(true))) {
            Ok(r) => JobResult::Ok(r),
            Err(p) => JobResult::Panic(p),
        };
        this.result.with_mut(|r| {
            // SAFETY: exclusive access until the latch is set below.
            unsafe { *r = result }
        });
        // SAFETY: `this` is live until `set` publishes; `set` does not touch it afterwards.
        unsafe { L::set(&this.latch) };
        std::mem::forget(abort);
    }
}

/// A heap job for `Scope::spawn`: it runs, reports to its scope, and frees itself.
#[repr(C)]
pub(crate) struct HeapJob<F> {
    header: JobHeader,
    func: F,
}

impl<F: FnOnce() + Send> HeapJob<F> {
    const VTABLE: JobVtable = JobVtable {
        execute: Self::execute,
        discard: Self::execute,
        is_task: false,
    };

    /// Boxes `func` and returns the reference that owns it.
    pub(crate) fn into_job_ref(func: F) -> JobRef {
        let job = Box::new(HeapJob {
            header: JobHeader {
                vtable: &Self::VTABLE,
            },
            func,
        });
        // SAFETY: a leaked box is live until `execute` frees it; the header is first.
        unsafe { JobRef::new(NonNull::from(Box::leak(job)).cast()) }
    }

    /// # Safety
    /// `this` came from `into_job_ref` and has not run.
    unsafe fn execute(this: NonNull<JobHeader>, _counters: &Counters) {
        // SAFETY: `this` is the leaked box from `into_job_ref`, owned by the caller.
        let job = unsafe { Box::from_raw(this.cast::<Self>().as_ptr()) };
        // The closure catches user panics itself (scope jobs record them); if anything
        // still unwound, the scope's owner would wait forever, so abort instead.
        let abort = AbortOnPanic;
        (job.func)();
        std::mem::forget(abort);
    }
}
