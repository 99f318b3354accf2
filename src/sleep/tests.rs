//! Unit tests of `sleep.rs`.

use super::*;

#[test]
fn fields_do_not_overlap() {
    let s = Snapshot(3 * SEARCHING_ONE + 5 * SLEEPING_ONE + 7 * ALIVE_ONE + CLOSED);
    assert_eq!(
        (s.searching(), s.sleeping(), s.alive(), s.is_closed()),
        (3, 5, 7, true)
    );
    let full = Snapshot(FIELD_MASK * (SEARCHING_ONE + SLEEPING_ONE + ALIVE_ONE));
    assert_eq!(full.searching() as usize, MAX_WORKERS);
    assert!(!full.is_closed());
}

#[test]
fn notify_moves_a_sleeper_to_searching() {
    let sleep = Sleep::new(1);
    sleep.register_thread(0);
    let counters = Counters::default();
    sleep.start_searching();
    // has_work says yes: the worker takes itself off the list without parking.
    sleep.sleep(0, &counters, None, || true, || false);
    let s = sleep.load();
    assert_eq!((s.searching(), s.sleeping()), (1, 0));
    assert_eq!(counters.parks.load(Ordering::Relaxed), 0);
    // Nobody sleeps: nothing to notify.
    assert!(!sleep.notify_one(&counters));
    assert!(!sleep.stop_searching());
    assert!(sleep.close());
    assert!(!sleep.close());
}

#[test]
fn a_parked_worker_is_woken_by_notify() {
    let sleep = std::sync::Arc::new(Sleep::new(1));
    let s2 = sleep.clone();
    let t = std::thread::spawn(move || {
        s2.register_thread(0);
        s2.start_searching();
        let counters = Counters::default();
        s2.sleep(0, &counters, None, || false, || false);
        counters.parks.load(Ordering::Relaxed)
    });
    // Wait (without sleeping a fixed time) until the worker registered as sleeping.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while sleep.load().sleeping() == 0 {
        assert!(Instant::now() < deadline, "worker never went to sleep");
        std::thread::yield_now();
    }
    let counters = Counters::default();
    assert!(sleep.notify_one(&counters));
    assert_eq!(t.join().unwrap(), 1);
    assert_eq!(sleep.load().searching(), 1);
}
