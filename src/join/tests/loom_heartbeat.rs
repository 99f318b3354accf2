//! Loom models of `join`'s promotion hand-off and of the heartbeat's park protocol, run
//! with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
//!
//! The hand-off model drives the real [`Frames`], [`StackJob`] and [`SpinLatch`] and the
//! real heartbeat flags; only the owner's stealable deque is a stand-in (crossbeam-deque
//! is trusted, not modelled): a loom mutex around a `VecDeque`, popped at the back by the
//! owner and stolen from the front. The owner follows steps 1 to 4 of the protocol in
//! `join/mod.rs`, a beat may come at any point, and a thief tries to steal once. Loom
//! checks that `b` runs exactly once, that its result reaches the owner, and (through
//! the loom `UnsafeCell`s inside `StackJob`) that no access to the job's closure or
//! result races.
//!
//! The park model runs the real [`Heartbeat::run`] against a worker that arms, waits for a
//! beat that came after its arm, and disarms: a lost wake-up (the thread parked while a
//! worker is armed) would leave the worker spinning, which loom reports.

use std::collections::VecDeque;

use loom::sync::{Arc, Mutex};
use loom::thread;

use super::frames::Frames;
use super::heartbeat::Heartbeat;
use crate::job::{JobRef, StackJob};
use crate::latch::{Probe, SpinLatch};
use crate::loom::{AtomicUsize, Ordering};
use crate::metrics::Counters;

/// Runs `f` under loom. The preemption bound comes from `LOOM_MAX_PREEMPTIONS` if set, else
/// 2, so a plain `cargo test` under `--cfg loom` also finishes.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

/// The stand-in for a worker's stealable deque.
struct Deque(Mutex<VecDeque<JobRef>>);

impl Deque {
    fn push(&self, job: JobRef) {
        self.0.lock().unwrap().push_back(job);
    }

    fn pop(&self) -> Option<JobRef> {
        self.0.lock().unwrap().pop_back()
    }

    fn steal(&self) -> Option<JobRef> {
        self.0.lock().unwrap().pop_front()
    }
}

#[test]
fn loom_a_frame_runs_once_whether_kept_promoted_taken_back_or_stolen() {
    model(|| {
        let deque = Arc::new(Deque(Mutex::new(VecDeque::new())));
        let heartbeat = Arc::new(Heartbeat::new(1));
        let runs = Arc::new(AtomicUsize::new(0));

        let beat = {
            let heartbeat = heartbeat.clone();
            thread::spawn(move || heartbeat.beat())
        };
        let thief = {
            let deque = deque.clone();
            thread::spawn(move || {
                if let Some(job) = deque.steal() {
                    job.execute(&Counters::default());
                }
            })
        };

        // The owner: step 1, record.
        let me = std::thread::current();
        // SAFETY: `me` outlives the latch; the owner never arms it, so it is never unparked.
        let latch = unsafe { SpinLatch::new(&me) };
        let r = runs.clone();
        let job_b = StackJob::new(
            move |_| {
                r.fetch_add(1, Ordering::Relaxed);
                7
            },
            latch,
        );
        let frames = Frames::new();
        // SAFETY: `job_b` stays in this frame until it was taken back or its latch is set
        // (below), and the thief thread is joined before the frame ends.
        let job_ref = unsafe { job_b.as_job_ref() };
        let id = job_ref.as_ptr();
        frames.push(job_ref);
        // Step 2, beat: promote the oldest frame.
        if heartbeat.is_due(0) {
            heartbeat.clear(0);
            if let Some(job) = frames.take_oldest() {
                deque.push(job);
            }
        }
        // Step 3: `a` does nothing here. Step 4: take `b` back, or wait for the thief.
        let rb = if frames.pop_if_newest(id) {
            job_b.run_inline(false)
        } else {
            match deque.pop() {
                Some(job) => {
                    assert_eq!(job.as_ptr(), id);
                    job_b.run_inline(false)
                }
                None => {
                    while !job_b.latch.probe() {
                        thread::yield_now();
                    }
                    job_b.into_result()
                }
            }
        };
        assert_eq!(rb, 7);
        thief.join().unwrap();
        beat.join().unwrap();
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    });
}

/// A worker arms (after the thread parked, or at any time), waits for a beat that came
/// after its arm, disarms; then the pool closes.
fn arm_wait_disarm(after_park: bool) {
    model(move || {
        let heartbeat = Arc::new(Heartbeat::new(1));
        let beating = {
            let heartbeat = heartbeat.clone();
            thread::spawn(move || heartbeat.run(thread::yield_now))
        };
        if after_park {
            while !heartbeat.is_parked() {
                thread::yield_now();
            }
        }
        heartbeat.arm();
        // A beat from before the arm does not count: wait for one after it.
        heartbeat.clear(0);
        while !heartbeat.is_due(0) {
            thread::yield_now();
        }
        heartbeat.disarm();
        heartbeat.close();
        beating.join().unwrap();
    });
}

#[test]
fn loom_an_armed_worker_always_gets_a_beat_and_close_ends_the_thread() {
    arm_wait_disarm(false);
}

#[test]
fn loom_arming_wakes_a_parked_heartbeat() {
    arm_wait_disarm(true);
}
