//! A tour of weft on the built-in global pool: spawning, priorities, fork-join,
//! cancellation, panics, delayed, periodic and retried tasks, and metrics. Run it with
//! `cargo run --release --example demo`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft::{Pool, Priority, RetryPolicy};

fn busy(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    if n <= 20 {
        return fib(n - 1) + fib(n - 2);
    }
    let (a, b) = weft::join(|| fib(n - 1), || fib(n - 2));
    a + b
}

fn main() {
    let pool = Pool::global();
    println!(
        "weft demo on the global pool: {} workers",
        pool.num_workers()
    );

    // 1. Spawning: each task is one allocation; handles return values.
    let t = Instant::now();
    let handles: Vec<_> = (0..100_000u64)
        .map(|i| weft::spawn(move || i * i))
        .collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    println!(
        "spawned and joined 100000 tasks in {:?}: sum of squares = {sum}",
        t.elapsed()
    );

    // 2. Priorities: 2000 low tasks of 20 µs queue first, then 20 high tasks. The high ones
    //    start long before the flood drains; low work still trickles through meanwhile.
    let started = Arc::new(AtomicUsize::new(0));
    let order = |started: &Arc<AtomicUsize>| {
        let s = started.clone();
        move || {
            let pos = s.fetch_add(1, Ordering::SeqCst);
            busy(Duration::from_micros(20));
            pos
        }
    };
    let low: Vec<_> = (0..2000)
        .map(|_| weft::task().priority(Priority::Low).spawn(order(&started)))
        .collect();
    let high: Vec<_> = (0..20)
        .map(|_| weft::task().priority(Priority::High).spawn(order(&started)))
        .collect();
    let high_pos: Vec<usize> = high.into_iter().map(|h| h.join().unwrap()).collect();
    let low_pos: Vec<usize> = low.into_iter().map(|h| h.join().unwrap()).collect();
    println!(
        "priorities: 20 high tasks submitted after 2000 low ones started at positions {}..={} \
         (low tasks: {}..={})",
        high_pos.iter().min().unwrap(),
        high_pos.iter().max().unwrap(),
        low_pos.iter().min().unwrap(),
        low_pos.iter().max().unwrap(),
    );

    // 3. Fork-join: rayon-style join, no allocation per split.
    let t = Instant::now();
    let f = pool.install(|| fib(32));
    let par = t.elapsed();
    let t = Instant::now();
    let g = fib_seq(32);
    let seq = t.elapsed();
    assert_eq!(f, g);
    println!("fork-join: fib(32) = {f} in {par:?} (sequential {seq:?})");

    // 4. Cancellation: tasks still queued behind a flood can be cancelled; they never run.
    let ran = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..pool.num_workers() * 4)
        .map(|_| weft::spawn(|| busy(Duration::from_millis(2))))
        .collect();
    let victims: Vec<_> = (0..100)
        .map(|_| {
            let r = ran.clone();
            weft::spawn(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let cancelled = victims.iter().filter(|h| h.cancel()).count();
    for h in flood {
        h.join().unwrap();
    }
    let outcomes: Vec<_> = victims.into_iter().map(|h| h.join()).collect();
    let n_cancelled = outcomes
        .iter()
        .filter(|r| matches!(r, Err(e) if e.is_cancelled()))
        .count();
    assert_eq!(n_cancelled, cancelled);
    assert_eq!(ran.load(Ordering::SeqCst), 100 - cancelled);
    println!(
        "cancellation: cancelled {cancelled} of 100 queued tasks; the other {} ran",
        100 - cancelled
    );

    // 5. Panics are caught and reported; the worker lives on. (The default panic hook would
    //    print a backtrace for the deliberate panic; keep the demo's output short.)
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let err = weft::spawn(|| -> u32 { panic!("a task failed") })
        .join()
        .unwrap_err();
    std::panic::set_hook(default_hook);
    println!(
        "panic: the handle reported \"{err}\"; the pool carries on: {}",
        weft::spawn(|| "ok").join().unwrap()
    );

    // 6. Time: a delayed task, a periodic schedule and a retried task, on the timing wheel.
    let t = Instant::now();
    let delayed = weft::task()
        .delay(Duration::from_millis(25))
        .spawn(move || t.elapsed());
    println!(
        "delayed: asked for 25 ms, started after {:?}",
        delayed.join().unwrap()
    );

    let ticks = Arc::new(AtomicUsize::new(0));
    let k = ticks.clone();
    let every = weft::task().every(Duration::from_millis(5), move || {
        k.fetch_add(1, Ordering::SeqCst);
    });
    let t = Instant::now();
    while every.runs() < 10 {
        std::thread::yield_now();
    }
    every.cancel();
    println!(
        "periodic: 10 runs every 5 ms took {:?} ({} missed), then cancelled",
        t.elapsed(),
        every.missed()
    );

    let mut calls = 0;
    let t = Instant::now();
    let flaky = weft::task()
        .retry(RetryPolicy::exponential(Duration::from_millis(2)).max_attempts(5))
        .spawn(move || {
            calls += 1;
            if calls < 4 {
                Err(format!("attempt {calls}: service unavailable"))
            } else {
                Ok(format!("answered on attempt {calls}"))
            }
        });
    while !flaky.is_finished() {
        std::thread::yield_now();
    }
    let attempts = flaky.attempts();
    println!(
        "retry: {:?} after {attempts} attempts and {:?} of backoff (2 + 4 + 8 ms)",
        flaky.join().unwrap(),
        t.elapsed()
    );

    // 7. Metrics: lifetime totals summed from per-worker counters.
    println!("metrics: {:#?}", pool.metrics());
}

fn fib_seq(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib_seq(n - 1) + fib_seq(n - 2)
    }
}
