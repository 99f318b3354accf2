//! The task allocation (`Cell<B, S>`: the header of `header.rs`, then the stage), its
//! vtable, and the harness that runs, cancels, completes and frees a task.
//!
//! ```text
//! Cell<B> (#[repr(C)], one heap allocation)
//! ┌──────────────────────────────── Header ─────────────────────────────────┐┌──── Stage ────┐
//! │ job (vtable) │ state │ owner │ waker: Option<Waker> │ attempts │ lane   ││ B | O | panic │
//! └─────────────────────────────────────────────────────────────────────────┘└───────────────┘
//! ```
//!
//! The stage is a union with no tag: the state word says which member is live (see
//! `state.rs`): the body while QUEUED or SCHEDULED, nothing while a claimer holds it (for a
//! retrying body: still the body), then the output, a boxed panic payload, or nothing
//! (cancelled, shut down).
//!
//! A claimer runs one attempt of the body (`body.rs`). `Done` completes the task. `Retry`
//! sends the task back to its owner's timer: the worker moves RUNNING → SCHEDULED (from
//! then on a `cancel` wins), then hands the owner its reference
//! ([`Schedule::retry_after`]). A canceller's [`Schedule::cancel_retry`] may overtake it;
//! the pool's timer driver pairs them up (see `time/driver.rs`).
//!
//! The harness is generic over the owner `S` (`schedule.rs`) and knows nothing else of
//! the pool: the header keeps the owner as an untyped pointer, and `Cell<B, S>`'s vtable
//! functions, made for that `S`, cast it back.

use std::alloc::Layout;
use std::any::Any;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;
use std::time::Duration;

use crossbeam_utils::Backoff;

use super::alloc;
use super::body::{Attempt, Body, Once};
use super::error::JoinError;
use super::header::{Header, TaskRef, TaskVtable};
use super::schedule::{Schedule, Unowned};
use super::state::{Outcome, Snapshot, State, TransitionToRunning};
use crate::job::{JobHeader, JobRef, JobVtable};
use crate::lane::Lane;
use crate::loom::{AtomicU32, Ordering, UnsafeCell};
use crate::metrics::Counters;
use crate::util::{drop_counted, drop_quietly, run_quietly};

type Panic = Box<Box<dyn Any + Send>>;

/// The member of the stage that is live depends on the state word (module docs).
union Stage<B: Body> {
    body: ManuallyDrop<B>,
    output: ManuallyDrop<B::Output>,
    /// Boxed twice so the stage is one pointer wide when the body and output are small.
    panic: ManuallyDrop<Panic>,
    /// Nothing is live (cancelled, shut down, or the output was taken).
    empty: (),
}

#[repr(C)]
struct Cell<B: Body, S> {
    header: Header,
    stage: UnsafeCell<Stage<B>>,
    /// The owner's type, which `header.owner` points at.
    owner: PhantomData<fn() -> S>,
}

