//! The task allocation: header, stage, vtable, and the harness that drives them.
//!
//! ```text
//! Cell<F, T> (#[repr(C)], one heap allocation)
//! ┌──────────────────────────── Header ───────────────────────────┐┌──── Stage ────┐
//! │ job: JobHeader (vtable) │ state │ pool │ waker: Option<Waker> ││ F | T | panic │
//! └───────────────────────────────────────────────────────────────┘└───────────────┘
//! ```
//!
//! The stage is a union with no tag: the state word says which member is live (see
//! `state.rs`): the closure while QUEUED, nothing while a claimer holds it, then the
//! output, a boxed panic payload, or nothing (cancelled, shut down).

use std::any::Any;
use std::mem::ManuallyDrop;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;
use std::task::Waker;

use crossbeam_utils::Backoff;

use super::error::JoinError;
use super::state::{Outcome, Snapshot, State, TransitionToRunning};
use crate::job::{JobHeader, JobRef, JobVtable};
use crate::loom::UnsafeCell;
use crate::metrics::Counters;
use crate::shared::Shared;

/// The fixed-layout start of every task.
#[repr(C)]
pub(crate) struct Header {
    /// First, so a task pointer is a job pointer. Its vtable is a `TaskVtable`.
    pub(crate) job: JobHeader,
    pub(crate) state: State,
    /// The pool that accepted the task (null for a refused spawn). Reached only by a
    /// canceller that claimed a queued task (invariant 5 of `state.rs`).
    pub(crate) pool: *const Shared,
    /// The joiner's waker (invariant 3 of `state.rs`).
    pub(crate) waker: UnsafeCell<Option<Waker>>,
}

/// A task's functions. `#[repr(C)]` with the job table first, so the header's job vtable
/// pointer is also a pointer to this.
#[repr(C)]
pub(crate) struct TaskVtable {
    pub(crate) job: JobVtable,
    /// Moves the outcome into `*dst`, a `*mut Result<T, JoinError>`.
    pub(crate) read_output: unsafe fn(NonNull<Header>, *mut ()),
    /// Drops the outcome in place.
    pub(crate) drop_output: unsafe fn(NonNull<Header>),
    /// Claims a queued task and resolves it as cancelled; false if it had started.
    pub(crate) cancel: unsafe fn(NonNull<Header>) -> bool,
    /// Frees the allocation.
    pub(crate) dealloc: unsafe fn(NonNull<Header>),
}

type Panic = Box<Box<dyn Any + Send>>;

/// The member of the stage that is live depends on the state word (module docs).
union Stage<F, T> {
    closure: ManuallyDrop<F>,
    output: ManuallyDrop<T>,
    /// Boxed twice so the stage is one pointer wide when `F` and `T` are small.
    panic: ManuallyDrop<Panic>,
    /// Nothing is live (claimed, cancelled, shut down, or the output was taken).
    empty: (),
}

#[repr(C)]
struct Cell<F, T> {
    header: Header,
    stage: UnsafeCell<Stage<F, T>>,
}

impl Header {
    /// The task's vtable.
    pub(crate) fn vtable(&self) -> &'static TaskVtable {
        // SAFETY: every task header is built by `Cell::<F, T>::allocate` with a pointer to the
        // `'static` `Cell::<F, T>::VTABLE`, a `#[repr(C)]` struct whose first field is the
        // job table, and the pointer was derived from a reference to the whole struct.
        unsafe { &*self.job.vtable.cast::<TaskVtable>() }
    }
}

/// Allocates a QUEUED task. Returns the queued reference and the handle's pointer (the two
/// references of invariant 4).
pub(crate) fn allocate<F, T>(func: F, pool: &Shared) -> (JobRef, NonNull<Header>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let ptr = Cell::<F, T>::allocate(func, State::new(), pool);
    // SAFETY: a fresh task, live until both references are dropped; the queued reference
    // is handed to the `JobRef`.
    (unsafe { JobRef::new(ptr.cast()) }, ptr)
}

/// Allocates a SCHEDULED task (invariant 6). Returns the timer's reference and the handle's
/// pointer.
pub(crate) fn allocate_scheduled<F, T>(func: F, pool: &Shared) -> (JobRef, NonNull<Header>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let ptr = Cell::<F, T>::allocate(func, State::new_scheduled(), pool);
    // SAFETY: a fresh task; the timer's reference goes to the `JobRef`.
    (unsafe { JobRef::new(ptr.cast()) }, ptr)
}

