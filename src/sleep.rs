//! The idle/wake protocol, and the pool's lifecycle bits.
//!
//! ## Actors
//! - *Pushers* (any thread that queued a job) call [`Sleep::notify_after_push`].
//! - *Workers* go through: busy → searching → sleeping → (woken) searching → busy.
//!
//! ## The state word (`AtomicU64`)
//! | bits | name | meaning |
//! | --- | --- | --- |
//! | 0–15 | `SEARCHING` | workers awake and looking for work |
//! | 16–31 | `SLEEPING` | workers registered in the idle list (parked or about to park) |
//! | 32–47 | `ALIVE` | worker threads that have not begun exiting |
//! | 48 | `CLOSED` | `shutdown` was called: workers drain the queues and exit |
//!
//! Field widths bound the worker count: [`MAX_WORKERS`].
//!
//! ## Protocol
//! 1. A pusher pushes, then `fence(SeqCst)`, then loads the state. If nobody is searching
//!    and someone sleeps, it wakes one sleeper (popping it from the idle list under the
//!    lock, moving it from SLEEPING to SEARCHING in the same critical section).
//! 2. A worker that finds no work becomes SEARCHING, searches a bounded number of rounds
//!    ([`SEARCH_ROUNDS`], yielding between them), then registers: under the idle lock it
//!    pushes itself on the idle list and moves SEARCHING → SLEEPING; then `fence(SeqCst)`;
//!    then checks every queue once more. If it finds work (or its wait condition holds) it
//!    takes itself off the list; else it parks until a notifier takes it off.
//!    A `join` half skips the fence ([`Sleep::notify_after_local_push`]), as rayon does
//!    for internal jobs: it can never be lost, since its owner pops it back or waits for
//!    it, and `join` promises parallelism only where it is free; a wake-up missed in that
//!    race costs parallelism until the next push. A spawned task keeps the fence even from
//!    a worker: its spawner may block waiting for it, so an idle worker must not miss it.
//! 3. A searcher that finds work leaves SEARCHING. If it was the last searcher and someone
//!    sleeps, it fences and checks the queues; if work is left it wakes one sleeper. So
//!    parallelism ramps up one worker at a time, without a thundering herd.
//!
//! ## Why no wake-up is lost (sketch)
//! Steps 1 and 2 form Dekker's pattern: a pusher writes a queue then reads the state; a
//! sleeper writes the state then reads the queues; SeqCst fences sit between. In the single
//! total order of SeqCst fences one comes first, so either the pusher sees the sleeper
//! registered (and, if nobody searches, wakes someone), or the sleeper sees the job. A
//! pusher that saw a searcher relies on it: the searcher either finds the job, or leaves
//! SEARCHING through step 2 (and re-checks after its own fence) or through step 3 (and
//! re-checks after its fence). `std::thread::park` keeps an unpark token, so an unpark that
//! comes before the park is not lost either.
//!
//! Shutdown uses the same fences: a worker that exits decrements ALIVE, fences, and drains
//! once more; a pusher that sees CLOSED with ALIVE == 0 after its fence drains the queues
//! itself. So a spawn racing shutdown is either run or resolved as shut down.

use std::sync::OnceLock;
use std::thread::{self, Thread};
use std::time::Instant;

use parking_lot::Mutex;

use crate::loom::{fence, AtomicBool, AtomicU64, Ordering};
use crate::metrics::Counters;

const FIELD_BITS: u32 = 16;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
const SEARCHING_SHIFT: u32 = 0;
const SLEEPING_SHIFT: u32 = FIELD_BITS;
const ALIVE_SHIFT: u32 = 2 * FIELD_BITS;
const SEARCHING_ONE: u64 = 1 << SEARCHING_SHIFT;
const SLEEPING_ONE: u64 = 1 << SLEEPING_SHIFT;
const ALIVE_ONE: u64 = 1 << ALIVE_SHIFT;
const CLOSED: u64 = 1 << (3 * FIELD_BITS);

/// The most worker threads a pool may have (the width of a state field).
pub(crate) const MAX_WORKERS: usize = FIELD_MASK as usize;

