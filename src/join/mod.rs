//! `join`: fork-join at heartbeat cost, with no allocation.
//!
//! Most joins are never run in parallel: on a busy pool the second half is nearly always
//! run by the thread that made it. So a join on a worker does not offer its second half to
//! other workers at once (a deque push and pop, with their fences, costing what the work
//! of a fine-grained join does); it records it where only its own worker can see it, and
//! shares it later if the worker has been running long enough for sharing to pay. This is
//! heartbeat scheduling (Acar, Charguéraud and Rainey, "Heartbeat Scheduling: Provable
//! Efficiency for Nested Parallelism", PLDI 2018; Spice; chili).
//!
//! # The protocol
//!
//! Actors: the worker that calls `join(a, b)` (the owner) and thieves (other workers of
//! the pool).
//!
//! 1. **Record.** The owner's [`Heartbeat`] decides whether this join records a frame:
//!    every join while the owner's joins are coarse; while they are fine-grained, only
//!    while it holds fewer than [`heartbeat::RECORD_BELOW`] private frames, plus one join
//!    in [`heartbeat::RECORD_EVERY`]. A join that does not record is a plain call,
//!    `(a(), b())`. A recorded frame is `b` as a [`StackJob`] in the owner's stack frame,
//!    its [`JobRef`] pushed on the owner's private list ([`Frames`], oldest first). No
//!    atomic operation.
//! 2. **Beat.** After recording, the owner asks its heartbeat whether a beat is due (a
//!    clock read, amortised: [`heartbeat`]). If so, or if its joins are coarse, it
//!    **promotes** the oldest private frame: pops it off the front of the list and pushes
//!    it on its stealable deque in the current lane, waking an idle worker if there is one
//!    (the same push and notify as a spawn from a worker). So a worker with fine-grained
//!    joins offers one frame about every [`heartbeat::INTERVAL`], the oldest, which holds
//!    the most work; coarse frames are offered at once, as rayon does.
//! 3. **Run `a`**, catching a panic.
//! 4. **Take `b` back.** If the newest private frame is still `b`, nobody else can reach
//!    it: the owner pops it and runs it inline. Otherwise `b` was promoted; the owner pops
//!    its deque in `b`'s lane until it gets `b` back (then runs it inline) or the deque is
//!    empty (a thief took `b`), running any other job it pops meanwhile; then it runs other
//!    work until `b`'s latch is set ([`WorkerThread::wait_until`]).
//! 5. **Share before blocking.** A worker that enters any blocking wait
//!    (`JoinHandle::join`, `scope`, `install`, step 4, waiting for room in a bounded lane)
//!    first promotes all its private frames, so that nothing it holds waits for it while it
//!    waits for something else. So the private list only ever holds frames of the job the
//!    worker runs innermost: any job nested in another runs from inside such a wait.
//!
//! Nothing runs while the pool is idle: the beat is read only by a worker that joins.
//!
//! # Why it is correct (sketch)
//!
//! - *`b` runs exactly once.* The `JobRef` of `b` is in exactly one place at a time: the
//!   private list (only the owner touches it), or the deque (crossbeam hands each pushed
//!   item to exactly one popper or stealer), or in the hands of whoever took it out. The
//!   owner runs `b` inline only after taking the `JobRef` out of one of those places.
//! - *The private list is a stack between steps 1 and 4.* Every frame recorded inside
//!   `a` is taken back or promoted before the `join` that recorded it returns (by unwinding
//!   too: `a`'s panic is caught before step 4), and promotion takes from the front. So at
//!   step 4 the newest private frame is `b` or the list holds no frame of this join: then
//!   `b` was promoted, and every older frame was promoted before it.
//! - *The stack frame outlives `b`.* The owner returns only after running `b` itself or
//!   seeing its latch set ([`StackJob`]'s rule); the thief's `set` does not touch the job
//!   after publishing.
//! - *Lane and priority are kept.* A promoted frame goes into the lane of the job that
//!   recorded it: the private list only holds frames of the innermost running job (step
//!   5: a job runs nested in another only from inside a blocking wait, which emptied the
//!   list first), promotion pushes into the current lane, which is that job's, and the
//!   owner's step 4 pops that same lane. (`tests/join.rs` checks the lane.)
//! - *Sharing keeps up.* While joins are coarse every one records and is offered at once,
//!   so no half that could be shared is ever held back; while they are fine, the halves
//!   left to plain calls lie below the outermost recorded frames, and every beat offers
//!   the oldest of those.
//! - *No lost wake-up.* A promotion is a local deque push followed by the same sleep check
//!   as a spawn from a worker; a thief that misses it is woken by it or finds it on its next
//!   search. The owner never needs a wake-up for a frame it can still take back.
//! - *Progress.* An unshared frame runs inline; a shared one is run by a thief or taken
//!   back by its owner (step 4). A half `a` that blocks outside weft (a channel, a lock)
//!   waiting for `b` can wait forever: `b` is shared only at the owner's next join or
//!   blocking wait in weft (steps 2 and 5). Do not make one half of a join wait for the
//!   other.
//!
//! Loom checks the promotion hand-off (the real [`Frames`], [`StackJob`] and
//! [`SpinLatch`], a stand-in deque): `tests/loom_handoff.rs`.
//!
//! [`Frames`]: frames::Frames
//! [`Heartbeat`]: heartbeat::Heartbeat
//! [`JobRef`]: crate::job::JobRef

