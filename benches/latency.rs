//! Latency benchmarks: weft against rayon and tokio (and a raw `park`/`unpark` baseline).
//!
//! A custom `main` with hand-written measurement loops (not criterion): these measure
//! single events (one wake-up, one task start), whose distribution matters more than a
//! mean. Every pool and runtime is built with `BENCH_WORKERS` workers (default 2), once per
//! section, and dropped before the next section. Latencies are printed as median and p99
//! (nearest rank) in µs.
//!
//! Sections:
//!
//! - `wake_up`: the pool sits idle for 10 ms (`std::thread::sleep`, the benchmark's idle
//!   period), then the benchmark thread spawns one task. Latency = the `Instant` the task
//!   records as its first action minus the `Instant` taken right before the spawn call;
//!   the task sends it back over a `std::sync::mpsc` channel. 500 samples per library:
//!   - `weft`: `pool.spawn`; `rayon`: `ThreadPool::spawn`; `tokio`: `rt.spawn` on a
//!     multi-thread runtime;
//!   - `raw park/unpark`: a dedicated thread blocked in `std::thread::park()`, woken with
//!     `Thread::unpark` (latency = unpark call to the thread running again): the floor set
//!     by the OS.
//!   - For weft it also checks that the workers really slept before each sample: it counts
//!     the samples for which `pool.metrics().parks`, read right before the spawn, grew
//!     since the same reading for the previous sample (the worker woken by that sample
//!     parked again), and, stricter, those for which `parks - unparks` equals the worker
//!     count right before the spawn (every worker parked and not woken since).
//! - `priority`: start latency (start - submit) of 200 urgent tasks, submitted one at a
//!   time: the benchmark thread waits for each to start, then sleeps 200 µs before the
//!   next.
//!   - `weft High, flooded`: the pool is flooded with `Low` tasks that each busy-spin for
//!     about 20 µs of CPU work: a fixed number of loop iterations, calibrated at startup.
//!     (Not a wall-clock spin: a worker preempted mid-task by the OS would find its
//!     deadline passed on resuming and pick the urgent task at once. On a 2-core machine,
//!     where the benchmark thread's wake-up preempts a worker before each submit, that
//!     made flooded latencies look lower than idle ones.) The flood is kept topped up
//!     (back to 4000 queued whenever fewer than 2000 are left, checked before each
//!     sample). Samples whose flood was non-empty both at submit and right after the
//!     start are counted and reported.
//!   - `weft High, idle pool`: the same without the flood (this mostly measures a wake-up,
//!     since workers park between samples). The flooded/idle ratio is printed.
//!   - `rayon urgent pool, main flooded`: what a rayon user would do instead (rayon has no
//!     priorities): the same flood on a `BENCH_WORKERS`-thread rayon pool, and the urgent
//!     tasks on a separate 1-thread rayon pool. Also printed with the main pool idle.
//! - `idle_cpu`: after a burst of 100_000 tiny tasks (spawned from the benchmark thread,
//!   then all awaited), the CPU time the pool's threads use during the next second, read
//!   from `/proc/self/task/*/stat` (`utime + stime`, in clock ticks, USER_HZ = 100 on Linux,
//!   so 1 tick = 10 ms) for the threads whose name starts with `idlebench` (weft, workers
//!   and timer thread), `idlerayon` (rayon) or `idletokio` (tokio). Target: at most 1 tick.
//!   Linux only; elsewhere it prints "skipped".
//!
//! Run: `cargo bench --bench latency` (about 30 s). Smoke test (tiny sample counts, for
//! checking that it runs; its numbers are not results): `cargo bench --bench latency --
//! --test`. Scaling: `BENCH_WORKERS=4 cargo bench --bench latency`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use weft::Priority;

/// Sample counts and sizes; the smoke mode (`--test`) shrinks them.
struct Params {
    smoke: bool,
    /// Wake-up samples per library.
    wake_samples: usize,
    /// Urgent tasks per priority measurement.
    prio_samples: usize,
    /// The flood is topped back up to this many queued low tasks...
    flood_full: usize,
    /// ...whenever fewer than this many are left.
    flood_refill_below: usize,
    /// Tasks in the `idle_cpu` burst.
    burst: usize,
    /// `burn` iterations that take about `LOW_SPIN` (calibrated at startup).
    low_iters: u64,
    /// The `idle_cpu` observation window.
    idle_window: Duration,
}

