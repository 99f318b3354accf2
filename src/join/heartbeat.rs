//! The heartbeat: one thread per pool that, about every [`INTERVAL`], raises a flag per
//! worker; a worker that sees its flag at its next `join` shares its oldest private frame
//! (see the protocol in [`super`]).
//!
//! # Why a thread, and why it sleeps
//!
//! The flag must be nearly free to read on the join path: one relaxed load of a word the
//! worker's own cache line holds. A clock read in the join path instead (`Instant::now`,
//! about 20 ns here through the vDSO) would cost more than a whole fine-grained join; the
//! pool's timer driver sleeps until its next deadline and would have to wake every 100 µs.
//! So the beat has its own thread, which parks when no worker needs it:
//!
//! - A worker **arms** the heartbeat the first time it records a frame after waking
//!   ([`Heartbeat::arm`]), and **disarms** it before it parks ([`Heartbeat::disarm`]).
//!   Both take the control mutex; both are off the hot path (once per busy period).
//! - The thread beats while at least one worker is armed, then [`LINGER`] more beats, then
//!   parks on the condition variable until an `arm` finds it parked and wakes it. The
//!   linger keeps a pool that works in bursts a few milliseconds apart from paying a
//!   wake-up of the heartbeat thread on every burst; an idle pool's heartbeat costs nothing
//!   after it (`tests/idle.rs`).
//!
//! # Invariants
//!
//! 1. `parked` is true only while the thread waits (or is about to wait) on `cv` with
//!    `armed == 0` seen under the lock; `arm` clears it under the same lock and notifies.
//!    So after `arm` returns, the thread is beating or will beat before it parks again:
//!    no armed worker waits for a beat that never comes (loom: `tests/loom_heartbeat.rs`).
//! 2. The flags are hints. The thread sets them with `Relaxed` stores and the worker clears
//!    its own with a `Relaxed` store; a beat lost to the race between the two only delays
//!    the next promotion by one interval, and a stale flag only promotes early. Nothing
//!    else is published through them: the promoted frame is published by the deque push.
//! 3. `closed` is set once, under the lock, by the pool's shutdown; the thread exits at
//!    its next look at the lock and never touches the flags afterwards.

use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::loom::{AtomicBool, Condvar, Mutex, Ordering};

/// The time between two beats (Spice's and chili's choice).
pub(crate) const INTERVAL: Duration = Duration::from_micros(100);

/// Beats the thread still gives after the last worker disarmed, before it parks (5 ms at
/// [`INTERVAL`]).
#[cfg(not(loom))]
pub(crate) const LINGER: u32 = 50;
#[cfg(loom)]
pub(crate) const LINGER: u32 = 1;

/// One pool's heartbeat: the per-worker flags and the thread's control block.
pub(crate) struct Heartbeat {
    flags: Box<[CachePadded<AtomicBool>]>,
    ctl: Mutex<Ctl>,
    cv: Condvar,
}

/// What the control mutex guards.
struct Ctl {
    /// Workers that recorded a frame since they last woke (and have not parked since).
    armed: usize,
    /// The thread waits on `cv` (invariant 1).
    parked: bool,
    /// The pool shut down (invariant 3).
    closed: bool,
}

impl Heartbeat {
    pub(crate) fn new(workers: usize) -> Heartbeat {
        Heartbeat {
            flags: (0..workers)
                .map(|_| CachePadded::new(AtomicBool::new(false)))
                .collect(),
            ctl: Mutex::new(Ctl {
                armed: 0,
                parked: false,
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }

    /// True if worker `index` got a beat since it last cleared its flag.
    #[inline]
    pub(crate) fn is_due(&self, index: usize) -> bool {
        // Relaxed: a hint only (invariant 2).
        self.flags[index].load(Ordering::Relaxed)
    }

    /// Worker `index` acts on its beat.
    #[inline]
    pub(crate) fn clear(&self, index: usize) {
        // Relaxed: invariant 2.
        self.flags[index].store(false, Ordering::Relaxed);
    }

    /// A worker starts needing beats. Wakes the thread if it parked.
    pub(crate) fn arm(&self) {
        let mut ctl = self.ctl.lock().unwrap();
        ctl.armed += 1;
        if ctl.parked {
            // Invariant 1: cleared under the lock the thread parked under.
            ctl.parked = false;
            self.cv.notify_one();
        }
    }

    /// A worker that armed stops needing beats (it is about to park).
    pub(crate) fn disarm(&self) {
        let mut ctl = self.ctl.lock().unwrap();
        debug_assert!(ctl.armed > 0, "disarm without arm");
        ctl.armed -= 1;
    }

    /// One beat: raises every worker's flag.
    pub(crate) fn beat(&self) {
        for flag in self.flags.iter() {
            // Relaxed: invariant 2.
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// True while the thread is parked (tests watch for it).
    #[cfg(test)]
    pub(crate) fn is_parked(&self) -> bool {
        self.ctl.lock().unwrap().parked
    }

    /// Ends the thread (pool shutdown).
    pub(crate) fn close(&self) {
        let mut ctl = self.ctl.lock().unwrap();
        ctl.closed = true;
        ctl.parked = false;
        self.cv.notify_one();
    }

    /// The heartbeat thread's body: beats (calling `pause` between beats) until `close`.
    /// Returns how many beats it gave.
    pub(crate) fn run(&self, mut pause: impl FnMut()) -> u64 {
        let mut beats = 0;
        let mut quiet = 0;
        let mut ctl = self.ctl.lock().unwrap();
        loop {
            if ctl.closed {
                return beats;
            }
            if ctl.armed > 0 {
                quiet = 0;
            } else if quiet < LINGER {
                quiet += 1;
            } else {
                // Invariant 1: `armed == 0` seen under the lock we wait with.
                ctl.parked = true;
                while ctl.parked {
                    ctl = self.cv.wait(ctl).unwrap();
                }
                quiet = 0;
                continue;
            }
            drop(ctl);
            pause();
            self.beat();
            beats += 1;
            ctl = self.ctl.lock().unwrap();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    /// Waits (generously) until `cond` holds.
    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn beats_while_armed_then_parks_after_the_linger() {
        let h = Arc::new(Heartbeat::new(2));
        let t = {
            let h = h.clone();
            std::thread::spawn(move || h.run(|| std::thread::sleep(INTERVAL)))
        };
        // With nobody armed it lingers, then parks.
        wait_for("the first park", || h.is_parked());
        h.clear(0);
        h.clear(1);
        h.arm();
        wait_for("a beat for worker 0", || h.is_due(0));
        wait_for("a beat for worker 1", || h.is_due(1));
        h.clear(0);
        wait_for("another beat", || h.is_due(0));
        h.disarm();
        wait_for("the park after disarm", || h.is_parked());
        h.close();
        let beats = t.join().unwrap();
        assert!(beats >= 2 + u64::from(LINGER), "{beats} beats");
    }

    #[test]
    fn close_ends_a_parked_or_beating_thread() {
        for arm in [false, true] {
            let h = Arc::new(Heartbeat::new(1));
            let t = {
                let h = h.clone();
                std::thread::spawn(move || h.run(std::thread::yield_now))
            };
            if arm {
                h.arm();
                wait_for("a beat", || h.is_due(0));
            } else {
                wait_for("the park", || h.is_parked());
            }
            h.close();
            t.join().unwrap();
        }
    }
}