/// Allocates a QUEUED task. Returns the queued reference and the handle's pointer (the two
/// references of invariant 4).
pub(crate) fn allocate<F, T, S>(func: F, owner: &S, lane: Lane) -> (JobRef, NonNull<Header>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
    S: Schedule,
{
    allocate_body(Once(func), State::new(), owner, lane)
}

/// Allocates a task with any body in `state` (QUEUED or SCHEDULED): the queue's (or
/// timer's) reference and the handle's pointer.
pub(crate) fn allocate_body<B: Body, S: Schedule>(
    body: B,
    state: State,
    owner: &S,
    lane: Lane,
) -> (JobRef, NonNull<Header>) {
    let ptr = Cell::<B, S>::allocate(
        Stage {
            body: ManuallyDrop::new(body),
        },
        state,
        (owner as *const S).cast(),
        lane,
    );
    // SAFETY: a fresh task, live until both references are dropped; the first goes to the
    // `JobRef`.
    (unsafe { JobRef::new(ptr.cast()) }, ptr)
}

/// Allocates a task that is already resolved as shut down (a spawn refused by a closed
/// pool). `body` is dropped now; the only reference is the handle's.
pub(crate) fn allocate_refused<B: Body>(body: B) -> NonNull<Header> {
    drop_quietly(body);
    Cell::<B, Unowned>::allocate(
        Stage { empty: () },
        State::new_complete(Outcome::Shutdown),
        std::ptr::null(),
        Lane::NORMAL,
    )
}

impl<B: Body, S: Schedule> Cell<B, S> {
    const VTABLE: TaskVtable = TaskVtable {
        job: JobVtable {
            execute: Self::execute,
            discard: Self::discard,
            is_task: true,
        },
        read_output: Self::read_output,
        drop_output: Self::drop_output,
        cancel: Self::cancel,
        dealloc: Self::dealloc,
    };

    fn allocate(stage: Stage<B>, state: State, owner: *const (), lane: Lane) -> NonNull<Header> {
        let cell = alloc::allocate(Layout::new::<Self>()).cast::<Self>();
        let value = Cell::<B, S> {
            header: Header {
                job: JobHeader {
                    vtable: (&Self::VTABLE as *const TaskVtable).cast(),
                },
                state,
                owner,
                waker: UnsafeCell::new(None),
                attempts: AtomicU32::new(0),
                lane,
            },
            stage: UnsafeCell::new(stage),
            owner: PhantomData,
        };
        // SAFETY: a fresh block with the layout of `Self`, ours alone: the write
        // initializes it.
        unsafe { cell.as_ptr().write(value) };
        cell.cast()
    }

    /// # Safety
    /// `ptr` is a live `Cell<B>`.
    unsafe fn from_header<'a>(ptr: NonNull<Header>) -> &'a Self {
        // SAFETY: the header is the first field of the `#[repr(C)]` cell.
        unsafe { ptr.cast::<Self>().as_ref() }
    }

    /// Moves the body out (to drop it).
    ///
    /// # Safety
    /// The caller claimed the stage (invariant 1) and the body is live.
    unsafe fn take_body(&self) -> B {
        let take = |s: *mut Stage<B>| {
            // SAFETY: the caller's claim gives exclusive access; the body is live.
            unsafe { ManuallyDrop::take(&mut (*s).body) }
        };
        self.stage.with_mut(take)
    }

    /// Claims the task for its holder (a queue or the timer); returns the state before the
    /// claim. A task whose handle is gone and that holds no other reference is ours alone
    /// and is claimed without a CAS (invariant 4). If someone else holds the claim, waits
    /// until RUNNING clears: a canceller then completes it (we drop our reference and
    /// return `None`), a retry makes it SCHEDULED again (we claim it).
    ///
    /// # Safety
    /// The caller owns the queued or timer reference.
    unsafe fn claim_or_release(ptr: NonNull<Header>) -> Option<Snapshot> {
        // SAFETY: live while we hold the reference.
        let header = unsafe { ptr.as_ref() };
        if let Some(before) = header.state.try_claim_sole_owner() {
            return Some(before);
        }
        let backoff = Backoff::new();
        loop {
            match header.state.try_claim() {
                TransitionToRunning::Success(before) => return Some(before),
                TransitionToRunning::Failed(s) if s.is_complete() => {
                    // SAFETY: we own the reference we drop.
                    unsafe { Self::release(ptr) };
                    return None;
                }
                // Between a claim and `complete`, or a retry between RUNNING and
                // SCHEDULED: no user code runs there, so this wait is short unless the
                // other thread was preempted.
                TransitionToRunning::Failed(_) => crate::loom::snooze(&backoff),
            }
        }
    }

    /// Worker side: claim, run one attempt, then complete or reschedule. Consumes the
    /// queued reference.
    ///
    /// # Safety
    /// `ptr` is a task of this type and the caller owns its queued reference.
    unsafe fn execute(ptr: NonNull<JobHeader>, counters: &Counters) {
        let ptr = ptr.cast::<Header>();
        // SAFETY: we own the queued reference.
        let Some(before) = (unsafe { Self::claim_or_release(ptr) }) else {
            return;
        };
        crate::util::jitter();
        if before.is_cancel_requested() {
            // A retry whose handle asked it to stop during its previous attempt.
            // SAFETY: claimed, body live; we pass on the queued reference.
            unsafe { Self::abandon(ptr, Outcome::Cancelled, counters) };
            return;
        }
        // SAFETY: live while we hold the queued reference.
        let this = unsafe { Self::from_header(ptr) };
        // Only the claimer writes `attempts`.
        let attempt = this.header.attempts.load(Ordering::Relaxed) + 1;
        this.header.attempts.store(attempt, Ordering::Relaxed);
        let run = |s: *mut Stage<B>| {
            // SAFETY: claimed: exclusive; the body is live.
            panic::catch_unwind(AssertUnwindSafe(|| unsafe {
                B::attempt(&mut (*s).body, attempt, counters)
            }))
        };
        let outcome = match this.stage.with_mut(run) {
            Ok(Attempt::Done(value)) => {
                if this.header.state.load().is_cancel_requested() {
                    // Cancelled while it ran: the handle reports that, not the value.
                    counters.bump(&counters.cancelled);
                    drop_counted(value, counters);
                    Outcome::Cancelled
                } else {
                    counters.bump(&counters.completed);
                    let store = |s: *mut Stage<B>| {
                        // SAFETY: exclusive (claimed); the body is gone.
                        unsafe { (*s).output = ManuallyDrop::new(value) }
                    };
                    this.stage.with_mut(store);
                    Outcome::Value
                }
            }
            Ok(Attempt::TimedOut) => {
                counters.bump(&counters.timed_out);
                Outcome::TimedOut
            }
            Ok(Attempt::Retry(delay)) => {
                if this.header.state.load().is_cancel_requested() {
                    // SAFETY: claimed, body live; we pass on the queued reference.
                    unsafe { Self::abandon(ptr, Outcome::Cancelled, counters) };
                } else {
                    // SAFETY: claimed, body live; we pass on the queued reference.
                    unsafe { Self::reschedule(ptr, delay, counters) };
                }
                return;
            }
            Err(payload) => {
                counters.bump(&counters.panicked);
                let store = |s: *mut Stage<B>| {
                    // SAFETY: exclusive; `after_panic` drops what is left of the body, then
                    // the stage holds the payload.
                    unsafe {
                        B::after_panic(&mut (*s).body, counters);
                        (*s).panic = ManuallyDrop::new(Box::new(payload));
                    }
                };
                this.stage.with_mut(store);
                Outcome::Panicked
            }
        };
        // SAFETY: claimed, outcome stored; we pass on the queued reference.
        unsafe { Self::complete(ptr, outcome, true, counters) };
    }

    /// Resolves a claimed task without running it (again): drops the body and completes
    /// with `outcome` (cancelled or shut down), counted as cancelled.
    ///
    /// # Safety
    /// The caller claimed the task, its body is live, and it passes on the queued
    /// reference.
    unsafe fn abandon(ptr: NonNull<Header>, outcome: Outcome, counters: &Counters) {
        // SAFETY: live (we hold the reference); claimed, so the body is live and ours.
        let body = unsafe { Self::from_header(ptr).take_body() };
        counters.bump(&counters.cancelled);
        // SAFETY: claimed, nothing to store; we pass on the queued reference.
        unsafe { Self::complete(ptr, outcome, true, counters) };
        drop_counted(body, counters);
    }

    /// The task's owner.
    ///
    /// # Safety
    /// The caller claimed the task from a queue or the timer of its owner, or holds the
    /// handle of a task it claimed while it waited there: the owner is alive (invariants
    /// 5 and 6 of `state.rs`), and it is an `S` (it was allocated as a `Cell<B, S>`).
    unsafe fn owner<'a>(&self) -> &'a S {
        // SAFETY: the caller's promise.
        unsafe { &*self.header.owner.cast::<S>() }
    }

    /// Sends a failed attempt back to its owner's timer (module docs), or resolves it as
    /// shut down if the owner is closing.
    ///
    /// # Safety
    /// The caller claimed the task, its body is live, and it passes on the queued
    /// reference.
    unsafe fn reschedule(ptr: NonNull<Header>, delay: Duration, counters: &Counters) {
        // SAFETY: live (we hold the reference).
        let this = unsafe { Self::from_header(ptr) };
        // SAFETY: we claimed the task from one of its owner's queues, so the owner is
        // alive (a worker or a drainer holds it).
        let owner = unsafe { this.owner() };
        if owner.is_closed() {
            // SAFETY: as our caller's.
            unsafe { Self::abandon(ptr, Outcome::Shutdown, counters) };
            return;
        }
        counters.bump(&counters.retried);
        let lane = this.header.lane;
        // SCHEDULED first: from here a `cancel` wins (and sends the driver a `Cancel`,
        // which may overtake the `Insert` below; the driver pairs them up).
        this.header.state.transition_running_to_scheduled();
        // SAFETY: we hand the timer the queued reference we own.
        let job = unsafe { JobRef::new(ptr.cast()) };
        owner.retry_after(delay, job, lane);
    }

    /// Shutdown side: resolve a waiting task as shut down without running it. Consumes the
    /// queued (or timer) reference.
    ///
    /// # Safety
    /// As for `execute`.
    unsafe fn discard(ptr: NonNull<JobHeader>, counters: &Counters) {
        let ptr = ptr.cast::<Header>();
        // SAFETY: we own the reference.
        if unsafe { Self::claim_or_release(ptr) }.is_some() {
            // SAFETY: claimed, body live; we pass on the reference.
            unsafe { Self::abandon(ptr, Outcome::Shutdown, counters) };
        }
    }

    /// Handle side: cancel a task that has not started (or waits for its next attempt).
    /// Does not touch the queued reference, which its holder drops when it meets the task.
    /// A running task is asked to stop instead (`CANCEL_REQUESTED`), and false returned.
    ///
    /// # Safety
    /// `ptr` is a task of this type; the caller holds the handle's reference.
    unsafe fn cancel(ptr: NonNull<Header>) -> bool {
        // SAFETY: the handle's reference keeps it live.
        let this = unsafe { Self::from_header(ptr) };
        let before = match this.header.state.try_claim() {
            TransitionToRunning::Success(before) => before,
            TransitionToRunning::Failed(now) => {
                if !now.is_complete() {
                    this.header.state.request_cancel();
                }
                return false;
            }
        };
        // SAFETY: claimed; the body is live.
        let body = unsafe { this.take_body() };
        // SAFETY: the task waited in a queue or the timer of its live owner, and whoever
        // holds its reference waits for COMPLETE before letting the owner go (invariants
        // 5, 6).
        let owner = unsafe { this.owner() };
        let counters = owner.counters();
        counters.bump(&counters.cancelled);
        if before.is_scheduled() {
            // Invariant 6: tell the driver to drop the wheel entry now, with a reference
            // that keeps this address from being reused until it did.
            this.header.state.ref_inc();
            // SAFETY: we just added the reference that the `TaskRef` owns.
            owner.cancel_retry(unsafe { TaskRef::from_raw(ptr) });
        }
        // The body goes before `complete`: after it, the pool may be gone (invariant 5).
        drop_counted(body, counters);
        // SAFETY: claimed, nothing to store; the queued reference stays with its holder.
        unsafe { Self::complete(ptr, Outcome::Cancelled, false, counters) };
        true
    }

    /// Publishes the outcome, hands the output to the handle or drops it, wakes the joiner,
    /// and drops the queued reference if `release`.
    ///
    /// # Safety
    /// The caller claimed the stage and stored `outcome`'s member in it. `counters` stay
    /// valid throughout (a worker's, or, with `release == false`, a live pool's).
    unsafe fn complete(ptr: NonNull<Header>, outcome: Outcome, release: bool, counters: &Counters) {
        // SAFETY: the caller holds a reference.
        let header = unsafe { ptr.as_ref() };
        crate::util::jitter();
        if release {
            if header.state.is_sole_owner() {
                // Detached, and ours is the only reference: nobody can observe the task
                // any more, so skip the transition: drop the output and free it.
                // SAFETY: exclusive access; the stage holds `outcome`'s member, and
                // `dealloc` sees a claimed task, so it leaves the (gone) body alone.
                unsafe {
                    Self::drop_outcome_in_place(ptr, outcome, counters);
                    Self::dealloc(ptr);
                }
                return;
            }
            if header.state.complete_and_release_if_unwatched(outcome) {
                // Published, and our reference is gone with it: hands off.
                return;
            }
        }
        let prev = header.state.complete(outcome);
        if !prev.is_join_interested() {
            // Invariant 2: the handle is gone, the output is ours to drop.
            // SAFETY: COMPLETE with no handle: exclusive access to the stage.
            drop_counted(unsafe { Self::from_header(ptr).take_outcome() }, counters);
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
    unsafe fn take_outcome(&self) -> Result<B::Output, JoinError> {
        match self.header.state.load().outcome() {
            Outcome::Value => {
                let take = |s: *mut Stage<B>| {
                    // SAFETY: the outcome says the output is the live member; the caller
                    // owns it and moves it out once.
                    unsafe { ManuallyDrop::take(&mut (*s).output) }
                };
                Ok(self.stage.with_mut(take))
            }
            Outcome::Panicked => {
                let take = |s: *mut Stage<B>| {
                    // SAFETY: as above, for the panic payload.
                    unsafe { ManuallyDrop::take(&mut (*s).panic) }
                };
                Err(JoinError::panicked(*self.stage.with_mut(take)))
            }
            Outcome::Cancelled => Err(JoinError::cancelled()),
            Outcome::Shutdown => Err(JoinError::shutdown()),
            Outcome::TimedOut => Err(JoinError::timed_out()),
        }
    }

    /// # Safety
    /// As for `take_outcome`; `dst` is a valid, uninitialized `Result<B::Output, JoinError>`.
    unsafe fn read_output(ptr: NonNull<Header>, dst: *mut ()) {
        // SAFETY: live (the caller holds a reference); the output is the caller's.
        let result = unsafe { Self::from_header(ptr).take_outcome() };
        // SAFETY: the caller passes a valid, uninitialized slot of this type.
        unsafe { dst.cast::<Result<B::Output, JoinError>>().write(result) };
    }

    /// Drops the stage's `outcome` member without a COMPLETE state (sole owner).
    ///
    /// # Safety
    /// Exclusive access, and the stage holds `outcome`'s member.
    unsafe fn drop_outcome_in_place(ptr: NonNull<Header>, outcome: Outcome, counters: &Counters) {
        // SAFETY: live (caller's reference).
        let this = unsafe { Self::from_header(ptr) };
        match outcome {
            Outcome::Value => {
                let take = |s: *mut Stage<B>| {
                    // SAFETY: the output is the live member; exclusive.
                    unsafe { ManuallyDrop::take(&mut (*s).output) }
                };
                drop_counted(this.stage.with_mut(take), counters);
            }
            Outcome::Panicked => {
                let take = |s: *mut Stage<B>| {
                    // SAFETY: the panic payload is the live member; exclusive.
                    unsafe { ManuallyDrop::take(&mut (*s).panic) }
                };
                drop_counted(this.stage.with_mut(take), counters);
            }
            Outcome::Cancelled | Outcome::Shutdown | Outcome::TimedOut => {}
        }
    }

    /// The handle's drop: the pool may be gone, so a panic is counted only process-wide.
    ///
    /// # Safety
    /// As for `take_outcome`.
    unsafe fn drop_output(ptr: NonNull<Header>) {
        // SAFETY: live and ours, as in `read_output`.
        drop_quietly(unsafe { Self::from_header(ptr).take_outcome() });
    }

    /// # Safety
    /// The last reference was just dropped.
    unsafe fn dealloc(ptr: NonNull<Header>) {
        let cell = ptr.cast::<Self>();
        {
            // SAFETY: no reference is left, so the cell (made by `allocate`) is ours alone.
            let this = unsafe { cell.as_ref() };
            if !this.header.state.load().is_claimed() {
                // Never claimed: the body is still live. Only reachable if a queue or the
                // timer were dropped with the task in it, which shutdown prevents; handled
                // for safety.
                // SAFETY: unclaimed, so the body is the live member; exclusive.
                drop_quietly(unsafe { this.take_body() });
            }
        }
        // The fields' drop glue (the waker; the stage's members are `ManuallyDrop`), a
        // panic in it caught like any user `Drop`'s.
        // SAFETY: ours alone (above), initialized by `allocate`, dropped once here.
        run_quietly(|| unsafe { std::ptr::drop_in_place(cell.as_ptr()) });
        // SAFETY: allocated by `allocate` with this layout; nothing uses it any more.
        unsafe { alloc::free(cell.cast(), Layout::new::<Self>()) };
    }
}

#[cfg(all(test, not(loom), target_pointer_width = "64"))]
mod tests;
