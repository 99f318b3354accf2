//! Loom models of the real task harness (`raw.rs`) and handle (`handle.rs`), run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
//!
//! The task is allocated by `raw::allocate_body` with a stand-in owner ([`Owner`], the
//! `Schedule` seam of `schedule.rs`) in place of the pool: its timer is a list the model's
//! "driver" thread takes retried tasks from, and the `Cancel` references a canceller sends
//! wait in another list for the model to drop, as the pool's timer driver does. Workers run
//! the task through its queued `JobRef` (`execute`, `discard`, `raw::fire`), joiners
//! through a real `JoinHandle` (`poll`, `cancel`, drop).
//!
//! Loom checks every access to the stage and the waker slot (both are loom cells) for data
//! races (invariants 1 to 3 of `state.rs`). Each model then checks the tallies: the body is
//! dropped exactly once, every output made is dropped exactly once, the right waker is
//! woken, and every allocation is freed exactly once (`alloc::live_blocks`, invariant 4).
//! `loom_state.rs` models the same races on a stand-in cell that also checks that the free
//! happens after every other use of the task.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use loom::sync::{Arc, Mutex};
use loom::thread;

use crate::job::JobRef;
use crate::lane::Lane;
use crate::loom::{AtomicBool, AtomicUsize, Ordering};
use crate::metrics::Counters;
use crate::task::alloc;
use crate::task::body::{Attempt, Body, Once};
use crate::task::header::{self, TaskRef};
use crate::task::raw;
use crate::task::schedule::Schedule;
use crate::task::state::State;
use crate::task::JoinHandle;

/// Runs `f` under loom (preemption bound from `LOOM_MAX_PREEMPTIONS`, else 2), and checks
/// after every execution that no task allocation is left or freed twice.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(move || {
        let before = alloc::live_blocks();
        f();
        assert_eq!(
            alloc::live_blocks(),
            before,
            "a task leaked or was freed twice"
        );
    });
}

/// What happened to the task's values.
struct Tally {
    /// Attempts that ran (the body's closure was called).
    ran: AtomicUsize,
    /// Bodies dropped (run or not); must end at exactly 1.
    bodies_dropped: AtomicUsize,
    /// Outputs made by a run.
    outputs_made: AtomicUsize,
    /// Outputs dropped (by the worker, the handle, or after `poll` handed them out).
    outputs_dropped: AtomicUsize,
    /// The id of the last waker woken (0: none).
    woken: AtomicUsize,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally {
            ran: AtomicUsize::new(0),
            bodies_dropped: AtomicUsize::new(0),
            outputs_made: AtomicUsize::new(0),
            outputs_dropped: AtomicUsize::new(0),
            woken: AtomicUsize::new(0),
        })
    }
}

fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::Relaxed)
}

/// Part of the body: counts its drop.
struct BodyGuard(Arc<Tally>);