/// An owned reference to a task, of any type: dropping it releases the reference.
pub(crate) struct TaskRef(NonNull<Header>);

// SAFETY: a task reference only touches the atomic state word and, as the last reference,
// frees a task whose closure and output are `Send`.
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

/// The timer's side of a SCHEDULED task, reached through a `JobRef` the timer holds.
///
/// # Safety
/// `job` is a task's queued reference held by the timer (invariant 6).
pub(crate) unsafe fn fire(job: &JobRef) -> bool {
    // SAFETY: a task header sits at the job pointer (caller's promise), live while the
    // reference is held.
    let header = unsafe { job.as_ptr().cast::<Header>().as_ref() };
    header.state.transition_scheduled_to_queued().is_ok()
}

/// Allocates a task that is already resolved as shut down (a spawn refused by a closed
/// pool). `func` is dropped now; the only reference is the handle's.
pub(crate) fn allocate_refused<F, T>(func: F) -> NonNull<Header>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let ptr = Cell::<F, T>::allocate_without_closure(State::new_complete(Outcome::Shutdown));
    drop_quietly(func);
    ptr
}

/// Runs `f`'s drop glue, swallowing a panic from it: a panicking `Drop` in user code must
/// not unwind through the scheduler.
pub(crate) fn drop_quietly<X>(x: X) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(x))) {
        // Dropping the payload could panic again; leak it instead.
        std::mem::forget(payload);
    }
}

