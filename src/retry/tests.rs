//! Unit tests of `retry.rs`.

use super::*;

const MS: Duration = Duration::from_millis(1);

#[test]
fn fixed_and_exponential_follow_the_formula() {
    let f = RetryPolicy::fixed(5 * MS);
    assert!((1..10).all(|k| f.delay_before(k) == 5 * MS));
    let e = RetryPolicy::exponential(10 * MS);
    assert_eq!(
        (1..=5).map(|k| e.delay_before(k)).collect::<Vec<_>>(),
        [10 * MS, 20 * MS, 40 * MS, 80 * MS, 160 * MS]
    );
    assert_eq!(e.max_delay(50 * MS).delay_before(4), 50 * MS);
}

#[test]
fn huge_retry_numbers_saturate() {
    let e = RetryPolicy::exponential(Duration::from_secs(1));
    assert_eq!(e.delay_before(40), Duration::MAX);
    assert_eq!(e.delay_before(u32::MAX), Duration::MAX);
    assert_eq!(
        e.max_delay(Duration::from_secs(60)).delay_before(u32::MAX),
        Duration::from_secs(60)
    );
    assert_eq!(
        e.delay_before(0),
        Duration::from_secs(1),
        "0 is read as the first retry"
    );
}

#[test]
fn out_of_range_values_are_clamped() {
    let p = RetryPolicy::fixed(MS);
    assert_eq!(p.attempts(), DEFAULT_MAX_ATTEMPTS);
    assert_eq!(p.max_attempts(0).attempts(), 1);
    assert_eq!(p.jitter(-1.0).jitter_fraction(), 0.0);
    assert_eq!(p.jitter(2.0).jitter_fraction(), 1.0);
    assert_eq!(p.jitter(f64::NAN).jitter_fraction(), 0.0);
}

#[test]
fn jitter_stays_within_its_band() {
    let p = RetryPolicy::fixed(100 * MS).jitter(0.25);
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..10_000 {
        x = crate::util::xorshift64(x);
        let d = p.jittered_delay(1, x);
        assert!(d >= 75 * MS && d <= 100 * MS, "{d:?}");
    }
    assert_eq!(RetryPolicy::fixed(100 * MS).jittered_delay(1, x), 100 * MS);
}
