//! Cooperative cancellation and time limits: `checkpoint()`, `cancel()` on a running task,
//! `TaskBuilder::time_limit`, and panicking `Drop`s of closures and outputs wherever weft
//! drops them.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{block_all, pool, wait_for, HANG};
use weft::{Pool, RetryPolicy};

#[test]
fn checkpoint_outside_a_task_is_ok() {
    assert_eq!(weft::checkpoint(), Ok(()));
    let pool = pool(1);
    assert_eq!(
        pool.install(weft::checkpoint),
        Ok(()),
        "install is not a task"
    );
}

#[test]
fn a_running_task_sees_the_cancel_request_and_resolves_cancelled() {
    let pool = pool(1);
    let (started_tx, started_rx) = channel();
    let seen = Arc::new(AtomicBool::new(false));
    let s = seen.clone();
    let h = pool.spawn(move || {
        started_tx.send(()).unwrap();
        loop {
            if let Err(c) = weft::checkpoint() {
                assert!(c.is_cancel_requested() && !c.is_time_limit());
                s.store(true, Ordering::SeqCst);
                return "stopped early";
            }
            std::thread::yield_now();
        }
    });
    started_rx.recv().unwrap();
    assert!(!h.cancel(), "running: only a request");
    let err = h.join_timeout(HANG).unwrap().unwrap_err();
    assert!(err.is_cancelled() && !err.is_time_limit());
    assert!(seen.load(Ordering::SeqCst));
    let m = pool.metrics();
    assert_eq!((m.cancelled, m.completed), (1, 0));
}

#[test]
fn a_cancel_request_wins_over_the_value_even_if_never_checked() {
    let pool = pool(1);
    let (started_tx, started_rx) = channel();
    let (go_tx, go_rx) = channel::<()>();
    let h = pool.spawn(move || {
        started_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        5
    });
    started_rx.recv().unwrap();
    assert!(!h.cancel());
    go_tx.send(()).unwrap();
    assert!(h.join().unwrap_err().is_cancelled());
    // A finished task keeps its value.
    let done = pool.spawn(|| 6);
    wait_for(|| done.is_finished());
    assert!(!done.cancel());
    assert_eq!(done.join().unwrap(), 6);
}

#[test]
fn checkpoint_answers_for_the_innermost_task() {
    let pool = pool(1);
    // The outer task is asked to stop; a task it runs while it waits (one worker: the
    // inner task runs nested in its join) was not. The outer task resolves as cancelled,
    // so what it saw comes back through a channel.
    let (tx, rx) = channel();
    let p = pool.clone();
    let (started_tx, started_rx) = channel();
    let (go_tx, go_rx) = channel::<()>();
    let outer = pool.spawn(move || {
        started_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        let inner = p.spawn(weft::checkpoint).join().unwrap();
        let (a, _) = weft::join(weft::checkpoint, || ());
        tx.send((inner, a, weft::checkpoint())).unwrap();
    });
    started_rx.recv().unwrap();
    assert!(!outer.cancel());
    go_tx.send(()).unwrap();
    assert!(outer.join().unwrap_err().is_cancelled());
    let (inner, join_half, own) = rx.recv().unwrap();
    assert_eq!(inner, Ok(()), "the nested task was not cancelled");
    assert!(
        join_half.unwrap_err().is_cancel_requested(),
        "an inline join half is the task"
    );
    assert!(own.unwrap_err().is_cancel_requested());
}

