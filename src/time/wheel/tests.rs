//! Unit tests of `wheel.rs`.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const MS_PER_DAY: u64 = 24 * 60 * 60 * 1000;

/// Advances `wheel` to `now` and returns what expired.
fn advance(wheel: &mut Wheel<u32>, now: u64) -> Vec<u32> {
    let mut out = Vec::new();
    wheel.advance(now, &mut out);
    wheel.check_invariants();
    out
}

#[test]
fn consts_match_the_docs() {
    assert_eq!(SLOTS_PER_LEVEL, 64);
    assert_eq!(LEVELS, 6);
    assert_eq!(SLOT_BITS, 6);
    assert_eq!(1 << SLOT_BITS, SLOTS_PER_LEVEL);
    assert_eq!(WHEEL_BITS, 36);
    assert_eq!(WHEEL_SPAN, (SLOTS_PER_LEVEL as u64).pow(LEVELS as u32));
    // "≈ 795 days ≈ 2.18 years"
    assert_eq!(WHEEL_SPAN / MS_PER_DAY, 795);
    let years = WHEEL_SPAN as f64 / (365.25 * MS_PER_DAY as f64);
    assert!((2.17..2.19).contains(&years), "{years}");
    // Slot widths: 1 ms, 64 ms, ~4.1 s, ~4.4 min, ~4.7 h, ~12.4 days.
    let widths: Vec<u64> = (0..LEVELS).map(slot_width).collect();
    assert_eq!(widths[0], 1);
    assert_eq!(widths[1], 64);
    let tenths = |w: u64, unit: u64| (w as f64 / unit as f64 * 10.0).round() as u64;
    assert_eq!(tenths(widths[2], 1000), 41);
    assert_eq!(tenths(widths[3], 60_000), 44);
    assert_eq!(tenths(widths[4], 3_600_000), 47);
    assert_eq!(tenths(widths[5], MS_PER_DAY), 124);
    assert_eq!(NEVER, u64::MAX);
}

#[test]
fn level_for_at_boundaries() {
    let cases = [
        (0, 1, 0),
        (0, 63, 0),
        (0, 64, 1),
        (0, 4095, 1),
        (0, 4096, 2),
        (0, 262_143, 2),
        (0, 262_144, 3),
        (0, WHEEL_SPAN - 1, LEVELS - 1),
        (0, WHEEL_SPAN, LEVELS),
        (0, WHEEL_SPAN + 5, LEVELS),
        (0, 10 * WHEEL_SPAN, LEVELS),
        (0, u64::MAX - 1, 10),
        // One tick ahead across a slot boundary is on the level of that boundary.
        (63, 64, 1),
        (4095, 4096, 2),
        (WHEEL_SPAN - 1, WHEEL_SPAN, LEVELS),
        (64, 127, 0),
        (64, 128, 1),
        (WHEEL_SPAN, WHEEL_SPAN + 63, 0),
    ];
    for (elapsed, deadline, level) in cases {
        assert_eq!(
            level_for(elapsed, deadline),
            level,
            "{elapsed} -> {deadline}"
        );
    }
    for level in 0..LEVELS {
        let w = slot_width(level);
        assert_eq!(level_for(0, w * 63), level);
        assert_eq!(level_for(0, w * 64), level + 1);
        if level > 0 {
            assert_eq!(level_for(0, w), level);
            assert_eq!(level_for(0, w - 1), level - 1);
        }
    }
}

#[test]
fn slot_arithmetic() {
    for s in 0..64u64 {
        assert_eq!(slot_for(s, 0), s as usize);
        for level in 1..LEVELS {
            let tick = s * slot_width(level) + 1;
            assert_eq!(slot_for(tick, level), s as usize);
            assert_eq!(slot_for(tick, 0), 1);
        }
    }
    assert_eq!(slot_for(WHEEL_SPAN + 5, 0), 5);
    assert_eq!(slot_for(WHEEL_SPAN, LEVELS - 1), 0);
    assert_eq!(slot_start(0, 0, 5), 5);
    assert_eq!(slot_start(70, 0, 9), 73);
    assert_eq!(slot_start(70, 1, 3), 192);
    assert_eq!(slot_start(5000, 1, 63), 4096 + 63 * 64);
    assert_eq!(
        slot_start(WHEEL_SPAN + 7, LEVELS - 1, 2),
        WHEEL_SPAN + 2 * slot_width(5)
    );
    assert_eq!(slot_start(u64::MAX, 0, 63), u64::MAX);
    assert_eq!(epoch_start(WHEEL_SPAN - 1), 0);
    assert_eq!(epoch_start(WHEEL_SPAN), WHEEL_SPAN);
    assert_eq!(epoch_start(10 * WHEEL_SPAN + 3), 10 * WHEEL_SPAN);
}

