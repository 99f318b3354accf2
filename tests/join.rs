//! `weft::join` under heartbeat scheduling, through the public API: a busy join shares its
//! second half, a join shares before it blocks, shared halves keep their lane, panics
//! propagate from every path (plain call, recorded, shared, stolen), and random trees with
//! random timing sum right on pools of every size, nested pools included.

mod common;
use common::rng::Rng;
use common::*;

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use weft::{Pool, Priority};

/// A few hundred ns of work that the optimizer keeps.
fn spin(n: u64) -> u64 {
    let mut x = n | 1;
    for _ in 0..n {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    x
}

/// Joins of nothing until `done` holds (or the test's patience runs out): the kind of
/// work that records frames and reads the heartbeat.
fn join_until(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + HANG;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        weft::join(|| spin(8), || spin(8));
    }
    true
}

#[test]
fn a_busy_join_shares_its_second_half_with_an_idle_worker() {
    let pool = pool(2);
    let ran_on = Arc::new(Mutex::new(None));
    let (caller, shared) = pool.install(|| {
        let r = ran_on.clone();
        let (shared, ()) = weft::join(
            || join_until(|| ran_on.lock().unwrap().is_some()),
            move || *r.lock().unwrap() = Some(thread::current().id()),
        );
        (thread::current().id(), shared)
    });
    assert!(
        shared,
        "the second half never ran while the first kept joining"
    );
    assert_ne!(ran_on.lock().unwrap().unwrap(), caller);
    let m = pool.metrics();
    assert!(m.join_frames_shared >= 1, "{m:?}");
    assert!(m.stolen >= 1, "{m:?}");
}

#[test]
fn a_join_shares_its_frames_before_it_blocks() {
    // `a` waits (in weft) for a task that waits for `b`: `b` must be shared before the
    // worker blocks, whichever worker the task lands on.
    for _ in 0..20 {
        let pool = pool(2);
        let flag = Arc::new(AtomicBool::new(false));
        let (seen, ()) = pool.install(|| {
            let f = flag.clone();
            weft::join(
                || {
                    let f = flag.clone();
                    let t = weft::spawn(move || {
                        let deadline = Instant::now() + HANG;
                        while !f.load(Ordering::SeqCst) {
                            if Instant::now() >= deadline {
                                return false;
                            }
                            thread::yield_now();
                        }
                        true
                    });
                    t.join().unwrap()
                },
                move || f.store(true, Ordering::SeqCst),
            )
        });
        assert!(seen, "the task waiting for the second half timed out");
    }
}

#[test]
fn shared_halves_keep_their_lane() {
    // One worker: nobody steals, so a shared half waits in its lane's deque, where the
    // metrics count it, until its owner takes it back.
    let pool = pool(1);
    for priority in [Priority::High, Priority::Normal, Priority::Low] {
        let p = pool.clone();
        let before = pool.metrics().join_frames_shared;
        let queued = pool
            .task()
            .priority(priority)
            .spawn(move || {
                let (queued, ran) = weft::join(
                    || {
                        assert!(join_until(|| p.metrics().join_frames_shared > before));
                        let m = p.metrics();
                        (m.queued_high, m.queued_normal, m.queued_low)
                    },
                    || true,
                );
                assert!(ran);
                queued
            })
            .join()
            .unwrap();
        let expected = match priority {
            Priority::High => (1, 0, 0),
            Priority::Normal => (0, 1, 0),
            Priority::Low => (0, 0, 1),
        };
        assert_eq!(queued, expected, "{priority:?}");
    }
}

/// A tree of joins `depth` deep that panics at leaf `bad` (if any); returns the leaves
/// that ran.
fn tree_with_panic(depth: u32, first: u64, bad: u64, ran: &AtomicUsize) -> u64 {
    if depth == 0 {
        if first == bad {
            panic!("leaf {bad}");
        }
        ran.fetch_add(1, Ordering::Relaxed);
        return spin(first % 7);
    }
    let half = 1 << (depth - 1);
    let (a, b) = weft::join(
        || tree_with_panic(depth - 1, first, bad, ran),
        || tree_with_panic(depth - 1, first + half, bad, ran),
    );
    a.wrapping_add(b)
}