impl Params {
    fn new(smoke: bool) -> Params {
        if smoke {
            Params {
                smoke,
                wake_samples: 20,
                prio_samples: 20,
                flood_full: 2000,
                flood_refill_below: 1000,
                burst: 10_000,
                low_iters: calibrate(LOW_SPIN),
                idle_window: Duration::from_millis(200),
            }
        } else {
            Params {
                smoke,
                wake_samples: 500,
                prio_samples: 200,
                flood_full: 4000,
                flood_refill_below: 2000,
                burst: 100_000,
                low_iters: calibrate(LOW_SPIN),
                idle_window: Duration::from_secs(1),
            }
        }
    }
}

/// How long the pool sits idle before each wake-up sample.
const IDLE: Duration = Duration::from_millis(10);

/// About how much CPU work each flood task does.
const LOW_SPIN: Duration = Duration::from_micros(20);

/// The pause between two urgent tasks (after the previous one started).
const URGENT_GAP: Duration = Duration::from_micros(200);

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

fn rayon_pool(workers: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .expect("build rayon pool")
}

fn tokio_rt(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("build tokio runtime")
}

/// Median and p99 (nearest rank) of `samples`, in µs.
fn median_p99(samples: &mut [Duration]) -> (f64, f64) {
    assert!(!samples.is_empty());
    samples.sort_unstable();
    let rank = |p: f64| {
        let r = (p * samples.len() as f64).ceil() as usize;
        samples[r.clamp(1, samples.len()) - 1]
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(rank(0.5)), us(rank(0.99)))
}

/// Prints one latency line and returns (median, p99) in µs.
fn report(label: &str, samples: &mut [Duration]) -> (f64, f64) {
    let n = samples.len();
    let (p50, p99) = median_p99(samples);
    println!("  {label:<40} median {p50:>9.1} µs   p99 {p99:>9.1} µs   (n = {n})");
    (p50, p99)
}

/// `iters` rounds of a dependent integer loop: CPU work that `black_box` keeps from being
/// optimized out.
fn burn(iters: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15_u64);
    for _ in 0..iters {
        x = black_box(x.rotate_left(5) ^ 0x2545_f491_4f6c_dd1d);
    }
    x
}

/// How many `burn` iterations take about `d` on this machine: the fastest of a few trials
/// (the least disturbed by other load).
fn calibrate(d: Duration) -> u64 {
    const PROBE: u64 = 1_000_000;
    let best = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            black_box(burn(PROBE));
            t0.elapsed()
        })
        .min()
        .unwrap();
    ((PROBE as f64 * d.as_secs_f64() / best.as_secs_f64()) as u64).max(1)
}

// ---------------------------------------------------------------------------------------
// wake_up
// ---------------------------------------------------------------------------------------

/// Wake-up samples for weft, plus (samples whose `parks` grew since the previous sample's
/// spawn, samples with every worker parked right before the spawn).
fn wake_weft(w: usize, samples: usize) -> (Vec<Duration>, usize, usize) {
    let pool = weft_pool(w);
    let (tx, rx) = mpsc::channel::<Instant>();
    // The reading before the previous spawn (here: before a warm-up spawn).
    let mut prev_parks = pool.metrics().parks;
    pool.spawn(|| ()).join().unwrap();
    let (mut parked_since_prev, mut all_parked) = (0, 0);
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        thread::sleep(IDLE);
        let m = pool.metrics();
        if m.parks > prev_parks {
            parked_since_prev += 1;
        }
        prev_parks = m.parks;
        if m.parks.wrapping_sub(m.unparks) == w as u64 {
            all_parked += 1;
        }
        let tx = tx.clone();
        let t0 = Instant::now();
        let h = pool.spawn(move || {
            let started = Instant::now();
            tx.send(started).unwrap();
        });
        let started = rx.recv().unwrap();
        out.push(started.saturating_duration_since(t0));
        h.join().unwrap();
    }
    (out, parked_since_prev, all_parked)
}

