//! Unit tests of `shared.rs`.

use std::time::Duration;

use crate::lane::Lane;
use crate::task::raw;
use crate::task::JoinHandle;
use crate::Pool;

/// Regression: jobs that wait (scope, join, handle join) while the pool drains at
/// shutdown must leave the sleep state balanced, so a push that races the last
/// worker's exit is still drained and its handle resolves.
#[test]
fn nested_waits_during_the_shutdown_drain_keep_the_sleep_state_balanced() {
    for workers in [1, 2, 3] {
        let pool = Pool::builder().workers(workers).build().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let gate = pool.spawn(move || rx.recv().unwrap());
        let p = pool.clone();
        let mut queued = Vec::new();
        for _ in 0..4 {
            let p = p.clone();
            queued.push(pool.spawn(move || {
                crate::scope(|s| s.spawn(|_| {}));
                crate::join(|| 1, || 2);
                p.spawn(|| ()).join().ok();
            }));
        }
        let stopper = {
            let p = pool.clone();
            std::thread::spawn(move || p.shutdown())
        };
        tx.send(()).unwrap();
        stopper.join().unwrap();
        gate.join().unwrap();
        for h in queued {
            h.join().unwrap();
        }
        let s = pool.shared().sleep.load();
        assert!(s.is_closed(), "{s:?}");
        assert_eq!((s.alive(), s.searching(), s.sleeping()), (0, 0, 0), "{s:?}");

        // A push as from a spawn that passed the `closed` check just before shutdown.
        let shared = pool.shared();
        let (job, handle) = raw::allocate(|| 5, &**shared, Lane::NORMAL);
        shared.push(Lane::NORMAL, job, true);
        // SAFETY: the handle's reference of a task with output `i32`.
        let h: JoinHandle<i32> = unsafe { JoinHandle::from_raw(handle) };
        let r = h
            .join_timeout(Duration::from_secs(60))
            .expect("late push never resolved");
        assert!(r.unwrap_err().is_shutdown());
    }
}
