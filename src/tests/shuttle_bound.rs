//! Shuttle models of the bounded-lane gate (`bound.rs`), run with
//! `RUSTFLAGS="--cfg shuttle" cargo test --release --lib shuttle` (CI runs them in the loom
//! build, with `--cfg loom --cfg shuttle`).
//!
//! The gate waits on a mutex and a condvar and never spins, which is what shuttle can
//! schedule: each model runs many randomized (and PCT) schedules of real `Bound` code over
//! shuttle's primitives, and shuttle fails a schedule where every thread is blocked (a lost
//! wake-up shows up that way). The queues themselves are a stand-in: a counter of queued
//! jobs, since crossbeam's deques spin and are trusted, not modelled.

use shuttle::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use shuttle::sync::Arc;
use shuttle::thread;

use super::Bound;
use crate::lane::Lane;

const ITERATIONS: usize = 2_000;

/// Submitters block for room in a lane of two; one consumer drains it. Every job gets in,
/// the depth never passes the limit, and nobody sleeps through a freed slot.
fn producers_and_a_consumer() {
    const SUBMITTERS: usize = 3;
    const EACH: usize = 2;
    let bound = Arc::new(Bound::new(2));
    let queued = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|_| {
            let (bound, queued, stop) = (bound.clone(), queued.clone(), stop.clone());
            thread::spawn(move || {
                for _ in 0..EACH {
                    assert!(bound.acquire_blocking(Lane::ALL[1], || stop.load(Ordering::SeqCst)));
                    assert!(bound.depth(Lane::ALL[1]) <= 2, "admitted past the limit");
                    // The push (after the slot was taken, as in `Shared::push`).
                    queued.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let consumer = {
        let (bound, queued) = (bound.clone(), queued.clone());
        thread::spawn(move || {
            let mut taken = 0;
            while taken < SUBMITTERS * EACH {
                let n = queued.load(Ordering::SeqCst);
                if n > 0
                    && queued
                        .compare_exchange(n, n - 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    // The pop: a job left the lane.
                    bound.release(Lane::ALL[1]);
                    taken += 1;
                } else {
                    thread::yield_now();
                }
            }
        })
    };
    for s in submitters {
        s.join().unwrap();
    }
    consumer.join().unwrap();
    assert_eq!(bound.depth(Lane::ALL[1]), 0);
}

#[test]
fn shuttle_bound_no_lost_slot_random() {
    shuttle::check_random(producers_and_a_consumer, ITERATIONS);
}

#[test]
fn shuttle_bound_no_lost_slot_pct() {
    shuttle::check_pct(producers_and_a_consumer, ITERATIONS, 3);
}

/// A submitter waiting in a full lane and a shutdown: `wake_all` after the stop flag
/// always releases it (with the slot if one freed in time, else refused).
fn shutdown_releases_waiters() {
    let bound = Arc::new(Bound::new(1));
    assert!(bound.try_acquire(Lane::ALL[0]));
    let stop = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (bound, stop) = (bound.clone(), stop.clone());
        thread::spawn(move || bound.acquire_blocking(Lane::ALL[0], || stop.load(Ordering::SeqCst)))
    };
    let freer = {
        let bound = bound.clone();
        thread::spawn(move || bound.release(Lane::ALL[0]))
    };
    // The shutdown: the flag, then the wake-up (as `Shared::close`).
    stop.store(true, Ordering::SeqCst);
    bound.wake_all();
    let admitted = waiter.join().unwrap();
    freer.join().unwrap();
    assert_eq!(bound.depth(Lane::ALL[0]), usize::from(admitted));
}

#[test]
fn shuttle_bound_shutdown_releases_waiters() {
    shuttle::check_random(shutdown_releases_waiters, ITERATIONS);
    shuttle::check_pct(shutdown_releases_waiters, ITERATIONS, 3);
}
