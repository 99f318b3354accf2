//! Priority lanes: the queues, the order a worker searches them, and the fairness rule.
//!
//! Each lane (high, normal, low) has
//! - one global [`Injector`] for tasks submitted from outside the pool (FIFO);
//! - per worker, a FIFO deque for tasks spawned on that worker (so tasks from one thread
//!   start roughly in submission order), and a LIFO deque for `join`'s second halves (so the
//!   owner pops back the job it just pushed, as in rayon).
//!
//! Thieves take from the front of other workers' deques: the oldest, usually biggest work.
//!
//! ## Search order
//! A worker looks through the lanes in priority order, and within a lane: its own deques,
//! the lane's injector (taking a batch), then other workers' deques starting at a random
//! victim. The first job found wins. The occupancy hints ([`Stealers::occupied`]) keep
//! that cheap: a worker skips its own deques and its victims' while their bits are clear,
//! and draws the random victim only once some victim's bit is set.
//!
//! ## Fairness (the starvation guard)
//! A worker counts its successful picks. On the pick numbered `p`:
//! - `p % FAIRNESS_INTERVAL == LOW_TURN`: low lane first (then normal, then high);
//! - `p % FAIRNESS_INTERVAL == NORMAL_TURN`: normal lane first (then high, then low);
//! - otherwise high, normal, low.
//!
//! So under a flood of high work, the normal and the low lane each get at least one pick in
//! [`FAIRNESS_INTERVAL`] (32) per worker, and lower lanes together get at most two picks
//! in 32 (one in 16) while a higher lane has work. `lanes::tests` checks these numbers.

use std::sync::Arc;

use crossbeam_deque::{Injector, Steal, Stealer, Worker};
use crossbeam_utils::CachePadded;

use crate::bound::Bound;
use crate::job::JobRef;
use crate::lane::{Lane, LANES};
use crate::loom::{AtomicU8, Ordering};
use crate::util::XorShift64Star;

/// The length of the fairness cycle, in picks per worker.
pub(crate) const FAIRNESS_INTERVAL: u32 = 32;
/// The pick (mod `FAIRNESS_INTERVAL`) on which the normal lane goes first.
pub(crate) const NORMAL_TURN: u32 = 15;
/// The pick (mod `FAIRNESS_INTERVAL`) on which the low lane goes first.
pub(crate) const LOW_TURN: u32 = 31;

const _: () = assert!(NORMAL_TURN < FAIRNESS_INTERVAL && LOW_TURN < FAIRNESS_INTERVAL);
const _: () = assert!(NORMAL_TURN != LOW_TURN);
// At most one pick in 16 goes to a lower lane while a higher one has work.
const _: () = assert!(FAIRNESS_INTERVAL >= 2 * 16);

/// The lane order for a worker's `pick`-th pick (see the module docs).
#[inline]
pub(crate) fn lane_order(pick: u32) -> [Lane; LANES] {
    match pick % FAIRNESS_INTERVAL {
        LOW_TURN => [Lane::LOW, Lane::NORMAL, Lane::HIGH],
        NORMAL_TURN => [Lane::NORMAL, Lane::HIGH, Lane::LOW],
        _ => [Lane::HIGH, Lane::NORMAL, Lane::LOW],
    }
}

/// The queues that belong to one worker; only that worker pushes and pops.
pub(crate) struct LocalQueues {
    /// Tasks spawned on this worker, per lane, FIFO.
    fifo: [Worker<JobRef>; LANES],
    /// `join` halves pushed by this worker, per lane, LIFO.
    lifo: [Worker<JobRef>; LANES],
    /// The occupancy hint shared with thieves (see [`Stealers::occupied`]).
    occupied: Arc<CachePadded<AtomicU8>>,
}

/// The stealing ends of one worker's queues, shared with every other thread.
pub(crate) struct Stealers {
    fifo: [Stealer<JobRef>; LANES],
    lifo: [Stealer<JobRef>; LANES],
    /// Bit `lane` is clear only while that lane's deques of this worker are empty.
    ///
    /// Only the owner writes it: it sets the bit *before* pushing into the lane, and clears
    /// it when its own pops found both deques of the lane empty. Since only the owner
    /// pushes, a clear bit means "empty" in the owner's program order; a thief reading a
    /// stale clear bit merely skips a victim for one round: the exact, fenced check before
    /// a worker parks (`Lanes::is_empty`) sees the job, whose push follows the bit's store,
    /// and the worker searches again. So thieves skip empty lanes without the SeqCst fence
    /// that each `Stealer::is_empty` costs. For the owner a clear bit is exact (nobody else
    /// pushes), so its search skips its own empty lanes without popping them.
    occupied: Arc<CachePadded<AtomicU8>>,
}

