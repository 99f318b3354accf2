//! Stress tests with real threads and random timing: many producers inside and outside
//! the pool, cancel racing run, shutdown racing spawn, nested joins. Each checks that
//! every handle resolves exactly once with the right outcome. No test sleeps to let
//! things settle; random yields and spins shake the interleavings.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use weft::{JoinHandle, Pool, Priority};

mod common;
use common::rng::Rng;

const HANG: Duration = Duration::from_secs(60);

/// Random timing: a yield, a spin or nothing, drawn from a per-thread `rng`.
fn jitter(rng: &mut Rng) {
    let r = rng.next_u64();
    match r % 8 {
        0 => thread::yield_now(),
        1 => {
            for _ in 0..(r % 500) {
                std::hint::spin_loop();
            }
        }
        _ => {}
    }
}

fn prio(i: u64) -> Priority {
    [Priority::High, Priority::Normal, Priority::Low][(i % 3) as usize]
}

fn join_in_time<T>(h: JoinHandle<T>) -> Result<T, weft::JoinError> {
    match h.join_timeout(HANG) {
        Ok(r) => r,
        Err(_) => panic!("a handle did not resolve within {HANG:?}"),
    }
}

#[test]
fn many_producers_inside_and_outside() {
    const PRODUCERS: u64 = 4;
    const PER: u64 = 2_000;
    let pool = Pool::builder().workers(3).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(PRODUCERS as usize));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let pool = pool.clone();
            let ran = ran.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                let mut rng = Rng::seeded(t * 7919 + 1);
                let mut sum = 0;
                let handles: Vec<_> = (0..PER)
                    .map(|i| {
                        jitter(&mut rng);
                        let ran = ran.clone();
                        let p = pool.clone();
                        pool.task().priority(prio(i)).spawn(move || {
                            ran.fetch_add(1, Ordering::Relaxed);
                            if i % 10 == 0 {
                                // Spawn from inside a worker, at every priority.
                                let r = ran.clone();
                                let inner = p.task().priority(prio(i + 1)).spawn(move || {
                                    r.fetch_add(1, Ordering::Relaxed);
                                    i
                                });
                                return inner.join().unwrap() + i;
                            }
                            i
                        })
                    })
                    .collect();
                for (i, h) in handles.into_iter().enumerate() {
                    let v = join_in_time(h).unwrap();
                    let i = i as u64;
                    assert_eq!(v, if i.is_multiple_of(10) { 2 * i } else { i });
                    sum += v;
                }
                sum
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let inner = PRODUCERS * PER / 10;
    assert_eq!(ran.load(Ordering::Relaxed) as u64, PRODUCERS * PER + inner);
    let m = pool.metrics();
    assert_eq!(m.spawned, PRODUCERS * PER + inner);
    assert_eq!(m.completed, m.spawned);
    assert_eq!(m.queued(), 0);
}

#[test]
fn cancel_racing_run_has_exactly_one_winner() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut rng = Rng::seeded(12345);
    for round in 0..20 {
        let ran: Arc<Vec<AtomicBool>> =
            Arc::new((0..500).map(|_| AtomicBool::new(false)).collect());
        let handles: Vec<_> = (0..500)
            .map(|i| {
                let ran = ran.clone();
                pool.task().priority(prio(i as u64 + round)).spawn(move || {
                    assert!(!ran[i].swap(true, Ordering::SeqCst), "task ran twice");
                    i
                })
            })
            .collect();
        let handles: Vec<_> = handles
            .into_iter()
            .map(|h| {
                jitter(&mut rng);
                let won = h.cancel();
                (won, h)
            })
            .collect();
        for (i, (won, h)) in handles.into_iter().enumerate() {
            let r = join_in_time(h);
            let did_run = ran[i].load(Ordering::SeqCst);
            if won {
                assert!(r.unwrap_err().is_cancelled());
                assert!(!did_run, "a cancelled task ran");
            } else {
                // It had started: it ran once, and resolves to its value, or to cancelled
                // if the request came while it ran.
                assert!(did_run);
                match r {
                    Ok(v) => assert_eq!(v, i),
                    Err(e) => assert!(e.is_cancelled(), "{e:?}"),
                }
            }
        }
    }
    let m = pool.metrics();
    assert_eq!(m.completed + m.cancelled, m.spawned);
}