pub(crate) mod frames;
pub(crate) mod heartbeat;

#[cfg(all(test, loom))]
#[path = "tests/loom_handoff.rs"]
mod loom_handoff;

use std::panic::{self, AssertUnwindSafe};

use crate::job::StackJob;
use crate::latch::{Probe, SpinLatch};
use crate::worker::WorkerThread;

/// Runs `a` and `b`, potentially in parallel, and returns both results.
///
/// On a worker thread this uses the worker's pool; elsewhere the global pool (through
/// [`Pool::install`](crate::Pool::install)). `a` runs on the calling thread; `b` is
/// recorded where only this worker sees it, offered to other workers once this worker has
/// been busy for about 100 µs (heartbeat scheduling, see the crate docs), and run right
/// after `a` if nobody took it. Nothing is allocated. If either closure panics, the panic
/// is re-raised after both finished (or, if `b` had not started, after dropping it).
///
/// Do not make `a` wait (on a channel, a lock, a flag) for something `b` does: `b` may not
/// be offered to other workers before `a` returns.
///
/// ```
/// fn fib(n: u64) -> u64 {
///     if n < 2 { return n; }
///     let (a, b) = weft::join(|| fib(n - 1), || fib(n - 2));
///     a + b
/// }
/// assert_eq!(fib(20), 6765);
/// ```
#[inline]
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    match WorkerThread::current() {
        Some(worker) => {
            if worker.heartbeat.should_record(worker.frames.len()) {
                join_recorded(worker, a, b)
            } else {
                // Step 1: a plain call. If `a` panics, `b` is dropped unrun, as documented.
                let ra = a();
                (ra, b())
            }
        }
        None => crate::Pool::global().install(|| join(a, b)),
    }
}

/// A join that records `b` as a frame (steps 1 to 4 of the protocol).
fn join_recorded<A, B, RA, RB>(worker: &WorkerThread, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    // SAFETY: the owner's thread handle lives in the pool's `Shared`; the job is pushed on
    // this worker's own list or deque, so only workers of this pool can run it and set
    // the latch.
    let latch = unsafe { SpinLatch::new(worker.shared.sleep.thread(worker.index)) };
    let job_b = StackJob::new(move |_migrated| b(), latch);
    // SAFETY: `job_b` stays in this frame, which returns only after the job was taken back
    // or its latch was set (steps 4 below); this is the only reference.
    let job_b_ref = unsafe { job_b.as_job_ref() };
    let b_id = job_b_ref.as_ptr();
    worker.record_frame(job_b_ref);

    let result_a = panic::catch_unwind(AssertUnwindSafe(a));

    if worker.frames.pop_if_newest(b_id) {
        // Step 4, not shared: `b` is ours alone.
        let ra = match result_a {
            Ok(ra) => ra,
            // `b` never started; dropping it is all that is left to do.
            Err(p) => panic::resume_unwind(p),
        };
        return (ra, job_b.run_inline(false));
    }
    // Step 4, shared: take it back from the deque, or wait for the thief.
    crate::util::jitter();
    while !job_b.latch.probe() {
        match worker.pop_join() {
            Some(job) if job.as_ptr() == b_id => {
                // Nobody stole `b`: it is ours again.
                let ra = match result_a {
                    Ok(ra) => ra,
                    Err(p) => panic::resume_unwind(p),
                };
                return (ra, job_b.run_inline(false));
            }
            // Another job: pushed after `b` (a spawn, a frame promoted later), or, once a
            // thief took `b`, pushed before it. Run it while we wait.
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
