//! Unit tests of `latch.rs`.

use super::*;

#[test]
fn thread_latch_wakes_its_owner() {
    let latch = ThreadLatch::new();
    std::thread::scope(|s| {
        let l = &latch;
        s.spawn(move || {
            // SAFETY: the latch outlives the scope.
            unsafe { ThreadLatch::set(l) };
        });
        assert!(block_until(&latch, None));
    });
    assert!(latch.probe());
    assert!(!latch.arm());
}

#[test]
fn count_latch_sets_on_last_decrement() {
    let latch = CountLatch::new();
    latch.increment();
    latch.increment();
    for _ in 0..2 {
        // SAFETY: live local.
        unsafe { CountLatch::set(&latch) };
        assert!(!latch.probe());
    }
    // SAFETY: live local.
    unsafe { CountLatch::set(&latch) };
    assert!(latch.probe());
}

#[test]
fn spin_latch_arm_fails_once_set() {
    let me = std::thread::current();
    // SAFETY: `me` outlives the latch.
    let latch = unsafe { SpinLatch::new(&me) };
    assert!(latch.arm());
    // SAFETY: live local; unparking ourselves is harmless.
    unsafe { SpinLatch::set(&latch) };
    assert!(latch.probe());
    assert!(!latch.arm());
}
