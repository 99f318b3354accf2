//! Loom models of the task state machine (`state.rs`), run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
//!
//! `loom_raw.rs` runs the real harness (`raw.rs`, `handle.rs`) through the same races. Loom
//! cannot see a use of memory after it was freed, so this file keeps a stand-in: [`Task`]
//! drives the real [`State`] exactly as `raw.rs` and `handle.rs` do, with loom cells in
//! place of the allocation, one of which stands for the allocation itself:
//!
//! - `stage`: the body / output union. Every access goes through a loom `UnsafeCell`, so
//!   two threads touching it without a happens-before edge is a reported data race
//!   (invariants 1 and 2).
//! - `waker`: the joiner's waker slot, `Some(id)` standing for a `Waker` (invariant 3).
//! - `alloc`: the allocation itself. Every thread reads it before each use of the task, and
//!   the freer writes it (and the waker slot), so a free that does not happen after every
//!   other use is a reported race, and a use after the free fails its assertion
//!   (invariant 4).
//!
//! Tallies (bodies run or dropped, outputs dropped, frees, wakes) are relaxed loom atomics
//! that the model reads after joining every thread.

use loom::sync::Arc;
use loom::thread;

use crate::loom::{AtomicUsize, Ordering, UnsafeCell};
use crate::task::state::{Outcome, Snapshot, State, TransitionToRunning};

/// Runs `f` under loom. The preemption bound comes from `LOOM_MAX_PREEMPTIONS` if set, else
/// 2, so a plain `cargo test` under `--cfg loom` also finishes.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

/// What the stage holds (the union member that is live).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Body,
    Output,
    Empty,
}

/// A stand-in for `raw::Cell`: the real state word plus loom-checked cells.
struct Task {
    state: State,
    stage: UnsafeCell<Stage>,
    waker: UnsafeCell<Option<u32>>,
    /// True while the allocation is live.
    alloc: UnsafeCell<bool>,
    /// Bodies that ran (`execute`).
    ran: AtomicUsize,
    /// Bodies dropped without running (`cancel`).
    bodies_dropped: AtomicUsize,
    /// Outputs dropped or taken by the handle.
    outputs_dropped: AtomicUsize,
    frees: AtomicUsize,
    /// The id of the last waker the task side woke (0: none).
    woken: AtomicUsize,
    /// Cancel messages sent to the timer driver (`before.is_scheduled()`).
    cancel_msgs: AtomicUsize,
}

fn bump(counter: &AtomicUsize) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::Relaxed)
}

impl Task {
    fn new(state: State) -> Arc<Task> {
        Arc::new(Task {
            state,
            stage: UnsafeCell::new(Stage::Body),
            waker: UnsafeCell::new(None),
            alloc: UnsafeCell::new(true),
            ran: AtomicUsize::new(0),
            bodies_dropped: AtomicUsize::new(0),
            outputs_dropped: AtomicUsize::new(0),
            frees: AtomicUsize::new(0),
            woken: AtomicUsize::new(0),
            cancel_msgs: AtomicUsize::new(0),
        })
    }

    /// A use of the allocation: must happen before the free.
    fn touch(&self) {
        // SAFETY: a loom cell; concurrent reads are fine and loom checks the free's write.
        self.alloc
            .with(|a| assert!(unsafe { *a }, "task used after it was freed"));
    }

    fn state(&self) -> &State {
        self.touch();
        &self.state
    }

    /// Replaces the stage, asserting what it held.
    fn swap_stage(&self, expect: Stage, new: Stage) {
        self.touch();
        // SAFETY: a loom cell: loom reports any access not ordered with this one.
        self.stage.with_mut(|s| unsafe {
            assert_eq!(*s, expect, "stage");
            *s = new;
        });
    }

    /// `raw::Cell::claim_or_release`: claims for the queue's (or timer's) holder, or drops
    /// that reference once a canceller completed the task.
    fn claim_or_release(&self) -> bool {
        if self.state().try_claim_sole_owner().is_some() {
            return true;
        }
        loop {
            match self.state().try_claim() {
                TransitionToRunning::Success(_) => return true,
                TransitionToRunning::Failed(s) if s.is_complete() => {
                    self.release();
                    return false;
                }
                // `Backoff::snooze` in raw.rs.
                TransitionToRunning::Failed(_) => thread::yield_now(),
            }
        }
    }

    /// `raw::Cell::execute` for a one-shot body that returns a value.
    fn execute(&self) {
        if !self.claim_or_release() {
            return;
        }
        self.swap_stage(Stage::Body, Stage::Output);
        bump(&self.ran);
        self.complete(Outcome::Value, true);
    }

