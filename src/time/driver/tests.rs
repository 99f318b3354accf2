//! Unit tests of `driver.rs`.

use super::*;

#[test]
fn next_due_keeps_the_grid_and_counts_skips() {
    assert_eq!(next_due(10, 5, 12), (15, 0));
    assert_eq!(next_due(10, 5, 15), (20, 1), "a tick at `now` has passed");
    assert_eq!(next_due(10, 5, 31), (35, 4));
    assert_eq!(next_due(0, 1, 0), (1, 0));
    assert_eq!(next_due(u64::MAX - 2, 5, 0).0, u64::MAX);
}

#[test]
fn ticks_round_deadlines_up_and_now_down() {
    let t = Timer::new();
    let s = t.start;
    assert_eq!(t.tick_ceil(s), 0);
    assert_eq!(t.tick_ceil(s + Duration::from_micros(1)), 1);
    assert_eq!(t.tick_ceil(s + Duration::from_millis(5)), 5);
    assert_eq!(t.tick_floor(s + Duration::from_micros(5_999)), 5);
    assert_eq!(
        t.tick_ceil(s - Duration::from_millis(5).min(s.elapsed())),
        0
    );
    assert_eq!(t.instant_of(7), Some(s + Duration::from_millis(7)));
    assert!(t.instant_of(NEVER).is_none());
    // never early: a tick's start is at or after the deadline it was rounded up from
    for us in [1, 999, 1000, 1001, 123_456] {
        let at = s + Duration::from_micros(us);
        assert!(t.instant_of(t.tick_ceil(at)).unwrap() >= at);
    }
}
