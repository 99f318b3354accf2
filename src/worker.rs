//! The worker thread: find a job, run it, count it, park when there is none.
//!
//! A worker runs the same loop in two places: its main loop (until the pool closes), and
//! inside any blocking wait on its thread (`JoinHandle::join`, `join`, `scope`,
//! `install`), where it keeps running queued work until the awaited latch is set. That is
//! what makes nested joins safe on a one-worker pool.
//!
//! Only the current-worker pointer is thread-local; everything else is reached through it.

use std::cell::Cell;
use std::ptr;
use std::sync::Arc;
use std::time::Instant;

use crate::job::JobRef;
use crate::join::frames::Frames;
use crate::join::heartbeat::Heartbeat;
use crate::lane::Lane;
use crate::lanes::{LocalQueues, Source};
use crate::latch::{self, Probe};
use crate::loom::{fence, Ordering};
use crate::metrics::Counters;
use crate::shared::Shared;
use crate::sleep::SEARCH_ROUNDS;
use crate::task::frame;
use crate::util::{AbortOnPanic, XorShift64Star};

thread_local! {
    static CURRENT: Cell<*const WorkerThread> = const { Cell::new(ptr::null()) };
}

/// A worker's own state. Lives on its thread's stack for the thread's whole life.
pub(crate) struct WorkerThread {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    local: LocalQueues,
    rng: XorShift64Star,
    /// Successful picks so far (drives the fairness rule in `lanes.rs`).
    picks: Cell<u32>,
    /// The lane of the job running now; `join` halves and scope jobs inherit it.
    lane: Cell<Lane>,
    /// True while this worker counts as SEARCHING in the sleep state.
    searching: Cell<bool>,
    /// The second halves of this worker's joins that no other thread can see yet
    /// (`join`'s protocol).
    pub(crate) frames: Frames,
    /// When to share one of `frames`, and which joins record one.
    pub(crate) heartbeat: Heartbeat,
}

