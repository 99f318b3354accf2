//! Bounded lanes (`Builder::max_queued`): how many jobs each lane may hold, and the gate
//! where submitters wait for room.
//!
//! ## What is counted
//! A lane's depth counts the jobs in its injector and in every worker's FIFO deque: each
//! push adds one, each pop that takes a job out of them to run (or to discard at shutdown)
//! takes one. `join` halves live in the LIFO deques and are not counted (they sit on their
//! caller's stack and never wait for room). Only [`Pool::spawn`](crate::Pool::spawn) and
//! `try_spawn` are *admitted* against the limit; what was accepted earlier (a delayed task
//! coming due, a retry, a periodic run) and scope jobs are queued even when the lane is
//! full, and count toward its depth, so the depth may exceed the limit for a moment.
//!
//! ## The gate
//! A submitter that finds its lane full registers in `waiters`, then looks at the depth
//! again, both under the gate's lock; it sleeps on the condvar until woken. A popper takes
//! one off the depth, then reads `waiters`, and notifies under the lock if anyone waits.
//! Both sides' accesses are `SeqCst` read-modify-writes and loads, so in their single total
//! order either the submitter's re-check sees the freed slot or the popper sees the waiter
//! (the store-buffering pattern of the sleep protocol); the lock then makes sure the
//! notification cannot fall between the re-check and the wait. Shutdown wakes every waiter
//! (`wake_all`), and a waiter checks its stop condition under the same lock.
//!
//! With no limit set, a pool has no `Bound` at all and pays nothing.

use std::sync::PoisonError;

use crossbeam_utils::CachePadded;

use crate::lane::{Lane, LANES};
#[cfg(not(all(test, shuttle)))]
use crate::loom::{AtomicUsize, Condvar, Mutex, Ordering};
// The gate blocks on a mutex and condvar and never spins, so shuttle can drive it: under
// `--cfg shuttle` its tests (`shuttle_bound.rs`) swap in shuttle's primitives here only.
#[cfg(all(test, shuttle))]
use shuttle::sync::{
    atomic::{AtomicUsize, Ordering},
    Condvar, Mutex,
};

/// The per-lane limit and gates of a bounded pool.
pub(crate) struct Bound {
    limit: usize,
    gates: [Gate; LANES],
}

struct Gate {
    /// Jobs queued in the lane (see the module docs for what counts).
    depth: CachePadded<AtomicUsize>,
    /// Submitters registered to be woken when a slot frees.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    room: Condvar,
}

impl Bound {
    /// A bound of `limit` jobs per lane (at least one).
    pub(crate) fn new(limit: usize) -> Bound {
        debug_assert!(limit > 0);
        Bound {
            limit,
            gates: std::array::from_fn(|_| Gate {
                depth: CachePadded::new(AtomicUsize::new(0)),
                waiters: AtomicUsize::new(0),
                lock: Mutex::new(()),
                room: Condvar::new(),
            }),
        }
    }

    /// Jobs counted in `lane` now.
    #[cfg(all(test, any(shuttle, not(loom))))]
    pub(crate) fn depth(&self, lane: Lane) -> usize {
        self.gates[lane].depth.load(Ordering::Relaxed)
    }

    /// Takes a slot in `lane` if one is free.
    pub(crate) fn try_acquire(&self, lane: Lane) -> bool {
        let depth = &self.gates[lane].depth;
        let mut cur = depth.load(Ordering::SeqCst);
        loop {
            if cur >= self.limit {
                return false;
            }
            // SeqCst: part of the gate's total order (module docs).
            match depth.compare_exchange_weak(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Counts a job queued without admission (module docs).
    pub(crate) fn force_acquire(&self, lane: Lane) {
        self.gates[lane].depth.fetch_add(1, Ordering::SeqCst);
    }

    /// A job left `lane`: frees its slot and wakes one waiting submitter, if any.
    pub(crate) fn release(&self, lane: Lane) {
        let gate = &self.gates[lane];
        crate::util::jitter();
        let prev = gate.depth.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(prev > 0, "lane depth underflow");
        // SeqCst: pairs with the waiter's registration (module docs).
        if gate.waiters.load(Ordering::SeqCst) != 0 {
            let _guard = gate.lock.lock().unwrap_or_else(PoisonError::into_inner);
            gate.room.notify_one();
        }
    }

    /// Blocks until a slot in `lane` is taken (true) or `stop()` holds (false). `stop` is
    /// checked under the gate's lock, so a `wake_all` made after `stop` became true is
    /// never missed.
    pub(crate) fn acquire_blocking(&self, lane: Lane, stop: impl Fn() -> bool) -> bool {
        let gate = &self.gates[lane];
        loop {
            if self.try_acquire(lane) {
                return true;
            }
            let guard = gate.lock.lock().unwrap_or_else(PoisonError::into_inner);
            gate.waiters.fetch_add(1, Ordering::SeqCst);
            // Re-check after registering (module docs).
            if stop() {
                gate.waiters.fetch_sub(1, Ordering::SeqCst);
                return false;
            }
            if self.try_acquire(lane) {
                gate.waiters.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
            let guard = gate
                .room
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
            gate.waiters.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        }
    }

    /// Wakes every waiting submitter (shutdown): each re-checks its stop condition.
    pub(crate) fn wake_all(&self) {
        for gate in &self.gates {
            let _guard = gate.lock.lock().unwrap_or_else(PoisonError::into_inner);
            gate.room.notify_all();
        }
    }
}

#[cfg(all(test, shuttle))]
#[path = "tests/shuttle_bound.rs"]
mod shuttle_bound;

#[cfg(all(test, not(loom), not(shuttle)))]
mod tests;
