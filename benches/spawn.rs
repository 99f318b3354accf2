//! Spawn and fork-join benchmarks: weft against rayon (and tokio), same worker count.
//!
//! Every pool and runtime is built once, outside the timing loop, with `BENCH_WORKERS`
//! workers (default 2). The worker count is part of every benchmark id (`.../w2`), so
//! runs with different counts do not overwrite each other's criterion baselines.
//!
//! Groups:
//!
//! - `spawn_outside`: submit 10_000 empty tasks from the benchmark thread (not a pool
//!   worker), then wait until all of them have run. Throughput is in tasks.
//!   - `weft`: `pool.spawn(|| ())`, collect the `JoinHandle`s, then `join` each.
//!   - `rayon_scope`: `pool.scope(|s| for _ in 0..N { s.spawn(|_| ()) })`. Note that
//!     rayon's `ThreadPool::scope` runs its body on a worker, so these spawns go onto that
//!     worker's local deque rather than through the injector.
//!   - `rayon_spawn_latch`: `pool.spawn(..)` (which goes through rayon's injector) with
//!     each task decrementing an `AtomicUsize` countdown; the benchmark thread waits
//!     for zero by spinning briefly, then `yield_now`.
//!   - `tokio`: a multi-thread runtime, `rt.spawn(async {})`, collect the `JoinHandle`s,
//!     then `rt.block_on` awaiting each.
//! - `spawn_worker`: submit 10_000 empty tasks from *inside* a running task (so the spawns
//!   go to a worker's local queue, not through the injector), then wait for all of them.
//!   Throughput is in tasks. Each iteration includes one round trip into the pool.
//!   - `weft`: `pool.install(|| ..)` whose body spawns with `weft::spawn(|| ())`, collects
//!     the `JoinHandle`s and joins each (a join on a worker runs other queued work).
//!   - `rayon_scope`: `pool.install(|| rayon::scope(|s| for _ in 0..N { s.spawn(|_| ()) }))`.
//!   - `rayon_spawn_latch`: `pool.install(|| for _ in 0..N { rayon::spawn(..) })`, each
//!     task decrementing an `AtomicUsize` countdown. The wait for zero (spin, then
//!     `yield_now`) happens on the benchmark thread after `install` returns, so no worker
//!     is blocked waiting (which would deadlock with `BENCH_WORKERS=1`).
//!   - `tokio`: `rt.block_on(rt.spawn(async { .. }))` whose body spawns with
//!     `tokio::spawn(async {})`, collects the `JoinHandle`s and awaits each.
//! - `chained_spawn`: a chain of 10_000 tasks in which each task spawns the next (from a
//!   worker) and drops its handle; the last one sends on a `std::sync::mpsc` channel that
//!   the benchmark thread waits on (same mechanism for all three). The first link is
//!   submitted from the benchmark thread. Throughput is in tasks. Measures the
//!   spawn-to-run hand-off when there is never more than one task queued.
//!   - `weft`: `pool.spawn`, then `weft::spawn` recursively.
//!   - `rayon`: `pool.spawn`, then `rayon::spawn` recursively.
//!   - `tokio`: `rt.spawn`, then `tokio::spawn` recursively.
//! - `fork_join_fib`: recursive `fib(25)` with `weft::join` inside `pool.install(..)`
//!   against `rayon::join` inside `rayon_pool.install(..)`, and, for reference, tokio
//!   spawning one half and awaiting it (`tokio_*`; tokio has no fork-join).
//!   - `*_no_cutoff`: forks at every level down to `n < 2` (pure join overhead).
//!   - `*_cutoff15`: forks only above `n = 15`; at `n <= 15` plain sequential recursion.
//!
//! Run: `cargo bench --bench spawn`; smoke test: `cargo bench --bench spawn -- --test`;
//! scaling: `BENCH_WORKERS=4 cargo bench --bench spawn`.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};

/// Tasks per `spawn_outside` and `spawn_worker` iteration.
const N: usize = 10_000;

/// Tasks in one `chained_spawn` chain (the first link included).
const CHAIN: usize = 10_000;

/// `fib` argument for `fork_join_fib`.
const FIB_N: u64 = 25;

/// At or below this, the cutoff variants recurse sequentially.
const CUTOFF: u64 = 15;

/// The worker count: `BENCH_WORKERS` if it holds a positive integer, else 2.
fn workers() -> usize {
    std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2)
}

fn weft_pool(workers: usize) -> weft::Pool {
    weft::Pool::builder()
        .workers(workers)
        .build()
        .expect("build weft pool")
}