#[test]
fn a_time_limit_is_reported_by_checkpoint_and_never_early() {
    let pool = pool(2);
    let limit = Duration::from_millis(20);
    let (tx, rx) = channel();
    // The limit counts from the start of the run, which comes after the spawn and before
    // the closure's first instruction: measure from the spawn, a bound that always holds.
    let spawned_at = Instant::now();
    let h = pool.task().time_limit(limit).spawn(move || {
        let err = loop {
            if let Err(e) = weft::checkpoint() {
                break e;
            }
            std::thread::yield_now();
        };
        tx.send((spawned_at.elapsed(), err)).unwrap();
        "returned normally after the limit"
    });
    let err = h.join_timeout(HANG).unwrap().unwrap_err();
    assert!(err.is_time_limit() && !err.is_cancelled(), "{err:?}");
    assert_eq!(err.to_string(), "task ran past its time limit");
    let (elapsed, seen) = rx.recv().unwrap();
    assert!(seen.is_time_limit());
    assert!(elapsed >= limit, "never early: {elapsed:?}");
    let m = pool.metrics();
    assert_eq!((m.timed_out, m.completed), (1, 0));
}

#[test]
fn a_run_that_overruns_its_limit_without_checking_times_out() {
    let pool = pool(1);
    let h = pool.task().time_limit(Duration::from_millis(1)).spawn(|| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(5) {
            std::thread::yield_now();
        }
        1
    });
    assert!(h.join().unwrap_err().is_time_limit());
    // Within the limit: the value.
    let ok = pool
        .task()
        .time_limit(Duration::from_secs(3600))
        .spawn(|| weft::checkpoint().map(|()| 2));
    assert_eq!(ok.join().unwrap(), Ok(2));
}

#[test]
fn each_retry_attempt_gets_the_whole_limit_and_a_timed_out_attempt_is_not_retried() {
    let pool = pool(1);
    let policy = RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(5);
    // Attempts that each stay well within the limit: retried as usual.
    let mut n = 0;
    let h = pool
        .task()
        .time_limit(Duration::from_secs(3600))
        .retry(policy)
        .spawn(move || {
            n += 1;
            if n < 3 {
                Err(n)
            } else {
                Ok(n)
            }
        });
    assert_eq!(h.join().unwrap(), Ok(3));

    // An attempt that runs past its limit ends the task.
    let h = pool
        .task()
        .time_limit(Duration::from_millis(2))
        .retry(policy)
        .spawn(|| {
            while weft::checkpoint().is_ok() {
                std::thread::yield_now();
            }
            Err::<(), _>("timed out")
        });
    wait_for(|| h.is_finished());
    assert_eq!(h.attempts(), 1);
    assert!(h.join().unwrap_err().is_time_limit());
}

#[test]
fn a_retrying_task_asked_to_stop_is_not_retried() {
    let pool = pool(1);
    let (started_tx, started_rx) = channel();
    let (go_tx, go_rx) = channel::<()>();
    let h = pool
        .task()
        .retry(RetryPolicy::fixed(Duration::ZERO).max_attempts(100))
        .spawn(move || {
            started_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            Err::<(), _>("failed")
        });
    started_rx.recv().unwrap();
    assert!(!h.cancel());
    go_tx.send(()).unwrap();
    assert!(h.join().unwrap_err().is_cancelled());
    assert_eq!(pool.metrics().retries_scheduled, 0);
}

#[test]
fn try_spawn_with_a_time_limit_hands_the_closure_back() {
    let pool = Pool::builder().workers(1).max_queued(1).build().unwrap();
    let (gates, busy) = block_all(&pool);
    let first = pool
        .task()
        .time_limit(Duration::from_secs(60))
        .try_spawn(|| 1)
        .unwrap();
    let f = pool
        .task()
        .time_limit(Duration::from_secs(60))
        .try_spawn(|| 2)
        .unwrap_err()
        .into_inner();
    assert_eq!(f(), 2);
    drop(gates);
    busy.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(first.join().unwrap(), 1);
}

/// Panics when dropped; counts its drops.
struct Bomb(Arc<AtomicUsize>);

impl Drop for Bomb {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("a Drop that panics");
    }
}

