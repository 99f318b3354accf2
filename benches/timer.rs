//! Timer benchmarks: weft's hierarchical timing wheel against `tokio_util`'s `DelayQueue`
//! and a `BTreeMap` baseline, delayed spawns through the pool against tokio, and the
//! firing lateness of delayed tasks.
//!
//! `N` = 10_000 entries per iteration everywhere; throughput is in entries (tasks).
//! `weft_wheel` is `weft::__bench::Wheel<u64>` (deadlines in 1 ms ticks, no clock);
//! `delay_queue` is `tokio_util::time::DelayQueue<u64>`, used inside a current-thread tokio
//! runtime with time enabled (its `insert` registers a tokio `Sleep`, so it needs that
//! context); `btreemap` is a `BTreeMap<(deadline, seq), u64>`. Every structure starts empty
//! (no pre-sized capacity); dropping it is not timed, but its memory is freed before the
//! next iteration (see `time_each`).
//!
//! Groups:
//!
//! - `timer_insert`: per iteration, a fresh structure and `N` inserts with deadlines
//!   1..=10_000 ms in a scattered order (`i * 7919 % 10_000 + 1`, a permutation). For
//!   `DelayQueue` the deadlines are `insert_at(base + d)` with `base` read once per
//!   iteration, so no clock read per insert (the wheel takes ticks and reads none either).
//! - `timer_insert_cancel`: as `timer_insert`, then cancel all `N` entries in insertion
//!   order (`Wheel::cancel(key)`, `DelayQueue::remove(&key)`, `BTreeMap::remove`).
//! - `timer_fire`: only the expiry step, after the deadline has passed, in steady state.
//!   Untimed: fill a structure with `N` entries all due at one deadline (1 ms), let it
//!   pass, take them all out (a warm-up round, so the structure's internal buffers have
//!   grown already, as in a long-lived timer), refill with `N` entries due at the next
//!   deadline (2 ms), let it pass. Timed: taking those `N` out into a pre-allocated `Vec`:
//!   `Wheel::advance(2, ..)`; `BTreeMap` pop-first while the deadline is `<= 2`;
//!   `DelayQueue`: `rt.block_on` a `poll_fn` calling `poll_expired` until `Ready(None)`.
//!   Without tokio's `test-util` there is no paused clock, so each `DelayQueue` fill is
//!   `insert_at(now + 1 ms)` (one deadline shared by the `N` entries; it lies a whole ms of
//!   the queue's wheel ahead of its elapsed time, so the entries sit in a level-0 wheel slot
//!   like the others, not in its "already expired" stack) and the bench thread then sleeps,
//!   untimed, until that deadline has passed in real time. To amortise the sleeps,
//!   structures are handled in chunks of 32, each expiry timed on its own (same scheme for
//!   all three). The `DelayQueue` time includes what `poll_expired` really costs: a tokio
//!   timer-driver turn to notice the passed deadline, and a fresh `Sleep` per entry taken.
//!   (Without the warm-up round, the wheel's first expiry of 10_000 entries costs about 3
//!   times as much: its sort buffer grows from empty.)
//! - `delayed_spawn_cancel`: end to end, a 2-worker weft pool and a 2-worker tokio
//!   multi-thread runtime, each built once. weft: `N` times
//!   `pool.task().delay(1 h).spawn(|| ())`, then `cancel()` every handle, drop them, and
//!   wait until `pool.metrics().timers_pending == 0` (the timer thread has taken every
//!   insert and cancel out of its inbox). tokio: `N` times
//!   `rt.spawn(async { sleep(1 h).await })`, `abort()` every handle, then await them all
//!   (each resolves as cancelled once a worker has dropped the task and its `Sleep`). So
//!   both are timed until all background work for the iteration is done.
//!
//! After the criterion groups, `main` measures the firing lateness of a delayed task on an
//! idle pool (not a criterion benchmark; printed on stdout): 500 samples, one at a time,
//! each a task due `2 ms` after it is spawned, `lateness = (when it starts) - deadline`,
//! reported as p50 / p99 / max in µs. weft: `pool.task().at(deadline).spawn(Instant::now)`
//! (what `.delay(2 ms)` does, with the deadline known exactly); tokio: a spawned task doing
//! `sleep_until(deadline)` then `Instant::now()`; both with 2 workers. Before each sample
//! the bench thread spins a varying 0..1 ms so deadlines fall at all phases of the 1 ms
//! tick. With `--test` (or under `cargo test`) it takes 50 samples; with `--list`, none.
//!
//! Run: `cargo bench --bench timer`; smoke test: `cargo bench --bench timer -- --test`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::hint::black_box;
use std::task::Poll;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tokio_util::time::DelayQueue;
use weft::__bench::Wheel;

