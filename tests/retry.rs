//! Retrying tasks through the public API: success after failures, backoff never shorter
//! than the policy says, attempts capped, a predicate that declines, panics not retried,
//! cancel and shutdown while a task waits for its next attempt.

mod common;
use common::*;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft::{Priority, RetryPolicy};
const MS: Duration = Duration::from_millis(1);

#[test]
fn fails_k_times_then_succeeds_after_k_plus_one_attempts() {
    let pool = pool(2);
    for k in 0..5u32 {
        let mut calls = 0u32;
        let h = pool
            .task()
            .retry(RetryPolicy::fixed(MS).max_attempts(10))
            .spawn(move || {
                calls += 1;
                if calls <= k {
                    Err(calls)
                } else {
                    Ok(calls)
                }
            });
        wait_for(|| h.is_finished());
        assert_eq!(h.attempts(), k + 1);
        assert_eq!(h.join().unwrap(), Ok(k + 1));
    }
    let m = pool.metrics();
    assert_eq!(m.retries_scheduled, 1 + 2 + 3 + 4);
    assert_eq!(m.completed, 5, "a retried task is completed once");
}

#[test]
fn backoff_delays_grow_as_the_policy_says() {
    let pool = pool(1);
    let policy = RetryPolicy::exponential(4 * MS)
        .max_delay(20 * MS)
        .max_attempts(6);
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let s = stamps.clone();
    let h = pool.task().retry(policy).spawn(move || {
        s.lock().unwrap().push(Instant::now());
        Err::<(), _>("always")
    });
    assert_eq!(h.join_timeout(HANG).expect("hang").unwrap(), Err("always"));
    let stamps = stamps.lock().unwrap();
    assert_eq!(stamps.len(), 6, "max_attempts counts every run");
    for k in 1..stamps.len() {
        let gap = stamps[k] - stamps[k - 1];
        let want = policy.delay_before(k as u32);
        assert!(
            gap >= want,
            "retry {k} came after {gap:?}, before its backoff {want:?}"
        );
    }
}

#[test]
fn a_predicate_that_declines_ends_the_task_with_that_error() {
    let pool = pool(1);
    let mut calls = 0;
    let h = pool
        .task()
        .retry(RetryPolicy::fixed(MS).max_attempts(100))
        .retry_if(|e: &String| e.starts_with("transient"))
        .spawn(move || {
            calls += 1;
            if calls < 3 {
                Err(format!("transient {calls}"))
            } else {
                Err::<(), _>(format!("fatal {calls}"))
            }
        });
    wait_for(|| h.is_finished());
    assert_eq!(h.attempts(), 3);
    assert_eq!(h.join().unwrap(), Err("fatal 3".to_owned()));
}

#[test]
fn max_attempts_zero_means_one_run() {
    let pool = pool(1);
    let h = pool
        .task()
        .retry(RetryPolicy::fixed(MS).max_attempts(0))
        .spawn(|| Err::<(), _>(1));
    wait_for(|| h.is_finished());
    assert_eq!(h.attempts(), 1);
    assert_eq!(h.join().unwrap(), Err(1));
}

#[test]
fn a_panic_is_not_retried() {
    let pool = pool(1);
    let h = pool
        .task()
        .retry(RetryPolicy::fixed(MS).max_attempts(5))
        .spawn(|| -> Result<(), ()> { panic!("bug") });
    wait_for(|| h.is_finished());
    assert_eq!(h.attempts(), 1);
    assert!(h.join().unwrap_err().is_panic());
    assert_eq!(pool.metrics().retries_scheduled, 0);
}

#[test]
fn cancel_wins_while_waiting_for_the_next_attempt() {
    let pool = pool(1);
    let h = pool
        .task()
        .retry(RetryPolicy::fixed(Duration::from_secs(3600)))
        .spawn(|| Err::<(), _>("later"));
    wait_for(|| h.attempts() == 1 && pool.metrics().timers_pending == 1);
    assert!(h.cancel());
    assert!(h.join().unwrap_err().is_cancelled());
    wait_for(|| pool.metrics().timers_pending == 0);
}

#[test]
fn shutdown_resolves_tasks_waiting_for_a_retry() {
    let pool = pool(2);
    let handles: Vec<_> = (0..200)
        .map(|i| {
            pool.task()
                .priority([Priority::High, Priority::Low][i % 2])
                .retry(RetryPolicy::fixed(Duration::from_secs(600)))
                .spawn(|| Err::<(), _>(()))
        })
        .collect();
    wait_for(|| pool.metrics().retries_scheduled == 200);
    pool.shutdown();
    for h in handles {
        assert!(h
            .join_timeout(HANG)
            .expect("hang")
            .unwrap_err()
            .is_shutdown());
    }
    assert_eq!(pool.metrics().timers_pending, 0);
}

#[test]
fn retries_racing_shutdown_all_resolve() {
    for round in 0..20u64 {
        let pool = pool(2);
        let handles: Vec<_> = (0..200u64)
            .map(|i| {
                let mut n = 0u64;
                pool.task()
                    .retry(
                        RetryPolicy::fixed(Duration::from_micros((i * 7 + round) % 500))
                            .max_attempts(4),
                    )
                    .spawn(move || {
                        n += 1;
                        if n < 3 {
                            Err(n)
                        } else {
                            Ok(n)
                        }
                    })
            })
            .collect();
        for _ in 0..(round * 2000) {
            std::hint::spin_loop();
        }
        pool.shutdown();
        for h in handles {
            match h.join_timeout(HANG).expect("hang") {
                Ok(r) => assert_eq!(r, Ok(3)),
                Err(e) => assert!(e.is_shutdown(), "{e}"),
            }
        }
    }
}

#[test]
fn a_delayed_retrying_task_waits_first() {
    let pool = pool(1);
    let start = Instant::now();
    let mut first = true;
    let h = pool
        .task()
        .delay(10 * MS)
        .retry(RetryPolicy::fixed(5 * MS))
        .spawn(move || {
            if std::mem::take(&mut first) {
                Err(())
            } else {
                Ok(start.elapsed())
            }
        });
    assert!(h.join().unwrap().unwrap() >= 15 * MS);
}

#[test]
fn cancel_racing_a_retry_reschedule_wins_and_leaves_no_timer() {
    // Cancel as soon as it can win after the first attempt failed: right after the task
    // became SCHEDULED, its `Cancel` may reach the driver before its `Insert`. Either way
    // the cancel wins once, the task never runs again, and no timer entry is left behind.
    let pool = pool(2);
    for _ in 0..300 {
        let h = pool
            .task()
            .retry(RetryPolicy::fixed(Duration::from_secs(3600)))
            .spawn(|| Err::<(), _>(()));
        wait_for(|| h.attempts() == 1);
        wait_for(|| h.cancel() || h.is_finished());
        assert_eq!(h.attempts(), 1);
        assert!(h.join().unwrap_err().is_cancelled());
    }
    wait_for(|| pool.metrics().timers_pending == 0);
    assert_eq!(pool.metrics().cancelled, 300);
}
