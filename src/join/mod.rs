//! `join`: rayon-style fork-join with no allocation.
//!
//! `join(a, b)` on a worker pushes `b` as a [`StackJob`] on the worker's LIFO deque (so
//! idle workers can steal it), runs `a` inline, then pops `b` back and runs it inline if
//! nobody stole it; if it was stolen, the worker runs other work until the thief sets
//! `b`'s latch. `b` lives in this stack frame, which does not return before one of those
//! happened.

use std::panic::{self, AssertUnwindSafe};

use crate::job::StackJob;
use crate::latch::{Probe, SpinLatch};
use crate::worker::WorkerThread;

/// Runs `a` and `b`, potentially in parallel, and returns both results.
///
/// On a worker thread this uses the worker's pool; elsewhere the global pool (through
/// [`Pool::install`](crate::Pool::install)). `b` is offered to other workers while `a` runs
/// on the calling thread; nothing is allocated. If either closure panics, the panic is
/// re-raised after both finished (or, if `b` had not started, after dropping it).
///
/// ```
/// fn fib(n: u64) -> u64 {
///     if n < 2 { return n; }
///     let (a, b) = weft::join(|| fib(n - 1), || fib(n - 2));
///     a + b
/// }
/// assert_eq!(fib(20), 6765);
/// ```
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    match WorkerThread::current() {
        Some(worker) => join_on(worker, a, b),
        None => crate::global::pool().install(|| join(a, b)),
    }
}

fn join_on<A, B, RA, RB>(worker: &WorkerThread, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    // SAFETY: the owner's thread handle lives in the pool's `Shared`; the job is pushed on
    // this worker's own deque, so only workers of this pool can run it and set the latch.
    let latch = unsafe { SpinLatch::new(worker.shared.sleep.thread(worker.index)) };
    let job_b = StackJob::new(move |_migrated| b(), latch);
    // SAFETY: `job_b` stays in this frame, which returns only after the job was popped back
    // or its latch was set (the loop below); this is the only reference.
    let job_b_ref = unsafe { job_b.as_job_ref() };
    let b_id = job_b_ref.as_ptr();
    worker.push_join(job_b_ref);

    let result_a = panic::catch_unwind(AssertUnwindSafe(a));

    while !job_b.latch.probe() {
        match worker.pop_join() {
            Some(job) if job.as_ptr() == b_id => {
                // Nobody stole `b`: it is ours again.
                let ra = match result_a {
                    Ok(ra) => ra,
                    // `b` never started; dropping it is all that is left to do.
                    Err(p) => panic::resume_unwind(p),
                };
                return (ra, job_b.run_inline(false));
            }
            // An older job of ours (`b` was stolen): run it while we wait.
            Some(job) => worker.execute(job, worker.lane()),
            None => {
                worker.wait_until(&job_b.latch, None);
                break;
            }
        }
    }
    let ra = match result_a {
        Ok(ra) => ra,
        Err(p) => panic::resume_unwind(p),
    };
    (ra, job_b.into_result())
}