/// Rounds of searching (with a `yield_now` between them) before a worker parks.
pub(crate) const SEARCH_ROUNDS: u32 = 32;

const _: () = assert!(CLOSED > ALIVE_ONE * FIELD_MASK && CLOSED.leading_zeros() > 0);

/// A loaded state word.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot(u64);

impl Snapshot {
    pub(crate) fn searching(self) -> u64 {
        (self.0 >> SEARCHING_SHIFT) & FIELD_MASK
    }
    pub(crate) fn sleeping(self) -> u64 {
        (self.0 >> SLEEPING_SHIFT) & FIELD_MASK
    }
    pub(crate) fn alive(self) -> u64 {
        (self.0 >> ALIVE_SHIFT) & FIELD_MASK
    }
    pub(crate) fn is_closed(self) -> bool {
        self.0 & CLOSED != 0
    }
}

struct Slot {
    /// True while the worker is on the idle list. Written under the idle lock; read
    /// without it by the worker itself (Acquire, pairs with the notifier's Release).
    parked: AtomicBool,
    /// Set by the worker itself before it can first park or be the owner of a latch.
    thread: OnceLock<Thread>,
}

/// The sleep state of one pool.
pub(crate) struct Sleep {
    state: AtomicU64,
    idle: Mutex<Vec<usize>>,
    slots: Box<[Slot]>,
}

impl Sleep {
    pub(crate) fn new(workers: usize) -> Sleep {
        assert!(workers <= MAX_WORKERS);
        Sleep {
            state: AtomicU64::new(workers as u64 * ALIVE_ONE),
            idle: Mutex::new(Vec::with_capacity(workers)),
            slots: (0..workers)
                .map(|_| Slot {
                    parked: AtomicBool::new(false),
                    thread: OnceLock::new(),
                })
                .collect(),
        }
    }

    /// Called by worker `index` on its own thread before anything else.
    pub(crate) fn register_thread(&self, index: usize) {
        let _ = self.slots[index].thread.set(thread::current());
    }

