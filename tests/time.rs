//! Delayed tasks through the public API: never early, in deadline order, cancellable in
//! the timer, resolved on shutdown. Timing assertions are lower bounds ("never early") or
//! generous upper bounds that only catch hangs.

mod common;
use common::rng::Rng;
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use weft::Priority;

#[test]
fn delayed_tasks_never_start_early() {
    let pool = pool(2);
    let handles: Vec<_> = (0..50u64)
        .map(|i| {
            let delay = Duration::from_millis(i % 25);
            let at = Instant::now() + delay;
            let h = pool.task().delay(delay).spawn(Instant::now);
            (at, h)
        })
        .collect();
    for (at, h) in handles {
        let started = h.join_timeout(HANG).expect("hang").unwrap();
        assert!(started >= at, "started {:?} early", at - started);
    }
    assert_eq!(pool.metrics().timers_pending, 0);
}

#[test]
fn a_deadline_in_the_past_runs_at_once() {
    let pool = pool(1);
    let past = Instant::now() - Duration::from_millis(1).min(Instant::now().elapsed());
    assert_eq!(pool.task().at(past).spawn(|| 1).join().unwrap(), 1);
    assert_eq!(
        pool.task()
            .delay(Duration::ZERO)
            .spawn(|| 2)
            .join()
            .unwrap(),
        2
    );
}

#[test]
fn due_tasks_enter_their_lane_in_deadline_order() {
    let pool = pool(1);
    let (tx, rx) = channel::<()>();
    let blocker = pool.spawn(move || rx.recv().unwrap());
    let order = Arc::new(Mutex::new(Vec::new()));
    let base = Instant::now() + Duration::from_millis(30);
    // Deadlines 3, 1, 2 (ms after base) and two ties at 4: insertion order for the ties.
    let mut handles = Vec::new();
    for (name, offset) in [("c", 3), ("a", 1), ("b", 2), ("d1", 4), ("d2", 4)] {
        let o = order.clone();
        handles.push(
            pool.task()
                .at(base + Duration::from_millis(offset))
                .spawn(move || o.lock().unwrap().push(name)),
        );
    }
    // All five come due while the only worker is blocked, then run in queue order.
    wait_for(|| pool.metrics().timers_fired == 5);
    tx.send(()).unwrap();
    blocker.join().unwrap();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["a", "b", "c", "d1", "d2"]);
}

#[test]
fn delayed_tasks_keep_their_priority() {
    let pool = pool(1);
    let (tx, rx) = channel::<()>();
    let blocker = pool.spawn(move || rx.recv().unwrap());
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let low = pool
        .task()
        .priority(Priority::Low)
        .spawn(move || o.lock().unwrap().push("low"));
    let o = order.clone();
    let high = pool
        .task()
        .priority(Priority::High)
        .delay(Duration::from_millis(5))
        .spawn(move || o.lock().unwrap().push("high"));
    wait_for(|| pool.metrics().timers_fired == 1);
    tx.send(()).unwrap();
    for h in [blocker, low, high] {
        h.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["high", "low"]);
}

