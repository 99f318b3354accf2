//! Unit tests of `wire.rs`.

use super::*;

#[test]
fn human_durations() {
    assert_eq!(human_duration(Duration::from_secs(3600)), "1h");
    assert_eq!(human_duration(Duration::from_secs(5400)), "1h30m");
    assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(human_duration(Duration::from_secs(61)), "1m1s");
}
