//! Unit tests of `heartbeat.rs`.

use super::*;

#[test]
fn fine_means_at_least_fine_joins_per_beat() {
    assert!(is_fine(FINE_JOINS_PER_BEAT, INTERVAL));
    assert!(!is_fine(FINE_JOINS_PER_BEAT - 1, INTERVAL));
    assert!(is_fine(2 * FINE_JOINS_PER_BEAT, 2 * INTERVAL));
    assert!(!is_fine(FINE_JOINS_PER_BEAT, 2 * INTERVAL));
    assert!(!is_fine(u32::MAX, Duration::MAX));
}

#[test]
fn the_first_beat_comes_first_beat_after_the_first_record_then_one_per_interval() {
    let h = Heartbeat::new();
    let t0 = Instant::now();
    assert!(h.should_record(0));
    assert!(!h.look_at_clock(t0));
    assert!(!h.look_at_clock(t0 + FIRST_BEAT / 2));
    assert!(h.look_at_clock(t0 + FIRST_BEAT));
    let t1 = t0 + FIRST_BEAT;
    assert!(!h.look_at_clock(t1 + INTERVAL / 2));
    assert!(h.look_at_clock(t1 + INTERVAL));
    // Idle: the clock starts afresh at the next record.
    h.after_idle();
    let t2 = t1 + 1000 * INTERVAL;
    assert!(!h.look_at_clock(t2));
    assert!(h.look_at_clock(t2 + FIRST_BEAT));
}

#[test]
fn coarse_joins_all_record_fine_ones_mostly_do_not() {
    let h = Heartbeat::new();
    let t0 = Instant::now();
    assert!(!h.look_at_clock(t0));
    assert!(h.look_at_clock(t0 + INTERVAL));
    // Coarse: every join records, whatever the frames held.
    assert!((0..1000).all(|_| h.should_record(10)));
    assert!(h.look_at_clock(t0 + 11 * INTERVAL));
    assert!(!h.is_fine(), "1000 joins in 10 intervals are coarse");
    // Fine: `FINE_JOINS_PER_BEAT` joins in one interval.
    for _ in 0..FINE_JOINS_PER_BEAT {
        h.should_record(10);
    }
    assert!(h.look_at_clock(t0 + 12 * INTERVAL));
    assert!(h.is_fine());
    // Kept across idle.
    h.after_idle();
    assert!(!h.look_at_clock(t0 + 100 * INTERVAL));
    assert!(h.is_fine());
    let recorded = (0..4 * RECORD_EVERY)
        .filter(|_| h.should_record(RECORD_BELOW))
        .count();
    assert_eq!(
        recorded, 4,
        "one in RECORD_EVERY with RECORD_BELOW frames held"
    );
    assert!((0..10).all(|_| h.should_record(RECORD_BELOW - 1)));
    // And the clock is read once in CLOCK_EVERY joins.
    let reads = (0..2 * CLOCK_EVERY)
        .filter(|_| {
            h.should_record(RECORD_BELOW);
            h.fine.get() && h.joins.get() & (CLOCK_EVERY - 1) == 0
        })
        .count();
    assert_eq!(reads, 2);
}
