//! Periodic schedules through the public API: counting, cancel, drop and detach, no drift,
//! coalescing of late ticks, panics, zero period, shutdown.

mod common;
use common::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft::Pool;
const MS: Duration = Duration::from_millis(1);

/// Lets every job queued so far on a one-worker pool run (the lanes are FIFO).
fn flush(pool: &Pool) {
    pool.spawn(|| ()).join().unwrap();
}

#[test]
fn runs_are_counted_and_cancel_stops_new_runs() {
    let pool = pool(1);
    let starts = Arc::new(AtomicU64::new(0));
    let s = starts.clone();
    let p = pool.task().every(2 * MS, move || {
        s.fetch_add(1, Ordering::SeqCst);
    });
    wait_for(|| p.runs() >= 3);
    assert!(p.cancel());
    assert!(!p.cancel(), "only the first cancel stops it");
    assert!(p.is_cancelled());
    let at_cancel = starts.load(Ordering::SeqCst);
    // A run queued before the cancel is skipped when its turn comes; after that nothing
    // is left that could start one.
    wait_for(|| pool.metrics().timers_pending == 0);
    flush(&pool);
    assert_eq!(
        starts.load(Ordering::SeqCst),
        at_cancel,
        "a run started after cancel returned"
    );
    assert_eq!(p.runs(), at_cancel);
}

#[test]
fn no_drift_over_100_periods() {
    let pool = pool(2);
    let period = 3 * MS;
    let stamps = Arc::new(Mutex::new(Vec::with_capacity(128)));
    let s = stamps.clone();
    let t0 = Instant::now();
    let p = pool
        .task()
        .every(period, move || s.lock().unwrap().push(Instant::now()));
    wait_for(|| {
        stamps.lock().unwrap().len() >= 100 || p.missed() > 0 && p.runs() + p.missed() >= 100
    });
    drop(p);
    let stamps = stamps.lock().unwrap();
    // Never early: run k (counting skipped ticks, none expected on an idle pool) starts
    // at or after t0 + k * period.
    for (k, at) in stamps.iter().enumerate() {
        assert!(*at >= t0 + period * (k as u32 + 1), "run {k} started early");
    }
    // No drift: lateness does not grow with k. Compare the first and last ten runs.
    if stamps.len() >= 100 {
        let late = |k: usize| stamps[k].saturating_duration_since(t0 + period * (k as u32 + 1));
        let first: Duration = (0..10).map(late).sum::<Duration>() / 10;
        let last: Duration = (90..100).map(late).sum::<Duration>() / 10;
        // Drifting by even 0.5 ms per run would add 45 ms; a generous bound for noise.
        assert!(
            last < first + Duration::from_millis(40),
            "drift: first {first:?}, last {last:?}"
        );
    }
}

#[test]
fn a_panicking_run_does_not_stop_the_schedule() {
    let pool = pool(1);
    let mut n = 0;
    let p = pool.task().every(MS, move || {
        n += 1;
        if n % 2 == 1 {
            panic!("odd run {n}");
        }
    });
    wait_for(|| p.runs() >= 3 && p.panics() >= 3);
    assert!(p.cancel());
}

#[test]
fn late_ticks_are_coalesced_not_queued_twice() {
    let pool = pool(1);
    let runs_while_blocked = Arc::new(AtomicU64::new(0));
    let r = runs_while_blocked.clone();
    let p = pool.task().every(MS, move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    wait_for(|| p.runs() >= 1);
    // Block the only worker for many periods.
    let (tx, rx) = channel::<()>();
    let (started_tx, started_rx) = channel::<()>();
    let blocker = pool.spawn(move || {
        started_tx.send(()).unwrap();
        rx.recv().unwrap();
    });
    started_rx.recv().unwrap();
    let before = runs_while_blocked.load(Ordering::SeqCst);
    wait_for(|| p.missed() >= 20);
    // A marker queued now, in the same lane, runs after every run queued so far and before
    // any queued later: what it sees is how many runs were waiting, whatever the timing.
    let r = runs_while_blocked.clone();
    let marker = pool.spawn(move || r.load(Ordering::SeqCst));
    tx.send(()).unwrap();
    blocker.join().unwrap();
    let seen = marker.join().unwrap();
    // However many ticks passed, at most one run was waiting when the worker came back.
    assert!(seen <= before + 1, "runs piled up: {before} -> {seen}");
    assert!(p.missed() >= 20);
}

#[test]
fn dropping_cancels_and_detach_keeps_running_until_shutdown() {
    let pool = pool(1);
    let dropped = pool.task().every(MS, || {});
    drop(dropped);
    wait_for(|| pool.metrics().timers_pending == 0);

    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    pool.task()
        .every(MS, move || {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .detach();
    wait_for(|| count.load(Ordering::SeqCst) >= 3);
    assert_eq!(pool.metrics().timers_pending, 1);
    pool.shutdown();
    let after = count.load(Ordering::SeqCst);
    assert_eq!(pool.metrics().timers_pending, 0);
    assert_eq!(count.load(Ordering::SeqCst), after, "no run after shutdown");
}

#[test]
fn shutdown_cancels_schedules_and_refuses_new_ones() {
    let pool = pool(1);
    let p = pool.task().every(Duration::from_secs(3600), || {});
    pool.shutdown();
    assert!(p.is_cancelled());
    assert!(!p.cancel());
    let refused = pool.task().every(MS, || unreachable!());
    assert!(refused.is_cancelled());
    assert_eq!(refused.runs(), 0);
}

#[test]
fn a_zero_period_is_one_tick_not_a_busy_loop() {
    let pool = pool(1);
    let t0 = Instant::now();
    let p = pool.task().every(Duration::ZERO, || {});
    wait_for(|| p.runs() >= 20);
    // 20 runs at one per millisecond at most.
    assert!(t0.elapsed() >= 20 * MS);
}

#[test]
fn delay_sets_the_first_run() {
    let pool = pool(1);
    let first = Arc::new(Mutex::new(None));
    let f = first.clone();
    let t0 = Instant::now();
    let p = pool
        .task()
        .delay(30 * MS)
        .every(Duration::from_secs(3600), move || {
            f.lock().unwrap().get_or_insert(Instant::now());
        });
    wait_for(|| p.runs() == 1);
    assert!(first.lock().unwrap().unwrap() >= t0 + 30 * MS);
}
