//! Latches: one-shot "done" signals that a blocked thread waits on.
//!
//! A waiter calls [`Probe::probe`] to look, and [`Probe::arm`] right before it parks
//! (`std::thread::park`); the setter then unparks it. Every thread in weft parks through
//! `std::thread::park`, so whatever woke it (a latch, new work, a finished task) it simply
//! probes again: spurious wake-ups are harmless.
//!
//! Rule (all latches): once `set` has published SET, the waiter may return and free the
//! latch, so `set` copies what it needs *before* publishing and never touches the latch
//! after.

use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Instant;

use crate::loom::{AtomicUsize, Ordering};

/// How a worker thread waits: it runs its pool's work until the probe reports done or the
/// deadline passes, and returns whether the probe reported done; `None` on a thread that
/// is no pool's worker.
pub(crate) type Helper = fn(&dyn Probe, Option<Instant>) -> Option<bool>;

/// The workers' way of waiting, registered by the first worker thread that starts. Kept
/// here, below the pool, so that what blocks (a `JoinHandle`, a scope, `install`) need
/// not know the pool.
static HELPER: OnceLock<Helper> = OnceLock::new();

/// Registers how a worker waits (every worker thread calls this as it starts).
pub(crate) fn register_helper(helper: Helper) {
    HELPER.get_or_init(|| helper);
}

/// Blocks until `probe` reports done or `deadline` passes; returns whether it reported
/// done. On a worker thread (of any pool) the wait runs that pool's work meanwhile, which
/// is what makes a nested wait safe on a one-worker pool; elsewhere the thread parks,
/// armed, until the setter unparks it.
pub(crate) fn block_until(probe: &dyn Probe, deadline: Option<Instant>) -> bool {
    if let Some(done) = HELPER.get().and_then(|help| help(probe, deadline)) {
        return done;
    }
    loop {
        if !probe.arm() {
            return true;
        }
        match deadline {
            None => std::thread::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return probe.probe();
                }
                std::thread::park_timeout(d - now);
            }
        }
    }
}

/// A waiter's view of a latch.
pub(crate) trait Probe {
    /// True once the event happened. `Acquire`: everything before `set` is visible.
    fn probe(&self) -> bool;

    /// Announces that the waiter is about to park. Returns false if the event already
    /// happened (then the waiter must not park).
    fn arm(&self) -> bool;
}

/// The setter's side.
pub(crate) trait Latch: Probe {
    /// Sets the latch and wakes its waiter.
    ///
    /// # Safety
    /// `this` must be live on entry; it may be freed by the waiter as soon as the latch is
    /// published, so implementations do not touch it afterwards.
    unsafe fn set(this: *const Self);
}

const UNSET: usize = 0;
const SLEEPING: usize = 1;
const SET: usize = 2;

/// The latch of `join`'s second half when the owner is a worker thread.
///
/// The owner arms it only before parking, so the common case (set while the owner is busy)
/// costs the setter one `swap` and no syscall.
pub(crate) struct SpinLatch {
    state: AtomicUsize,
    /// The owner's thread, inside the pool's `Shared`, which outlives every worker.
    owner: *const Thread,
}

impl SpinLatch {
    /// # Safety
    /// `owner` must stay valid until the latch is set: it points into the pool's `Shared`,
    /// and only threads that keep that `Shared` alive may set it: the pool's workers, or a
    /// thread draining the pool at shutdown (which holds a `Pool` handle or is a worker).
    pub(crate) unsafe fn new(owner: &Thread) -> SpinLatch {
        SpinLatch {
            state: AtomicUsize::new(UNSET),
            owner,
        }
    }
}

impl Probe for SpinLatch {
    fn probe(&self) -> bool {
        // Acquire: pairs with the AcqRel swap in `set`, so the job's result is visible.
        self.state.load(Ordering::Acquire) == SET
    }

    fn arm(&self) -> bool {
        // AcqRel: on failure we read SET and must see the result (as in `probe`).
        match self
            .state
            .compare_exchange(UNSET, SLEEPING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(s) => s != SET,
        }
    }
}

impl Latch for SpinLatch {
    unsafe fn set(this: *const Self) {
        // SAFETY: `this` is live on entry (trait contract); copy the owner out first.
        let owner = unsafe { (*this).owner };
        // SAFETY: as above. AcqRel: Release publishes the job's result to `probe`; Acquire
        // orders the owner's SLEEPING before our unpark.
        let old = unsafe { (*this).state.swap(SET, Ordering::AcqRel) };
        if old == SLEEPING {
            // SAFETY: the owner thread handle lives in `Shared`, kept alive by the setter
            // (invariant of `SpinLatch::new`).
            unsafe { (*owner).unpark() };
        }
    }
}

/// A latch whose waiter is any thread (outside the pool, or another pool's worker).
pub(crate) struct ThreadLatch {
    state: AtomicUsize,
    owner: Thread,
}

impl ThreadLatch {
    /// A latch that wakes the current thread.
    pub(crate) fn new() -> ThreadLatch {
        ThreadLatch {
            state: AtomicUsize::new(UNSET),
            owner: std::thread::current(),
        }
    }
}

impl Probe for ThreadLatch {
    fn probe(&self) -> bool {
        // Acquire: pairs with the Release store in `set`.
        self.state.load(Ordering::Acquire) == SET
    }

    fn arm(&self) -> bool {
        !self.probe()
    }
}

impl Latch for ThreadLatch {
    unsafe fn set(this: *const Self) {
        // SAFETY: live on entry; clone the owner before publishing.
        let owner = unsafe { (*this).owner.clone() };
        // SAFETY: live on entry. Release: publishes the result to `probe`.
        unsafe { (*this).state.store(SET, Ordering::Release) };
        owner.unpark();
    }
}

/// Counts outstanding jobs of a scope; set when the count reaches zero.
///
/// The count starts at one (the scope's own body). The thread whose decrement reaches
/// zero copies the owner's handle, publishes SET, then unparks it.
pub(crate) struct CountLatch {
    count: AtomicUsize,
    state: AtomicUsize,
    owner: Thread,
}

impl CountLatch {
    pub(crate) fn new() -> CountLatch {
        CountLatch {
            count: AtomicUsize::new(1),
            state: AtomicUsize::new(UNSET),
            owner: std::thread::current(),
        }
    }

    /// One more job to wait for. Called only while the count is above zero (by the body or
    /// by a running job of the scope), so it can never revive a set latch.
    pub(crate) fn increment(&self) {
        // Relaxed: the job is published by the queue push that follows.
        let old = self.count.fetch_add(1, Ordering::Relaxed);
        debug_assert!(old > 0);
    }
}

impl Probe for CountLatch {
    fn probe(&self) -> bool {
        // Acquire: pairs with the Release store in `set`.
        self.state.load(Ordering::Acquire) == SET
    }

    fn arm(&self) -> bool {
        !self.probe()
    }
}

impl Latch for CountLatch {
    unsafe fn set(this: *const Self) {
        // SAFETY: live on entry. AcqRel: each job's effects are released to the last
        // decrementer, which releases them all to the owner below.
        if unsafe { (*this).count.fetch_sub(1, Ordering::AcqRel) } != 1 {
            return;
        }
        // SAFETY: the count is zero but `state` is not yet SET, so the owner is still
        // waiting and the latch is live.
        let owner = unsafe { (*this).owner.clone() };
        // SAFETY: as above; Release pairs with `probe`.
        unsafe { (*this).state.store(SET, Ordering::Release) };
        owner.unpark();
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