#[test]
fn loc_for_edges() {
    assert_eq!(loc_for(0, 0), Loc::Due);
    assert_eq!(loc_for(100, 50), Loc::Due);
    assert_eq!(loc_for(100, 100), Loc::Due);
    assert_eq!(loc_for(0, NEVER), Loc::Never);
    assert_eq!(loc_for(NEVER, NEVER), Loc::Never);
    assert_eq!(loc_for(0, 1), Loc::Slot { level: 0, slot: 1 });
    assert_eq!(loc_for(0, 64), Loc::Slot { level: 1, slot: 1 });
    assert_eq!(loc_for(0, WHEEL_SPAN), Loc::Overflow);
    assert_eq!(loc_for(WHEEL_SPAN - 1, WHEEL_SPAN), Loc::Overflow);
    assert_eq!(loc_for(NEVER - 1, NEVER - 1), Loc::Due);
}

/// Each deadline expires exactly at its tick, found by following `next_deadline`.
fn expires_exactly_at(deadlines: &[u64]) {
    let mut wheel = Wheel::new();
    for (i, &d) in deadlines.iter().enumerate() {
        wheel.insert(d, i as u32);
    }
    wheel.check_invariants();
    let mut order: Vec<usize> = (0..deadlines.len()).collect();
    order.sort_by_key(|&i| (deadlines[i], i));
    let mut fired = Vec::new();
    let mut steps = 0;
    while let Some(t) = wheel.next_deadline() {
        steps += 1;
        assert!(steps < 100 * (deadlines.len() + 1), "stalled");
        let earliest = order[fired.len()];
        assert!(
            t <= deadlines[earliest],
            "next_deadline {t} after a deadline"
        );
        // Nothing fires one tick early.
        if t > 0 && t > wheel.elapsed() {
            assert!(advance(&mut wheel, t - 1).is_empty());
        }
        for v in advance(&mut wheel, t) {
            assert_eq!(deadlines[v as usize], t, "entry {v} fired at {t}");
            fired.push(v as usize);
        }
    }
    assert_eq!(fired, order);
    assert!(wheel.is_empty());
}

#[test]
fn level_boundaries_fire_on_time() {
    let mut deadlines = vec![1, 63, 64, 65, 4095, 4096, 4097];
    for level in 1..=LEVELS {
        let w = slot_width(level);
        deadlines.extend([w - 1, w, w + 1, 63 * w, 63 * w + 7]);
    }
    deadlines.extend([WHEEL_SPAN + 5, 10 * WHEEL_SPAN, 10 * WHEEL_SPAN + 4097]);
    expires_exactly_at(&deadlines);
}

#[test]
fn beyond_the_top_level() {
    expires_exactly_at(&[WHEEL_SPAN + 5]);
    expires_exactly_at(&[10 * WHEEL_SPAN]);
    expires_exactly_at(&[u64::MAX - 1, 3]);

    // One jump of years returns both, in order, and never the NEVER entry.
    let mut wheel = Wheel::new();
    wheel.insert(10 * WHEEL_SPAN, 1);
    wheel.insert(NEVER, 2);
    wheel.insert(WHEEL_SPAN + 5, 0);
    assert_eq!(wheel.next_deadline(), Some(WHEEL_SPAN + 5));
    assert!(advance(&mut wheel, WHEEL_SPAN + 4).is_empty());
    assert_eq!(advance(&mut wheel, 20 * WHEEL_SPAN), vec![0, 1]);
    assert_eq!(wheel.len(), 1);
    assert_eq!(wheel.next_deadline(), None);
}

#[test]
fn deadline_zero_and_past_deadlines_are_never_lost() {
    let mut wheel = Wheel::new();
    wheel.insert(0, 0);
    assert_eq!(wheel.next_deadline(), Some(0));
    assert_eq!(advance(&mut wheel, 0), vec![0]);

    assert!(advance(&mut wheel, 1000).is_empty());
    wheel.insert(500, 1);
    wheel.insert(1000, 2);
    wheel.insert(20, 3);
    wheel.insert(1001, 4);
    assert_eq!(wheel.next_deadline(), Some(20));
    // Time never goes back: 10 is read as 1000, and the due entries fire in order.
    assert_eq!(advance(&mut wheel, 10), vec![3, 1, 2]);
    assert_eq!(wheel.elapsed(), 1000);
    assert_eq!(advance(&mut wheel, 1001), vec![4]);
}

