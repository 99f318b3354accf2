//! Integration tests of the public API: spawning, joining, priorities, cancellation,
//! panics, metrics, builder options and shutdown.

mod common;
use common::*;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use weft::{Pool, Priority};

#[test]
fn spawn_and_join_values_of_any_type() {
    let pool = pool(2);
    assert_eq!(pool.spawn(|| 1u8).join().unwrap(), 1);
    assert_eq!(pool.spawn(|| String::from("s")).join().unwrap(), "s");
    assert_eq!(pool.spawn(|| vec![1, 2, 3]).join().unwrap(), vec![1, 2, 3]);
    let handles: Vec<_> = (0..1000u64).map(|i| pool.spawn(move || i * 2)).collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sum, 999 * 1000);
}

#[test]
fn higher_lanes_run_first_on_one_worker() {
    let pool = pool(1);
    let (gates, blockers) = block_all(&pool);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for p in [Priority::Low, Priority::Normal, Priority::High] {
        for i in 0..4 {
            let o = order.clone();
            handles.push(
                pool.task()
                    .priority(p)
                    .spawn(move || o.lock().unwrap().push((p, i))),
            );
        }
    }
    drop(gates);
    for h in blockers.into_iter().chain(handles) {
        h.join().unwrap();
    }
    let order = order.lock().unwrap().clone();
    let expected: Vec<_> = [Priority::High, Priority::Normal, Priority::Low]
        .into_iter()
        .flat_map(|p| (0..4).map(move |i| (p, i)))
        .collect();
    assert_eq!(order, expected, "priority order, FIFO within a lane");
}

#[test]
fn low_lane_is_not_starved_by_a_high_flood() {
    let pool = pool(1);
    let (gates, blockers) = block_all(&pool);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    let low = {
        let o = order.clone();
        pool.task()
            .priority(Priority::Low)
            .spawn(move || o.lock().unwrap().push("low"))
    };
    for _ in 0..200 {
        let o = order.clone();
        handles.push(
            pool.task()
                .priority(Priority::High)
                .spawn(move || o.lock().unwrap().push("high")),
        );
    }
    drop(gates);
    low.join().unwrap();
    for h in blockers.into_iter().chain(handles) {
        h.join().unwrap();
    }
    let order = order.lock().unwrap();
    let pos = order.iter().position(|s| *s == "low").unwrap();
    // The guard gives the low lane the first pick of every 32 ending at 31: the blocker was
    // pick 0, so the low task runs at pick 31 at the latest, after at most 30 high ones.
    assert!(pos <= 31, "low task waited behind {pos} high tasks");
    assert!(pos >= 16, "high work goes first otherwise (pos {pos})");
}

