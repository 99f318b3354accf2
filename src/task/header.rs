//! The fixed-layout start of every task, and what reaches a task without knowing its type.
//!
//! A task is one allocation, `raw::Cell<B, S>`: this [`Header`], then the stage (`raw.rs`).
//! Everything outside the harness (the handle, the running frames, the timer driver, the
//! pool's queues) sees only the header: its state word, its waker slot, and its
//! [`TaskVtable`], whose functions were made for the task's body and owner types. A
//! [`TaskRef`] is an owned reference of any task; [`fire`] is the timer's one transition.

use std::ptr::NonNull;
use std::task::Waker;

use super::state::State;
use crate::job::{JobHeader, JobRef, JobVtable};
use crate::lane::Lane;
use crate::loom::{AtomicU32, UnsafeCell};

/// The fixed-layout start of every task.
#[repr(C)]
pub(crate) struct Header {
    /// First, so a task pointer is a job pointer. Its vtable is a `TaskVtable`.
    pub(crate) job: JobHeader,
    pub(crate) state: State,
    /// The owner that accepted the task, an `S: Schedule` of the cell's type (null for a
    /// refused spawn). Reached only by a claimer or a canceller, while the task sits in a
    /// queue or the timer of that live owner (invariants 5 and 6 of `state.rs`).
    pub(super) owner: *const (),
    /// The joiner's waker (invariant 3 of `state.rs`).
    pub(crate) waker: UnsafeCell<Option<Waker>>,
    /// Attempts started so far; written only by the claimer.
    pub(crate) attempts: AtomicU32,
    /// The lane the task waits in (a retry goes back to it).
    pub(crate) lane: Lane,
}

/// A task's functions. `#[repr(C)]` with the job table first, so the header's job vtable
/// pointer is also a pointer to this.
#[repr(C)]
pub(crate) struct TaskVtable {
    pub(crate) job: JobVtable,
    /// Moves the outcome into `*dst`, a `*mut Result<B::Output, JoinError>`.
    pub(crate) read_output: unsafe fn(NonNull<Header>, *mut ()),
    /// Drops the outcome in place.
    pub(crate) drop_output: unsafe fn(NonNull<Header>),
    /// Claims a waiting task and resolves it as cancelled; false if it had started.
    pub(crate) cancel: unsafe fn(NonNull<Header>) -> bool,
    /// Frees the allocation.
    pub(crate) dealloc: unsafe fn(NonNull<Header>),
}

impl Header {
    /// The task's vtable.
    pub(crate) fn vtable(&self) -> &'static TaskVtable {
        // SAFETY: every task header is built by `Cell::<B, S>::allocate` with a pointer to the
        // `'static` `Cell::<B, S>::VTABLE`, a `#[repr(C)]` struct whose first field is the job
        // table, and the pointer was derived from a reference to the whole struct.
        unsafe { &*self.job.vtable.cast::<TaskVtable>() }
    }
}

/// An owned reference to a task, of any type: dropping it releases the reference.
pub(crate) struct TaskRef(NonNull<Header>);

// SAFETY: a task reference only touches the atomic state word and, as the last reference,
// frees a task whose body and output are `Send`.
unsafe impl Send for TaskRef {}

impl TaskRef {
    /// # Safety
    /// The caller hands over one reference it owns to the task at `ptr`.
    pub(crate) unsafe fn from_raw(ptr: NonNull<Header>) -> TaskRef {
        TaskRef(ptr)
    }

    /// The task's address, as queued `JobRef`s carry it.
    pub(crate) fn job_ptr(&self) -> NonNull<JobHeader> {
        self.0.cast()
    }
}

impl Drop for TaskRef {
    fn drop(&mut self) {
        // SAFETY: we own a reference, so the task is live until we drop it.
        let header = unsafe { self.0.as_ref() };
        if header.state.ref_dec() {
            // SAFETY: that was the last reference.
            unsafe { (header.vtable().dealloc)(self.0) };
        }
    }
}

/// The driver fires a SCHEDULED task: true if it is now QUEUED (push `job`); false if a
/// canceller claimed it first (then `job` must be discarded).
///
/// # Safety
/// `job` is a task's reference held by the timer (invariant 6).
pub(crate) unsafe fn fire(job: &JobRef) -> bool {
    // SAFETY: a task header sits at the job pointer (caller's promise), live while the
    // reference is held.
    let header = unsafe { job.as_ptr().cast::<Header>().as_ref() };
    header.state.transition_scheduled_to_queued().is_ok()
}