    /// Worker `index`'s thread handle (it has registered).
    pub(crate) fn thread(&self, index: usize) -> &Thread {
        self.slots[index]
            .thread
            .get()
            .expect("worker registered its thread")
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn load(&self) -> Snapshot {
        Snapshot(self.state.load(Ordering::SeqCst))
    }

    /// True once `close` set CLOSED.
    pub(crate) fn is_closed(&self) -> bool {
        Snapshot(self.state.load(Ordering::SeqCst)).is_closed()
    }

    /// Step 1: after queuing a job. Returns the state it saw (for the shutdown check).
    #[inline]
    pub(crate) fn notify_after_push(&self, counters: &Counters) -> Snapshot {
        // Pairs with the fence in `sleep` (Dekker; see the module docs).
        crate::util::jitter();
        fence(Ordering::SeqCst);
        let s = Snapshot(self.state.load(Ordering::Relaxed));
        if s.searching() == 0 && s.sleeping() > 0 {
            self.notify_one(counters);
        }
        s
    }

    /// Step 1 for a job on the pusher's own deque: no fence (see the module docs).
    #[inline]
    pub(crate) fn notify_after_local_push(&self, counters: &Counters) {
        let s = Snapshot(self.state.load(Ordering::Relaxed));
        if s.searching() == 0 && s.sleeping() > 0 {
            self.notify_one(counters);
        }
    }

    /// Wakes one sleeping worker, if any. It becomes SEARCHING.
    pub(crate) fn notify_one(&self, counters: &Counters) -> bool {
        let mut idle = self.idle.lock();
        let Some(index) = idle.pop() else {
            return false;
        };
        let slot = &self.slots[index];
        // Release: pairs with the Acquire loop in `sleep`.
        slot.parked.store(false, Ordering::Release);
        self.state
            .fetch_add(SEARCHING_ONE.wrapping_sub(SLEEPING_ONE), Ordering::SeqCst);
        drop(idle);
        self.thread(index).unpark();
        counters.bump(&counters.unparks);
        true
    }

    /// Wakes every sleeper (shutdown).
    pub(crate) fn notify_all(&self) {
        let mut idle = self.idle.lock();
        let woken: Vec<usize> = idle.drain(..).collect();
        for &index in &woken {
            self.slots[index].parked.store(false, Ordering::Release);
            self.state
                .fetch_add(SEARCHING_ONE.wrapping_sub(SLEEPING_ONE), Ordering::SeqCst);
        }
        drop(idle);
        for index in woken {
            self.thread(index).unpark();
        }
    }

    /// busy → SEARCHING.
    pub(crate) fn start_searching(&self) {
        self.state.fetch_add(SEARCHING_ONE, Ordering::SeqCst);
    }

    /// SEARCHING → busy (step 3). True if the caller was the last searcher while someone
    /// sleeps: it must then fence, check the queues, and wake one sleeper if work is left.
    pub(crate) fn stop_searching(&self) -> bool {
        let prev = Snapshot(self.state.fetch_sub(SEARCHING_ONE, Ordering::SeqCst));
        debug_assert!(prev.searching() > 0);
        prev.searching() == 1 && prev.sleeping() > 0
    }

    /// Step 2: SEARCHING → SLEEPING → parked, until a notifier takes the worker off the
    /// idle list, `stop()` holds, or `deadline` passes. `has_work` is the queue check done
    /// after the fence. On return the worker is SEARCHING again.
    pub(crate) fn sleep(
        &self,
        index: usize,
        counters: &Counters,
        deadline: Option<Instant>,
        has_work: impl Fn() -> bool,
        stop: impl Fn() -> bool,
    ) {
        let slot = &self.slots[index];
        {
            let mut idle = self.idle.lock();
            idle.push(index);
            slot.parked.store(true, Ordering::Relaxed);
            self.state
                .fetch_add(SLEEPING_ONE.wrapping_sub(SEARCHING_ONE), Ordering::SeqCst);
        }
        // Pairs with the fence in `notify_after_push` (Dekker; see the module docs).
        crate::util::jitter();
        fence(Ordering::SeqCst);
        if has_work() || stop() {
            self.take_off_idle_list(index);
            return;
        }
        counters.bump(&counters.parks);
        // Acquire: pairs with the notifier's Release store.
        while slot.parked.load(Ordering::Acquire) && !stop() {
            match deadline {
                None => thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    thread::park_timeout(d - now);
                }
            }
        }
        self.take_off_idle_list(index);
    }

    /// If the worker is still on the idle list (it woke for another reason), takes it off:
    /// SLEEPING → SEARCHING.
    fn take_off_idle_list(&self, index: usize) {
        let slot = &self.slots[index];
        if !slot.parked.load(Ordering::Acquire) {
            return;
        }
        let mut idle = self.idle.lock();
        if slot.parked.load(Ordering::Relaxed) {
            let pos = idle
                .iter()
                .position(|&i| i == index)
                .expect("parked worker is listed");
            idle.swap_remove(pos);
            slot.parked.store(false, Ordering::Relaxed);
            self.state
                .fetch_add(SEARCHING_ONE.wrapping_sub(SLEEPING_ONE), Ordering::SeqCst);
        }
    }

    /// Sets CLOSED and wakes everyone. Returns false if it was already closed.
    pub(crate) fn close(&self) -> bool {
        let prev = Snapshot(self.state.fetch_or(CLOSED, Ordering::SeqCst));
        self.notify_all();
        !prev.is_closed()
    }

    /// A worker begins exiting (it is busy, not SEARCHING): leaves ALIVE, then fences. The
    /// caller drains the queues once more afterwards.
    pub(crate) fn begin_exit(&self) {
        let prev = Snapshot(self.state.fetch_sub(ALIVE_ONE, Ordering::SeqCst));
        debug_assert!(prev.alive() > 0 && prev.is_closed(), "{prev:?}");
        // Pairs with the pusher's fence: either it sees ALIVE drop, or we see its job.
        crate::util::jitter();
        fence(Ordering::SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
#[path = "tests/loom_sleep.rs"]
mod loom_sleep;