#[test]
fn tasks_from_one_thread_start_in_submission_order_on_one_worker() {
    let pool = pool(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    let p = pool.clone();
    // Spawned from inside a worker (local FIFO deque).
    pool.spawn(move || {
        let hs: Vec<_> = (0..100)
            .map(|i| {
                let o = o.clone();
                p.spawn(move || o.lock().unwrap().push(i))
            })
            .collect();
        hs
    })
    .join()
    .unwrap()
    .into_iter()
    .for_each(|h| h.join().unwrap());
    assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
}

#[test]
fn panics_are_caught_counted_and_the_worker_survives() {
    let pool = pool(1);
    for i in 0..10 {
        let err = pool
            .spawn(move || -> u32 { panic!("task {i} failed") })
            .join()
            .unwrap_err();
        assert!(err.is_panic());
        assert_eq!(
            err.panic_message(),
            Some(format!("task {i} failed").as_str())
        );
    }
    assert_eq!(
        pool.spawn(|| 5).join().unwrap(),
        5,
        "the single worker is still alive"
    );
    let m = pool.metrics();
    assert_eq!((m.panicked, m.completed), (10, 1));
    let payload = pool
        .spawn(|| std::panic::panic_any(42i64))
        .join()
        .unwrap_err();
    assert_eq!(
        payload
            .try_into_panic()
            .unwrap()
            .downcast::<i64>()
            .ok()
            .map(|b| *b),
        Some(42)
    );
}

#[test]
fn cancel_wins_only_before_start() {
    let pool = pool(1);
    let (gates, blockers) = block_all(&pool);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let queued = pool.spawn(move || r.fetch_add(1, Ordering::SeqCst));
    assert!(!queued.is_finished());
    assert!(queued.cancel());
    assert!(queued.is_finished(), "resolves at once");
    assert!(!queued.cancel());
    assert_eq!(
        pool.metrics().cancelled,
        1,
        "counted before the handle resolved"
    );
    assert!(
        !blockers[0].cancel(),
        "a running task is only asked to stop"
    );
    drop(gates);
    assert!(queued.join().unwrap_err().is_cancelled());
    let mut blockers = blockers.into_iter();
    assert!(
        blockers.next().unwrap().join().unwrap_err().is_cancelled(),
        "cancellation was requested before it finished"
    );
    for b in blockers {
        b.join().unwrap();
    }
    pool.shutdown();
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a cancelled task never runs");
    let done = pool.spawn(|| ());
    assert!(!done.cancel());
}

#[test]
fn dropping_a_handle_detaches_the_task() {
    let pool = pool(2);
    let (tx, rx) = channel();
    drop(pool.spawn(move || tx.send(7).unwrap()));
    assert_eq!(rx.recv_timeout(HANG).unwrap(), 7);
    // The output of a detached task is dropped once: count drops.
    struct D(Arc<AtomicUsize>);
    impl Drop for D {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let d = drops.clone();
        drop(pool.spawn(move || D(d)));
    }
    pool.shutdown();
    assert_eq!(drops.load(Ordering::SeqCst), 100);
}

#[test]
fn join_timeout_and_try_join_give_the_handle_back() {
    let pool = pool(1);
    let (tx, rx) = channel::<u32>();
    let h = pool.spawn(move || rx.recv().unwrap());
    let h = h.try_join().unwrap_err();
    let start = Instant::now();
    let h = h.join_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(20), "never early");
    tx.send(3).unwrap();
    assert_eq!(h.join_timeout(HANG).ok().unwrap().unwrap(), 3);
}

#[test]
fn join_timeout_on_a_worker_gives_the_handle_back() {
    // The awaited task runs on another pool, so the waiting worker has nothing else to do:
    // it parks until the deadline, then hands the handle back.
    let pool = pool(1);
    let other = self::pool(1);
    let (tx, rx) = channel::<u32>();
    let waiting = other.spawn(move || rx.recv().unwrap());
    let r = pool
        .spawn(move || {
            let start = Instant::now();
            let waiting = waiting.join_timeout(Duration::from_millis(20)).unwrap_err();
            assert!(start.elapsed() >= Duration::from_millis(20), "never early");
            tx.send(11).unwrap();
            waiting.join().unwrap()
        })
        .join();
    assert_eq!(r.unwrap(), 11);
}

#[test]
fn join_on_a_worker_runs_queued_work_while_waiting() {
    let pool = pool(1);
    let p = pool.clone();
    let r = pool
        .spawn(move || {
            let (tx, rx) = channel::<u32>();
            // FIFO: the sender runs first, then the receiver, both on this same worker
            // while it waits in `join`.
            let helper = p.spawn(move || tx.send(11).unwrap());
            let waiting = p.spawn(move || rx.recv().unwrap());
            let v = waiting.join().unwrap();
            assert!(helper.is_finished());
            v
        })
        .join();
    assert_eq!(r.unwrap(), 11);
}

#[test]
fn nested_joins_on_one_worker_do_not_deadlock() {
    fn depth(p: Pool, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let q = p.clone();
        p.spawn(move || depth(q, n - 1)).join().unwrap() + 1
    }
    let pool = pool(1);
    let p = pool.clone();
    assert_eq!(pool.spawn(move || depth(p, 50)).join().unwrap(), 50);
}

#[test]
fn fork_join_and_scope_work_on_one_and_many_workers() {
    fn fib(n: u64) -> u64 {
        if n < 2 {
            return n;
        }
        let (a, b) = weft::join(|| fib(n - 1), || fib(n - 2));
        a + b
    }
    for w in [1, 2, 4] {
        let pool = pool(w);
        assert_eq!(pool.install(|| fib(20)), 6765);
        let data: Vec<u64> = (0..10_000).collect();
        let mut sums = [0u64; 10];
        pool.scope(|s| {
            for (chunk, out) in data.chunks(1000).zip(sums.iter_mut()) {
                s.spawn(move |_| *out = chunk.iter().sum());
            }
        });
        assert_eq!(sums.iter().sum::<u64>(), data.iter().sum::<u64>());
    }
}

