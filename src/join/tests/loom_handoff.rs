//! A loom model of `join`'s promotion hand-off, run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
//!
//! It drives the real [`Frames`], [`StackJob`] and [`SpinLatch`]; two things are stand-ins.
//! The owner's stealable deque (crossbeam-deque is trusted, not modelled) is a loom mutex
//! around a `VecDeque`, popped at the back by the owner and stolen from the front. And
//! whether a beat is due (a clock read in `heartbeat.rs`, which loom cannot drive) is a
//! flag that another thread may raise at any point, so loom explores both the kept and the
//! promoted frame. The owner follows steps 1 to 4 of the protocol in `join/mod.rs` and a
//! thief tries to steal once. Loom checks that `b` runs exactly once, that its result
//! reaches the owner, and (through the loom `UnsafeCell`s inside `StackJob`) that no access
//! to the job's closure or result races.

use std::collections::VecDeque;

use loom::sync::{Arc, Mutex};
use loom::thread;

use super::frames::Frames;
use crate::job::{JobRef, StackJob};
use crate::latch::{Probe, SpinLatch};
use crate::loom::{AtomicBool, AtomicUsize, Ordering};
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
        let due = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicUsize::new(0));

        let beat = {
            let due = due.clone();
            thread::spawn(move || due.store(true, Ordering::Relaxed))
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
        if due.load(Ordering::Relaxed) {
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