/// Entries (or tasks) per iteration.
const N: usize = 10_000;

/// Structures set up before one untimed wait in `timer_fire`.
const FIRE_CHUNK: u64 = 32;

/// Workers of the pool and runtime in `delayed_spawn_cancel` and the lateness measure.
const WORKERS: usize = 2;

/// The delay of the tasks spawned and cancelled in `delayed_spawn_cancel`.
const HOUR: Duration = Duration::from_secs(3600);

/// The delay in the lateness measurement.
const LATENESS_DELAY: Duration = Duration::from_millis(2);

/// Deadlines in ms: a permutation of `1..=N` in scattered order.
fn deadlines() -> Vec<u64> {
    (0..N as u64).map(|i| i * 7_919 % N as u64 + 1).collect()
}

fn current_thread_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("build tokio runtime")
}

fn weft_pool() -> weft::Pool {
    weft::Pool::builder()
        .workers(WORKERS)
        .build()
        .expect("build weft pool")
}

fn tokio_multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_time()
        .build()
        .expect("build tokio runtime")
}

fn fill_wheel(deadlines: &[u64]) -> Wheel<u64> {
    let mut wheel = Wheel::default();
    for (i, &d) in deadlines.iter().enumerate() {
        wheel.insert(d, i as u64);
    }
    wheel
}

/// Needs a tokio runtime context.
fn fill_delay_queue(deadlines: &[u64]) -> DelayQueue<u64> {
    let mut queue = DelayQueue::new();
    let base = tokio::time::Instant::now();
    for (i, &d) in deadlines.iter().enumerate() {
        queue.insert_at(i as u64, base + Duration::from_millis(d));
    }
    queue
}

fn fill_btreemap(deadlines: &[u64]) -> BTreeMap<(u64, u64), u64> {
    let mut map = BTreeMap::new();
    for (i, &d) in deadlines.iter().enumerate() {
        map.insert((d, i as u64), i as u64);
    }
    map
}

fn timer_insert(c: &mut Criterion) {
    let deadlines = deadlines();
    let rt = current_thread_rt();
    let _ctx = rt.enter();

    let mut group = c.benchmark_group("timer_insert");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("weft_wheel", |b| {
        b.iter_custom(|iters| time_each(iters, || fill_wheel(black_box(&deadlines))))
    });
    group.bench_function("delay_queue", |b| {
        b.iter_custom(|iters| time_each(iters, || fill_delay_queue(black_box(&deadlines))))
    });
    group.bench_function("btreemap", |b| {
        b.iter_custom(|iters| time_each(iters, || fill_btreemap(black_box(&deadlines))))
    });
    group.finish();
}

fn timer_insert_cancel(c: &mut Criterion) {
    let deadlines = deadlines();
    let rt = current_thread_rt();
    let _ctx = rt.enter();

    let mut group = c.benchmark_group("timer_insert_cancel");
    group.throughput(Throughput::Elements(N as u64));

    let mut wheel_keys = Vec::with_capacity(N);
    group.bench_function("weft_wheel", |b| {
        b.iter_custom(|iters| {
            time_each(iters, || {
                let mut wheel = Wheel::default();
                wheel_keys.clear();
                for (i, &d) in black_box(&deadlines).iter().enumerate() {
                    wheel_keys.push(wheel.insert(d, i as u64));
                }
                let mut sum = 0;
                for &key in &wheel_keys {
                    sum += wheel.cancel(key).expect("live key");
                }
                assert!(wheel.is_empty());
                (wheel, sum)
            })
        })
    });

    let mut queue_keys = Vec::with_capacity(N);
    group.bench_function("delay_queue", |b| {
        b.iter_custom(|iters| {
            time_each(iters, || {
                let mut queue = DelayQueue::new();
                queue_keys.clear();
                let base = tokio::time::Instant::now();
                for (i, &d) in black_box(&deadlines).iter().enumerate() {
                    queue_keys.push(queue.insert_at(i as u64, base + Duration::from_millis(d)));
                }
                let mut sum = 0;
                for key in &queue_keys {
                    sum += queue.remove(key).into_inner();
                }
                assert!(queue.is_empty());
                (queue, sum)
            })
        })
    });

    group.bench_function("btreemap", |b| {
        b.iter_custom(|iters| {
            time_each(iters, || {
                let deadlines = black_box(&deadlines);
                let mut map = fill_btreemap(deadlines);
                let mut sum = 0;
                for (i, &d) in deadlines.iter().enumerate() {
                    sum += map.remove(&(d, i as u64)).expect("present");
                }
                assert!(map.is_empty());
                (map, sum)
            })
        })
    });
    group.finish();
}