#[test]
fn never_entries_stay_until_cancelled() {
    let mut wheel = Wheel::new();
    let key = wheel.insert(NEVER, 7);
    assert_eq!((wheel.len(), wheel.is_empty()), (1, false));
    assert_eq!(wheel.next_deadline(), None);
    assert!(advance(&mut wheel, NEVER - 1).is_empty());
    assert!(advance(&mut wheel, NEVER).is_empty());
    // At the end of time, finite deadlines are due and NEVER still is not.
    wheel.insert(NEVER - 1, 8);
    wheel.insert(NEVER, 9);
    assert_eq!(wheel.next_deadline(), Some(NEVER - 1));
    assert_eq!(advance(&mut wheel, NEVER), vec![8]);
    assert_eq!(wheel.len(), 2);
    assert_eq!(wheel.cancel(key), Some(7));
    assert_eq!(wheel.cancel(key), None);
    assert_eq!(wheel.len(), 1);
}

#[test]
fn stale_keys_cancel_nothing() {
    let mut wheel = Wheel::new();
    let expired = wheel.insert(5, 0);
    assert_eq!(advance(&mut wheel, 5), vec![0]);
    assert_eq!(wheel.cancel(expired), None);

    // The slot is reused: the old key must not reach the new entry.
    let reused = wheel.insert(10, 1);
    assert_eq!(reused.index, expired.index);
    assert_eq!(wheel.cancel(expired), None);
    assert_eq!(wheel.len(), 1);
    assert_eq!(wheel.cancel(reused), Some(1));
    assert_eq!(wheel.cancel(reused), None);

    let again = wheel.insert(10, 2);
    assert_eq!(wheel.cancel(reused), None);
    assert_eq!(wheel.cancel(expired), None);
    assert_eq!(advance(&mut wheel, 10), vec![2]);
    assert_eq!(wheel.cancel(again), None);
    assert!(wheel.is_empty());
    wheel.check_invariants();
}

#[test]
fn cancel_from_every_list() {
    let mut wheel = Wheel::new();
    advance(&mut wheel, 100);
    let keys = [
        wheel.insert(50, 0),                   // due
        wheel.insert(101, 1),                  // level 0
        wheel.insert(100 + 4096, 2),           // level 2
        wheel.insert(5 * WHEEL_SPAN, 3),       // overflow
        wheel.insert(NEVER, 4),                // never
        wheel.insert(100 + WHEEL_SPAN / 2, 5), // level 5
    ];
    wheel.check_invariants();
    for (i, key) in keys.into_iter().enumerate().rev() {
        assert_eq!(wheel.cancel(key), Some(i as u32));
        wheel.check_invariants();
    }
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline(), None);
    assert!(advance(&mut wheel, u64::MAX).is_empty());
}

#[test]
fn ties_fire_in_insertion_order_across_levels() {
    let mut wheel = Wheel::new();
    wheel.insert(5000, 0); // level 2
    wheel.insert(WHEEL_SPAN + 5000, 10); // overflow
    advance(&mut wheel, 4990);
    wheel.insert(5000, 1); // level 0
    wheel.insert(4000, 2); // due
    assert_eq!(advance(&mut wheel, WHEEL_SPAN), vec![2, 0, 1]);
    wheel.insert(WHEEL_SPAN + 5000, 11); // level 2 again
    assert_eq!(advance(&mut wheel, WHEEL_SPAN + 4999), Vec::<u32>::new());
    let mut out = vec![99];
    wheel.advance(5000 + WHEEL_SPAN, &mut out);
    assert_eq!(out, vec![99, 10, 11], "appends, in insertion order");
}

#[test]
fn large_batches_of_ties_keep_insertion_order() {
    // Due entries sit in one list in insertion order, not deadline order; a batch this
    // large is sorted by an algorithm that would scramble ties without `seq`.
    let mut wheel = Wheel::new();
    advance(&mut wheel, 1000);
    let mut want = Vec::new();
    for i in 0..200u32 {
        let d = [900, 100, 500, 100, 900][i as usize % 5];
        wheel.insert(d, i);
        want.push((d, i));
    }
    for i in 200..260u32 {
        wheel.insert(1003, i);
        want.push((1003, i));
    }
    want.sort();
    let want: Vec<u32> = want.into_iter().map(|(_, i)| i).collect();
    assert_eq!(advance(&mut wheel, 2000), want);
}

#[test]
fn many_entries_far_jump() {
    let mut wheel = Wheel::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut want = Vec::new();
    for i in 0..5000u32 {
        x = crate::util::xorshift64(x);
        let d = x % (30 * WHEEL_SPAN);
        wheel.insert(d, i);
        want.push((d, i));
    }
    want.sort();
    let got = advance(&mut wheel, u64::MAX - 1);
    assert_eq!(got, want.iter().map(|&(_, i)| i).collect::<Vec<_>>());
    assert!(wheel.is_empty());
}

// ---- proptest against a BTreeMap model ----

#[derive(Clone, Debug)]
enum When {
    /// `now + 0..200`.
    Small(u64),
    /// `now + ..=10^7`.
    Medium(u64),
    /// `now + ..=10^11`.
    Huge(u64),
    /// `now - ..1000`, saturating.
    Past(u64),
    Never,
}