fn tokio_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("build tokio runtime")
}

fn rayon_pool(workers: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .expect("build rayon pool")
}

/// Waits until `counter` reaches zero: spins a little, then yields (the bench thread
/// shares the cores with the workers).
fn wait_for_zero(counter: &AtomicUsize) {
    let mut spins = 0u32;
    while counter.load(Ordering::Acquire) != 0 {
        if spins < 64 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

fn spawn_outside(c: &mut Criterion) {
    let w = workers();
    let param = format!("w{w}");
    let weft = weft_pool(w);
    let rayon = rayon_pool(w);
    let tokio = tokio_runtime(w);
    // Shared by every iteration of `rayon_spawn_latch`; 'static so that tasks need no Arc.
    let remaining: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));

    let mut group = c.benchmark_group("spawn_outside");
    group.throughput(Throughput::Elements(N as u64));

    group.bench_function(BenchmarkId::new("weft", &param), |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..N).map(|_| weft.spawn(|| ())).collect();
            for h in handles {
                h.join().unwrap();
            }
        })
    });

    group.bench_function(BenchmarkId::new("rayon_scope", &param), |b| {
        b.iter(|| {
            rayon.scope(|s| {
                for _ in 0..N {
                    s.spawn(|_| ());
                }
            })
        })
    });

    group.bench_function(BenchmarkId::new("rayon_spawn_latch", &param), |b| {
        b.iter(|| {
            remaining.store(N, Ordering::Relaxed);
            for _ in 0..N {
                rayon.spawn(move || {
                    remaining.fetch_sub(1, Ordering::Release);
                });
            }
            wait_for_zero(remaining);
        })
    });

    group.bench_function(BenchmarkId::new("tokio", &param), |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..N).map(|_| tokio.spawn(async {})).collect();
            tokio.block_on(async {
                for h in handles {
                    h.await.unwrap();
                }
            })
        })
    });

    group.finish();
}

fn spawn_worker(c: &mut Criterion) {
    let w = workers();
    let param = format!("w{w}");
    let weft = weft_pool(w);
    let rayon = rayon_pool(w);
    let tokio = tokio_runtime(w);
    let remaining: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));

    let mut group = c.benchmark_group("spawn_worker");
    group.throughput(Throughput::Elements(N as u64));

    group.bench_function(BenchmarkId::new("weft", &param), |b| {
        b.iter(|| {
            weft.install(|| {
                let handles: Vec<_> = (0..N).map(|_| weft::spawn(|| ())).collect();
                for h in handles {
                    h.join().unwrap();
                }
            })
        })
    });

    group.bench_function(BenchmarkId::new("rayon_scope", &param), |b| {
        b.iter(|| {
            rayon.install(|| {
                rayon::scope(|s| {
                    for _ in 0..N {
                        s.spawn(|_| ());
                    }
                })
            })
        })
    });

    group.bench_function(BenchmarkId::new("rayon_spawn_latch", &param), |b| {
        b.iter(|| {
            remaining.store(N, Ordering::Relaxed);
            rayon.install(|| {
                for _ in 0..N {
                    rayon::spawn(move || {
                        remaining.fetch_sub(1, Ordering::Release);
                    });
                }
            });
            wait_for_zero(remaining);
        })
    });

    group.bench_function(BenchmarkId::new("tokio", &param), |b| {
        b.iter(|| {
            tokio
                .block_on(tokio.spawn(async {
                    let handles: Vec<_> = (0..N).map(|_| tokio::spawn(async {})).collect();
                    for h in handles {
                        h.await.unwrap();
                    }
                }))
                .unwrap()
        })
    });

    group.finish();
}

/// One link of the weft chain: spawns the next link, or signals `done` as the last one.
fn weft_chain(n: usize, done: mpsc::Sender<()>) {
    if n == 0 {
        done.send(()).unwrap();
    } else {
        drop(weft::spawn(move || weft_chain(n - 1, done)));
    }
}

/// One link of the rayon chain (`rayon::spawn` uses the current worker's pool).
fn rayon_chain(n: usize, done: mpsc::Sender<()>) {
    if n == 0 {
        done.send(()).unwrap();
    } else {
        rayon::spawn(move || rayon_chain(n - 1, done));
    }
}

/// One link of the tokio chain (`tokio::spawn` uses the current runtime).
fn tokio_chain(n: usize, done: mpsc::Sender<()>) {
    if n == 0 {
        done.send(()).unwrap();
    } else {
        drop(tokio::spawn(async move { tokio_chain(n - 1, done) }));
    }
}