/// Calls `routine` `iters` times and returns the time spent in it. What it returns drops
/// untimed, right away, so its memory goes back to the allocator before the next call (as
/// in a long-lived program). Criterion's `iter_with_large_drop` instead keeps a whole batch
/// of 10_000-entry structures alive, so every iteration grows its buffers in fresh memory
/// (page faults); that made insertion look about 5 times slower than this.
fn time_each<R>(iters: u64, mut routine: impl FnMut() -> R) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let out = black_box(routine());
        total += start.elapsed();
        drop(out);
    }
    total
}

/// For `iters` iterations, in chunks of [`FIRE_CHUNK`] states, all untimed but the last
/// step: `setup` each state and `refill` it (`N` entries due at its next deadline),
/// `wait` once, `expire` each (a warm-up round: the structure's buffers reach their
/// steady-state size), `refill` each again, `wait` once more, then `expire` each, timing
/// each call alone. Returns the total time of the timed `expire` calls.
fn time_expiry<S>(
    iters: u64,
    mut setup: impl FnMut() -> S,
    mut refill: impl FnMut(&mut S),
    mut wait: impl FnMut(),
    mut expire: impl FnMut(&mut S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(FIRE_CHUNK);
        left -= n;
        let mut states: Vec<S> = (0..n).map(|_| setup()).collect();
        for state in &mut states {
            refill(state);
        }
        wait();
        for state in &mut states {
            expire(state);
            refill(state);
        }
        wait();
        for state in &mut states {
            let start = Instant::now();
            expire(state);
            total += start.elapsed();
        }
    }
    total
}

fn timer_fire(c: &mut Criterion) {
    let rt = current_thread_rt();
    let _ctx = rt.enter();
    let mut out: Vec<u64> = Vec::with_capacity(N);

    let mut group = c.benchmark_group("timer_fire");
    group.throughput(Throughput::Elements(N as u64));

    // State: the wheel and the tick its entries are due at (1, then 2).
    group.bench_function("weft_wheel", |b| {
        b.iter_custom(|iters| {
            time_expiry(
                iters,
                || (Wheel::default(), 0),
                |(wheel, tick)| {
                    *tick += 1;
                    for i in 0..N as u64 {
                        wheel.insert(*tick, i);
                    }
                },
                || {},
                |(wheel, tick)| {
                    out.clear();
                    wheel.advance(black_box(*tick), &mut out);
                    assert_eq!(out.len(), N);
                },
            )
        })
    });

    group.bench_function("delay_queue", |b| {
        b.iter_custom(|iters| {
            // The latest deadline set since the last wait.
            let latest = Cell::new(tokio::time::Instant::now());
            time_expiry(
                iters,
                DelayQueue::new,
                |queue| {
                    // At or after the queue's own start (and past its last expiry), so the
                    // deadline rounds up to a whole ms of its wheel ahead of its elapsed
                    // time: never its "already expired" stack.
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(1);
                    for i in 0..N as u64 {
                        queue.insert_at(i, deadline);
                    }
                    latest.set(deadline);
                },
                || {
                    // The queue rounds deadlines up to its next whole ms: wait past that.
                    let until = latest.get() + Duration::from_millis(1);
                    let now = tokio::time::Instant::now();
                    if until > now {
                        std::thread::sleep(until - now);
                    }
                },
                |queue| {
                    out.clear();
                    rt.block_on(poll_fn(|cx| loop {
                        match queue.poll_expired(cx) {
                            Poll::Ready(Some(expired)) => out.push(expired.into_inner()),
                            Poll::Ready(None) => return Poll::Ready(()),
                            Poll::Pending => return Poll::Pending,
                        }
                    }));
                    assert_eq!(out.len(), N);
                },
            )
        })
    });

    // State: the map and the deadline its entries are due at (1, then 2).
    group.bench_function("btreemap", |b| {
        b.iter_custom(|iters| {
            time_expiry(
                iters,
                || (BTreeMap::<(u64, u64), u64>::new(), 0),
                |(map, tick)| {
                    *tick += 1;
                    for i in 0..N as u64 {
                        map.insert((*tick, i), i);
                    }
                },
                || {},
                |(map, tick)| {
                    out.clear();
                    let now = black_box(*tick);
                    while let Some(entry) = map.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        out.push(entry.remove());
                    }
                    assert_eq!(out.len(), N);
                },
            )
        })
    });
    group.finish();
}