impl LocalQueues {
    pub(crate) fn new() -> (LocalQueues, Stealers) {
        let fifo: [Worker<JobRef>; LANES] = std::array::from_fn(|_| Worker::new_fifo());
        let lifo: [Worker<JobRef>; LANES] = std::array::from_fn(|_| Worker::new_lifo());
        let occupied = Arc::new(CachePadded::new(AtomicU8::new(0)));
        let stealers = Stealers {
            fifo: std::array::from_fn(|i| fifo[i].stealer()),
            lifo: std::array::from_fn(|i| lifo[i].stealer()),
            occupied: occupied.clone(),
        };
        (
            LocalQueues {
                fifo,
                lifo,
                occupied,
            },
            stealers,
        )
    }

    /// Sets `lane`'s occupancy bit before a push (see `Stealers::occupied`).
    #[inline]
    fn mark_occupied(&self, lane: Lane) {
        let bits = self.occupied.load(Ordering::Relaxed);
        if bits & (1 << lane.index()) == 0 {
            // Relaxed: the push that follows publishes it with its Release store.
            self.occupied
                .store(bits | (1 << lane.index()), Ordering::Relaxed);
        }
    }

    /// False only while both deques of `lane` are empty (see `Stealers::occupied`).
    #[inline]
    fn is_occupied(&self, lane: Lane) -> bool {
        self.occupied.load(Ordering::Relaxed) & (1 << lane.index()) != 0
    }