fn wake_rayon(w: usize, samples: usize) -> Vec<Duration> {
    let pool = rayon_pool(w);
    let (tx, rx) = mpsc::channel::<Instant>();
    pool.install(|| ());
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        thread::sleep(IDLE);
        let tx = tx.clone();
        let t0 = Instant::now();
        pool.spawn(move || {
            let started = Instant::now();
            tx.send(started).unwrap();
        });
        let started = rx.recv().unwrap();
        out.push(started.saturating_duration_since(t0));
    }
    out
}

fn wake_tokio(w: usize, samples: usize) -> Vec<Duration> {
    let rt = tokio_rt(w);
    let (tx, rx) = mpsc::channel::<Instant>();
    rt.block_on(rt.spawn(async {})).unwrap();
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        thread::sleep(IDLE);
        let tx = tx.clone();
        let t0 = Instant::now();
        let h = rt.spawn(async move {
            let started = Instant::now();
            tx.send(started).unwrap();
        });
        let started = rx.recv().unwrap();
        out.push(started.saturating_duration_since(t0));
        drop(h);
    }
    out
}

/// A dedicated thread parked in `std::thread::park`, woken by `Thread::unpark`.
fn wake_raw(samples: usize) -> Vec<Duration> {
    let (tx, rx) = mpsc::channel::<Instant>();
    let requested = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (requested, stop) = (requested.clone(), stop.clone());
        thread::spawn(move || loop {
            thread::park();
            let woke = Instant::now();
            if stop.load(Ordering::Acquire) {
                break;
            }
            // A spurious wake-up (no request) is ignored.
            if requested.swap(false, Ordering::AcqRel) {
                tx.send(woke).unwrap();
            }
        })
    };
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        thread::sleep(IDLE);
        requested.store(true, Ordering::Release);
        let t0 = Instant::now();
        waiter.thread().unpark();
        let woke = rx.recv().unwrap();
        out.push(woke.saturating_duration_since(t0));
    }
    stop.store(true, Ordering::Release);
    waiter.thread().unpark();
    waiter.join().unwrap();
    out
}

fn wake_up(p: &Params, w: usize) {
    println!(
        "wake_up: idle {} ms, then one spawn from the benchmark thread; {} samples each, {w} workers",
        IDLE.as_millis(),
        p.wake_samples
    );
    let (mut weft, parked_since_prev, all_parked) = wake_weft(w, p.wake_samples);
    report(&format!("weft pool.spawn (w{w})"), &mut weft);
    println!(
        "    weft sleep check: parks grew since the previous spawn in {parked_since_prev}/{n}; \
         all {w} workers parked (parks - unparks = {w}) right before the spawn in {all_parked}/{n}",
        n = p.wake_samples
    );
    report(
        &format!("rayon pool.spawn (w{w})"),
        &mut wake_rayon(w, p.wake_samples),
    );
    report(
        &format!("tokio rt.spawn (w{w})"),
        &mut wake_tokio(w, p.wake_samples),
    );
    report("raw park/unpark (1 thread)", &mut wake_raw(p.wake_samples));
}

// ---------------------------------------------------------------------------------------
// priority
// ---------------------------------------------------------------------------------------

/// Tops the weft flood back up to `p.flood_full` queued low tasks when it fell below
/// `p.flood_refill_below`.
fn weft_top_up(pool: &weft::Pool, p: &Params, stop: &Arc<AtomicBool>) {
    let queued = pool.metrics().queued_low as usize;
    if queued < p.flood_refill_below {
        for _ in queued..p.flood_full {
            let stop = stop.clone();
            let iters = p.low_iters;
            drop(pool.task().priority(Priority::Low).spawn(move || {
                if !stop.load(Ordering::Relaxed) {
                    black_box(burn(iters));
                }
            }));
        }
    }
}