/// Spins (yielding now and then) until `done`.
fn wait_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < 64 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

fn delayed_spawn_cancel(c: &mut Criterion) {
    let param = format!("w{WORKERS}");
    let pool = weft_pool();
    let rt = tokio_multi_thread();

    let mut group = c.benchmark_group("delayed_spawn_cancel");
    group.throughput(Throughput::Elements(N as u64));

    group.bench_function(BenchmarkId::new("weft", &param), |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..N)
                .map(|_| pool.task().delay(HOUR).spawn(|| ()))
                .collect();
            for h in &handles {
                assert!(h.cancel(), "a task due in an hour had started");
            }
            drop(handles);
            wait_until(|| pool.metrics().timers_pending == 0);
        })
    });

    group.bench_function(BenchmarkId::new("tokio", &param), |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..N)
                .map(|_| rt.spawn(async { tokio::time::sleep(HOUR).await }))
                .collect();
            for h in &handles {
                h.abort();
            }
            rt.block_on(async {
                for h in handles {
                    let r = h.await;
                    assert!(r.is_err_and(|e| e.is_cancelled()));
                }
            });
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

/// Holds the generated group function, which is `pub`: in a private module it is not
/// reachable from outside, so the crate's `missing_docs = "deny"` does not apply to it.
mod group {
    use super::{config, delayed_spawn_cancel, timer_fire, timer_insert, timer_insert_cancel};

    criterion::criterion_group! {
        name = benches;
        config = config();
        targets = timer_insert, timer_insert_cancel, timer_fire, delayed_spawn_cancel
    }
}

/// Takes `samples` lateness samples: before each, spins a varying 0..1 ms; then calls
/// `run(deadline)` with `deadline = now + LATENESS_DELAY`, which runs a task due then and
/// returns when it started. Returns the lateness of each (sorted) and how many started
/// early (counted as zero lateness).
fn lateness_samples(
    samples: usize,
    mut run: impl FnMut(Instant) -> Instant,
) -> (Vec<Duration>, usize) {
    // Warm up: threads started, caches and allocations in place.
    for _ in 0..5 {
        run(Instant::now() + LATENESS_DELAY);
    }
    let mut late = Vec::with_capacity(samples);
    let mut early = 0;
    for i in 0..samples {
        // 0..1 ms in steps of 1 µs, scattered: covers every phase of the 1 ms tick.
        let offset = Duration::from_micros((i as u64 * 379) % 1000);
        let spin_start = Instant::now();
        while spin_start.elapsed() < offset {
            std::hint::spin_loop();
        }
        let deadline = Instant::now() + LATENESS_DELAY;
        let started = run(deadline);
        if started < deadline {
            early += 1;
        }
        late.push(started.saturating_duration_since(deadline));
    }
    late.sort_unstable();
    (late, early)
}

fn print_lateness(label: &str, (late, early): (Vec<Duration>, usize)) {
    let n = late.len();
    // Nearest-rank percentiles.
    let pct = |p: usize| late[(n * p).div_ceil(100).max(1) - 1];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let early = if early > 0 {
        format!(" ({early} started EARLY, counted as 0)")
    } else {
        String::new()
    };
    println!(
        "{label} lateness ({} ms delay, {n} samples): p50 = {:.1} µs, p99 = {:.1} µs, max = {:.1} µs{early}",
        LATENESS_DELAY.as_millis(),
        us(pct(50)),
        us(pct(99)),
        us(late[n - 1]),
    );
}

/// Firing lateness of one delayed task at a time on an idle pool / runtime; module docs.
fn lateness(samples: usize) {
    let pool = weft_pool();
    let weft = lateness_samples(samples, |deadline| {
        pool.task()
            .at(deadline)
            .spawn(Instant::now)
            .join()
            .expect("delayed task")
    });
    drop(pool);

    let rt = tokio_multi_thread();
    let tokio = lateness_samples(samples, |deadline| {
        rt.block_on(rt.spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            Instant::now()
        }))
        .expect("tokio task")
    });
    drop(rt);

    print_lateness(&format!("weft delayed-task (w{WORKERS})"), weft);
    print_lateness(&format!("tokio sleep_until task (w{WORKERS})"), tokio);
}

fn main() {
    group::benches();
    Criterion::default().configure_from_args().final_summary();

    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        return;
    }
    // As criterion decides: `--test`, or no `--bench` (as under `cargo test`), is test mode.
    let quick = has("--test") || !has("--bench");
    lateness(if quick { 50 } else { 500 });
}
