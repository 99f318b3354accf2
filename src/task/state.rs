//! The task state word: every read-modify-write of it lives in this file.
//!
//! | bits | name | meaning | set by | cleared by | never with |
//! | --- | --- | --- | --- | --- | --- |
//! | 0 | `RUNNING` | someone claimed the stage: a worker runs the closure, or a canceller drops it | `try_claim` (a sole owner: `try_claim_sole_owner`) | `complete` (and `complete_and_release_if_unwatched`); a retry's `transition_running_to_scheduled` | `COMPLETE` |
//! | 1 | `COMPLETE` | the outcome is final; the stage holds the output (or nothing) | `complete` | never | `RUNNING` |
//! | 2 | `JOIN_INTEREST` | the `JoinHandle` is alive | `new` | handle drop (`drop_join_interest`) | |
//! | 3 | `JOIN_WAKER` | a waker is stored; the task side may read it | `set_join_waker` | `unset_join_waker` | |
//! | 4 | `SCHEDULED` | waiting in the timer, not in a queue | `new_scheduled`, a retry (`transition_running_to_scheduled`) | the driver's fire (`transition_scheduled_to_queued`) | |
//! | 5 | `CANCEL_REQUESTED` | the handle asked a claimed (running) task to stop; seen by `checkpoint()` and by the claimer when it completes or retries | `request_cancel` | never | |
//! | 6–8 | `OUTCOME` | value / panicked / cancelled / shut down / timed out; valid once `COMPLETE` | `complete` | never | |
//! | 9–11 | reserved | | | | |
//! | 12.. | `REF_COUNT` | references: the handle, and the one queued/running reference | `new` | `ref_dec` | |
//!
//! Lifecycle (the names of the design doc): SCHEDULED (in the timer); QUEUED = neither
//! `RUNNING`, `COMPLETE` nor `SCHEDULED`; RUNNING (back to SCHEDULED for a retry); then
//! COMPLETE with one of the five [`Outcome`]s: a value, panicked, cancelled, shut down or
//! timed out.
//!
//! ## Invariants
//! 1. *Claim.* The stage (closure) is touched only by the thread whose `try_claim` CAS set
//!    `RUNNING`. `try_claim` fails once `RUNNING` or `COMPLETE` is set, so a worker and a
//!    canceller race with exactly one winner, and a task never runs twice. The one
//!    exception has nobody to race: a holder of the queued reference that is the sole
//!    owner (invariant 4) sets `RUNNING` with a plain store (`try_claim_sole_owner`).
//! 2. *Output.* After `COMPLETE`, the output belongs to the handle if `JOIN_INTEREST` was
//!    set in the `complete` transition, else to the completing thread, which drops it.
//! 3. *Waker.* While `JOIN_WAKER` is clear, only the handle touches the waker slot. While
//!    it is set, the handle does not write it, and the task side may read it after it set
//!    `COMPLETE`. The handle clears it only while `COMPLETE` is clear.
//! 4. *References.* A task starts with two references: its handle's and its queued one
//!    (owned by the `JobRef` in a queue, then by whoever runs or discards it). The memory
//!    is freed by whoever drops the last one. Fast paths fold steps together without
//!    breaking this: a handle dropped early clears `JOIN_INTEREST` and its reference in
//!    one CAS (`drop_join_interest_and_ref`); a claimer completing a task nobody waits on
//!    publishes and drops its reference in one CAS (`complete_and_release_if_unwatched`);
//!    a claimer that finds itself the sole owner (`is_sole_owner`: no handle, one
//!    reference) frees the task without a transition, since no thread can observe it; and
//!    a worker that pops a task whose handle is already gone claims it the same way
//!    (`try_claim_sole_owner`: a load and a store, no CAS). Only a handle adds references
//!    (`cancel`'s `ref_inc`), so once the handle and every other reference are gone,
//!    none can come back; for the same reason `ref_dec` drops the last reference with a
//!    load, not an RMW (a handle joined after the worker released its reference frees
//!    the task so).
//! 5. *Pool lifetime.* A task that is neither `RUNNING` nor `COMPLETE` sits in a queue of a
//!    live pool. A canceller that claims it reaches the pool (to count) before `complete`;
//!    a worker that pops a claimed task waits for `COMPLETE` before dropping its
//!    reference, so the pool outlives the canceller's use of it.
//! 6. *Timer.* A SCHEDULED task's queued reference is held by the timer (its inbox or its
//!    wheel), or, for a retry, briefly by the worker on its way to the inbox. The driver's
//!    fire clears `SCHEDULED` only if the task is unclaimed. A canceller whose claim saw
//!    `SCHEDULED` sends the driver a `Cancel` holding a fresh reference (so the address
//!    cannot be reused meanwhile), before `complete`; the driver removes the entry from the
//!    wheel at once, or pairs the `Cancel` with an `Insert` still to come, or with a fire
//!    that already lost to the canceller. `SCHEDULED` stays set in a task completed by
//!    such a canceller, which is how the driver knows a `Cancel` is on its way.