#[test]
fn cancel_from_another_thread_races_workers() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let handles: Arc<Vec<JoinHandle<()>>> = Arc::new(
        (0..5_000)
            .map(|_| {
                let r = ran.clone();
                pool.spawn(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect(),
    );
    let h2 = handles.clone();
    let canceller = thread::spawn(move || h2.iter().rev().filter(|h| h.cancel()).count());
    let cancelled = canceller.join().unwrap();
    let handles = Arc::try_unwrap(handles).unwrap();
    let mut seen_cancelled = 0;
    for h in handles {
        match join_in_time(h) {
            Ok(()) => {}
            Err(e) => {
                assert!(e.is_cancelled());
                seen_cancelled += 1;
            }
        }
    }
    // A cancel that lost to a running task requested a stop: such a task ran, yet may
    // resolve as cancelled too.
    assert!(seen_cancelled >= cancelled);
    assert_eq!(ran.load(Ordering::SeqCst) + cancelled, 5_000);
    pool.shutdown();
    assert_eq!(pool.metrics().cancelled as usize, seen_cancelled);
}

#[test]
fn shutdown_racing_spawn_resolves_every_handle() {
    for round in 0..30u64 {
        let pool = Pool::builder().workers(2).build().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(Barrier::new(3));
        let spawners: Vec<_> = (0..2)
            .map(|t| {
                let pool = pool.clone();
                let ran = ran.clone();
                let go = go.clone();
                thread::spawn(move || {
                    go.wait();
                    let mut rng = Rng::seeded(round * 31 + t + 1);
                    (0..300)
                        .map(|i| {
                            jitter(&mut rng);
                            let r = ran.clone();
                            pool.task().priority(prio(i)).spawn(move || {
                                r.fetch_add(1, Ordering::SeqCst);
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        go.wait();
        let mut rng = Rng::seeded(round + 99);
        for _ in 0..(round * 7 % 50) {
            jitter(&mut rng);
        }
        if round % 2 == 0 {
            pool.shutdown();
        } else {
            pool.shutdown_now();
        }
        let mut ok = 0;
        for s in spawners {
            for h in s.join().unwrap() {
                match join_in_time(h) {
                    Ok(()) => ok += 1,
                    Err(e) => assert!(e.is_shutdown(), "unexpected {e}"),
                }
            }
        }
        assert_eq!(ok, ran.load(Ordering::SeqCst), "every Ok ran exactly once");
        let m = pool.metrics();
        assert_eq!(m.completed + m.cancelled, m.spawned, "{m:?}");
    }
}

#[test]
fn nested_fork_join_on_one_worker_and_stealing_across_many() {
    fn tree(depth: u32, seed: u64) -> u64 {
        if depth == 0 {
            jitter(&mut Rng::seeded(seed));
            return 1;
        }
        let (a, b) = weft::join(
            || tree(depth - 1, seed * 3 + 1),
            || tree(depth - 1, seed * 5 + 2),
        );
        a + b
    }
    for workers in [1, 2, 4] {
        let pool = Pool::builder().workers(workers).build().unwrap();
        for _ in 0..5 {
            assert_eq!(pool.install(|| tree(12, 1)), 4096);
        }
        // Handles joined inside joins inside tasks.
        let p = pool.clone();
        let v = pool
            .spawn(move || {
                let hs: Vec<_> = (0..50u64)
                    .map(|i| p.spawn(move || weft::join(|| i, || i).0))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
            })
            .join()
            .unwrap();
        assert_eq!(v, 49 * 50 / 2);
    }
}

#[test]
fn pools_join_each_other_without_deadlock() {
    let a = Pool::builder().workers(1).build().unwrap();
    let b = Pool::builder().workers(1).build().unwrap();
    let (a2, b2) = (a.clone(), b.clone());
    let h = a.spawn(move || {
        let a3 = a2.clone();
        b2.spawn(move || a3.spawn(|| 5).join().unwrap() + 1)
            .join()
            .unwrap()
    });
    assert_eq!(join_in_time(h).unwrap(), 6);
}

/// True when every thread of this process whose name starts with `prefix` is blocked
/// (state `S` in `/proc/self/task/*/stat`), and there are `n` of them.
#[cfg(target_os = "linux")]
fn all_blocked(prefix: &str, n: usize) -> bool {
    let mut seen = 0;
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
        if state != Some('S') {
            return false;
        }
        seen += 1;
    }
    seen == n
}

#[cfg(target_os = "linux")]
#[test]
fn a_task_blocking_on_its_own_child_is_always_rescued_by_an_idle_worker() {
    // The spawner blocks (not in `join`) until its child runs, so the child must be taken
    // by the other worker, which is asleep when the spawn happens: the spawn must wake it.
    // Each round starts from a quiet pool: both workers blocked, which for them means
    // parked (they block nowhere else between rounds).
    let pool = Pool::builder()
        .workers(2)
        .thread_name(|i| format!("rescue-{i}"))
        .build()
        .unwrap();
    for _ in 0..200 {
        let deadline = std::time::Instant::now() + HANG;
        while !all_blocked("rescue-", 3) {
            // Two workers and the timer thread.
            assert!(std::time::Instant::now() < deadline, "pool never went idle");
            thread::yield_now();
        }
        let h = pool.spawn(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            drop(weft::spawn(move || tx.send(1).unwrap()));
            let v: i32 = rx.recv_timeout(HANG).expect("the child never ran");
            v
        });
        assert_eq!(join_in_time(h).unwrap(), 1);
    }
}