/// High-lane start latencies on `pool`, flooded or not; also the number of samples whose
/// flood was non-empty at submit and after the start.
fn weft_high(w: usize, p: &Params, flood: bool) -> (Vec<Duration>, usize) {
    let pool = weft_pool(w);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Instant>();
    pool.spawn(|| ()).join().unwrap();
    let mut out = Vec::with_capacity(p.prio_samples);
    let mut flooded = 0;
    if flood {
        weft_top_up(&pool, p, &stop);
        // Let the workers get going on the flood.
        thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..p.prio_samples {
        if flood {
            weft_top_up(&pool, p, &stop);
        }
        let before = pool.metrics().queued_low;
        let tx = tx.clone();
        let t0 = Instant::now();
        let h = pool.task().priority(Priority::High).spawn(move || {
            let started = Instant::now();
            tx.send(started).unwrap();
        });
        let started = rx.recv().unwrap();
        let after = pool.metrics().queued_low;
        out.push(started.saturating_duration_since(t0));
        if before > 0 && after > 0 {
            flooded += 1;
        }
        drop(h);
        thread::sleep(URGENT_GAP);
    }
    // The rest of the flood returns at once; dropping the pool runs it out.
    stop.store(true, Ordering::Relaxed);
    drop(pool);
    (out, flooded)
}

/// Tops the rayon flood up; `queued` counts flood tasks submitted and not yet started.
fn rayon_top_up(
    pool: &rayon::ThreadPool,
    p: &Params,
    stop: &Arc<AtomicBool>,
    queued: &Arc<AtomicUsize>,
) {
    let now = queued.load(Ordering::Relaxed);
    if now < p.flood_refill_below {
        for _ in now..p.flood_full {
            let (stop, queued) = (stop.clone(), queued.clone());
            let iters = p.low_iters;
            queued.fetch_add(1, Ordering::Relaxed);
            pool.spawn(move || {
                queued.fetch_sub(1, Ordering::Relaxed);
                if !stop.load(Ordering::Relaxed) {
                    black_box(burn(iters));
                }
            });
        }
    }
}

/// Start latencies on a separate 1-thread rayon "urgent" pool, while a `w`-thread rayon
/// pool is flooded (or idle); also the number of samples with a non-empty flood.
fn rayon_urgent(w: usize, p: &Params, flood: bool) -> (Vec<Duration>, usize) {
    let main = rayon_pool(w);
    let urgent = rayon_pool(1);
    let stop = Arc::new(AtomicBool::new(false));
    let queued = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<Instant>();
    main.install(|| ());
    urgent.install(|| ());
    let mut out = Vec::with_capacity(p.prio_samples);
    let mut flooded = 0;
    if flood {
        rayon_top_up(&main, p, &stop, &queued);
        thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..p.prio_samples {
        if flood {
            rayon_top_up(&main, p, &stop, &queued);
        }
        let before = queued.load(Ordering::Relaxed);
        let tx = tx.clone();
        let t0 = Instant::now();
        urgent.spawn(move || {
            let started = Instant::now();
            tx.send(started).unwrap();
        });
        let started = rx.recv().unwrap();
        let after = queued.load(Ordering::Relaxed);
        out.push(started.saturating_duration_since(t0));
        if before > 0 && after > 0 {
            flooded += 1;
        }
        thread::sleep(URGENT_GAP);
    }
    stop.store(true, Ordering::Relaxed);
    // rayon's pool drop does not wait for queued work: wait for the flood to run out
    // (each remaining task returns at once) so it does not overlap the next section.
    while queued.load(Ordering::Relaxed) > 0 {
        thread::sleep(Duration::from_millis(1));
    }
    (out, flooded)
}

fn priority(p: &Params, w: usize) {
    println!(
        "priority: {} urgent tasks one at a time ({} µs gap after each start); flood of \
         low tasks of ~{} µs CPU work ({} loop iterations) kept at {}..{} queued; {w} workers",
        p.prio_samples,
        URGENT_GAP.as_micros(),
        LOW_SPIN.as_micros(),
        p.low_iters,
        p.flood_refill_below,
        p.flood_full
    );
    let n = p.prio_samples;
    let (mut flooded, flooded_ok) = weft_high(w, p, true);
    let (f50, f99) = report(&format!("weft High, flooded (w{w})"), &mut flooded);
    println!("    flood non-empty at submit and after start in {flooded_ok}/{n} samples");
    let (mut idle, _) = weft_high(w, p, false);
    let (i50, i99) = report(&format!("weft High, idle pool (w{w})"), &mut idle);
    println!(
        "    weft flooded / idle: median {:.2}x, p99 {:.2}x",
        f50 / i50,
        f99 / i99
    );
    let (mut r_flooded, r_ok) = rayon_urgent(w, p, true);
    report(
        &format!("rayon urgent pool (1), main (w{w}) flooded"),
        &mut r_flooded,
    );
    println!("    flood non-empty at submit and after start in {r_ok}/{n} samples");
    let (mut r_idle, _) = rayon_urgent(w, p, false);
    report(
        &format!("rayon urgent pool (1), main (w{w}) idle"),
        &mut r_idle,
    );
}

// ---------------------------------------------------------------------------------------
// idle_cpu
// ---------------------------------------------------------------------------------------

/// `utime + stime` (clock ticks) summed over this process's threads whose name starts with
/// `prefix`, and how many such threads there were.
#[cfg(target_os = "linux")]
fn thread_ticks(prefix: &str) -> (u64, usize) {
    let mut ticks = 0;
    let mut threads = 0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    for entry in dir.flatten() {
        // A thread may exit between the listing and the read: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ppid ...": comm may hold spaces or parens, so split at the
        // last ')'. After it, field 3 (state) comes first: utime (14) and stime (15) are
        // at indices 11 and 12.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(utime), Some(stime)) = (field(11), field(12)) {
            ticks += utime + stime;
            threads += 1;
        }
    }
    (ticks, threads)
}

#[cfg(target_os = "linux")]
fn idle_ticks_after(p: &Params, label: &str, prefix: &str) {
    let (t0, threads) = thread_ticks(prefix);
    thread::sleep(p.idle_window);
    let (t1, _) = thread_ticks(prefix);
    let used = t1.saturating_sub(t0);
    let verdict = if p.smoke {
        "smoke window, no target".to_owned()
    } else if used <= 1 {
        "target <= 1: ok".to_owned()
    } else {
        "target <= 1: MISSED".to_owned()
    };
    println!(
        "  {label:<40} {used:>3} ticks in {} ms over {threads} threads `{prefix}*` ({verdict})",
        p.idle_window.as_millis()
    );
}

#[cfg(target_os = "linux")]
fn idle_cpu(p: &Params, w: usize) {
    println!(
        "idle_cpu: CPU ticks (utime+stime, 1 tick = 10 ms) used by the pool's threads in the \
         {} ms right after a burst of {} tasks; {w} workers",
        p.idle_window.as_millis(),
        p.burst
    );
    {
        let pool = weft::Pool::builder()
            .workers(w)
            .thread_name(|i| format!("idlebench-{i}"))
            .build()
            .expect("build weft pool");
        let handles: Vec<_> = (0..p.burst).map(|_| pool.spawn(|| ())).collect();
        for h in handles {
            h.join().unwrap();
        }
        idle_ticks_after(p, &format!("weft (w{w}, + timer thread)"), "idlebench");
    }
    {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(w)
            .thread_name(|i| format!("idlerayon-{i}"))
            .build()
            .expect("build rayon pool");
        let remaining = Arc::new(AtomicUsize::new(p.burst));
        for _ in 0..p.burst {
            let remaining = remaining.clone();
            pool.spawn(move || {
                remaining.fetch_sub(1, Ordering::Release);
            });
        }
        while remaining.load(Ordering::Acquire) != 0 {
            thread::yield_now();
        }
        idle_ticks_after(p, &format!("rayon (w{w})"), "idlerayon");
    }
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(w)
            .thread_name("idletokio")
            .build()
            .expect("build tokio runtime");
        let handles: Vec<_> = (0..p.burst).map(|_| rt.spawn(async {})).collect();
        rt.block_on(async {
            for h in handles {
                h.await.unwrap();
            }
        });
        idle_ticks_after(p, &format!("tokio (w{w})"), "idletokio");
    }
}

#[cfg(not(target_os = "linux"))]
fn idle_cpu(_p: &Params, _w: usize) {
    println!("idle_cpu: skipped (needs Linux /proc/self/task/*/stat)");
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let p = Params::new(smoke);
    let w = workers();
    if smoke {
        println!("latency: SMOKE MODE (--test): tiny sample counts; these numbers are not results");
    }
    wake_up(&p, w);
    println!();
    priority(&p, w);
    println!();
    idle_cpu(&p, w);
}
