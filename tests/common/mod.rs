//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test file uses a different subset

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use weft::{JoinHandle, Pool};

pub mod celery;
pub mod rng;

/// Generous: only catches hangs.
pub const HANG: Duration = Duration::from_secs(60);

/// A pool with `workers` worker threads.
pub fn pool(workers: usize) -> Pool {
    Pool::builder().workers(workers).build().unwrap()
}

/// Waits (yielding, never sleeping a fixed time) until `cond` holds; fails after `HANG`.
pub fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {HANG:?}"
        );
        thread::yield_now();
    }
}

/// Waits (yielding, never sleeping a fixed time) until `cond` holds; fails after `HANG`,
/// saying `what` it waited for.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not reached in {HANG:?}");
        thread::yield_now();
    }
}

/// Occupies every worker of `pool` until the returned senders are dropped or sent to.
/// Returns once all of them are running (so later spawns queue up).
pub fn block_all(pool: &Pool) -> (Vec<Sender<()>>, Vec<JoinHandle<()>>) {
    let n = pool.num_workers();
    let started = Arc::new(Barrier::new(n + 1));
    let mut gates = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..n {
        let (tx, rx): (Sender<()>, Receiver<()>) = channel();
        let s = started.clone();
        handles.push(pool.spawn(move || {
            s.wait();
            let _ = rx.recv();
        }));
        gates.push(tx);
    }
    started.wait();
    (gates, handles)
}