use crate::loom::{AtomicUsize, Ordering};

pub(crate) const RUNNING: usize = 1 << 0;
pub(crate) const COMPLETE: usize = 1 << 1;
pub(crate) const JOIN_INTEREST: usize = 1 << 2;
pub(crate) const JOIN_WAKER: usize = 1 << 3;
pub(crate) const SCHEDULED: usize = 1 << 4;
pub(crate) const CANCEL_REQUESTED: usize = 1 << 5;
pub(crate) const OUTCOME_SHIFT: u32 = 6;
pub(crate) const OUTCOME_MASK: usize = 0b111 << OUTCOME_SHIFT;
pub(crate) const REF_COUNT_SHIFT: u32 = 12;
pub(crate) const REF_ONE: usize = 1 << REF_COUNT_SHIFT;
pub(crate) const REF_COUNT_MASK: usize = !(REF_ONE - 1);

const FLAGS: [usize; 7] = [
    RUNNING,
    COMPLETE,
    JOIN_INTEREST,
    JOIN_WAKER,
    SCHEDULED,
    CANCEL_REQUESTED,
    OUTCOME_MASK,
];
const _: () = {
    let mut i = 0;
    while i < FLAGS.len() {
        let mut j = i + 1;
        while j < FLAGS.len() {
            assert!(FLAGS[i] & FLAGS[j] == 0, "state bits overlap");
            j += 1;
        }
        assert!(
            FLAGS[i] & REF_COUNT_MASK == 0,
            "a flag overlaps the ref count"
        );
        i += 1;
    }
    // At least 16 bits of reference count even on 32-bit targets.
    assert!(usize::BITS - REF_COUNT_SHIFT >= 16);
};

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Value = 0,
    Panicked = 1,
    Cancelled = 2,
    Shutdown = 3,
    /// The run passed its time limit (`TaskBuilder::time_limit`).
    TimedOut = 4,
}

impl Outcome {
    fn bits(self) -> usize {
        (self as usize) << OUTCOME_SHIFT
    }
}

/// A loaded state word.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot(usize);