    /// Clears `lane`'s occupancy bit: the owner's pops just found the lane empty.
    #[inline]
    fn mark_empty(&self, lane: Lane) {
        let bits = self.occupied.load(Ordering::Relaxed);
        if bits & (1 << lane.index()) != 0 {
            self.occupied
                .store(bits & !(1 << lane.index()), Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn push_spawned(&self, lane: Lane, job: JobRef) {
        self.mark_occupied(lane);
        self.fifo[lane].push(job);
    }

    #[inline]
    pub(crate) fn push_join(&self, lane: Lane, job: JobRef) {
        self.mark_occupied(lane);
        self.lifo[lane].push(job);
    }

    /// Pops the newest `join` half of `lane`.
    #[inline]
    pub(crate) fn pop_join(&self, lane: Lane) -> Option<JobRef> {
        self.lifo[lane].pop()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.fifo
            .iter()
            .chain(self.lifo.iter())
            .all(Worker::is_empty)
    }
}

impl Stealers {
    pub(crate) fn is_empty(&self) -> bool {
        self.fifo
            .iter()
            .chain(self.lifo.iter())
            .all(Stealer::is_empty)
    }

    pub(crate) fn len(&self, lane: Lane) -> usize {
        self.fifo[lane].len() + self.lifo[lane].len()
    }

    /// Steals every job out and hands it to `f` with its lane, and whether it came from a
    /// FIFO deque (counted by a `Bound`) (shutdown).
    pub(crate) fn drain(&self, mut f: impl FnMut(JobRef, Lane, bool)) {
        for (counted, deques) in [(true, &self.fifo), (false, &self.lifo)] {
            for (lane, s) in Lane::ALL.into_iter().zip(deques) {
                loop {
                    match s.steal() {
                        Steal::Success(job) => f(job, lane, counted),
                        Steal::Retry => continue,
                        Steal::Empty => break,
                    }
                }
            }
        }
    }
}

/// The global side: the injectors and every worker's stealers.
pub(crate) struct Lanes {
    pub(crate) injectors: [Injector<JobRef>; LANES],
    pub(crate) stealers: Box<[Stealers]>,
    /// The per-lane limit (`Builder::max_queued`); `None` when unbounded. Boxed: one
    /// read-only word here, so the unbounded fast path reads only a null check.
    pub(crate) bound: Option<Box<Bound>>,
}

/// Where a found job came from; thefts are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Local,
    Injector,
    Stolen,
}

impl Lanes {
    pub(crate) fn new(stealers: Vec<Stealers>, bound: Option<Box<Bound>>) -> Lanes {
        Lanes {
            injectors: std::array::from_fn(|_| Injector::new()),
            stealers: stealers.into(),
            bound,
        }
    }

    /// A counted job (from an injector or a FIFO deque) left `lane`.
    #[inline]
    pub(crate) fn taken(&self, lane: Lane) {
        if let Some(b) = &self.bound {
            b.release(lane);
        }
    }

    /// Queues `job` from outside any worker of this pool.
    #[inline]
    pub(crate) fn inject(&self, lane: Lane, job: JobRef) {
        self.injectors[lane].push(job);
    }

    /// True when no queue of any lane holds a job.
    pub(crate) fn is_empty(&self) -> bool {
        self.injectors.iter().all(Injector::is_empty)
            && self.stealers.iter().all(Stealers::is_empty)
    }

    /// Jobs waiting in `lane` right now (approximate while the pool runs).
    pub(crate) fn len(&self, lane: Lane) -> usize {
        self.injectors[lane].len() + self.stealers.iter().map(|s| s.len(lane)).sum::<usize>()
    }

    /// Finds a job for worker `me` in the order of `lane_order(pick)`.
    pub(crate) fn find(
        &self,
        me: usize,
        local: &LocalQueues,
        pick: u32,
        rng: &XorShift64Star,
    ) -> Option<(JobRef, Lane, Source)> {
        for lane in lane_order(pick) {
            if let Some(found) = self.find_in_lane(me, local, lane, rng) {
                return Some(found);
            }
        }
        None
    }

    fn find_in_lane(
        &self,
        me: usize,
        local: &LocalQueues,
        lane: Lane,
        rng: &XorShift64Star,
    ) -> Option<(JobRef, Lane, Source)> {
        // Our own deques, unless our occupancy bit says they are empty: only we push into
        // them, setting the bit first, so a clear bit is exact for us (`Stealers::occupied`).
        if local.is_occupied(lane) {
            if let Some(job) = local.fifo[lane].pop() {
                self.taken(lane);
                return Some((job, lane, Source::Local));
            }
            if let Some(job) = local.lifo[lane].pop() {
                return Some((job, lane, Source::Local));
            }
            local.mark_empty(lane);
        }
        // Emptiness is checked with plain loads first: a steal attempt pins crossbeam's
        // epoch and writes shared state, which costs more than the whole pick when the
        // queue is empty, and most queues of most lanes are empty most of the time.
        if self.injectors[lane].is_empty() && !self.may_steal(me, lane) {
            return None;
        }
        self.take_elsewhere(me, local, lane, rng)
    }

    /// Takes a job of `lane` from its injector (a batch, into our FIFO) or from another
    /// worker, retrying while a steal was lost to a race. Out of line: the pick's fast
    /// path above only looks.
    #[inline(never)]
    fn take_elsewhere(
        &self,
        me: usize,
        local: &LocalQueues,
        lane: Lane,
        rng: &XorShift64Star,
    ) -> Option<(JobRef, Lane, Source)> {
        loop {
            let mut retry = false;
            let injector = &self.injectors[lane];
            if !injector.is_empty() {
                // The batch lands in our FIFO: mark it before it does (`occupied`).
                local.mark_occupied(lane);
                match injector.steal_batch_and_pop(&local.fifo[lane]) {
                    Steal::Success(job) => {
                        self.taken(lane);
                        return Some((job, lane, Source::Injector));
                    }
                    Steal::Retry => retry = true,
                    Steal::Empty => {}
                }
            }
            if self.may_steal(me, lane) {
                match self.steal(me, local, lane, rng) {
                    Steal::Success(found) => return Some(found),
                    Steal::Retry => retry = true,
                    Steal::Empty => {}
                }
            }
            if !retry {
                return None;
            }
        }
    }

    /// True if another worker's hint says it may hold work in `lane`. Looked at in index
    /// order, before `steal` draws its random first victim: most of the time no other
    /// worker has work in a lane, and then the draw would cost more than the look.
    #[inline]
    fn may_steal(&self, me: usize, lane: Lane) -> bool {
        self.stealers
            .iter()
            .enumerate()
            .any(|(i, s)| i != me && s.occupied.load(Ordering::Relaxed) & (1 << lane.index()) != 0)
    }

    /// Tries the other workers' deques of `lane`, from a random victim on: first their
    /// `join` halves, then a batch of their spawned tasks (into our FIFO).
    #[inline(never)]
    fn steal(
        &self,
        me: usize,
        local: &LocalQueues,
        lane: Lane,
        rng: &XorShift64Star,
    ) -> Steal<(JobRef, Lane, Source)> {
        let mut retry = false;
        let n = self.stealers.len();
        let start = rng.next_usize(n);
        for victim in (start..n).chain(0..start) {
            if victim == me {
                continue;
            }
            let theirs = &self.stealers[victim];
            if theirs.occupied.load(Ordering::Relaxed) & (1 << lane.index()) == 0 {
                continue;
            }
            let attempt = if !theirs.lifo[lane].is_empty() {
                tag(theirs.lifo[lane].steal(), false)
            } else {
                Steal::Empty
            }
            .or_else(|| {
                if theirs.fifo[lane].is_empty() {
                    Steal::Empty
                } else {
                    local.mark_occupied(lane);
                    tag(
                        theirs.fifo[lane].steal_batch_and_pop(&local.fifo[lane]),
                        true,
                    )
                }
            });
            match attempt {
                Steal::Success((job, counted)) => {
                    if counted {
                        self.taken(lane);
                    }
                    return Steal::Success((job, lane, Source::Stolen));
                }
                Steal::Retry => retry = true,
                Steal::Empty => {}
            }
        }
        if retry {
            Steal::Retry
        } else {
            Steal::Empty
        }
    }
}

/// Tags a steal's job with whether it is counted by a `Bound` (it came from a FIFO deque).
#[inline]
fn tag(steal: Steal<JobRef>, counted: bool) -> Steal<(JobRef, bool)> {
    match steal {
        Steal::Success(job) => Steal::Success((job, counted)),
        Steal::Retry => Steal::Retry,
        Steal::Empty => Steal::Empty,
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
