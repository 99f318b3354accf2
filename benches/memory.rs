//! Memory benchmark: resident bytes per queued (not yet run) task, weft against rayon and
//! tokio.
//!
//! A custom `main` (not criterion). For each variant, a 1-worker pool whose only worker is
//! blocked (it runs a task that waits on a `std::sync::mpsc` channel; the measurement
//! starts once that task has started), then the benchmark thread queues 1_000_000 empty
//! tasks. Bytes per task = (RSS after queuing - RSS before) / tasks, with RSS read from
//! `VmRSS` in `/proc/self/status` (kB granularity). Then the worker is released, the queue
//! is drained, and the drain time and the RSS after the drain are printed too (for
//! information: freed memory need not go back to the OS).
//!
//! Variants (each measured in a fresh child process, the same binary re-run with
//! `--only <variant>`, so that one variant's heap does not shape the next one's RSS):
//!
//! - `weft`: `pool.spawn(|| ())`, the `JoinHandle` dropped at once (rayon's `spawn` has no
//!   handle, so this is the like-for-like queue cost).
//! - `weft_handles`: the same with every `JoinHandle` kept, pushed into a `Vec` allocated
//!   (with full capacity, so it never grows) before the first RSS reading; its pages are
//!   touched while queuing, so the figure includes one `size_of::<JoinHandle<()>>()` slot
//!   per task, which is also printed subtracted.
//! - `rayon`: `ThreadPool::spawn(|| ())` on a 1-thread pool.
//! - `tokio`: `rt.spawn(async {})` on a multi-thread runtime with 1 worker (blocked in a
//!   std `recv` inside a task), the `JoinHandle` dropped at once.
//!
//! Linux only (`/proc`); elsewhere it prints "skipped".
//!
//! Run: `cargo bench --bench memory`. Smoke test (10_000 tasks, for checking that it runs;
//! at that size the kB granularity of RSS dominates, so its numbers are not results):
//! `cargo bench --bench memory -- --test`. One variant in this process:
//! `cargo bench --bench memory -- --only weft` (or `weft_handles`, `rayon`, `tokio`).

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Tasks queued per variant (full run).
const TASKS: usize = 1_000_000;

/// Tasks queued per variant in the smoke mode (`--test`).
const SMOKE_TASKS: usize = 10_000;

/// The variants, in the order they run.
const VARIANTS: [&str; 4] = ["weft", "weft_handles", "rayon", "tokio"];

/// This process's resident set size in bytes (`VmRSS`), or `None` if unreadable.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn rss() -> u64 {
    rss_bytes().expect("read VmRSS from /proc/self/status")
}

/// What one variant measured.
struct Measured {
    before: u64,
    after: u64,
    drained: u64,
    queue_time: Duration,
    drain_time: Duration,
    /// Bytes per task that are the caller's handle `Vec`, not the queue (0 if none).
    vec_slot: usize,
}

/// Blocks the only worker of a pool: returns the task body, a sender that releases it,
/// and a receiver that reports when it has started.
fn blocker() -> (
    impl FnOnce() + Send + 'static,
    mpsc::Sender<()>,
    mpsc::Receiver<()>,
) {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let body = move || {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    };
    (body, release_tx, started_rx)
}

fn measure_weft(tasks: usize, keep_handles: bool) -> Measured {
    let pool = weft::Pool::builder()
        .workers(1)
        .build()
        .expect("build weft pool");
    let (body, release, started) = blocker();
    let blocked = pool.spawn(body);
    started.recv().unwrap();
    let mut handles = Vec::with_capacity(if keep_handles { tasks } else { 0 });
    let before = rss();
    let t0 = Instant::now();
    if keep_handles {
        for _ in 0..tasks {
            handles.push(pool.spawn(|| ()));
        }
    } else {
        for _ in 0..tasks {
            drop(pool.spawn(|| ()));
        }
    }
    let queue_time = t0.elapsed();
    let after = rss();
    assert!(pool.metrics().queued() >= tasks as u64);
    let t1 = Instant::now();
    release.send(()).unwrap();
    blocked.join().unwrap();
    for h in handles {
        h.join().unwrap();
    }
    // Runs whatever is still queued, then joins the worker.
    pool.shutdown();
    let drain_time = t1.elapsed();
    assert_eq!(pool.metrics().completed, tasks as u64 + 1);
    let vec_slot = if keep_handles {
        std::mem::size_of::<weft::JoinHandle<()>>()
    } else {
        0
    };
    Measured {
        before,
        after,
        drained: rss(),
        queue_time,
        drain_time,
        vec_slot,
    }
}

