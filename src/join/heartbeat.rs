//! The heartbeat: when a worker shares a `join` frame, and which joins record one.
//!
//! Each worker keeps its own beat: a [`Heartbeat`] it alone touches. The beat is a clock
//! read on the join path, amortised over many joins: a worker that records a frame looks at
//! the clock (one join in [`COARSE_CLOCK_EVERY`] while its joins are coarse, one in
//! [`CLOCK_EVERY`] while they are fine-grained), and if [`INTERVAL`] passed since its last
//! beat, the beat is due: the worker judges its joins (below) and, if they are fine,
//! promotes its oldest private frame (see the protocol in [`super`]). After an idle spell
//! the first beat comes [`FIRST_BEAT`] after the worker's first recorded frame.
//!
//! # Fine and coarse joins
//!
//! At each beat a worker counts its joins since the previous one. If they came at least
//! [`FINE_JOINS_PER_BEAT`] per [`INTERVAL`] (under about 400 ns apart), they are *fine*:
//!
//! - a fine join records a frame only while the worker holds fewer than [`RECORD_BELOW`]
//!   private frames (the outermost joins, the ones worth sharing), plus one join in
//!   [`RECORD_EVERY`]; the others are plain calls `(a(), b())`, which cost what the two
//!   calls cost (a recorded frame costs about 15 ns more);
//! - a recorded fine frame waits in the private list and is shared only on a beat, oldest
//!   first: one deque push per worker per [`INTERVAL`] at most, whatever the join rate.
//!
//! Otherwise they are *coarse*, and every join records a frame and shares it at once, as
//! rayon does: a share (a deque push, and the pop that takes it back) costs tens of ns,
//! little beside a join's work of 400 ns or more, while holding a coarse frame back for a
//! beat can leave a worker idle for most of 100 µs. A plain call is never used for coarse
//! joins: it can never be shared later, and in a merge sort whose joins are milliseconds
//! apart it would leave whole subtrees to one worker.
//!
//! A worker starts coarse and keeps its judgement across idle spells.
//!
//! # Why a clock read, not a heartbeat thread
//!
//! Chosen by measurement (`benches/forkjoin.rs` and `benches/spawn.rs`, 2 workers on 2
//! cores; BENCHMARKS.md section 10). The first version had a thread per pool that raised a
//! flag per worker every 100 µs and parked while no worker joined. Reading the flag was
//! free, but on a machine whose cores are all busy, every beat preempts a worker: the
//! coarse merge sort ran 1.13 to 1.18× rayon's time with it (1.03× with the thread beating
//! every 1 ms instead), while the clock read gave 1.03 to 1.11× and the same tree and fib
//! figures. A clock read (`Instant::now`, about 20 ns through the vDSO here) is also what
//! lets an idle pool cost nothing without a park protocol: a worker that runs no join
//! reads no clock, and no thread wakes. And sharing coarse frames at once (above) took
//! fib(25) with sequential leaves below fib(15) from 1.61× rayon's time (shared only on
//! beats) to 0.99×, with the fine-grained figures unchanged.
//!
//! Promotion latency: while joins are fine, a beat is noticed within [`CLOCK_EVERY`] joins
//! of coming due (under about 100 µs by the definition of fine). A worker that runs no join
//! for a while needs no beat: nothing of its is waiting to be shared.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The time between two beats (Spice's and chili's choice).
pub(crate) const INTERVAL: Duration = Duration::from_micros(100);

/// After the worker was idle, its first beat comes this long after its first recorded
/// frame. A join that is over sooner (a few µs of work) is not worth waking another
/// worker for; anything longer is shared almost at once.
pub(crate) const FIRST_BEAT: Duration = Duration::from_micros(10);

/// While joins are fine-grained, a join records a frame when the worker holds fewer than
/// this many private frames.
pub(crate) const RECORD_BELOW: usize = 3;

/// While joins are fine-grained, one join in this many records a frame even with
/// [`RECORD_BELOW`] frames held. A power of two.
pub(crate) const RECORD_EVERY: u32 = 64;

/// While joins are fine-grained, one join in this many reads the clock. A power of two, a
/// multiple of [`RECORD_EVERY`] (so that the join reading it records a frame).
pub(crate) const CLOCK_EVERY: u32 = 256;