impl WorkerThread {
    /// The worker running on this thread, if any (of any pool).
    ///
    /// The `'static` is a promise kept by weft's own code only: the reference is used
    /// within the current call and never stored or handed to user code.
    #[inline]
    pub(crate) fn current() -> Option<&'static WorkerThread> {
        let p = CURRENT.with(Cell::get);
        // SAFETY: `CURRENT` is set in `run` to a `WorkerThread` on that thread's stack and
        // cleared before it is dropped; callers only use the reference within code running
        // on this thread inside `run`, so it never outlives the value.
        unsafe { p.as_ref() }
    }

    /// Runs a worker thread until the pool shuts down.
    pub(crate) fn run(index: usize, shared: Arc<Shared>, local: LocalQueues) {
        let worker = WorkerThread {
            index,
            rng: XorShift64Star::new(index as u64 + 1),
            shared,
            local,
            picks: Cell::new(0),
            lane: Cell::new(Lane::NORMAL),
            searching: Cell::new(false),
            frames: Frames::new(),
            heartbeat: Heartbeat::new(),
        };
        worker.shared.sleep.register_thread(index);
        latch::register_helper(help);
        CURRENT.with(|c| c.set(&worker));
        // User code never unwinds into the loop (it is caught where it runs); a panic here
        // would be a weft bug that leaves the pool's state inconsistent, so abort.
        let abort = AbortOnPanic;
        worker.shared.run_start_hook(index);
        worker.main_loop();
        worker.shared.run_stop_hook(index);
        std::mem::forget(abort);
        CURRENT.with(|c| c.set(ptr::null()));
        debug_assert!(worker.local.is_empty());
        worker.shared.thread_exited();
    }

    /// This worker's own counter block.
    #[inline]
    pub(crate) fn counters(&self) -> &Counters {
        self.shared.counters.worker(self.index)
    }

    /// The lane of the job running now.
    #[inline]
    pub(crate) fn lane(&self) -> Lane {
        self.lane.get()
    }

    /// Queues a task spawned on this worker.
    #[inline]
    pub(crate) fn push_spawned(&self, lane: Lane, job: JobRef) {
        self.local.push_spawned(lane, job);
    }

    /// Queues a `join` half in the current lane; pop it back with `pop_join`.
    #[inline]
    pub(crate) fn push_join(&self, job: JobRef) {
        self.local.push_join(self.lane.get(), job);
        self.shared.sleep.notify_after_local_push(self.counters());
    }

    /// Pops the newest `join` half of the current lane.
    #[inline]
    pub(crate) fn pop_join(&self) -> Option<JobRef> {
        self.local.pop_join(self.lane.get())
    }

    /// Records a `join` frame, and promotes the oldest if a beat is due or the joins are
    /// coarse (steps 1 and 2 of `join`'s protocol).
    #[inline(always)]
    pub(crate) fn record_frame(&self, job: JobRef) {
        self.frames.push(job);
        // `is_due` first: it also judges the joins, so it must run while they are coarse.
        if self.heartbeat.is_due() || !self.heartbeat.is_fine() {
            self.promote_oldest_frame();
        }
    }

    /// Step 2 of `join`'s protocol: shares the oldest private frame.
    #[cold]
    fn promote_oldest_frame(&self) {
        if let Some(job) = self.frames.take_oldest() {
            let c = self.counters();
            c.bump(&c.promoted);
            self.push_join(job);
            // A thief may steal the frame while its owner runs on towards step 4.
            crate::util::jitter();
        }
    }

    /// Step 5 of `join`'s protocol: shares every private frame, oldest first, before a
    /// blocking wait.
    fn promote_all_frames(&self) {
        if self.frames.len() == 0 {
            return;
        }
        let c = self.counters();
        while let Some(job) = self.frames.take_oldest() {
            c.bump(&c.promoted);
            self.local.push_join(self.lane.get(), job);
        }
        self.shared.sleep.notify_after_local_push(c);
    }

    /// Finds a job by the lanes' search order; leaves SEARCHING if it was.
    fn find_work(&self) -> Option<(JobRef, Lane)> {
        let pick = self.picks.get();
        let (job, lane, source) =
            self.shared
                .lanes
                .find(self.index, &self.local, pick, &self.rng)?;
        self.picks.set(pick.wrapping_add(1));
        if source == Source::Stolen {
            let c = self.counters();
            c.bump(&c.stolen);
        }
        self.stop_searching();
        Some((job, lane))
    }

    /// Runs one queued job if there is one (a submitter waiting for room in a bounded
    /// lane keeps working this way).
    pub(crate) fn run_one(&self) -> bool {
        // Waiting for room is a blocking wait: step 5 of `join`'s protocol (which also
        // keeps the frames list to the innermost job's frames, so that a promotion during
        // the job run here does not carry an outer job's frame into this job's lane).
        self.promote_all_frames();
        match self.find_work() {
            Some((job, lane)) => {
                self.execute(job, lane);
                true
            }
            None => false,
        }
    }

    fn start_searching(&self) {
        if !self.searching.replace(true) {
            self.shared.sleep.start_searching();
        }
    }

    fn stop_searching(&self) {
        if self.searching.replace(false) && self.shared.sleep.stop_searching() {
            // Step 3 of the sleep protocol: the last searcher hands the search on if work
            // is left. Pairs with the pusher's fence.
            crate::util::jitter();
            fence(Ordering::SeqCst);
            if !self.shared.lanes.is_empty() {
                self.shared.sleep.notify_one(self.counters());
            }
        }
    }

    /// Runs `job` found in `lane` (or resolves it as shut down after `shutdown_now`), as
    /// this thread's innermost running frame (`task/frame.rs`).
    pub(crate) fn execute(&self, job: JobRef, lane: Lane) {
        let outer = self.lane.replace(lane);
        frame::enter(job.as_ptr(), || {
            if self.shared.is_cancelling_queued() {
                job.discard(self.counters());
            } else {
                job.execute(self.counters());
            }
        });
        self.lane.set(outer);
    }

    /// Runs queued work until `probe` reports done or `deadline` passes; parks when there
    /// is no work. Returns whether `probe` reported done.
    pub(crate) fn wait_until<P: Probe + ?Sized>(
        &self,
        probe: &P,
        deadline: Option<Instant>,
    ) -> bool {
        self.promote_all_frames();
        let done = 'wait: loop {
            if probe.probe() {
                break true;
            }
            if let Some((job, lane)) = self.find_work() {
                self.execute(job, lane);
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break probe.probe();
            }
            self.start_searching();
            for _ in 0..SEARCH_ROUNDS {
                std::thread::yield_now();
                if probe.probe() {
                    break 'wait true;
                }
                if let Some((job, lane)) = self.find_work() {
                    self.execute(job, lane);
                    continue 'wait;
                }
            }
            if !probe.arm() {
                continue;
            }
            let shared = &*self.shared;
            shared.sleep.sleep(
                self.index,
                self.counters(),
                deadline,
                || !shared.lanes.is_empty(),
                || probe.probe(),
            );
            // `sleep` returns with this worker SEARCHING.
            self.searching.set(true);
            self.heartbeat.after_idle();
        };
        self.stop_searching();
        done
    }

    fn main_loop(&self) {
        // Run work until the pool closes...
        self.wait_until(&Closed(&self.shared), None);
        // ...then finish (or, after `shutdown_now`, discard) what is queued, and leave.
        // `wait_until` returned with this worker busy (not SEARCHING), and every nested
        // wait in the jobs below leaves it so again.
        let mut exiting = false;
        loop {
            while let Some((job, lane, _)) =
                self.shared
                    .lanes
                    .find(self.index, &self.local, 0, &self.rng)
            {
                self.execute(job, lane);
            }
            if exiting {
                break;
            }
            // Leave ALIVE, fence, and drain once more: a spawn that raced shutdown is seen
            // either here or by its pusher (sleep.rs, "Shutdown").
            debug_assert!(!self.searching.get());
            self.shared.sleep.begin_exit();
            exiting = true;
        }
    }
}

/// `latch::block_until` on a worker: run this worker's pool's work while waiting.
fn help(probe: &dyn Probe, deadline: Option<Instant>) -> Option<bool> {
    WorkerThread::current().map(|w| w.wait_until(probe, deadline))
}

/// Done once the pool is closed: the cheap `closed` flag first, then the CLOSED bit of the
/// sleep state, which `shutdown` sets after the flag. Waiting for the bit matters: a
/// pusher drains only if it sees CLOSED with no worker alive, so no worker may exit
/// before CLOSED is set.
struct Closed<'a>(&'a Shared);

impl Probe for Closed<'_> {
    fn probe(&self) -> bool {
        self.0.is_closed() && self.0.sleep.is_closed()
    }

    fn arm(&self) -> bool {
        !self.probe()
    }
}
