//! Loom models of the idle/wake protocol of `sleep.rs`, run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
//!
//! Loom cannot drive [`Sleep`](super::Sleep) itself: its idle list is a parking_lot mutex and
//! it parks with `std::thread::park`. [`Pool`] is a stand-in with the same shape, built
//! only from loom atomics, loom threads and loom's park/unpark:
//!
//! - the queues are a job count (`jobs`), pushed with Release and taken with a CAS;
//! - the state word is the real one (`SEARCHING`/`SLEEPING`/`ALIVE`/`CLOSED`, decoded with
//!   the real [`Snapshot`]), updated with the same read-modify-writes;
//! - the idle list holds the one sleeper: its `parked` flag. `Sleep` pops it under the idle
//!   lock; here a CAS true → false decides who takes it off (a notifier or the sleeper
//!   itself), so the state moves SLEEPING → SEARCHING exactly once.
//!
//! The fences are the point: `fenced: false` removes both, and loom then finds the lost
//! wake-up (store buffering: the pusher's state load misses the sleeper's registration
//! while the sleeper's queue check misses the push).

use std::panic::{self, AssertUnwindSafe};

use loom::sync::Arc;
use loom::thread::{self, Thread};

use super::{Snapshot, ALIVE_ONE, CLOSED, SEARCHING_ONE, SLEEPING_ONE};
use crate::loom::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Runs `f` under loom. The preemption bound comes from `LOOM_MAX_PREEMPTIONS` if set, else
/// 2, so a plain `cargo test` under `--cfg loom` also finishes.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

struct Pool {
    /// With the two `fence(SeqCst)`s of the protocol, or without (the negative check).
    fenced: bool,
    state: AtomicU64,
    jobs: AtomicUsize,
    /// The sleeper is on the idle list.
    parked: AtomicBool,
}

impl Pool {
    fn new(fenced: bool, state: u64) -> Arc<Pool> {
        Arc::new(Pool {
            fenced,
            state: AtomicU64::new(state),
            jobs: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
        })
    }