impl Snapshot {
    pub(crate) fn is_running(self) -> bool {
        self.0 & RUNNING != 0
    }
    pub(crate) fn is_complete(self) -> bool {
        self.0 & COMPLETE != 0
    }
    pub(crate) fn is_scheduled(self) -> bool {
        self.0 & SCHEDULED != 0
    }
    pub(crate) fn is_cancel_requested(self) -> bool {
        self.0 & CANCEL_REQUESTED != 0
    }
    pub(crate) fn is_claimed(self) -> bool {
        self.0 & (RUNNING | COMPLETE) != 0
    }
    pub(crate) fn is_join_interested(self) -> bool {
        self.0 & JOIN_INTEREST != 0
    }
    pub(crate) fn is_join_waker_set(self) -> bool {
        self.0 & JOIN_WAKER != 0
    }
    pub(crate) fn ref_count(self) -> usize {
        (self.0 & REF_COUNT_MASK) >> REF_COUNT_SHIFT
    }
    /// The outcome; meaningful only when `is_complete`.
    pub(crate) fn outcome(self) -> Outcome {
        match (self.0 & OUTCOME_MASK) >> OUTCOME_SHIFT {
            0 => Outcome::Value,
            1 => Outcome::Panicked,
            2 => Outcome::Cancelled,
            3 => Outcome::Shutdown,
            _ => Outcome::TimedOut,
        }
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("running", &self.is_running())
            .field("complete", &self.is_complete())
            .field("join_interest", &self.is_join_interested())
            .field("join_waker", &self.is_join_waker_set())
            .field("scheduled", &self.is_scheduled())
            .field("cancel_requested", &self.is_cancel_requested())
            .field("outcome", &self.outcome())
            .field("refs", &self.ref_count())
            .finish()
    }
}

/// Result of [`State::try_claim`].
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TransitionToRunning {
    /// The caller owns the stage now; the snapshot is the state before the claim.
    Success(Snapshot),
    /// Someone else claimed it first; the snapshot says whether they finished.
    Failed(Snapshot),
}

/// The atomic state word of one task.
pub(crate) struct State {
    val: AtomicUsize,
}

impl State {
    /// QUEUED, with a handle and a queued reference.
    pub(crate) fn new() -> State {
        State {
            val: AtomicUsize::new(JOIN_INTEREST | (2 * REF_ONE)),
        }
    }

    /// SCHEDULED, with a handle and the timer's reference.
    pub(crate) fn new_scheduled() -> State {
        State {
            val: AtomicUsize::new(SCHEDULED | JOIN_INTEREST | (2 * REF_ONE)),
        }
    }

    /// Already COMPLETE with `outcome`, with only the handle's reference (for a spawn
    /// refused by a closed pool).
    pub(crate) fn new_complete(outcome: Outcome) -> State {
        State {
            val: AtomicUsize::new(COMPLETE | outcome.bits() | JOIN_INTEREST | REF_ONE),
        }
    }

    #[inline]
    pub(crate) fn load(&self) -> Snapshot {
        // Acquire: a reader that sees COMPLETE sees the output (pairs with `complete`).
        Snapshot(self.val.load(Ordering::Acquire))
    }