impl Drop for BodyGuard {
    fn drop(&mut self) {
        self.0.bodies_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// The output: counts its drop.
struct Output(Arc<Tally>);

impl Drop for Output {
    fn drop(&mut self) {
        self.0.outputs_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// A one-shot body that makes an `Output`.
fn once(tally: &Arc<Tally>) -> Once<impl FnOnce() -> Output + Send + 'static> {
    let guard = BodyGuard(tally.clone());
    Once(move || {
        let guard = guard;
        guard.0.ran.fetch_add(1, Ordering::Relaxed);
        guard.0.outputs_made.fetch_add(1, Ordering::Relaxed);
        Output(guard.0.clone())
    })
}

/// A body whose first attempt asks for a retry and whose second makes an `Output` (a
/// retrying `FnMut` task, as `body::Retrying`).
struct RetryOnce(BodyGuard);

impl Body for RetryOnce {
    type Output = Output;

    unsafe fn attempt(
        body: &mut ManuallyDrop<Self>,
        attempt: u32,
        _: &Counters,
    ) -> Attempt<Output> {
        body.0 .0.ran.fetch_add(1, Ordering::Relaxed);
        if attempt == 1 {
            return Attempt::Retry(Duration::ZERO);
        }
        // SAFETY: live on entry (contract); dropped once here, and the caller treats it as
        // gone after `Done`.
        let this = unsafe { ManuallyDrop::take(body) };
        this.0 .0.outputs_made.fetch_add(1, Ordering::Relaxed);
        Attempt::Done(Output(this.0 .0.clone()))
    }

    unsafe fn after_panic(body: &mut ManuallyDrop<Self>, _: &Counters) {
        // SAFETY: the attempt unwound before taking the body: live, dropped once here.
        drop(unsafe { ManuallyDrop::take(body) });
    }
}

/// The stand-in owner: a timer that is a list, and the `Cancel` messages it was sent.
struct Owner {
    counters: Counters,
    /// Retried tasks' queued references, for the model's driver to fire.
    timer: Mutex<Vec<JobRef>>,
    /// References that cancellers of SCHEDULED tasks sent (`cancel_retry`).
    cancels: Mutex<Vec<TaskRef>>,
    /// The worker's `execute` returned (the driver then stops waiting for a retry).
    worker_done: AtomicBool,
}

impl Schedule for Owner {
    fn is_closed(&self) -> bool {
        false
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn retry_after(&self, _delay: Duration, job: JobRef, _lane: Lane) {
        self.timer.lock().unwrap().push(job);
    }

    fn cancel_retry(&self, task: TaskRef) {
        self.cancels.lock().unwrap().push(task);
    }
}

impl Owner {
    fn new() -> Arc<Owner> {
        Arc::new(Owner {
            counters: Counters::default(),
            timer: Mutex::new(Vec::new()),
            cancels: Mutex::new(Vec::new()),
            worker_done: AtomicBool::new(false),
        })
    }

    fn cancel_msgs(&self) -> usize {
        self.cancels.lock().unwrap().len()
    }

    /// The driver handles the `Cancel` messages: drops their references.
    fn drop_cancels(&self) {
        drop(std::mem::take(&mut *self.cancels.lock().unwrap()));
    }
}

/// A waker that records its id in the tally when woken.
struct IdWaker {
    id: usize,
    tally: Arc<Tally>,
}

impl Wake for IdWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.tally.woken.store(self.id, Ordering::Relaxed);
    }
}

fn waker(id: usize, tally: &Arc<Tally>) -> Waker {
    Waker::from(std::sync::Arc::new(IdWaker {
        id,
        tally: tally.clone(),
    }))
}

/// Polls the handle once with waker `id`: the output if ready.
fn poll(handle: &mut JoinHandle<Output>, id: usize, tally: &Arc<Tally>) -> Option<Output> {
    let waker = waker(id, tally);
    match Pin::new(handle).poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(r) => Some(r.ok().expect("the task ran to its output")),
        Poll::Pending => None,
    }
}

/// The queued reference and the handle of a fresh task of `owner`.
fn spawn<B: Body<Output = Output>>(
    body: B,
    state: State,
    owner: &Arc<Owner>,
) -> (JobRef, JoinHandle<Output>) {
    let (job, handle) = raw::allocate_body(body, state, &**owner, Lane::NORMAL);
    // SAFETY: `allocate_body` returns the handle's reference, of output `Output`.
    (job, unsafe { JoinHandle::from_raw(handle) })
}

/// A worker thread that runs the task's queued reference, as one that popped it would.
fn run_on_a_worker(job: JobRef, owner: &Arc<Owner>) -> thread::JoinHandle<()> {
    let owner = owner.clone();
    thread::spawn(move || job.execute(&owner.counters))
}

/// The driver fires a SCHEDULED task and, if that worked, runs it as the worker that pops
/// it would; else discards the timer's reference. Returns whether it fired.
///
/// # Safety
/// `job` is the task's timer reference.
unsafe fn fire_and_run(job: JobRef, owner: &Owner) -> bool {
    // SAFETY: the caller's promise.
    let fired = unsafe { header::fire(&job) };
    if fired {
        job.execute(&owner.counters);
    } else {
        job.discard(&owner.counters);
    }
    fired
}

fn assert_settled(tally: &Tally) {
    assert_eq!(
        count(&tally.bodies_dropped),
        1,
        "the body is dropped exactly once"
    );
    assert_eq!(
        count(&tally.outputs_dropped),
        count(&tally.outputs_made),
        "every output is dropped exactly once"
    );
}

/// (a) A worker runs the task while its handle is dropped: the output is dropped once (by
/// the worker if the handle left first, else by the handle) and the task freed once, on
/// every path (the sole-owner claim and free, `complete_and_release_if_unwatched`,
/// `drop_join_interest_and_ref`).
#[test]
fn loom_real_run_races_handle_drop() {
    model(|| {
        let tally = Tally::new();
        let owner = Owner::new();
        let (job, handle) = spawn(once(&tally), State::new(), &owner);
        let worker = run_on_a_worker(job, &owner);
        let dropper = thread::spawn(move || drop(handle));
        worker.join().unwrap();
        dropper.join().unwrap();
        assert_eq!(count(&tally.ran), 1);
        assert_settled(&tally);
    });
}

/// (b) The handle polls twice (a new waker each time) while a worker completes the task:
/// if the last poll was pending, the completer woke exactly that waker, and the next poll
/// is ready; the waker slot is never written while the completer may read it.
#[test]
fn loom_real_poll_races_complete() {
    model(|| {
        let tally = Tally::new();
        let owner = Owner::new();
        let (job, mut handle) = spawn(once(&tally), State::new(), &owner);
        let worker = run_on_a_worker(job, &owner);
        let joiner = {
            let tally = tally.clone();
            thread::spawn(move || {
                for id in [1, 2] {
                    if let Some(out) = poll(&mut handle, id, &tally) {
                        drop(out);
                        return (handle, None);
                    }
                }
                (handle, Some(2))
            })
        };
        worker.join().unwrap();
        let (mut handle, pending_on) = joiner.join().unwrap();
        if let Some(id) = pending_on {
            assert_eq!(
                count(&tally.woken),
                id,
                "the last registered waker is woken"
            );
            let out = poll(&mut handle, 3, &tally).expect("ready once woken");
            drop(out);
        }
        drop(handle);
        assert_settled(&tally);
    });
}

/// (c) A handle polled once and dropped while pending (a timed-out future) races the
/// worker's completion: the output is dropped once, the task freed once, and the waker
/// slot's read by the completer happens before the free.
#[test]
fn loom_real_pending_handle_dropped_races_complete() {
    model(|| {
        let tally = Tally::new();
        let owner = Owner::new();
        let (job, mut handle) = spawn(once(&tally), State::new(), &owner);
        let worker = run_on_a_worker(job, &owner);
        let joiner = {
            let tally = tally.clone();
            thread::spawn(move || {
                if let Some(out) = poll(&mut handle, 1, &tally) {
                    drop(out);
                }
                drop(handle);
            })
        };
        worker.join().unwrap();
        joiner.join().unwrap();
        assert_settled(&tally);
    });
}

/// (d) A worker runs the task while one thread cancels it through a shared handle and
/// another drops the last clone of that handle: exactly one of run and cancel owns the
/// body, and a cancelled task never runs.
#[test]
fn loom_real_run_cancel_and_handle_drop() {
    model(|| {
        let tally = Tally::new();
        let owner = Owner::new();
        let (job, handle) = spawn(once(&tally), State::new(), &owner);
        let handle = Arc::new(handle);
        let worker = run_on_a_worker(job, &owner);
        let canceller = {
            let handle = handle.clone();
            thread::spawn(move || handle.cancel())
        };
        let dropper = thread::spawn(move || drop(handle));
        worker.join().unwrap();
        let cancelled = canceller.join().unwrap();
        dropper.join().unwrap();
        assert_eq!(count(&tally.ran), usize::from(!cancelled));
        assert_eq!(owner.cancel_msgs(), 0, "a QUEUED task has no timer entry");
        assert_settled(&tally);
    });
}

/// (e) The driver fires a SCHEDULED task (and runs it, as the worker that pops it would)
/// while the handle cancels it and then drops: exactly one of "fired" and "cancelled while
/// SCHEDULED" happens (invariant 6), and in the second case the `Cancel` reference keeps
/// the task alive until the driver drops it.
#[test]
fn loom_real_fire_races_cancel() {
    model(|| {
        let tally = Tally::new();
        let owner = Owner::new();
        let (job, handle) = spawn(once(&tally), State::new_scheduled(), &owner);
        let driver = {
            let owner = owner.clone();
            thread::spawn(move || {
                // SAFETY: `job` is the timer's reference.
                unsafe { fire_and_run(job, &owner) }
            })
        };
        let canceller = thread::spawn(move || {
            let cancelled = handle.cancel();
            drop(handle);
            cancelled
        });
        let fired = driver.join().unwrap();
        let cancelled = canceller.join().unwrap();
        let msgs = owner.cancel_msgs();
        assert_eq!(
            usize::from(fired) + msgs,
            1,
            "fire XOR cancel-while-scheduled"
        );
        // A cancel after the fire may still win, before the worker's claim.
        assert!(msgs == 0 || cancelled);
        assert_eq!(count(&tally.ran), usize::from(!cancelled));
        owner.drop_cancels();
        assert_settled(&tally);
    });
}

/// (f) A retrying task's first attempt fails while its handle cancels it: the worker moves
/// it RUNNING → SCHEDULED and hands it to the owner's timer (`retry_after`), where the
/// driver fires it for its second attempt. A cancel during the first attempt is a request
/// (the retry is then abandoned as cancelled), a cancel while it waits wins over the fire,
/// and a cancel after the fire finds it running or done. Each way the body is dropped
/// once, and the retried body's state is published to the next claimer (loom checks the
/// stage cell).
#[test]
fn loom_real_retry_races_fire_and_cancel() {
    model(|| {
        let tally = Tally::new();
        let owner = Owner::new();
        let body = RetryOnce(BodyGuard(tally.clone()));
        let (job, handle) = spawn(body, State::new(), &owner);
        let worker = {
            let owner = owner.clone();
            thread::spawn(move || {
                job.execute(&owner.counters);
                owner.worker_done.store(true, Ordering::Release);
            })
        };
        let driver = {
            let owner = owner.clone();
            thread::spawn(move || loop {
                let retried = owner.timer.lock().unwrap().pop();
                if let Some(job) = retried {
                    // SAFETY: the timer's reference, handed over by `retry_after`.
                    return Some(unsafe { fire_and_run(job, &owner) });
                }
                if owner.worker_done.load(Ordering::Acquire) {
                    // Acquire pairs with the worker's Release: a retry it made is in the
                    // list by now.
                    if owner.timer.lock().unwrap().is_empty() {
                        return None;
                    }
                    continue;
                }
                thread::yield_now();
            })
        };
        let cancelled = handle.cancel();
        worker.join().unwrap();
        let fired = driver.join().unwrap();
        let msgs = owner.cancel_msgs();
        let Ok(outcome) = handle.try_join() else {
            panic!("the task is resolved once the worker and the driver returned");
        };
        let ok = outcome.is_ok();
        drop(outcome);
        let ran = count(&tally.ran);
        match fired {
            // No retry: cancelled before the first attempt, or during it (a request, and
            // the retry was abandoned).
            None => {
                assert_eq!(msgs, 0);
                assert_eq!(ran, usize::from(!cancelled));
                assert!(!ok);
            }
            Some(fired) => {
                assert_eq!(
                    usize::from(fired) + msgs,
                    1,
                    "fire XOR cancel-while-scheduled"
                );
                assert!(msgs == 0 || cancelled);
                // A request made during the first attempt, after its check, travels with
                // the retry: the second claim abandons it without running it.
                assert!(ran == 1 || (ran == 2 && fired && !cancelled));
                assert!(!ok || (ran == 2 && !cancelled));
                assert!(fired || (ran == 1 && !ok));
            }
        }
        owner.drop_cancels();
        assert_settled(&tally);
    });
}