    /// `raw::Cell::discard` (shutdown, or a fire that lost to a canceller).
    fn discard(&self) {
        if !self.claim_or_release() {
            return;
        }
        self.swap_stage(Stage::Body, Stage::Empty);
        bump(&self.bodies_dropped);
        self.complete(Outcome::Shutdown, true);
    }

    /// `raw::Cell::cancel`, through the handle's reference. A task claimed while SCHEDULED
    /// gets one more reference for the driver's `Cancel` message (the model's main thread
    /// plays the driver and drops it later).
    fn cancel(&self) -> bool {
        let TransitionToRunning::Success(before) = self.state().try_claim() else {
            return false;
        };
        self.swap_stage(Stage::Body, Stage::Empty);
        bump(&self.bodies_dropped);
        if before.is_scheduled() {
            self.state().ref_inc();
            bump(&self.cancel_msgs);
        }
        self.complete(Outcome::Cancelled, false);
        true
    }

    /// `raw::Cell::complete`.
    fn complete(&self, outcome: Outcome, release: bool) {
        if release {
            if self.state().is_sole_owner() {
                self.drop_outcome(outcome);
                self.dealloc();
                return;
            }
            if self.state().complete_and_release_if_unwatched(outcome) {
                return;
            }
        }
        let prev = self.state().complete(outcome);
        if !prev.is_join_interested() {
            self.drop_outcome(outcome);
        } else if prev.is_join_waker_set() {
            self.touch();
            // SAFETY: JOIN_WAKER was set when COMPLETE was: the handle no longer writes.
            let id = self.waker.with(|w| unsafe { *w }).expect("a stored waker");
            self.woken.store(id as usize, Ordering::Relaxed);
        }
        if release {
            self.release();
        }
    }

    /// Drops (or, for the handle, takes) the outcome once its owner is settled.
    fn drop_outcome(&self, outcome: Outcome) {
        if outcome == Outcome::Value {
            self.swap_stage(Stage::Output, Stage::Empty);
            bump(&self.outputs_dropped);
        }
    }

    /// `raw::Cell::release` / `TaskRef::drop`.
    fn release(&self) {
        if self.state().ref_dec() {
            self.dealloc();
        }
    }

    /// `raw::Cell::dealloc`: the last reference is gone.
    fn dealloc(&self) {
        if !self.state().load().is_claimed() {
            self.swap_stage(Stage::Body, Stage::Empty);
            bump(&self.bodies_dropped);
        }
        // SAFETY: loom cells; loom checks that every other use of them happens before
        // these accesses, as freeing the allocation requires.
        self.stage
            .with(|s| assert_eq!(unsafe { *s }, Stage::Empty, "leaked output"));
        // SAFETY: as above (the `Waker` is dropped with the allocation).
        self.waker.with_mut(|w| unsafe { *w = None });
        // SAFETY: as above.
        self.alloc.with_mut(|a| unsafe {
            assert!(*a, "freed twice");
            *a = false;
        });
        bump(&self.frees);
    }

    /// `handle::register_waker` with waker `id`: true means Pending (the task will wake
    /// `id`), false means COMPLETE was seen (Ready).
    fn register_waker(&self, id: u32) -> bool {
        let snapshot = self.state().load();
        if snapshot.is_complete() {
            return false;
        }
        if snapshot.is_join_waker_set() {
            self.touch();
            // SAFETY: JOIN_WAKER is set: only reads are allowed, on either side.
            if self.waker.with(|w| unsafe { *w }) == Some(id) {
                return true;
            }
            if self.state().unset_join_waker().is_err() {
                return false;
            }
        }
        self.touch();
        // SAFETY: JOIN_WAKER is clear: the slot is the handle's alone.
        self.waker.with_mut(|w| unsafe { *w = Some(id) });
        self.state().set_join_waker().is_ok()
    }

    /// `JoinHandle::drop`. `taken`: the handle already moved the output out.
    fn drop_handle(&self, taken: bool) {
        if !taken {
            match self.state().drop_join_interest_and_ref() {
                Ok(()) => return,
                Err(s) => self.drop_outcome(s.outcome()),
            }
        }
        self.release();
    }

    /// `JoinHandle::take_output` after the handle saw COMPLETE.
    fn take_output(&self) -> Snapshot {
        let s = self.state().load();
        assert!(s.is_complete());
        self.drop_outcome(s.outcome());
        s
    }