#[derive(Clone, Debug)]
enum Op {
    Insert(When),
    Cancel(prop::sample::Index),
    /// `now + step`.
    Step(u64),
    /// `now + jump`.
    Jump(u64),
    /// To an absolute tick, possibly in the past.
    To(u64),
    ToEndOfTime,
    /// Follow `next_deadline` until the earliest entry fires.
    Drain,
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        6 => (0u64..200).prop_map(When::Small),
        3 => (0u64..=10_000_000).prop_map(When::Medium),
        3 => (0u64..=100_000_000_000).prop_map(When::Huge),
        1 => (0u64..1000).prop_map(When::Past),
        1 => Just(When::Never),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => when().prop_map(Op::Insert),
        4 => any::<prop::sample::Index>().prop_map(Op::Cancel),
        5 => (0u64..300).prop_map(Op::Step),
        2 => (0u64..=100_000_000_000).prop_map(Op::Jump),
        1 => (0u64..=100_000_000_000).prop_map(Op::To),
        2 => Just(Op::Drain),
        1 => Just(Op::ToEndOfTime),
    ]
}

/// Live entries by `(deadline, seq)`, value = seq.
struct Model {
    now: u64,
    live: BTreeMap<(u64, u64), u32>,
}

impl Model {
    fn advance(&mut self, now: u64) -> Vec<u32> {
        self.now = self.now.max(now);
        // NEVER entries never expire, even at `now == u64::MAX`.
        let cut = self.now.min(NEVER - 1) + 1;
        let rest = self.live.split_off(&(cut, 0));
        mem::replace(&mut self.live, rest).into_values().collect()
    }

    fn min_finite(&self) -> Option<(u64, u64)> {
        self.live
            .keys()
            .next()
            .copied()
            .filter(|&(d, _)| d != NEVER)
    }
}

fn check(wheel: &Wheel<u32>, model: &Model) -> Result<(), TestCaseError> {
    wheel.check_invariants();
    prop_assert_eq!(wheel.len(), model.live.len());
    prop_assert_eq!(wheel.is_empty(), model.live.is_empty());
    prop_assert_eq!(wheel.elapsed(), model.now);
    match (wheel.next_deadline(), model.min_finite()) {
        (None, None) => {}
        (Some(t), Some((d, _))) => prop_assert!(t <= d, "next_deadline {} > {}", t, d),
        (got, want) => prop_assert!(false, "next_deadline {:?}, min {:?}", got, want),
    }
    Ok(())
}

fn advance_both(wheel: &mut Wheel<u32>, model: &mut Model, now: u64) -> Result<(), TestCaseError> {
    let mut got = Vec::new();
    wheel.advance(now, &mut got);
    prop_assert_eq!(got, model.advance(now), "advance to {}", now);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut wheel = Wheel::new();
    let mut model = Model {
        now: 0,
        live: BTreeMap::new(),
    };
    let mut keys: Vec<(Key, u64, u64)> = Vec::new();
    let mut seq = 0u64;
    for op in ops {
        let now = model.now;
        match op {
            Op::Insert(when) => {
                let deadline = match when {
                    When::Small(d) | When::Medium(d) | When::Huge(d) => {
                        now.saturating_add(d).min(NEVER - 1)
                    }
                    When::Past(d) => now.saturating_sub(d),
                    When::Never => NEVER,
                };
                let key = wheel.insert(deadline, seq as u32);
                model.live.insert((deadline, seq), seq as u32);
                keys.push((key, deadline, seq));
                seq += 1;
            }
            Op::Cancel(index) => {
                if !keys.is_empty() {
                    let (key, deadline, s) = keys[index.index(keys.len())];
                    prop_assert_eq!(wheel.cancel(key), model.live.remove(&(deadline, s)));
                }
            }
            Op::Step(d) | Op::Jump(d) => {
                advance_both(&mut wheel, &mut model, now.saturating_add(d))?
            }
            Op::To(t) => advance_both(&mut wheel, &mut model, t)?,
            Op::ToEndOfTime => advance_both(&mut wheel, &mut model, u64::MAX)?,
            Op::Drain => {
                if let Some(min) = model.min_finite() {
                    // Due, overflow, one cascade per level, a stale overflow bound.
                    let mut steps = 0;
                    while model.live.contains_key(&min) {
                        prop_assert!(steps < LEVELS + 3, "stalled before {:?}", min);
                        steps += 1;
                        let t = wheel.next_deadline().expect("an entry can fire");
                        prop_assert!(t <= min.0);
                        advance_both(&mut wheel, &mut model, t)?;
                        check(&wheel, &model)?;
                    }
                }
            }
        }
        check(&wheel, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn matches_btreemap_model(ops in prop::collection::vec(op(), 1..200)) {
        run(ops)?;
    }
}