fn measure_rayon(tasks: usize) -> Measured {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("build rayon pool");
    let (body, release, started) = blocker();
    pool.spawn(body);
    started.recv().unwrap();
    let before = rss();
    let t0 = Instant::now();
    for _ in 0..tasks {
        pool.spawn(|| ());
    }
    let queue_time = t0.elapsed();
    let after = rss();
    let t1 = Instant::now();
    release.send(()).unwrap();
    // One worker takes external spawns in FIFO order: once this marker ran, all did.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    pool.spawn(move || done_tx.send(()).unwrap());
    done_rx.recv().unwrap();
    let drain_time = t1.elapsed();
    Measured {
        before,
        after,
        drained: rss(),
        queue_time,
        drain_time,
        vec_slot: 0,
    }
}

fn measure_tokio(tasks: usize) -> Measured {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("build tokio runtime");
    let (body, release, started) = blocker();
    // Blocking the worker thread inside a task is the point here.
    let blocked = rt.spawn(async move { body() });
    started.recv().unwrap();
    let before = rss();
    let t0 = Instant::now();
    for _ in 0..tasks {
        drop(rt.spawn(async {}));
    }
    let queue_time = t0.elapsed();
    let after = rss();
    let t1 = Instant::now();
    release.send(()).unwrap();
    rt.block_on(blocked).unwrap();
    // Spawned from outside, tasks go through the injection queue in FIFO order, and one
    // worker runs them: once this marker ran, all did.
    rt.block_on(rt.spawn(async {})).unwrap();
    let drain_time = t1.elapsed();
    Measured {
        before,
        after,
        drained: rss(),
        queue_time,
        drain_time,
        vec_slot: 0,
    }
}

/// Measures one variant in this process and prints its line.
fn run_one(variant: &str, tasks: usize) {
    let m = match variant {
        "weft" => measure_weft(tasks, false),
        "weft_handles" => measure_weft(tasks, true),
        "rayon" => measure_rayon(tasks),
        "tokio" => measure_tokio(tasks),
        other => panic!("unknown variant {other:?}; expected one of {VARIANTS:?}"),
    };
    let kib = |b: u64| b as f64 / 1024.0;
    let delta = m.after.saturating_sub(m.before);
    let per_task = delta as f64 / tasks as f64;
    println!(
        "  {variant:<13} {per_task:>7.1} B/task   (RSS {:.0} -> {:.0} KiB, +{:.0} KiB for {tasks} tasks; \
         queued in {:.1} ms, drained in {:.1} ms, RSS after drain {:.0} KiB)",
        kib(m.before),
        kib(m.after),
        kib(delta),
        m.queue_time.as_secs_f64() * 1e3,
        m.drain_time.as_secs_f64() * 1e3,
        kib(m.drained),
    );
    if m.vec_slot > 0 {
        println!(
            "  {:<13} {:>7.1} B/task   without the handle Vec's {} B slot per task",
            "",
            per_task - m.vec_slot as f64,
            m.vec_slot
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--test");
    let tasks = if smoke { SMOKE_TASKS } else { TASKS };
    let only = args.iter().position(|a| a == "--only").map(|i| {
        args.get(i + 1)
            .expect("--only needs a variant name")
            .clone()
    });

    if cfg!(not(target_os = "linux")) || rss_bytes().is_none() {
        println!("memory: skipped (needs Linux /proc/self/status VmRSS)");
        return;
    }

    if let Some(variant) = only {
        run_one(&variant, tasks);
        return;
    }

    if smoke {
        println!(
            "memory: SMOKE MODE (--test): {tasks} tasks; RSS is read in kB, so these numbers \
             are not results"
        );
    }
    println!(
        "memory: RSS per queued task, 1 blocked worker, {tasks} empty tasks queued from the \
         benchmark thread; each variant in a fresh child process"
    );
    let exe = std::env::current_exe().expect("current_exe");
    for variant in VARIANTS {
        let mut cmd = Command::new(&exe);
        cmd.args(["--only", variant]);
        if smoke {
            cmd.arg("--test");
        }
        let status = cmd.status().expect("run child process");
        assert!(status.success(), "variant {variant} failed: {status}");
    }
}