    fn fence(&self) {
        if self.fenced {
            fence(Ordering::SeqCst);
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot(self.state.load(Ordering::Relaxed))
    }

    /// A queue push (crossbeam publishes the job with Release).
    fn push(&self) {
        self.jobs.fetch_add(1, Ordering::Release);
    }

    /// A queue pop: takes one job if there is one.
    fn try_take(&self) -> bool {
        let mut n = self.jobs.load(Ordering::Acquire);
        while n > 0 {
            match self
                .jobs
                .compare_exchange(n, n - 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => n = actual,
            }
        }
        false
    }

    /// Step 1, `Sleep::notify_after_push` after the push: fence, load, wake one sleeper if
    /// nobody searches. Returns the state it saw and whether it woke the sleeper.
    fn notify_after_push(&self, sleeper: &Thread) -> (Snapshot, bool) {
        self.fence();
        let s = self.snapshot();
        let woke = s.searching() == 0 && s.sleeping() > 0 && self.notify_one(sleeper);
        (s, woke)
    }

    /// `Sleep::notify_one`: takes the sleeper off the idle list (SLEEPING → SEARCHING),
    /// then unparks it.
    fn notify_one(&self, sleeper: &Thread) -> bool {
        // Release: pairs with the sleeper's Acquire loop, as in `Sleep`.
        if self
            .parked
            .compare_exchange(true, false, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.state
            .fetch_add(SEARCHING_ONE.wrapping_sub(SLEEPING_ONE), Ordering::SeqCst);
        sleeper.unpark();
        true
    }

    /// Step 2 up to the park, `Sleep::sleep`: register (SEARCHING → SLEEPING), fence,
    /// check the queues once more. True if the worker must park (nothing found).
    fn register_and_recheck(&self) -> bool {
        self.parked.store(true, Ordering::Relaxed);
        self.state
            .fetch_add(SLEEPING_ONE.wrapping_sub(SEARCHING_ONE), Ordering::SeqCst);
        self.fence();
        if self.jobs.load(Ordering::Relaxed) > 0 {
            self.take_off_idle_list();
            return false;
        }
        true
    }

    /// `Sleep::take_off_idle_list`: SLEEPING → SEARCHING unless a notifier did it.
    fn take_off_idle_list(&self) {
        if self
            .parked
            .compare_exchange(true, false, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            self.state
                .fetch_add(SEARCHING_ONE.wrapping_sub(SLEEPING_ONE), Ordering::SeqCst);
        }
    }

    /// A worker's idle loop, starting SEARCHING: search, else sleep, until it took a job.
    fn worker(&self) {
        loop {
            if self.try_take() {
                // SEARCHING → busy (step 3; no other sleeper to hand on to here).
                self.state.fetch_sub(SEARCHING_ONE, Ordering::SeqCst);
                return;
            }
            if self.register_and_recheck() {
                // Acquire: pairs with the notifier's Release.
                while self.parked.load(Ordering::Acquire) {
                    thread::park();
                }
                self.take_off_idle_list();
            }
        }
    }
}

/// A worker that is searching (about to give up and sleep) races a pusher. With the
/// fences, the job is never lost: the worker really parks with loom's park, so a lost
/// wake-up would leave it parked forever, which loom reports as a deadlock. The job is
/// taken exactly once and the state ends with the worker busy.
#[test]
fn loom_sleep_push_is_never_lost() {
    model(|| {
        let pool = Pool::new(true, ALIVE_ONE + SEARCHING_ONE);
        let worker = {
            let pool = pool.clone();
            thread::spawn(move || pool.worker())
        };
        let sleeper = worker.thread().clone();
        let pusher = {
            let pool = pool.clone();
            thread::spawn(move || {
                pool.push();
                pool.notify_after_push(&sleeper);
            })
        };
        pusher.join().unwrap();
        worker.join().unwrap();
        assert_eq!(pool.jobs.load(Ordering::Relaxed), 0);
        let s = pool.snapshot();
        assert_eq!((s.searching(), s.sleeping()), (0, 0));
    });
}

/// The same race, decided without blocking: the worker stops where it would park, and
/// the model asserts "the worker found the job, or the pusher took it off the idle list".
fn lost_wakeup_model(fenced: bool) {
    model(move || {
        let pool = Pool::new(fenced, ALIVE_ONE + SEARCHING_ONE);
        let worker = {
            let pool = pool.clone();
            // True: it would park.
            thread::spawn(move || !pool.try_take() && pool.register_and_recheck())
        };
        let sleeper = worker.thread().clone();
        let pusher = {
            let pool = pool.clone();
            thread::spawn(move || {
                pool.push();
                pool.notify_after_push(&sleeper).1
            })
        };
        let woke = pusher.join().unwrap();
        let parks = worker.join().unwrap();
        assert!(
            !parks || woke,
            "lost wake-up: the worker parks and nobody wakes it"
        );
    });
}

/// The negative check: the flag version passes with the fences and loom finds the lost
/// wake-up without them. (loom treats SeqCst read-modify-writes as AcqRel but models
/// `fence(SeqCst)` fully, so this shows the fences are what prevents it, as in the real
/// protocol, whose loads are Relaxed.) Not `#[should_panic]`: the model is run under
/// `catch_unwind`, and it fails by an assertion, never a deadlock, so loom's cleanup runs.
#[test]
fn loom_sleep_without_fences_loses_a_wakeup() {
    lost_wakeup_model(true);
    let err = panic::catch_unwind(AssertUnwindSafe(|| lost_wakeup_model(false)))
        .expect_err("loom should find the lost wake-up without the fences");
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("");
    assert!(msg.contains("lost wake-up"), "unexpected failure: {msg:?}");
}

/// Shutdown: a worker leaving ALIVE (`Sleep::begin_exit`, then a last drain) races a
/// pusher that queues after CLOSED was set. The job is taken exactly once: by the worker's
/// drain, or by the pusher, which drains itself when it sees CLOSED with no worker alive
/// (`Shared::after_push`).
#[test]
fn loom_shutdown_push_is_never_stranded() {
    model(|| {
        let pool = Pool::new(true, CLOSED + ALIVE_ONE);
        let worker = {
            let pool = pool.clone();
            thread::spawn(move || {
                pool.state.fetch_sub(ALIVE_ONE, Ordering::SeqCst);
                pool.fence();
                pool.try_take()
            })
        };
        let sleeper = worker.thread().clone();
        let pusher = {
            let pool = pool.clone();
            thread::spawn(move || {
                pool.push();
                let (s, woke) = pool.notify_after_push(&sleeper);
                assert!(!woke, "nobody sleeps");
                s.is_closed() && s.alive() == 0 && pool.try_take()
            })
        };
        let by_pusher = pusher.join().unwrap();
        let by_worker = worker.join().unwrap();
        assert!(by_pusher ^ by_worker, "the job is drained exactly once");
        assert_eq!(pool.jobs.load(Ordering::Relaxed), 0);
    });
}