#[test]
fn cancel_removes_a_waiting_timer_at_once() {
    let pool = pool(1);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let h = pool.task().delay(Duration::from_secs(3600)).spawn(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    wait_for(|| pool.metrics().timers_pending == 1);
    assert!(h.cancel());
    assert!(!h.cancel());
    assert!(h.is_finished());
    // Removed from the wheel right away, not when the hour is up.
    wait_for(|| pool.metrics().timers_pending == 0);
    assert!(h.join().unwrap_err().is_cancelled());
    assert_eq!(pool.metrics().cancelled, 1);
    pool.shutdown();
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn a_huge_delay_never_fires_and_stays_cancellable() {
    let pool = pool(1);
    let a = pool.task().delay(Duration::MAX).spawn(|| "never");
    let b = pool
        .task()
        .delay(Duration::from_secs(u64::MAX / 4))
        .spawn(|| "never");
    wait_for(|| pool.metrics().timers_pending == 2);
    assert!(!a.is_finished());
    assert!(a.cancel());
    assert!(a.join().unwrap_err().is_cancelled());
    pool.shutdown();
    assert!(b.join().unwrap_err().is_shutdown());
}

#[test]
fn cancel_racing_fire_has_one_winner() {
    let pool = pool(2);
    let mut rng = Rng::seeded(0x9E37_79B9);
    for _ in 0..10 {
        let ran: Arc<Vec<AtomicUsize>> = Arc::new((0..300).map(|_| AtomicUsize::new(0)).collect());
        let handles: Vec<_> = (0..300usize)
            .map(|i| {
                let ran = ran.clone();
                pool.task()
                    .delay(Duration::from_micros((i as u64 * 37) % 3000))
                    .spawn(move || ran[i].fetch_add(1, Ordering::SeqCst))
            })
            .collect();
        let mut won = Vec::new();
        for h in &handles {
            let r = rng.next_u64();
            if r.is_multiple_of(3) {
                for _ in 0..(r % 2000) {
                    std::hint::spin_loop();
                }
            }
            won.push(h.cancel());
        }
        for (i, (h, won)) in handles.into_iter().zip(won).enumerate() {
            let r = h.join_timeout(HANG).expect("hang");
            if won {
                assert!(r.unwrap_err().is_cancelled());
                assert_eq!(ran[i].load(Ordering::SeqCst), 0);
            } else {
                // The cancel lost: the task ran. A cancel that landed while it ran asks it
                // to stop, and its handle then resolves as cancelled (`JoinHandle::cancel`).
                if let Err(e) = r {
                    assert!(e.is_cancelled(), "{e:?}");
                }
                assert_eq!(ran[i].load(Ordering::SeqCst), 1);
            }
        }
    }
    wait_for(|| pool.metrics().timers_pending == 0);
    let m = pool.metrics();
    assert_eq!(m.spawned, m.completed + m.cancelled);
}

#[test]
fn shutdown_resolves_thousands_of_pending_timers() {
    let pool = pool(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let timers: Vec<_> = (0..5000u64)
        .map(|i| {
            let r = ran.clone();
            pool.task()
                .delay(Duration::from_secs(60 + i))
                .spawn(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                })
        })
        .collect();
    let queued: Vec<_> = (0..100).map(|_| pool.spawn(|| 1)).collect();
    pool.shutdown();
    for h in timers {
        assert!(h
            .join_timeout(HANG)
            .expect("hang")
            .unwrap_err()
            .is_shutdown());
    }
    for h in queued {
        assert_eq!(h.join().unwrap(), 1, "queued work still runs on shutdown");
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let m = pool.metrics();
    assert_eq!(m.timers_pending, 0);
    assert_eq!(m.cancelled, 5000);
    // After shutdown a delayed spawn is refused at once.
    let refused = pool.task().delay(Duration::from_millis(1)).spawn(|| ());
    assert!(refused.join().unwrap_err().is_shutdown());
}

#[test]
fn delayed_spawns_racing_shutdown_all_resolve() {
    for round in 0..20u64 {
        let pool = pool(2);
        let p = pool.clone();
        let spawner = thread::spawn(move || {
            (0..500u64)
                .map(|i| {
                    p.task()
                        .delay(Duration::from_micros((i * 13 + round) % 2000))
                        .spawn(move || i)
                })
                .collect::<Vec<_>>()
        });
        for _ in 0..(round * 500) {
            std::hint::spin_loop();
        }
        pool.shutdown();
        for (i, h) in spawner.join().unwrap().into_iter().enumerate() {
            match h.join_timeout(HANG).expect("hang") {
                Ok(v) => assert_eq!(v, i as u64),
                Err(e) => assert!(e.is_shutdown(), "{e}"),
            }
        }
    }
}

#[test]
fn a_delayed_task_from_a_worker_and_from_the_global_pool() {
    let pool = pool(1);
    let p = pool.clone();
    let v = pool
        .spawn(move || {
            p.task()
                .delay(Duration::from_millis(2))
                .spawn(|| 7)
                .join()
                .unwrap()
        })
        .join()
        .unwrap();
    assert_eq!(v, 7);
    let start = Instant::now();
    let h = weft::task()
        .delay(Duration::from_millis(3))
        .spawn(move || start.elapsed());
    assert!(h.join().unwrap() >= Duration::from_millis(3));
}

#[test]
fn delayed_tasks_fire_promptly_on_an_idle_pool() {
    // Generous upper bound (it only catches a timer that oversleeps or polls slowly): the
    // median lateness of 20 delayed tasks is under 50 ms. The real p50/p99 are in
    // BENCHMARKS.md (benches/timer.rs).
    let pool = pool(2);
    let mut late = Vec::new();
    for _ in 0..20 {
        let at = Instant::now() + Duration::from_millis(2);
        let started = pool.task().at(at).spawn(Instant::now).join().unwrap();
        assert!(started >= at);
        late.push(started - at);
    }
    late.sort();
    assert!(
        late[10] < Duration::from_millis(50),
        "median lateness {:?}",
        late[10]
    );
}
