//! Bounded lanes (`Builder::max_queued`): refusal with the closure handed back, blocking
//! spawns that wait for room, workers that keep working while they wait, and shutdown
//! releasing waiters.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use common::{block_all, wait_for, HANG};
use weft::{Pool, Priority};

fn bounded(workers: usize, max_queued: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .max_queued(max_queued)
        .build()
        .unwrap()
}

#[test]
fn try_spawn_refuses_a_full_lane_and_hands_the_closure_back() {
    let pool = bounded(1, 2);
    let (gates, busy) = block_all(&pool);
    let a = pool.try_spawn(|| 1).unwrap();
    let b = pool.try_spawn(|| 2).unwrap();
    let err = pool.try_spawn(|| 3).unwrap_err();
    assert!(err.is_full() && !err.is_shutdown());
    assert_eq!(err.to_string(), "the task's lane is full (max_queued)");
    assert_eq!(err.into_inner()(), 3, "the closure comes back intact");
    // Lanes are bounded separately.
    let high = pool
        .task()
        .priority(Priority::High)
        .try_spawn(|| 4)
        .unwrap();
    // A delayed task waits in the timer, not in the lane: never refused for a full lane.
    // (A long delay: a short one could pass before `try_spawn`, making the task due now.)
    let later = pool
        .task()
        .delay(std::time::Duration::from_secs(3600))
        .try_spawn(|| 5)
        .unwrap();
    let m = pool.metrics();
    assert_eq!((m.refused, m.queued_normal, m.queued_high), (1, 2, 1));
    drop(gates);
    for h in busy {
        h.join().unwrap();
    }
    assert!(later.cancel());
    assert!(later.join().unwrap_err().is_cancelled());
    let sum: i32 = [a, b, high].into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sum, 7);
}

#[test]
fn a_retrying_try_spawn_hands_its_closure_back_too() {
    let pool = bounded(1, 1);
    let (gates, busy) = block_all(&pool);
    let policy = weft::RetryPolicy::fixed(std::time::Duration::ZERO);
    let first = pool
        .task()
        .retry(policy)
        .try_spawn(|| Ok::<_, ()>(1))
        .unwrap();
    let mut f = pool
        .task()
        .retry(policy)
        .try_spawn(|| Ok::<_, ()>(2))
        .unwrap_err()
        .into_inner();
    assert_eq!(f(), Ok(2));
    drop(gates);
    busy.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(first.join().unwrap(), Ok(1));
}

#[test]
fn spawn_from_outside_waits_for_room_and_nothing_is_lost() {
    let pool = bounded(1, 1);
    let (gates, busy) = block_all(&pool);
    let queued = pool.spawn(|| 1); // fills the lane
    let p = pool.clone();
    let submitter = thread::spawn(move || p.spawn(|| 2).join().unwrap());
    // The submitter is waiting for room (it counted itself as blocked).
    wait_for(|| pool.metrics().blocked == 1);
    assert!(!submitter.is_finished());
    drop(gates);
    busy.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(queued.join().unwrap(), 1);
    assert_eq!(submitter.join().unwrap(), 2);
}

#[test]
fn a_worker_spawning_into_its_full_lane_runs_queued_work_meanwhile() {
    // One worker, room for one: without working while it waits, the parent would block
    // forever on a lane only it can drain.
    let pool = bounded(1, 1);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let p = pool.clone();
    let parent = pool.spawn(move || {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let r = r.clone();
                p.spawn(move || r.fetch_add(1, Ordering::Relaxed))
            })
            .collect();
        let joined: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        joined.len()
    });
    assert_eq!(parent.join_timeout(HANG).unwrap().unwrap(), 50);
    assert_eq!(ran.load(Ordering::Relaxed), 50);
    assert!(pool.metrics().blocked >= 1);
}

#[test]
fn shutdown_releases_a_blocked_submitter_with_a_refused_spawn() {
    let pool = bounded(1, 1);
    let (gates, busy) = block_all(&pool);
    let queued = pool.spawn(|| 1);
    let p = pool.clone();
    let submitter = thread::spawn(move || p.spawn(|| 2).join());
    wait_for(|| pool.metrics().blocked == 1);
    let p = pool.clone();
    let stopper = thread::spawn(move || p.shutdown());
    let refused = submitter.join().unwrap();
    assert!(refused.unwrap_err().is_shutdown());
    drop(gates);
    stopper.join().unwrap();
    busy.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(queued.join().unwrap(), 1, "accepted work still ran");
}

#[test]
fn many_submitters_through_a_narrow_lane_all_complete() {
    let pool = bounded(2, 3);
    let done = Arc::new(AtomicUsize::new(0));
    let submitters: Vec<_> = (0..4)
        .map(|t| {
            let (p, done) = (pool.clone(), done.clone());
            thread::spawn(move || {
                let mut handles = Vec::new();
                for i in 0..500 {
                    let d = done.clone();
                    let f = move || d.fetch_add(1, Ordering::Relaxed);
                    // Mix blocking spawns and refusals that retry by hand.
                    if (i + t) % 2 == 0 {
                        handles.push(p.spawn(f));
                    } else {
                        let mut f = f;
                        loop {
                            match p.try_spawn(f) {
                                Ok(h) => break handles.push(h),
                                Err(e) => {
                                    f = e.into_inner();
                                    thread::yield_now();
                                }
                            }
                        }
                    }
                }
                handles.into_iter().for_each(|h| {
                    h.join().unwrap();
                });
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 2000);
    let m = pool.metrics();
    assert_eq!((m.spawned, m.completed), (2000, 2000));
    assert_eq!(m.queued(), 0);
}

#[test]
fn zero_capacity_is_a_build_error() {
    let err = Pool::builder().max_queued(0).build().unwrap_err();
    assert!(err.is_zero_queue());
    assert_eq!(err.to_string(), "max_queued must be at least 1");
}
