//! Counters, kept per thread on their own cache lines and summed on read.
//!
//! Each worker owns one [`Counters`] block and is its only writer, so it bumps them with a
//! plain load and store (no locked instruction). Threads outside the pool share a few
//! striped blocks ([`EXTERNAL_STRIPES`]) and use `fetch_add`. [`Metrics`] is the sum.
//! All accesses are `Relaxed`: the counters order nothing; a task is counted before the
//! release that resolves its handle, so a joiner that saw the result sees the count.

use std::cell::Cell;
use std::fmt;

use crossbeam_utils::CachePadded;

use crate::loom::{AtomicU64, Ordering};

/// How many counter blocks threads outside the pool spread over.
pub(crate) const EXTERNAL_STRIPES: usize = 8;

/// One block of counters. See the field docs of [`Metrics`] for their meaning.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) spawned: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) stolen: AtomicU64,
    pub(crate) promoted: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) blocked: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) drop_panics: AtomicU64,
    pub(crate) parks: AtomicU64,
    pub(crate) unparks: AtomicU64,
    /// True for a worker's own block (single writer), false for a shared stripe.
    single_writer: bool,
}

impl Counters {
    pub(crate) fn for_worker() -> Counters {
        Counters {
            single_writer: true,
            ..Counters::default()
        }
    }

    /// Adds one to `counter`, which must be a field of `self`.
    #[inline]
    pub(crate) fn bump(&self, counter: &AtomicU64) {
        self.add(counter, 1)
    }

    /// Adds `n` to `counter`, which must be a field of `self`.
    #[inline]
    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        if self.single_writer {
            // Only the owning worker writes this block, so a load+store loses nothing and
            // avoids a locked read-modify-write on the hot path.
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn add_into(&self, m: &mut Metrics) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        m.spawned += r(&self.spawned);
        m.completed += r(&self.completed);
        m.panicked += r(&self.panicked);
        m.cancelled += r(&self.cancelled);
        m.stolen += r(&self.stolen);
        m.join_frames_shared += r(&self.promoted);
        m.retries_scheduled += r(&self.retried);
        m.refused += r(&self.refused);
        m.blocked += r(&self.blocked);
        m.timed_out += r(&self.timed_out);
        m.drop_panics += r(&self.drop_panics);
        m.parks += r(&self.parks);
        m.unparks += r(&self.unparks);
    }
}

/// All counter blocks of one pool.
pub(crate) struct CounterSet {
    workers: Box<[CachePadded<Counters>]>,
    external: [CachePadded<Counters>; EXTERNAL_STRIPES],
}

impl CounterSet {
    pub(crate) fn new(workers: usize) -> CounterSet {
        CounterSet {
            workers: (0..workers)
                .map(|_| CachePadded::new(Counters::for_worker()))
                .collect(),
            external: std::array::from_fn(|_| CachePadded::new(Counters::default())),
        }
    }

    /// The block a worker owns.
    pub(crate) fn worker(&self, index: usize) -> &Counters {
        &self.workers[index]
    }

    /// The stripe for the current (non-worker) thread.
    pub(crate) fn external(&self) -> &Counters {
        &self.external[stripe_of_current_thread()]
    }

    /// Sums every block into `m`'s counter fields.
    pub(crate) fn sum_into(&self, m: &mut Metrics) {
        for c in self.workers.iter().chain(self.external.iter()) {
            c.add_into(m);
        }
    }
}

fn stripe_of_current_thread() -> usize {
    // A plain round-robin ticket, not part of any protocol, so it is not modelled by loom.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % EXTERNAL_STRIPES);
        }
        s.get()
    })
}

/// A snapshot of a pool's counters: lifetime totals, plus queue depths at the moment of
/// the call.
///
/// Taken without stopping the pool, so fields read a moment apart may be slightly out of
/// step with each other while tasks are in flight; once the pool is quiet they add up:
/// `spawned == completed + panicked + cancelled + (queued and running)`.
///
/// ```
/// let pool = weft::Pool::builder().workers(2).build().unwrap();
/// pool.spawn(|| 1 + 1).join().unwrap();
/// let m = pool.metrics();
/// assert_eq!(m.spawned, 1);
/// assert_eq!(m.completed, 1);
/// println!("{m:?}");
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Tasks accepted by `spawn` (a spawn refused after shutdown is not counted).
    pub spawned: u64,
    /// Tasks whose closure returned (whatever it returned).
    pub completed: u64,
    /// Tasks whose closure panicked; the panic went to the handle.
    pub panicked: u64,
    /// Tasks that never ran: cancelled through their handle, or by shutdown.
    pub cancelled: u64,
    /// Jobs a worker took from another worker's deque.
    pub stolen: u64,
    /// Second halves of [`join`](crate::join)s that a worker offered to the others (on a
    /// heartbeat, or before a blocking wait); the other halves ran inline at no sharing
    /// cost.
    pub join_frames_shared: u64,
    /// Times a worker went to sleep (parked) for lack of work.
    pub parks: u64,
    /// Times a sleeping worker was woken for new work.
    pub unparks: u64,
    /// Jobs waiting in the high lane now.
    pub queued_high: u64,
    /// Jobs waiting in the normal lane now.
    pub queued_normal: u64,
    /// Jobs waiting in the low lane now.
    pub queued_low: u64,
    /// Worker threads in the pool.
    pub workers: u64,
    /// Tasks waiting in the timer for their deadline now.
    pub timers_pending: u64,
    /// Timers that came due and were handed to their lane.
    pub timers_fired: u64,
    /// Failed attempts sent back to the timer for another try.
    pub retries_scheduled: u64,
    /// Tasks whose run passed their [`time_limit`](crate::TaskBuilder::time_limit); their
    /// handles resolve to a time-limit error.
    pub timed_out: u64,
    /// `try_spawn` calls refused because the lane was full (see
    /// [`Builder::max_queued`](crate::Builder::max_queued)).
    pub refused: u64,
    /// `spawn` calls that had to wait for room in a full lane.
    pub blocked: u64,
    /// Panics caught from the `Drop` of a task's closure or output, on this pool's threads
    /// or in `cancel` (see [`crate::drop_panics`] for those caught elsewhere).
    pub drop_panics: u64,
}

impl Metrics {
    /// Jobs waiting in all lanes.
    ///
    /// ```
    /// let m = weft::Pool::builder().workers(1).build().unwrap().metrics();
    /// assert_eq!(m.queued(), m.queued_high + m.queued_normal + m.queued_low);
    /// ```
    pub fn queued(&self) -> u64 {
        self.queued_high + self.queued_normal + self.queued_low
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("workers", &self.workers)
            .field("spawned", &self.spawned)
            .field("completed", &self.completed)
            .field("panicked", &self.panicked)
            .field("cancelled", &self.cancelled)
            .field("stolen", &self.stolen)
            .field("join_frames_shared", &self.join_frames_shared)
            .field("parks", &self.parks)
            .field("unparks", &self.unparks)
            .field("queued_high", &self.queued_high)
            .field("queued_normal", &self.queued_normal)
            .field("queued_low", &self.queued_low)
            .field("timers_pending", &self.timers_pending)
            .field("timers_fired", &self.timers_fired)
            .field("retries_scheduled", &self.retries_scheduled)
            .field("timed_out", &self.timed_out)
            .field("refused", &self.refused)
            .field("blocked", &self.blocked)
            .field("drop_panics", &self.drop_panics)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
