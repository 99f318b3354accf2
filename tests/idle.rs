//! An idle pool burns no CPU: after a burst of work (spawns and joins), its worker threads
//! and its timer thread park and use no measurable CPU time over one second, even with a
//! timer pending.
//!
//! Other tests run in parallel in this process, so this counts only the pool's own
//! threads, found by name in `/proc/self/task/*/comm` (Linux only).

#![cfg(target_os = "linux")]

use std::fs;
use std::time::{Duration, Instant};

use weft::Pool;

/// (state, utime + stime in clock ticks) of every thread whose name starts with `prefix`.
fn threads(prefix: &str) -> Vec<(char, u64)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let Ok(comm) = fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesized name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let state = f[0].chars().next().unwrap();
        let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        out.push((state, ticks));
    }
    out
}

#[test]
fn an_idle_pool_uses_no_cpu() {
    let pool = Pool::builder()
        .workers(4)
        .thread_name(|i| format!("idlecpu-{i}"))
        .build()
        .unwrap();
    // A timer far in the future: the timer thread sleeps until then, not on a fixed poll.
    let later = pool.task().delay(Duration::from_secs(3600)).spawn(|| ());
    // A burst that wakes every worker.
    let hs: Vec<_> = (0..20_000u64)
        .map(|i| pool.spawn(move || i.wrapping_mul(i)))
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // Joins that share frames on their heartbeat: nothing of it may outlive the work.
    fn fib(n: u64) -> u64 {
        if n < 2 {
            return n;
        }
        let (a, b) = weft::join(|| fib(n - 1), || fib(n - 2));
        a + b
    }
    assert_eq!(pool.install(|| fib(27)), 196_418);
    assert!(
        pool.metrics().join_frames_shared > 0,
        "no join frame was ever shared"
    );
    // Wait (on the condition, generously) until every worker is asleep.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A new thread takes its name when it first runs: on a loaded machine the burst
        // can be over before every worker has, so the count is part of the condition.
        let t = threads("idlecpu-");
        if t.len() == 5 && t.iter().all(|(s, _)| *s == 'S') && pool.metrics().parks >= 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers never went to sleep (4 workers and the timer thread expected): {t:?}"
        );
        std::thread::yield_now();
    }
    let before: u64 = threads("idlecpu-").iter().map(|t| t.1).sum();
    let parks_before = pool.metrics().parks;
    // The measurement window itself (not a wait for anything to settle).
    std::thread::sleep(Duration::from_secs(1));
    let after: u64 = threads("idlecpu-").iter().map(|t| t.1).sum();
    // A clock tick is 10 ms: allow one tick of accounting noise for all five threads.
    assert!(
        after - before <= 1,
        "idle workers used {} ticks in 1 s",
        after - before
    );
    assert_eq!(
        pool.metrics().parks,
        parks_before,
        "no worker woke up while idle"
    );
    assert_eq!(pool.metrics().timers_pending, 1);
    assert!(later.cancel());
}