#[test]
fn join_propagates_panics_after_both_sides_finish() {
    let pool = pool(2);
    let b_ran = Arc::new(AtomicUsize::new(0));
    let b = b_ran.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.install(|| {
            weft::join(
                || panic!("left"),
                move || {
                    b.fetch_add(1, Ordering::SeqCst);
                },
            )
        })
    }));
    assert!(r.is_err());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.install(|| weft::join(|| 1, || -> u32 { panic!("right") }))
    }));
    let msg = r.unwrap_err();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"right"));
    assert_eq!(pool.spawn(|| 1).join().unwrap(), 1, "workers survive");
}

#[test]
fn scope_reraises_a_job_panic_after_all_jobs_finished() {
    let pool = pool(2);
    let finished = AtomicUsize::new(0);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.scope(|s| {
            s.spawn(|_| panic!("scoped"));
            for _ in 0..20 {
                s.spawn(|_| {
                    finished.fetch_add(1, Ordering::SeqCst);
                });
            }
        })
    }));
    assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"scoped"));
    assert_eq!(finished.load(Ordering::SeqCst), 20);
}

#[test]
fn handles_are_futures() {
    let pool = pool(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let v = rt.block_on(async {
        let a = pool.spawn(|| 20);
        let b = pool.spawn(|| 22);
        a.await.unwrap() + b.await.unwrap()
    });
    assert_eq!(v, 42);

    // A hand-rolled poll: the waker is called once the task completes.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(count.clone());
    let (tx, rx) = channel::<()>();
    let mut h = pool.spawn(move || rx.recv().unwrap());
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut h).poll(&mut cx).is_pending());
    tx.send(()).unwrap();
    wait_for(|| count.0.load(Ordering::SeqCst) == 1);
    assert!(matches!(
        Pin::new(&mut h).poll(&mut cx),
        Poll::Ready(Ok(()))
    ));
}

#[test]
fn metrics_count_before_the_handle_resolves() {
    let pool = pool(2);
    for i in 1..=50u64 {
        pool.spawn(|| ()).join().unwrap();
        let m = pool.metrics();
        assert_eq!((m.spawned, m.completed), (i, i));
    }
    let m = pool.metrics();
    assert_eq!(m.workers, 2);
    assert_eq!(m.queued(), 0);
    assert!(format!("{m:?}").contains("completed: 50"));
}

#[test]
fn metrics_show_queue_depth_per_lane() {
    let pool = pool(1);
    let (gates, blockers) = block_all(&pool);
    let hs: Vec<_> = [
        (Priority::High, 1),
        (Priority::Normal, 2),
        (Priority::Low, 3),
    ]
    .into_iter()
    .flat_map(|(p, n)| (0..n).map(move |_| p))
    .map(|p| pool.task().priority(p).spawn(|| ()))
    .collect();
    let m = pool.metrics();
    assert_eq!((m.queued_high, m.queued_normal, m.queued_low), (1, 2, 3));
    drop(gates);
    for h in hs {
        h.join().unwrap();
    }
    for b in blockers {
        b.join().unwrap();
    }
    assert_eq!(pool.metrics().queued(), 0);
}

#[test]
fn builder_rejects_bad_worker_counts() {
    assert!(Pool::builder()
        .workers(0)
        .build()
        .unwrap_err()
        .is_zero_workers());
    let e = Pool::builder().workers(usize::MAX).build().unwrap_err();
    assert!(e.is_too_many_workers());
    assert!(e.to_string().contains("at most"));
}

#[test]
fn builder_hooks_names_and_spawning_from_the_start_hook() {
    let stops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let s = stops.clone();
    let pool = Pool::builder()
        .workers(2)
        .thread_name(|i| format!("hooked-{i}"))
        .on_thread_start(move |i| {
            // Spawning from the start hook goes to this pool.
            let h = weft::spawn(move || (i, thread::current().name().map(str::to_owned)));
            tx.lock().unwrap().send(h).unwrap();
        })
        .on_thread_stop(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let h = rx.recv_timeout(HANG).unwrap();
        let (i, name) = h.join().unwrap();
        assert!(name.unwrap().starts_with("hooked-"));
        seen.push(i);
    }
    seen.sort();
    assert_eq!(seen, [0, 1]);
    pool.shutdown();
    assert_eq!(stops.load(Ordering::SeqCst), 2);
}