impl<F, T> Cell<F, T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    const VTABLE: TaskVtable = TaskVtable {
        job: JobVtable {
            execute: Self::execute,
            discard: Self::discard,
        },
        read_output: Self::read_output,
        drop_output: Self::drop_output,
        cancel: Self::cancel,
        dealloc: Self::dealloc,
    };

    fn header(state: State, pool: *const Shared) -> Header {
        Header {
            job: JobHeader {
                vtable: (&Self::VTABLE as *const TaskVtable).cast(),
            },
            state,
            pool,
            waker: UnsafeCell::new(None),
        }
    }

    fn allocate(func: F, state: State, pool: &Shared) -> NonNull<Header> {
        let cell = Box::new(Cell::<F, T> {
            header: Self::header(state, pool),
            stage: UnsafeCell::new(Stage::<F, T> {
                closure: ManuallyDrop::new(func),
            }),
        });
        NonNull::from(Box::leak(cell)).cast()
    }

    fn allocate_without_closure(state: State) -> NonNull<Header> {
        let cell = Box::new(Cell::<F, T> {
            header: Self::header(state, std::ptr::null()),
            // The state is COMPLETE with no output: nothing is live.
            stage: UnsafeCell::new(Stage { empty: () }),
        });
        NonNull::from(Box::leak(cell)).cast()
    }

    /// # Safety
    /// `ptr` is a live `Cell<F, T>`.
    unsafe fn from_header<'a>(ptr: NonNull<Header>) -> &'a Self {
        // SAFETY: the header is the first field of the `#[repr(C)]` cell.
        unsafe { ptr.cast::<Self>().as_ref() }
    }

    /// Moves the closure out.
    ///
    /// # Safety
    /// The caller claimed the stage (invariant 1) and the closure is live.
    unsafe fn take_closure(&self) -> F {
        // SAFETY: the caller's claim gives exclusive access; the closure is the live member.
        self.stage
            .with_mut(|s| unsafe { ManuallyDrop::take(&mut (*s).closure) })
    }

    /// Worker side: claim, run, store, complete. Consumes the queued reference.
    ///
    /// # Safety
    /// `ptr` is a task of this type and the caller owns its queued reference.
    unsafe fn execute(ptr: NonNull<JobHeader>, counters: &Counters) {
        let ptr = ptr.cast::<Header>();
        // SAFETY: live while we hold the queued reference.
        let this = unsafe { Self::from_header(ptr) };
        if let TransitionToRunning::Failed(s) = this.header.state.try_claim() {
            // SAFETY: we own the queued reference.
            unsafe { Self::lost_claim(ptr, s) };
            return;
        }
        // SAFETY: we claimed it; the closure is live.
        let func = unsafe { this.take_closure() };
        let outcome = match panic::catch_unwind(AssertUnwindSafe(func)) {
            Ok(value) => {
                counters.bump(&counters.completed);
                // SAFETY: exclusive (claimed); the stage is empty now.
                this.stage
                    .with_mut(|s| unsafe { (*s).output = ManuallyDrop::new(value) });
                Outcome::Value
            }
            Err(payload) => {
                counters.bump(&counters.panicked);
                // SAFETY: as above.
                this.stage.with_mut(|s| unsafe {
                    (*s).panic = ManuallyDrop::new(Box::new(payload));
                });
                Outcome::Panicked
            }
        };
        // SAFETY: claimed, outcome stored; we pass on the queued reference.
        unsafe { Self::complete(ptr, outcome, true) };
    }

    /// Shutdown side: resolve a queued task as shut down without running it. Consumes the
    /// queued reference.
    ///
    /// # Safety
    /// As for `execute`.
    unsafe fn discard(ptr: NonNull<JobHeader>, counters: &Counters) {
        let ptr = ptr.cast::<Header>();
        // SAFETY: live while we hold the queued reference.
        let this = unsafe { Self::from_header(ptr) };
        if let TransitionToRunning::Failed(s) = this.header.state.try_claim() {
            // SAFETY: we own the queued reference.
            unsafe { Self::lost_claim(ptr, s) };
            return;
        }
        // SAFETY: claimed; the closure is live.
        let func = unsafe { this.take_closure() };
        counters.bump(&counters.cancelled);
        // SAFETY: claimed, nothing to store; we pass on the queued reference.
        unsafe { Self::complete(ptr, Outcome::Shutdown, true) };
        drop_quietly(func);
    }

    /// Handle side: cancel a task that has not started. Does not touch the queued
    /// reference, which its holder drops when it pops the task.
    ///
    /// # Safety
    /// `ptr` is a task of this type; the caller holds the handle's reference.
    unsafe fn cancel(ptr: NonNull<Header>) -> bool {
        // SAFETY: the handle's reference keeps it live.
        let this = unsafe { Self::from_header(ptr) };
        let TransitionToRunning::Success(before) = this.header.state.try_claim() else {
            return false;
        };
        // SAFETY: claimed; the closure is live.
        let func = unsafe { this.take_closure() };
        // SAFETY: the task was queued (or in the timer) of a live pool, and whoever pops it
        // waits for COMPLETE before letting the pool go (invariants 5 and 6).
        let pool = unsafe { &*this.header.pool };
        let counters = pool.counters();
        counters.bump(&counters.cancelled);
        if before.is_scheduled() {
            // Invariant 6: tell the driver to drop the wheel entry now, with a reference
            // that keeps this address from being reused until it did.
            this.header.state.ref_inc();
            // SAFETY: we just added the reference that the `TaskRef` owns.
            pool.timer.cancel(unsafe { TaskRef::from_raw(ptr) }, pool);
        }
        // SAFETY: claimed, nothing to store; the queued reference stays with its holder.
        unsafe { Self::complete(ptr, Outcome::Cancelled, false) };
        drop_quietly(func);
        true
    }

    /// Someone else claimed the task: wait until they finished with it (invariant 5), then
    /// drop the queued reference.
    ///
    /// # Safety
    /// The caller owns the queued reference.
    unsafe fn lost_claim(ptr: NonNull<Header>, mut s: Snapshot) {
        // SAFETY: live while we hold the queued reference.
        let header = unsafe { ptr.as_ref() };
        let backoff = Backoff::new();
        while !s.is_complete() {
            // The canceller is between its claim and `complete`: no user code runs there,
            // so this wait is a few instructions long unless it was preempted.
            backoff.snooze();
            s = header.state.load();
        }
        // SAFETY: we own the reference we drop.
        unsafe { Self::release(ptr) };
    }

    /// Publishes the outcome, hands the output to the handle or drops it, wakes the joiner,
    /// and drops the queued reference if `release`.
    ///
    /// # Safety
    /// The caller claimed the stage and stored `outcome`'s member in it.
    unsafe fn complete(ptr: NonNull<Header>, outcome: Outcome, release: bool) {
        // SAFETY: the caller holds a reference.
        let header = unsafe { ptr.as_ref() };
        let prev = header.state.complete(outcome);
        if !prev.is_join_interested() {
            // Invariant 2: the handle is gone, the output is ours to drop.
            // SAFETY: COMPLETE with no handle: exclusive access to the stage.
            unsafe { Self::drop_output(ptr) };
        } else if prev.is_join_waker_set() {
            // Invariant 3: the handle stored a waker before setting JOIN_WAKER and may not
            // change it now that COMPLETE is set. A panicking waker is swallowed.
            header.waker.with(|w| {
                // SAFETY: shared read allowed by invariant 3.
                if let Some(w) = unsafe { &*w } {
                    let _ = panic::catch_unwind(AssertUnwindSafe(|| w.wake_by_ref()));
                }
            });
        }
        if release {
            // SAFETY: the caller passed us the queued reference.
            unsafe { Self::release(ptr) };
        }
    }

    /// Drops one reference, freeing the task if it was the last.
    ///
    /// # Safety
    /// The caller owns the reference.
    unsafe fn release(ptr: NonNull<Header>) {
        // SAFETY: live until the count reaches zero.
        if unsafe { ptr.as_ref() }.state.ref_dec() {
            // SAFETY: that was the last reference.
            unsafe { Self::dealloc(ptr) };
        }
    }

    /// Moves the outcome out of the stage.
    ///
    /// # Safety
    /// COMPLETE, and the caller owns the output (invariant 2); called at most once.
    unsafe fn take_outcome(&self) -> Result<T, JoinError> {
        match self.header.state.load().outcome() {
            Outcome::Value => {
                let take = |s: *mut Stage<F, T>| {
                    // SAFETY: the outcome says the output is the live member; the caller
                    // owns it and moves it out once.
                    unsafe { ManuallyDrop::take(&mut (*s).output) }
                };
                Ok(self.stage.with_mut(take))
            }
            Outcome::Panicked => {
                let take = |s: *mut Stage<F, T>| {
                    // SAFETY: as above, for the panic payload.
                    unsafe { ManuallyDrop::take(&mut (*s).panic) }
                };
                Err(JoinError::panicked(*self.stage.with_mut(take)))
            }
            Outcome::Cancelled => Err(JoinError::cancelled()),
            Outcome::Shutdown => Err(JoinError::shutdown()),
        }
    }

    /// # Safety
    /// As for `take_outcome`; `dst` is a valid, uninitialized `Result<T, JoinError>`.
    unsafe fn read_output(ptr: NonNull<Header>, dst: *mut ()) {
        // SAFETY: live (the caller holds a reference); the output is the caller's.
        let result = unsafe { Self::from_header(ptr).take_outcome() };
        // SAFETY: the caller passes a valid, uninitialized slot of this type.
        unsafe { dst.cast::<Result<T, JoinError>>().write(result) };
    }

    /// # Safety
    /// As for `take_outcome`.
    unsafe fn drop_output(ptr: NonNull<Header>) {
        // SAFETY: live and ours, as in `read_output`.
        drop_quietly(unsafe { Self::from_header(ptr).take_outcome() });
    }

    /// # Safety
    /// The last reference was just dropped.
    unsafe fn dealloc(ptr: NonNull<Header>) {
        // SAFETY: no reference is left, so we own the allocation made by `Box::new`.
        let cell = unsafe { Box::from_raw(ptr.cast::<Self>().as_ptr()) };
        if !cell.header.state.load().is_claimed() {
            // Never claimed: the closure is still live. Only reachable if a queue were
            // dropped with the task in it, which shutdown prevents; handled for safety.
            // SAFETY: unclaimed, so the closure is the live member; exclusive.
            drop_quietly(unsafe { cell.take_closure() });
        }
        drop_quietly(cell);
    }
}

#[cfg(all(test, not(loom), target_pointer_width = "64"))]
mod tests {
    use super::*;
    use std::mem;

    #[test]
    fn header_is_five_words() {
        assert_eq!(mem::size_of::<Header>(), 40);
        // An empty closure with unit output costs one header and one pointer of stage.
        assert_eq!(mem::size_of::<Cell<fn(), ()>>(), 40 + 8);
        assert_eq!(mem::size_of::<Cell<(), ()>>(), 48);
    }
}