/// While joins are coarse, one join in this many reads the clock (only to notice when they
/// turn fine; coarse frames are shared at once). A power of two.
pub(crate) const COARSE_CLOCK_EVERY: u32 = 8;

/// Joins per [`INTERVAL`] from which a worker counts its joins as fine-grained.
pub(crate) const FINE_JOINS_PER_BEAT: u32 = 256;

const _: () = assert!(RECORD_EVERY.is_power_of_two() && CLOCK_EVERY.is_power_of_two());
const _: () = assert!(CLOCK_EVERY.is_multiple_of(RECORD_EVERY));

/// One worker's beat. Only its worker touches it (it is not `Sync`).
pub(crate) struct Heartbeat {
    /// Joins seen, modulo 2^32.
    joins: Cell<u32>,
    /// `joins` at the last beat (or at the first record after idle).
    joins_at_beat: Cell<u32>,
    /// The joins between the last two beats came at least [`FINE_JOINS_PER_BEAT`] per
    /// [`INTERVAL`]. Kept across idle spells: a worker goes on as it left off.
    fine: Cell<bool>,
    /// When the last beat came (or the first record after idle).
    last_beat: Cell<Instant>,
    /// When the next beat is due; `None` after idle, until the first record.
    due: Cell<Option<Instant>>,
}

impl Heartbeat {
    pub(crate) fn new() -> Heartbeat {
        Heartbeat {
            joins: Cell::new(0),
            joins_at_beat: Cell::new(0),
            fine: Cell::new(false),
            last_beat: Cell::new(Instant::now()),
            due: Cell::new(None),
        }
    }

    /// The worker was idle (it parked): the next record starts the clock afresh, so that
    /// the idle time counts neither towards a beat nor in judging the joins.
    pub(crate) fn after_idle(&self) {
        self.due.set(None);
    }

    /// Counts a join and says whether it records a frame; `frames` is how many private
    /// frames the worker holds.
    #[inline(always)]
    pub(crate) fn should_record(&self, frames: usize) -> bool {
        let n = self.joins.get().wrapping_add(1);
        self.joins.set(n);
        !self.fine.get() || n & (RECORD_EVERY - 1) == 0 || frames < RECORD_BELOW
    }

    /// Called by a join that recorded a frame: whether a beat is due (then the worker
    /// promotes its oldest frame). Reads the clock only as the module docs say.
    #[inline(always)]
    pub(crate) fn is_due(&self) -> bool {
        let every = if self.fine.get() {
            CLOCK_EVERY
        } else {
            COARSE_CLOCK_EVERY
        };
        if self.joins.get() & (every - 1) != 0 {
            return false;
        }
        self.look_at_clock(Instant::now())
    }

    /// Whether the joins are fine-grained (else each recorded frame is shared at once).
    #[inline(always)]
    pub(crate) fn is_fine(&self) -> bool {
        self.fine.get()
    }

    /// The clock part of [`is_due`](Self::is_due), at `now`: a beat is due if its time
    /// came; then the joins since the last one are judged fine or not, and the next beat
    /// is due [`INTERVAL`] later. The first record after idle only sets the first beat
    /// [`FIRST_BEAT`] ahead.
    #[inline(never)]
    fn look_at_clock(&self, now: Instant) -> bool {
        let n = self.joins.get();
        let Some(due) = self.due.get() else {
            self.due.set(Some(now + FIRST_BEAT));
            self.last_beat.set(now);
            self.joins_at_beat.set(n);
            return false;
        };
        if now < due {
            return false;
        }
        let since = n.wrapping_sub(self.joins_at_beat.replace(n));
        let elapsed = now.saturating_duration_since(self.last_beat.replace(now));
        self.fine.set(is_fine(since, elapsed));
        self.due.set(Some(now + INTERVAL));
        true
    }
}

/// Whether `joins` joins in `elapsed` come at least [`FINE_JOINS_PER_BEAT`] per
/// [`INTERVAL`].
fn is_fine(joins: u32, elapsed: Duration) -> bool {
    u128::from(joins) * INTERVAL.as_nanos() >= u128::from(FINE_JOINS_PER_BEAT) * elapsed.as_nanos()
}

#[cfg(all(test, not(loom)))]
mod tests;
