//! Unit tests of `metrics.rs`.

use super::*;

#[test]
fn blocks_sum() {
    let set = CounterSet::new(2);
    set.worker(0).bump(&set.worker(0).spawned);
    set.worker(1).add(&set.worker(1).spawned, 2);
    set.external().bump(&set.external().cancelled);
    let mut m = Metrics::default();
    set.sum_into(&mut m);
    assert_eq!(m.spawned, 3);
    assert_eq!(m.cancelled, 1);
}

#[test]
fn counters_do_not_share_cache_lines() {
    assert!(std::mem::align_of::<CachePadded<Counters>>() >= 64);
}