/// One test for every panicking `Drop`, run in sequence: `weft::drop_panics()` counts the
/// whole process, so no other test in this binary may make a `Drop` panic.
#[test]
fn panicking_drops_are_caught_and_counted_wherever_they_happen() {
    let pool = pool(1);
    let drops = Arc::new(AtomicUsize::new(0));
    let before = weft::drop_panics();

    // 1. The closure, dropped by `cancel` on this thread.
    let (gates, busy) = block_all(&pool);
    let bomb = Bomb(drops.clone());
    let queued = pool.spawn(move || drop(bomb));
    assert!(queued.cancel());
    assert!(queued.join().unwrap_err().is_cancelled());
    assert_eq!(pool.metrics().drop_panics, 1);

    // 2. The output of a detached task, dropped by the worker.
    let d = drops.clone();
    drop(pool.spawn(move || Bomb(d)));
    drop(gates);
    busy.into_iter().for_each(|h| h.join().unwrap());
    wait_for(|| pool.metrics().drop_panics == 2);

    // 3. The output, dropped with an unread handle on this thread (the pool may be gone by
    //    then, so only the process-wide count sees it).
    let d = drops.clone();
    let h = pool.spawn(move || Bomb(d));
    wait_for(|| h.is_finished());
    drop(h);
    assert_eq!(weft::drop_panics() - before, 3);

    // The worker survived all of it.
    assert_eq!(pool.spawn(|| 7).join().unwrap(), 7);

    // 4. Closures still queued when the pool shuts down now.
    let (gates, busy) = block_all(&pool);
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let b = Bomb(drops.clone());
            pool.spawn(move || drop(b))
        })
        .collect();
    let p = pool.clone();
    let stopper = std::thread::spawn(move || p.shutdown_now());
    for h in queued {
        assert!(h.join_timeout(HANG).unwrap().unwrap_err().is_shutdown());
    }
    drop(gates);
    stopper.join().unwrap();
    busy.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(drops.load(Ordering::SeqCst), 6);
    assert_eq!(weft::drop_panics() - before, 6);
    assert_eq!(pool.metrics().drop_panics, 5, "all but the handle's drop");

    // 5. A retrying task's closure, dropped after its last attempt.
    let pool = common::pool(1);
    let bomb = Bomb(drops.clone());
    let h = pool
        .task()
        .retry(RetryPolicy::fixed(Duration::ZERO).max_attempts(2))
        .spawn(move || {
            let _keep = &bomb;
            Err::<(), _>(())
        });
    assert_eq!(h.join().unwrap(), Err(()), "the last error, not a panic");
    assert_eq!(drops.load(Ordering::SeqCst), 7);
    assert_eq!(pool.metrics().drop_panics, 1);
    assert_eq!(weft::drop_panics() - before, 7);

    // 6. A periodic closure, dropped with the schedule's last reference (the driver's,
    //    a worker's or this thread's).
    let bomb = Bomb(drops.clone());
    let p = pool.task().every(Duration::from_millis(1), move || {
        let _keep = &bomb;
    });
    wait_for(|| p.runs() >= 2);
    drop(p);
    wait_for(|| weft::drop_panics() - before == 8);
    assert_eq!(pool.spawn(|| 8).join().unwrap(), 8, "the pool still works");
    pool.shutdown();
    assert_eq!(drops.load(Ordering::SeqCst), 8);
}

#[test]
fn extreme_time_limits_are_well_defined() {
    let pool = pool(1);
    // Zero: the limit has passed when the run starts.
    let h = pool
        .task()
        .time_limit(Duration::ZERO)
        .spawn(|| weft::checkpoint().map_err(|c| c.is_time_limit()));
    assert!(h.join().unwrap_err().is_time_limit());
    // Too far for an `Instant`: no limit at all.
    let h = pool
        .task()
        .time_limit(Duration::MAX)
        .spawn(weft::checkpoint);
    assert_eq!(h.join().unwrap(), Ok(()));
    // A huge bound on the lanes is just unbounded in practice.
    let big = Pool::builder()
        .workers(1)
        .max_queued(usize::MAX)
        .build()
        .unwrap();
    assert_eq!(big.try_spawn(|| 1).unwrap().join().unwrap(), 1);
}