fn chained_spawn(c: &mut Criterion) {
    let w = workers();
    let param = format!("w{w}");
    let weft = weft_pool(w);
    let rayon = rayon_pool(w);
    let tokio = tokio_runtime(w);
    // One channel for the whole group; each iteration moves a clone of the sender down
    // its chain and waits for the single message the last link sends.
    let (tx, rx) = mpsc::channel::<()>();

    let mut group = c.benchmark_group("chained_spawn");
    group.throughput(Throughput::Elements(CHAIN as u64));

    group.bench_function(BenchmarkId::new("weft", &param), |b| {
        b.iter(|| {
            let done = tx.clone();
            drop(weft.spawn(move || weft_chain(CHAIN - 1, done)));
            rx.recv().unwrap();
        })
    });

    group.bench_function(BenchmarkId::new("rayon", &param), |b| {
        b.iter(|| {
            let done = tx.clone();
            rayon.spawn(move || rayon_chain(CHAIN - 1, done));
            rx.recv().unwrap();
        })
    });

    group.bench_function(BenchmarkId::new("tokio", &param), |b| {
        b.iter(|| {
            let done = tx.clone();
            drop(tokio.spawn(async move { tokio_chain(CHAIN - 1, done) }));
            rx.recv().unwrap();
        })
    });

    group.finish();
}

fn fib_seq(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib_seq(n - 1) + fib_seq(n - 2)
    }
}

fn fib_weft(n: u64, cutoff: u64) -> u64 {
    if n < 2 {
        return n;
    }
    if n <= cutoff {
        return fib_seq(n);
    }
    let (a, b) = weft::join(|| fib_weft(n - 1, cutoff), || fib_weft(n - 2, cutoff));
    a + b
}

fn fib_rayon(n: u64, cutoff: u64) -> u64 {
    if n < 2 {
        return n;
    }
    if n <= cutoff {
        return fib_seq(n);
    }
    let (a, b) = rayon::join(|| fib_rayon(n - 1, cutoff), || fib_rayon(n - 2, cutoff));
    a + b
}

/// tokio has no fork-join: the reference is the async equivalent, spawning one half and
/// awaiting it (one task allocation per split, as a tokio user would write it).
fn fib_tokio(
    n: u64,
    cutoff: u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>> {
    Box::pin(async move {
        if n < 2 {
            return n;
        }
        if n <= cutoff {
            return fib_seq(n);
        }
        let b = tokio::spawn(fib_tokio(n - 2, cutoff));
        let a = fib_tokio(n - 1, cutoff).await;
        a + b.await.expect("fib task")
    })
}

fn fork_join_fib(c: &mut Criterion) {
    let w = workers();
    let param = format!("w{w}");
    let weft = weft_pool(w);
    let rayon = rayon_pool(w);
    let tokio = tokio_runtime(w);
    let expected = fib_seq(FIB_N);

    let mut group = c.benchmark_group("fork_join_fib");
    // (name suffix, cutoff); a cutoff of 0 never applies since `n < 2` returns first.
    for (variant, cutoff) in [("no_cutoff", 0), ("cutoff15", CUTOFF)] {
        group.bench_function(BenchmarkId::new(format!("weft_{variant}"), &param), |b| {
            b.iter(|| {
                let r = weft.install(|| fib_weft(black_box(FIB_N), cutoff));
                assert_eq!(r, expected);
                r
            })
        });
        group.bench_function(BenchmarkId::new(format!("rayon_{variant}"), &param), |b| {
            b.iter(|| {
                let r = rayon.install(|| fib_rayon(black_box(FIB_N), cutoff));
                assert_eq!(r, expected);
                r
            })
        });
        group.bench_function(BenchmarkId::new(format!("tokio_{variant}"), &param), |b| {
            b.iter(|| {
                let r = tokio
                    .block_on(tokio.spawn(fib_tokio(black_box(FIB_N), cutoff)))
                    .unwrap();
                assert_eq!(r, expected);
                r
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// Holds the generated group function, which is `pub`: in a private module it is not
/// reachable from outside, so the crate's `missing_docs = "deny"` does not apply to it.
mod group {
    use super::{chained_spawn, config, fork_join_fib, spawn_outside, spawn_worker};

    criterion::criterion_group! {
        name = benches;
        config = config();
        targets = spawn_outside, spawn_worker, chained_spawn, fork_join_fib
    }
}
criterion_main!(group::benches);
