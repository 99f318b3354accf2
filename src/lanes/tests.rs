//! Unit tests of `lanes.rs`.

use super::*;
use crate::job::{JobHeader, JobVtable};
use crate::metrics::Counters;
use std::collections::VecDeque;
use std::ptr::NonNull;

/// Fake jobs: distinct addresses in a static array, never executed.
static NOOP: JobVtable = JobVtable {
    execute: noop,
    discard: noop,
    is_task: false,
};
unsafe fn noop(_: NonNull<JobHeader>, _: &Counters) {}

fn fakes(n: usize) -> Vec<JobHeader> {
    (0..n).map(|_| JobHeader { vtable: &NOOP }).collect()
}

fn job(h: &JobHeader) -> JobRef {
    // SAFETY: never executed; only compared.
    unsafe { JobRef::new(NonNull::from(h)) }
}

proptest::proptest! {
    /// The lanes against a model of per-lane VecDeques: every job pops exactly once;
    /// each pop comes from the first non-empty lane in `lane_order(pick)`; and within a
    /// lane, injected jobs keep injection order and locally spawned jobs keep spawn
    /// order. (The batch the injector moves into the local deque is crossbeam's choice,
    /// so the model checks the two orders separately.)
    #[test]
    fn lanes_match_a_vecdeque_model(
        ops in proptest::collection::vec((0usize..3, 0u8..3), 1..300),
    ) {
        let (local, stealers) = LocalQueues::new();
        let lanes = Lanes::new(vec![stealers], None);
        let rng = XorShift64Star::new(3);
        let headers = fakes(ops.len());
        let id = |j: &JobRef| headers.iter().position(|h| NonNull::from(h) == j.as_ptr()).unwrap();
        let mut injected: [VecDeque<usize>; LANES] = Default::default();
        let mut spawned: [VecDeque<usize>; LANES] = Default::default();
        let mut pick = 0u32;
        let mut popped = vec![false; ops.len()];
        let mut pop = |pick: &mut u32, injected: &mut [VecDeque<usize>; LANES], spawned: &mut [VecDeque<usize>; LANES]| {
            let expect_lane = lane_order(*pick)
                .into_iter()
                .find(|&l| !injected[l].is_empty() || !spawned[l].is_empty());
            match lanes.find(0, &local, *pick, &rng) {
                None => proptest::prop_assert!(expect_lane.is_none()),
                Some((j, lane, _)) => {
                    proptest::prop_assert_eq!(Some(lane), expect_lane);
                    let i = id(&j);
                    proptest::prop_assert!(!popped[i], "popped twice");
                    popped[i] = true;
                    let from = if spawned[lane].front() == Some(&i) {
                        spawned[lane].pop_front()
                    } else {
                        injected[lane].pop_front()
                    };
                    proptest::prop_assert_eq!(from, Some(i), "out of order in lane {:?}", lane);
                    *pick += 1;
                }
            }
            Ok(())
        };
        for (i, (lane, kind)) in ops.iter().copied().enumerate() {
            let lane = Lane::ALL[lane];
            match kind {
                0 => {
                    lanes.inject(lane, job(&headers[i]));
                    injected[lane].push_back(i);
                }
                1 => {
                    local.push_spawned(lane, job(&headers[i]));
                    spawned[lane].push_back(i);
                }
                _ => pop(&mut pick, &mut injected, &mut spawned)?,
            }
        }
        while injected.iter().chain(spawned.iter()).any(|q| !q.is_empty()) {
            pop(&mut pick, &mut injected, &mut spawned)?;
        }
        proptest::prop_assert!(lanes.find(0, &local, pick, &rng).is_none());
    }
}

#[test]
fn lane_order_follows_the_documented_rule() {
    let mut lower_first = 0;
    let mut low_first = 0;
    let mut normal_first = 0;
    for p in 0..FAIRNESS_INTERVAL * 4 {
        let o = lane_order(p);
        let mut sorted = o.map(Lane::index);
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2], "each lane exactly once");
        if o[0] != Lane::HIGH {
            lower_first += 1;
        }
        if o[0] == Lane::LOW {
            low_first += 1;
        } else if o[0] == Lane::NORMAL {
            normal_first += 1;
        }
    }
    // Over 4 cycles: low and normal each go first once per cycle; together at most
    // one pick in 16.
    assert_eq!(low_first, 4);
    assert_eq!(normal_first, 4);
    assert!(lower_first * 16 <= FAIRNESS_INTERVAL * 4);
}

#[test]
fn high_flood_lets_lower_lanes_through_at_the_guard_rate() {
    let (local, stealers) = LocalQueues::new();
    let lanes = Lanes::new(vec![stealers], None);
    let rng = XorShift64Star::new(1);
    let headers = fakes(3 * 320);
    for (i, h) in headers.iter().enumerate() {
        lanes.inject(Lane::ALL[i % 3], job(h));
    }
    // 320 picks with every lane non-empty throughout (320 jobs per lane).
    let mut per_lane = [0u32; LANES];
    for pick in 0..320 {
        let (_, lane, _) = lanes.find(0, &local, pick, &rng).unwrap();
        per_lane[lane] += 1;
    }
    assert_eq!(per_lane, [300, 10, 10]);
}

#[test]
fn fifo_within_a_lane_from_outside_and_from_the_worker() {
    let (local, stealers) = LocalQueues::new();
    let lanes = Lanes::new(vec![stealers], None);
    let rng = XorShift64Star::new(1);
    let headers = fakes(20);
    let normal = Lane::NORMAL;
    let mut model = VecDeque::new();
    for h in &headers[..10] {
        lanes.inject(normal, job(h));
        model.push_back(NonNull::from(h));
    }
    let mut pick = 0;
    for h in &headers[10..] {
        local.push_spawned(normal, job(h));
    }
    // The injector batch moves into the local FIFO behind the already-queued spawns, so
    // the worker runs its own spawns first, then the injected ones in order.
    let mut got = Vec::new();
    while let Some((j, lane, _)) = lanes.find(0, &local, pick, &rng) {
        assert_eq!(lane, normal);
        got.push(j.as_ptr().cast::<JobHeader>());
        pick += 1;
    }
    let spawned: Vec<_> = headers[10..].iter().map(NonNull::from).collect();
    assert_eq!(&got[..10], &spawned[..]);
    assert_eq!(got[10..].to_vec(), model.into_iter().collect::<Vec<_>>());
}

#[test]
fn join_halves_pop_lifo_and_thieves_take_the_oldest() {
    let (a_local, a_steal) = LocalQueues::new();
    let (b_local, b_steal) = LocalQueues::new();
    let lanes = Lanes::new(vec![a_steal, b_steal], None);
    let rng = XorShift64Star::new(7);
    let h = fakes(3);
    let normal = Lane::NORMAL;
    for x in &h {
        a_local.push_join(normal, job(x));
    }
    assert_eq!(
        a_local.pop_join(normal).unwrap().as_ptr(),
        NonNull::from(&h[2])
    );
    let (stolen, _, src) = lanes.find(1, &b_local, 0, &rng).unwrap();
    assert_eq!(src, Source::Stolen);
    assert_eq!(stolen.as_ptr(), NonNull::from(&h[0]));
    assert_eq!(lanes.len(normal), 1);
    assert!(!lanes.is_empty());
    let _ = a_local.pop_join(normal);
    assert!(lanes.is_empty() && a_local.is_empty());
}