#[test]
fn a_panic_from_any_leaf_propagates_and_the_pool_lives_on() {
    // 2^10 leaves: deep enough that most joins are plain calls, some are recorded, and
    // (on two workers) some are shared and stolen.
    const DEPTH: u32 = 10;
    for workers in [1, 2] {
        let pool = pool(workers);
        for bad in (0..1u64 << DEPTH).step_by(37) {
            let ran = AtomicUsize::new(0);
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                pool.install(|| tree_with_panic(DEPTH, 0, bad, &ran))
            }));
            let msg = r.expect_err("the panic was lost");
            assert_eq!(
                msg.downcast_ref::<String>().map(String::as_str),
                Some(format!("leaf {bad}").as_str())
            );
            // Every leaf before the bad one ran (`a` runs first); none ran twice.
            let ran = ran.load(Ordering::Relaxed) as u64;
            assert!(
                ran >= bad && ran < 1 << DEPTH,
                "{ran} leaves ran, bad {bad}"
            );
        }
        let all = AtomicUsize::new(0);
        pool.install(|| tree_with_panic(DEPTH, 0, u64::MAX, &all));
        assert_eq!(all.load(Ordering::Relaxed), 1 << DEPTH, "workers survive");
    }
}

/// A random binary tree of joins with random work at the nodes, random spawns and scopes
/// inside; returns the number of leaves (checked against the sequential count).
fn random_tree(seed: u64, depth: u32) -> u64 {
    let r = Rng::seeded(seed).next_u64();
    spin(r % 64);
    if depth == 0 || r.is_multiple_of(11) {
        return 1;
    }
    match r % 13 {
        // A task spawned and joined inside the tree (a blocking wait on a worker).
        0 => weft::spawn(move || random_tree(r, depth - 1))
            .join()
            .unwrap(),
        // A scope whose jobs join.
        1 => {
            let (x, y) = (AtomicUsize::new(0), AtomicUsize::new(0));
            weft::scope(|s| {
                s.spawn(|_| x.store(random_tree(r ^ 1, depth - 1) as usize, Ordering::SeqCst));
                s.spawn(|_| y.store(random_tree(r ^ 2, depth - 1) as usize, Ordering::SeqCst));
            });
            (x.into_inner() + y.into_inner()) as u64
        }
        _ => {
            let (a, b) = weft::join(
                || random_tree(r.rotate_left(7), depth - 1),
                || random_tree(r.rotate_left(19), depth - 1),
            );
            a + b
        }
    }
}

/// The same tree counted without weft (the scope and spawn arms count the same leaves).
fn random_tree_seq(seed: u64, depth: u32) -> u64 {
    let r = Rng::seeded(seed).next_u64();
    if depth == 0 || r.is_multiple_of(11) {
        return 1;
    }
    match r % 13 {
        0 => random_tree_seq(r, depth - 1),
        1 => random_tree_seq(r ^ 1, depth - 1) + random_tree_seq(r ^ 2, depth - 1),
        _ => {
            random_tree_seq(r.rotate_left(7), depth - 1)
                + random_tree_seq(r.rotate_left(19), depth - 1)
        }
    }
}

#[test]
fn random_trees_with_jitter_sum_right_on_any_pool_and_across_pools() {
    let seeds: Vec<u64> = (1..=6).map(|i| i * 0x9e37_79b9).collect();
    for workers in [1, 2, 3, 4] {
        let pool = pool(workers);
        for &seed in &seeds {
            let want = random_tree_seq(seed, 14);
            assert_eq!(
                pool.install(|| random_tree(seed, 14)),
                want,
                "{workers} workers"
            );
        }
    }
    // Nested pools: a join on one pool whose halves install into another.
    let (outer, inner) = (pool(2), pool(3));
    let got = outer.install(|| {
        weft::join(
            || inner.install(|| random_tree(seeds[0], 12)),
            || random_tree(seeds[1], 12),
        )
    });
    assert_eq!(
        got,
        (random_tree_seq(seeds[0], 12), random_tree_seq(seeds[1], 12))
    );
    // `join` from outside any pool uses the global one.
    assert_eq!(
        weft::join(|| random_tree(seeds[2], 10), || 1).0,
        random_tree_seq(seeds[2], 10)
    );
}

#[test]
fn joins_from_many_threads_into_one_pool() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let total: u64 = thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|i| {
                let pool = &pool;
                s.spawn(move || pool.install(|| random_tree(i + 100, 12)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let want: u64 = (0..4u64).map(|i| random_tree_seq(i + 100, 12)).sum();
    assert_eq!(total, want);
}