    /// The end of every model: everything happened exactly once.
    fn assert_settled(&self) {
        let ran = count(&self.ran);
        assert_eq!(
            ran + count(&self.bodies_dropped),
            1,
            "the body runs or is dropped, once"
        );
        assert_eq!(
            count(&self.outputs_dropped),
            ran,
            "one output per run, dropped once"
        );
        assert_eq!(count(&self.frees), 1, "freed exactly once");
    }
}

/// A `JoinHandle` stand-in whose drop is `JoinHandle::drop` (for models that share it).
struct Handle(Arc<Task>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.drop_handle(false);
    }
}

/// (a) A worker's claim races a canceller's: exactly one wins, and only the winner touches
/// the stage (invariant 1).
#[test]
fn loom_claim_has_one_winner() {
    model(|| {
        let task = Task::new(State::new());
        let claimers: Vec<_> = (0..2)
            .map(|_| {
                let task = task.clone();
                thread::spawn(move || match task.state.try_claim() {
                    TransitionToRunning::Success(before) => {
                        assert!(!before.is_claimed());
                        task.swap_stage(Stage::Body, Stage::Empty);
                        true
                    }
                    TransitionToRunning::Failed(s) => {
                        assert!(s.is_running() && !s.is_complete());
                        false
                    }
                })
            })
            .collect();
        let wins = claimers
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&won| won)
            .count();
        assert_eq!(wins, 1);
    });
}

/// (b) A worker runs and completes the task while its handle is dropped: the output is
/// dropped exactly once (by the worker if the handle left first, else by the handle), and
/// the task is freed exactly once, after every other use (invariants 2 and 4, with both
/// fast paths: `complete_and_release_if_unwatched`, `drop_join_interest_and_ref`, and the
/// sole-owner shortcuts: the claim without a CAS when the handle left before the worker
/// claimed, and the free without a transition when it left before the worker completed).
#[test]
fn loom_complete_races_handle_drop() {
    model(|| {
        let task = Task::new(State::new());
        let worker = {
            let task = task.clone();
            thread::spawn(move || task.execute())
        };
        let handle = {
            let task = task.clone();
            thread::spawn(move || task.drop_handle(false))
        };
        worker.join().unwrap();
        handle.join().unwrap();
        task.assert_settled();
    });
}

/// (c) The handle polls twice (a different waker each time: the second poll exercises
/// `unset_join_waker`) while a worker completes the task. If the handle's last poll was
/// Pending, the completer wakes exactly that waker; the waker slot is never written while
/// the completer may read it (invariant 3; loom checks the cell). A poll that sees
/// COMPLETE takes the output at once, on the handle's thread (invariant 2: `complete`
/// must publish it).
#[test]
fn loom_waker_registration_races_complete() {
    model(|| {
        let task = Task::new(State::new());
        let worker = {
            let task = task.clone();
            thread::spawn(move || task.execute())
        };
        let joiner = {
            let task = task.clone();
            thread::spawn(move || {
                let mut pending_on = 0;
                for id in [1, 2] {
                    if !task.register_waker(id) {
                        task.take_output();
                        return None;
                    }
                    pending_on = id;
                }
                Some(pending_on)
            })
        };
        worker.join().unwrap();
        let last = joiner.join().unwrap();
        // On Ready (`None`) the handle saw COMPLETE itself; a wake of an earlier waker
        // is then harmless.
        if let Some(id) = last {
            assert_eq!(
                count(&task.woken),
                id as usize,
                "the last registered waker is woken"
            );
            // The woken handle polls once more and finds the output.
            assert!(!task.register_waker(3));
            task.take_output();
        }
        task.drop_handle(true);
        task.assert_settled();
    });
}

/// (c') A handle polled once (its waker stored) and then dropped while pending, as a
/// timed-out future is, races the worker's completion: the completer's read of the waker
/// happens before whoever frees the task drops the slot (invariants 3 and 4: `ref_dec`
/// acquires), and the output is dropped once.
#[test]
fn loom_pending_handle_dropped_races_complete() {
    model(|| {
        let task = Task::new(State::new());
        let worker = {
            let task = task.clone();
            thread::spawn(move || task.execute())
        };
        let joiner = {
            let task = task.clone();
            thread::spawn(move || {
                if task.register_waker(1) {
                    task.drop_handle(false);
                } else {
                    task.take_output();
                    task.drop_handle(true);
                }
            })
        };
        worker.join().unwrap();
        joiner.join().unwrap();
        task.assert_settled();
    });
}