#[test]
fn spawn_inside_a_worker_uses_that_pool() {
    let pool = Pool::builder()
        .workers(2)
        .thread_name(|i| format!("mine-{i}"))
        .build()
        .unwrap();
    let name = pool
        .spawn(|| {
            weft::spawn(|| thread::current().name().unwrap().to_owned())
                .join()
                .unwrap()
        })
        .join()
        .unwrap();
    assert!(name.starts_with("mine-"));
    assert_eq!(
        pool.install(weft::current_thread_index).map(|i| i < 2),
        Some(true)
    );
    assert_eq!(weft::current_thread_index(), None);
}

#[test]
fn a_task_builder_from_a_worker_outlives_its_pool() {
    // `weft::task()` borrows nothing: it picks the pool when `spawn` is called.
    let pool = pool(1);
    let builder = pool.spawn(weft::task).join().unwrap();
    pool.shutdown();
    assert_eq!(
        builder.priority(Priority::High).spawn(|| 1).join().unwrap(),
        1
    );
}

#[test]
fn global_functions_work_from_outside() {
    assert_eq!(weft::spawn(|| 3).join().unwrap(), 3);
    assert_eq!(weft::join(|| 1, || 2), (1, 2));
    let mut x = 0;
    weft::scope(|s| s.spawn(|_| x = 9));
    assert_eq!(x, 9);
}

