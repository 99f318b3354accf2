//! Unit tests of `bound.rs`.

use super::*;
use crate::lane::Lane;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[test]
fn admits_up_to_the_limit_per_lane() {
    let b = Bound::new(2);
    assert!(b.try_acquire(Lane::ALL[0]) && b.try_acquire(Lane::ALL[0]));
    assert!(!b.try_acquire(Lane::ALL[0]), "lane 0 is full");
    assert!(b.try_acquire(Lane::ALL[1]), "lanes are bounded separately");
    b.force_acquire(Lane::ALL[0]);
    assert_eq!(b.depth(Lane::ALL[0]), 3, "forced jobs count past the limit");
    b.release(Lane::ALL[0]);
    assert!(!b.try_acquire(Lane::ALL[0]));
    b.release(Lane::ALL[0]);
    assert!(b.try_acquire(Lane::ALL[0]));
}

#[test]
fn a_blocked_submitter_gets_the_freed_slot_or_stops() {
    let b = Arc::new(Bound::new(1));
    assert!(b.try_acquire(Lane::ALL[1]));
    let stop = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || b.acquire_blocking(Lane::ALL[1], || stop.load(Ordering::SeqCst)))
    };
    b.release(Lane::ALL[1]);
    assert!(waiter.join().unwrap(), "woken with the slot");
    assert_eq!(b.depth(Lane::ALL[1]), 1);

    let waiter = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || b.acquire_blocking(Lane::ALL[1], || stop.load(Ordering::SeqCst)))
    };
    stop.store(true, Ordering::SeqCst);
    b.wake_all();
    assert!(!waiter.join().unwrap(), "stopped, no slot taken");
    assert_eq!(b.depth(Lane::ALL[1]), 1);
}