/// (d) A worker runs the task while one thread cancels it through a shared handle and
/// another drops the last clone of that handle (so the handle's drop runs on either, after
/// the cancel): exactly one of run / cancel owns the body, the output (if any) is dropped
/// once, and the task is freed once.
#[test]
fn loom_run_cancel_and_handle_drop() {
    model(|| {
        let task = Task::new(State::new());
        let handle = Arc::new(Handle(task.clone()));
        let worker = {
            let task = task.clone();
            thread::spawn(move || task.execute())
        };
        let canceller = {
            let handle = handle.clone();
            thread::spawn(move || handle.0.cancel())
        };
        let dropper = thread::spawn(move || drop(handle));
        worker.join().unwrap();
        let cancelled = canceller.join().unwrap();
        dropper.join().unwrap();
        assert_eq!(count(&task.bodies_dropped), usize::from(cancelled));
        assert_eq!(count(&task.ran), usize::from(!cancelled));
        task.assert_settled();
    });
}

/// (e) The timer driver fires a SCHEDULED task (and, if that worked, runs it as a worker
/// would after popping it) while the handle cancels it and then drops. Exactly one of
/// "fired" and "the canceller claimed it while SCHEDULED" happens (invariant 6); in the
/// second case the canceller's `Cancel` message holds a reference, dropped afterwards by
/// the driver (here: the main thread), and the fire's loser discards the timer's reference.
#[test]
fn loom_timer_fire_races_cancel() {
    model(|| {
        let task = Task::new(State::new_scheduled());
        let driver = {
            let task = task.clone();
            thread::spawn(move || {
                // `raw::fire`.
                let fired = loop {
                    match task.state().transition_scheduled_to_queued() {
                        Ok(()) => break true,
                        Err(s) if s.is_running() && !s.is_scheduled() => thread::yield_now(),
                        Err(_) => break false,
                    }
                };
                if fired {
                    task.execute();
                } else {
                    task.discard();
                }
                fired
            })
        };
        let canceller = {
            let task = task.clone();
            thread::spawn(move || {
                let cancelled = task.cancel();
                task.drop_handle(false);
                cancelled
            })
        };
        let fired = driver.join().unwrap();
        let cancelled = canceller.join().unwrap();
        let msgs = count(&task.cancel_msgs);
        assert_eq!(
            usize::from(fired) + msgs,
            1,
            "fire XOR cancel-while-scheduled"
        );
        assert!(msgs == 0 || cancelled);
        if msgs == 1 {
            // The driver handles the `Cancel` message: drops its reference.
            assert_eq!(count(&task.frees), 0, "the message kept the task alive");
            task.release();
        }
        task.assert_settled();
    });
}

/// (f) A retry hands the task back to the timer: RUNNING → SCHEDULED first, then the
/// `Insert` (the driver can fire only after it), while the handle cancels it. Exactly one
/// of fire and cancel-while-scheduled wins; the retried body's state is published to the
/// next claimer (loom checks the stage cell: Release in `transition_running_to_scheduled`,
/// Acquire in `try_claim`).
#[test]
fn loom_retry_races_fire_and_cancel() {
    model(|| {
        let task = Task::new(State::new());
        // A worker popped and claimed it; the attempt failed and wants a retry.
        assert!(matches!(
            task.state.try_claim(),
            TransitionToRunning::Success(_)
        ));
        // The driver's wheel holds the task only after the worker's `Insert` arrived.
        let inserted = loom::sync::Arc::new(crate::loom::AtomicBool::new(false));
        let worker = {
            let task = task.clone();
            let inserted = inserted.clone();
            thread::spawn(move || {
                // The attempt writes the body (a retrying `FnMut` keeps state).
                task.swap_stage(Stage::Body, Stage::Body);
                // SCHEDULED first (from here a cancel wins), then the `Insert`.
                task.state().transition_running_to_scheduled();
                inserted.store(true, crate::loom::Ordering::Release);
            })
        };
        let driver = {
            let task = task.clone();
            let inserted = inserted.clone();
            thread::spawn(move || {
                while !inserted.load(crate::loom::Ordering::Acquire) {
                    thread::yield_now();
                }
                let fired = task.state().transition_scheduled_to_queued().is_ok();
                if fired {
                    task.execute();
                } else {
                    task.discard();
                }
                fired
            })
        };
        let cancelled = task.cancel();
        worker.join().unwrap();
        let fired = driver.join().unwrap();
        let msgs = count(&task.cancel_msgs);
        assert_eq!(
            usize::from(fired) + msgs,
            1,
            "fire XOR cancel-while-scheduled"
        );
        assert!(msgs == 0 || cancelled);
        task.drop_handle(false);
        if msgs == 1 {
            task.release();
        }
        task.assert_settled();
    });
}