    /// QUEUED → RUNNING (invariant 1).
    #[inline]
    pub(crate) fn try_claim(&self) -> TransitionToRunning {
        let mut cur = self.val.load(Ordering::Relaxed);
        loop {
            if cur & (RUNNING | COMPLETE) != 0 {
                // Acquire so that a loser sees what the winner wrote (pairs with the CAS
                // below and with `complete`).
                return TransitionToRunning::Failed(self.load());
            }
            // Acquire: the claimer reads the closure written before the task was queued
            // (the queue push already orders it; this also orders a racing canceller).
            match self.val.compare_exchange_weak(
                cur,
                cur | RUNNING,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return TransitionToRunning::Success(Snapshot(cur)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// QUEUED → RUNNING for the holder of the queued (or timer) reference when it is the
    /// sole owner (invariant 4: no handle, no other reference): then no other thread can
    /// reach the word, so a load and a plain store claim the task, without `try_claim`'s
    /// locked CAS. Returns the state before; `None` (changing nothing) when someone else
    /// may still reach the task, or it is claimed or complete: use `try_claim`.
    #[inline]
    #[must_use]
    pub(crate) fn try_claim_sole_owner(&self) -> Option<Snapshot> {
        // Acquire: pairs with the handle's release of its reference (as in
        // `is_sole_owner`), so everything the handle did happens before we touch the stage.
        let cur = self.val.load(Ordering::Acquire);
        if cur & (JOIN_INTEREST | RUNNING | COMPLETE) != 0 || cur & REF_COUNT_MASK != REF_ONE {
            return None;
        }
        // Relaxed: nobody else holds a reference, so nobody else reads or writes the word
        // until we hand one out (a retry's timer insert publishes it with its own release).
        self.val.store(cur | RUNNING, Ordering::Relaxed);
        Some(Snapshot(cur))
    }

    /// RUNNING → COMPLETE with `outcome`; returns the state before. AcqRel: Release
    /// publishes the stage to the handle; Acquire sees the waker the handle stored before
    /// setting `JOIN_WAKER` (invariant 3).
    #[inline]
    #[must_use]
    pub(crate) fn complete(&self, outcome: Outcome) -> Snapshot {
        let prev = self
            .val
            .fetch_xor(RUNNING | COMPLETE | outcome.bits(), Ordering::AcqRel);
        debug_assert!(prev & RUNNING != 0 && prev & (COMPLETE | OUTCOME_MASK) == 0);
        Snapshot(prev)
    }

    /// Completes and, in the same step, drops the caller's reference, if nobody waits
    /// (`JOIN_INTEREST` set, `JOIN_WAKER` clear): then there is nothing to wake and the
    /// output goes to the handle, so the caller never touches the task again. Returns
    /// false, changing nothing, otherwise. One RMW instead of `complete` plus `ref_dec`.
    #[inline]
    #[must_use]
    pub(crate) fn complete_and_release_if_unwatched(&self, outcome: Outcome) -> bool {
        let mut cur = self.val.load(Ordering::Relaxed);
        loop {
            if cur & (JOIN_INTEREST | JOIN_WAKER) != JOIN_INTEREST {
                return false;
            }
            debug_assert!(cur & RUNNING != 0 && cur & (COMPLETE | OUTCOME_MASK) == 0);
            debug_assert!(cur >> REF_COUNT_SHIFT >= 2, "the handle holds a reference");
            let next = (cur ^ (RUNNING | COMPLETE | outcome.bits())) - REF_ONE;
            // AcqRel as in `complete` (Release publishes the output) and `ref_dec`.
            match self
                .val
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The completing claimer owns the whole task: the handle is gone and only the
    /// caller's reference is left, so no other thread can reach the task again.
    #[inline]
    #[must_use]
    pub(crate) fn is_sole_owner(&self) -> bool {
        // Acquire: pairs with the handle's release of its reference, so everything the
        // handle did happens before we free the task (as in `Arc`'s drop).
        let cur = self.val.load(Ordering::Acquire);
        cur & JOIN_INTEREST == 0 && cur & REF_COUNT_MASK == REF_ONE
    }

    /// Handle side: clears `JOIN_INTEREST` and drops the handle's reference in one step,
    /// unless the task is complete. `Err` means it is complete and the handle owns the
    /// output (invariant 2): it drops it, then its reference with `ref_dec`. On `Ok` the
    /// task still holds its queued (or timer) reference, so this was never the last.
    #[inline]
    pub(crate) fn drop_join_interest_and_ref(&self) -> Result<(), Snapshot> {
        let mut cur = self.val.load(Ordering::Acquire);
        loop {
            if cur & COMPLETE != 0 {
                return Err(Snapshot(cur));
            }
            debug_assert!(cur >> REF_COUNT_SHIFT >= 2);
            // AcqRel: Release hands the handle's accesses to whoever frees the task;
            // Acquire for the Err path on retry.
            match self.val.compare_exchange_weak(
                cur,
                (cur & !JOIN_INTEREST) - REF_ONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Handle side: sets `JOIN_WAKER` after storing a waker, unless complete (`Err`).
    pub(crate) fn set_join_waker(&self) -> Result<(), Snapshot> {
        self.update_unless_complete(|s| s | JOIN_WAKER)
    }

    /// Handle side: clears `JOIN_WAKER` to regain the slot, unless complete (`Err`).
    pub(crate) fn unset_join_waker(&self) -> Result<(), Snapshot> {
        self.update_unless_complete(|s| s & !JOIN_WAKER)
    }

    fn update_unless_complete(&self, f: impl Fn(usize) -> usize) -> Result<(), Snapshot> {
        let mut cur = self.val.load(Ordering::Acquire);
        loop {
            if cur & COMPLETE != 0 {
                return Err(Snapshot(cur));
            }
            // AcqRel: Release publishes the waker written before setting JOIN_WAKER (pairs
            // with the Acquire in `complete`); Acquire pairs with `complete` on failure.
            match self
                .val
                .compare_exchange_weak(cur, f(cur), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// The driver fires a timer: SCHEDULED → QUEUED, unless a canceller claimed the task
    /// first (`Err`; invariant 6).
    pub(crate) fn transition_scheduled_to_queued(&self) -> Result<(), Snapshot> {
        let mut cur = self.val.load(Ordering::Acquire);
        loop {
            debug_assert!(cur & SCHEDULED != 0 || cur & COMPLETE != 0);
            if cur & (RUNNING | COMPLETE) != 0 {
                return Err(Snapshot(cur));
            }
            // Acquire on failure: a lost race must see the canceller's writes. Relaxed on
            // success: the queue push that follows publishes the task.
            match self.val.compare_exchange_weak(
                cur,
                cur & !SCHEDULED,
                Ordering::Relaxed,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// A retry goes back to the timer: RUNNING → SCHEDULED. Only the claimer calls this,
    /// before it hands the timer its reference (`raw.rs`, `reschedule`): from here a
    /// `cancel` wins, and its `Cancel` may overtake that reference (invariant 6).
    pub(crate) fn transition_running_to_scheduled(&self) {
        // Release: the body's state after this attempt is published to the next claimer
        // (who acquires in `try_claim`).
        let prev = self.val.fetch_xor(RUNNING | SCHEDULED, Ordering::Release);
        debug_assert!(prev & RUNNING != 0 && prev & (SCHEDULED | COMPLETE) == 0);
    }

    /// Handle side: asks a claimed task to stop (its claimer sees it in `checkpoint()`,
    /// and when the attempt ends). A no-op on a complete task, whose outcome is final.
    pub(crate) fn request_cancel(&self) {
        // Relaxed: a hint with nothing to publish; the claimer reads it with a plain load.
        self.val.fetch_or(CANCEL_REQUESTED, Ordering::Relaxed);
    }

    /// Adds a reference (for a message that must keep the task alive).
    pub(crate) fn ref_inc(&self) {
        // Relaxed: the caller already holds a reference, as in `Arc::clone`.
        let prev = self.val.fetch_add(REF_ONE, Ordering::Relaxed);
        if prev & REF_COUNT_MASK == REF_COUNT_MASK {
            // Overflow would free a live task: abort, as `Arc` does.
            std::process::abort();
        }
    }

    /// Drops one reference; true if it was the last (the caller frees the task). The last
    /// reference is dropped without an RMW: once the caller's is the only one left, no
    /// other thread can reach the word or add a reference (only a handle adds one,
    /// invariant 4), so nobody sees the count.
    #[inline]
    #[must_use]
    pub(crate) fn ref_dec(&self) -> bool {
        // Acquire: pairs with the Release of every other reference's drop, so their
        // accesses happen before the caller frees the task.
        if self.val.load(Ordering::Acquire) & REF_COUNT_MASK == REF_ONE {
            return true;
        }
        // AcqRel: Release hands our accesses to whoever frees; Acquire (for the freer)
        // sees everyone else's.
        let prev = self.val.fetch_sub(REF_ONE, Ordering::AcqRel);
        debug_assert!(
            prev >> REF_COUNT_SHIFT >= 1,
            "task reference count underflow"
        );
        prev & REF_COUNT_MASK == REF_ONE
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
