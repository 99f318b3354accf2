//! The running frames: which jobs this thread is executing, innermost first.
//!
//! Every job a worker runs is run inside [`enter`], which links a `Frame` on the stack into
//! a thread-local chain for the length of the run and unlinks it (by a drop guard, so also
//! on unwind) before it returns. A worker that waits (`join`, a `JoinHandle`, a scope) runs
//! other jobs from inside the one it runs, so the chain can be several frames deep; the
//! innermost one is the job running now. The chain answers three questions, all about the
//! current thread only:
//!
//! - [`checkpoint`]: was the innermost task asked to stop, or did its time limit pass?
//! - [`start_time_limit`] / [`time_limit_passed`]: a time-limited body's attempt sets the
//!   end of its limit on its own frame and asks about it when it returns;
//! - [`is_running`]: is this job executing on this thread (a handle joining its own task
//!   could never return)?
//!
//! Only this thread touches its chain, so it is plain `Cell`s and needs no atomics.

use std::cell::Cell;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use super::error::Cancelled;
use super::header::Header;
use crate::job::JobHeader;

thread_local! {
    /// The innermost frame of this thread's chain (null: no job is running).
    static INNERMOST: Cell<*const Frame> = const { Cell::new(ptr::null()) };
}

/// One `enter` call on this thread's stack.
struct Frame {
    job: NonNull<JobHeader>,
    outer: *const Frame,
    /// The end of this run's time limit, set by a time-limited task's body.
    deadline: Cell<Option<Instant>>,
    /// `checkpoint()` reported the time limit to this run.
    limit_seen: Cell<bool>,
}

impl Frame {
    fn limit_passed(&self) -> bool {
        self.limit_seen.get() || self.deadline.get().is_some_and(|d| Instant::now() >= d)
    }
}

/// Puts back the outer frame when an `enter` call ends, also on unwind.
struct Restore(*const Frame);

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        INNERMOST.set(self.0);
    }
}

/// Runs `run` (the execution of `job`) as this thread's innermost frame.
#[inline]
pub(crate) fn enter<R>(job: NonNull<JobHeader>, run: impl FnOnce() -> R) -> R {
    let frame = Frame {
        job,
        outer: INNERMOST.get(),
        deadline: Cell::new(None),
        limit_seen: Cell::new(false),
    };
    // Restores the chain even if `run` unwinds, so it never points at a dead frame.
    let _restore = Restore(frame.outer);
    INNERMOST.set(&frame);
    run()
}

/// Runs `f` with the innermost frame, if a job is running on this thread.
#[inline]
fn with_innermost<R>(f: impl FnOnce(&Frame) -> R) -> Option<R> {
    // SAFETY: every frame in the chain lives in an `enter` call that is still on this
    // thread's stack: each call links its frame in and unlinks it (by a drop guard) before
    // returning, so the chain only holds live frames, newest first. The reference is used
    // within `f`, inside that call.
    unsafe { INNERMOST.get().as_ref() }.map(f)
}

/// True if `job` is being executed on this thread, by the innermost run or one it is
/// nested in.
pub(crate) fn is_running(job: NonNull<JobHeader>) -> bool {
    let mut frame = INNERMOST.get();
    // SAFETY: the chain only holds live frames (see `with_innermost`).
    while let Some(f) = unsafe { frame.as_ref() } {
        if f.job == job {
            return true;
        }
        frame = f.outer;
    }
    false
}

/// Starts the time limit of the innermost run (a time-limited body calls this at the
/// start of each attempt). An `Instant` that cannot hold the end means no limit.
pub(crate) fn start_time_limit(limit: Duration) {
    with_innermost(|f| {
        f.deadline.set(Instant::now().checked_add(limit));
        f.limit_seen.set(false);
    });
}

/// True if the innermost run's time limit passed (or `checkpoint` reported it).
pub(crate) fn time_limit_passed() -> bool {
    with_innermost(Frame::limit_passed).unwrap_or(false)
}

/// `weft::checkpoint()`: about the job of the innermost frame; `Ok` where none runs.
pub(crate) fn checkpoint() -> Result<(), Cancelled> {
    with_innermost(|frame| {
        // SAFETY: the frame's job is being executed by this thread, so it is live, and
        // its header's vtable points at a `'static` table.
        let vtable = unsafe { &*frame.job.as_ref().vtable };
        if vtable.is_task {
            // SAFETY: a task's job header is the start of its task header (`raw.rs`), live
            // while its run lasts.
            let header = unsafe { frame.job.cast::<Header>().as_ref() };
            if header.state.load().is_cancel_requested() {
                return Err(Cancelled::requested());
            }
        }
        if frame.limit_passed() {
            frame.limit_seen.set(true);
            return Err(Cancelled::time_limit());
        }
        Ok(())
    })
    .unwrap_or(Ok(()))
}