#[test]
fn shutdown_finishes_queued_work_and_refuses_new() {
    let pool = pool(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..1000)
        .map(|_| {
            let r = ran.clone();
            pool.spawn(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    pool.shutdown();
    assert_eq!(ran.load(Ordering::SeqCst), 1000);
    for h in handles {
        h.join().unwrap();
    }
    let refused = pool.spawn(|| ());
    assert!(refused.is_finished());
    assert!(refused.join().unwrap_err().is_shutdown());
    pool.shutdown(); // idempotent
    assert_eq!(
        pool.metrics().spawned,
        1000,
        "a refused spawn is not counted"
    );
    // install and scope still work after shutdown: they run on the caller.
    assert_eq!(pool.install(|| 5), 5);
    let mut y = 0;
    pool.scope(|s| s.spawn(|_| y = 1));
    assert_eq!(y, 1);
}

#[test]
fn shutdown_now_resolves_queued_tasks_as_shut_down() {
    let pool = pool(1);
    let (gates, blockers) = block_all(&pool);
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..100)
        .map(|_| {
            let r = ran.clone();
            pool.spawn(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let p = pool.clone();
    let stopper = thread::spawn(move || p.shutdown_now());
    for h in queued {
        assert!(h.join().unwrap_err().is_shutdown());
    }
    drop(gates);
    stopper.join().unwrap();
    for b in blockers {
        b.join().unwrap();
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(pool.metrics().cancelled, 100);
}

#[test]
fn shutdown_from_a_worker_returns_without_deadlock() {
    let pool = pool(2);
    let p = pool.clone();
    pool.spawn(move || p.shutdown()).join().unwrap();
    assert!(pool.spawn(|| ()).join().unwrap_err().is_shutdown());
    pool.shutdown(); // from outside: joins the workers
}

#[test]
fn dropping_the_last_handle_on_a_worker_shuts_down_without_deadlock() {
    let pool = pool(2);
    let (tx, rx) = channel::<()>();
    let p = pool.clone();
    let h = pool.spawn(move || {
        rx.recv().unwrap();
        drop(p); // the last Pool handle
        "dropped"
    });
    drop(pool);
    tx.send(()).unwrap();
    assert_eq!(h.join().unwrap(), "dropped");
}

#[test]
fn dropping_the_last_handle_shuts_down_gracefully() {
    let ran = Arc::new(AtomicUsize::new(0));
    let stops = Arc::new(AtomicUsize::new(0));
    let s = stops.clone();
    let pool = Pool::builder()
        .workers(2)
        .on_thread_stop(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let r = ran.clone();
            pool.spawn(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    drop(pool);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        100,
        "queued work finished before drop returned"
    );
    assert_eq!(stops.load(Ordering::SeqCst), 2, "workers were joined");
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn shutdown_timeout_reports_a_clean_shutdown() {
    let pool = pool(2);
    let handles: Vec<_> = (0..500).map(|i| pool.spawn(move || i)).collect();
    let p = pool.task().every(Duration::from_secs(3600), || {});
    let report = pool.shutdown_timeout(HANG);
    assert_eq!(report.threads_still_running, 0);
    assert_eq!(report.cancelled, 0);
    assert_eq!(report.timers_dropped, 1, "the periodic schedule");
    assert!(p.is_cancelled());
    assert_eq!(report.metrics.completed, 500);
    assert!(format!("{report:?}").contains("threads_still_running: 0"));
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), i);
    }
}

#[test]
fn shutdown_timeout_cancels_what_is_queued_when_time_runs_out() {
    let pool = pool(1);
    let (gates, blockers) = block_all(&pool);
    let queued: Vec<_> = (0..100).map(|_| pool.spawn(|| ())).collect();
    let start = Instant::now();
    let report = pool.shutdown_timeout(Duration::from_millis(30));
    assert!(start.elapsed() >= Duration::from_millis(30), "never early");
    assert_eq!(report.cancelled, 100);
    assert!(
        report.threads_still_running >= 1,
        "the worker still running its task"
    );
    for h in queued {
        assert!(h.join().unwrap_err().is_shutdown());
    }
    drop(gates);
    for b in blockers {
        b.join().unwrap();
    }
    pool.shutdown();
    let again = pool.shutdown_timeout(HANG);
    assert_eq!(again.threads_still_running, 0);
}

#[test]
fn joining_a_handle_from_inside_its_own_task_is_an_error_not_a_deadlock() {
    use std::sync::mpsc::channel;
    type Slot = Arc<Mutex<Option<weft::JoinHandle<u32>>>>;
    let pool = pool(1);

    // Directly: the task joins its own handle.
    let slot: Slot = Arc::default();
    let (go_tx, go_rx) = channel::<()>();
    let (res_tx, res_rx) = channel();
    let s = slot.clone();
    let h = pool.spawn(move || {
        go_rx.recv().unwrap();
        let me = s.lock().unwrap().take().unwrap();
        let r = me.join_timeout(HANG).ok().unwrap();
        res_tx.send(r.unwrap_err().is_self_join()).unwrap();
        7
    });
    *slot.lock().unwrap() = Some(h);
    go_tx.send(()).unwrap();
    assert!(res_rx.recv_timeout(HANG).unwrap());

    // Nested: A waits for B on the only worker, which runs B inside A's wait; B joins A.
    let slot: Slot = Arc::default();
    let (go_tx, go_rx) = channel::<()>();
    let (res_tx, res_rx) = channel();
    let s = slot.clone();
    let p = pool.clone();
    let a = pool.spawn(move || {
        go_rx.recv().unwrap();
        let b = p.spawn(move || {
            let a = s.lock().unwrap().take().unwrap();
            res_tx.send(a.join().unwrap_err().is_self_join()).unwrap();
        });
        b.join().unwrap();
        1
    });
    *slot.lock().unwrap() = Some(a);
    go_tx.send(()).unwrap();
    assert!(res_rx.recv_timeout(HANG).unwrap());
    pool.shutdown();
}

#[test]
fn shutdown_returns_only_after_every_pool_thread_ended() {
    // Each worker's thread-local guard is dropped as its thread ends, after the worker has
    // counted itself as exited: a joined thread has run it, an unjoined one may not have.
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    thread_local! {
        static GUARD: std::cell::RefCell<Option<Guard>> = const { std::cell::RefCell::new(None) };
    }
    for round in 0..200 {
        let ended = Arc::new(AtomicUsize::new(0));
        let e = ended.clone();
        let pool = Pool::builder()
            .workers(2)
            .on_thread_start(move |_| GUARD.with(|g| *g.borrow_mut() = Some(Guard(e.clone()))))
            .build()
            .unwrap();
        pool.spawn(|| ()).join().unwrap();
        if round % 2 == 0 {
            pool.shutdown();
        } else {
            assert_eq!(pool.shutdown_timeout(HANG).threads_still_running, 0);
        }
        assert_eq!(
            ended.load(Ordering::SeqCst),
            2,
            "round {round}: a worker was not joined"
        );
        drop(pool);
        // The pool's last reference was ours: its hooks (and what they hold) are gone.
        assert_eq!(
            Arc::strong_count(&ended),
            1,
            "round {round}: the pool outlived its drop"
        );
    }
}
