//! The scheduler thread: it owns the timing wheel, and turns deadlines into queued tasks.
//!
//! ## Actors and messages
//! Any thread that spawns a delayed task, cancels one, retries one, or starts or cancels a
//! periodic schedule sends a [`Msg`] through the lock-free `inbox` (a crossbeam
//! `Injector`: no lock is shared with the workers). The driver thread alone owns the
//! [`Wheel`] and a map from entry address to wheel key.
//!
//! ## The driver's loop
//! 1. publish AWAKE in `sleeping_until`; drain the inbox (insert entries; remove cancelled
//!    ones from the wheel at once, in O(1)). A `Cancel` can overtake its `Insert` (a retry
//!    becomes SCHEDULED before it sends its `Insert`): it waits in `early_cancels` for
//!    it. A fire that lost to a canceller leaves a tombstone for the `Cancel` still on its
//!    way. Every `Cancel` holds a task reference, so no address is reused meanwhile;
//! 2. advance the wheel to now; push every due task into its lane's injector, in deadline
//!    order (ties in insertion order), unless a canceller claimed it first;
//! 3. publish the next deadline in `sleeping_until`, `fence(SeqCst)`, look at the inbox
//!    once more, and park until that deadline (or indefinitely). It never polls on a fixed
//!    interval, so an idle pool with pending timers uses no CPU.
//!
//! A sender pushes its message, `fence(SeqCst)`, then reads `sleeping_until`, and unparks
//! the driver only if its deadline is earlier. The fences pair as in `sleep.rs`: either the
//! driver sees the message in step 3, or the sender sees the sleep target it must beat.
//! A sender whose deadline is not earlier leaves the driver asleep: its timeout ends at or
//! before that deadline, and it finds the message then. Both halves live in [`Handoff`],
//! which the loom models (`tests/loom_timer.rs`) drive as the driver and senders do.
//!
//! ## Time
//! A tick is 1 ms since the timer was created. Deadlines round *up* to a tick and "now"
//! rounds *down*, so a task never starts before its deadline.
//! `Duration::MAX`-like delays (past what an `Instant` can hold) become [`NEVER`]: kept,
//! cancellable, never fired.
//!
//! ## Shutdown
//! When the pool closes, the driver resolves every timer still pending (in the inbox or the
//! wheel) as shut down, sets `gone`, fences, and drains the inbox once more. A sender that
//! sees `gone` after its own fence drains the inbox itself, so a delayed spawn racing
//! shutdown still resolves.

use std::collections::{HashMap, HashSet};
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal};
use crossbeam_utils::CachePadded;

use super::periodic::PeriodicState;
pub(crate) use super::wheel::NEVER;
use super::wheel::{Key, Wheel};
use crate::job::JobRef;
use crate::lane::Lane;
use crate::loom::{fence, AtomicBool, AtomicU64, Ordering};
use crate::metrics::Counters;
use crate::task::header::{self, TaskRef};

/// `sleeping_until` while the driver is awake and will look at its inbox again.
const AWAKE: u64 = 0;

/// The length of a tick.
const TICK: Duration = Duration::from_millis(1);

/// What a sender must do after pushing its message ([`Handoff::after_send`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterSend {
    /// The driver has exited and may have drained for the last time: drain the inbox.
    DrainAfterExit,
    /// The driver sleeps (or is about to) past the message's deadline: unpark it.
    Wake,
    /// The driver will see the message in time.
    Nothing,
}

/// The two words senders and the driver hand messages off with (module docs): the tick
/// the driver sleeps until, and whether it has exited. Each side writes (the inbox, or
/// one of these), `fence(SeqCst)`, then reads what the other side writes.
///
/// `FENCED` is `true` everywhere but in the loom models' negative control, which removes
/// the fences to show they are what makes the hand-off work.
struct Handoff<const FENCED: bool = true> {
    /// The tick the driver sleeps until: `AWAKE`, a tick, or `NEVER` (until unparked).
    sleeping_until: CachePadded<AtomicU64>,
    /// Set once the driver exited; its final drain follows.
    gone: AtomicBool,
}

impl<const FENCED: bool> Handoff<FENCED> {
    fn new() -> Self {
        Handoff {
            sleeping_until: CachePadded::new(AtomicU64::new(AWAKE)),
            gone: AtomicBool::new(false),
        }
    }

    /// `fence(SeqCst)`, unless this is the negative control.
    #[inline(always)]
    fn fence() {
        if FENCED {
            crate::util::jitter();
            fence(Ordering::SeqCst);
        }
    }

    /// The driver, step 1: it is awake and drains the inbox next.
    #[inline]
    fn set_awake(&self) {
        self.sleeping_until.store(AWAKE, Ordering::SeqCst);
    }

    /// The driver, step 3: publishes the tick it will sleep until, then fences. The caller
    /// must look at the inbox once more afterwards, and park only if it is empty.
    #[inline]
    fn publish_and_fence(&self, next: u64) {
        self.sleeping_until.store(next, Ordering::SeqCst);
        // Pairs with the sender's fence in `after_send` (module docs).
        Self::fence();
    }

    /// The driver, at exit: sets `gone`, then fences. The caller must drain the inbox once
    /// more afterwards.
    #[inline]
    fn exit_and_fence(&self) {
        // Release, though no reader relies on it: senders load `gone` after their fence.
        self.gone.store(true, Ordering::Release);
        // Pairs with the sender's fence: either it sees `gone`, or we see its message.
        Self::fence();
    }

    /// A sender, right after pushing a message due at `deadline`: fences, then says what
    /// is left to do.
    #[inline]
    fn after_send(&self, deadline: u64) -> AfterSend {
        // Pairs with the driver's fence before it parks and before its final drain.
        Self::fence();
        if self.gone.load(Ordering::Relaxed) {
            AfterSend::DrainAfterExit
        } else if deadline < self.sleeping_until.load(Ordering::Relaxed) {
            AfterSend::Wake
        } else {
            AfterSend::Nothing
        }
    }
}

/// A message to the driver.
enum Msg {
    /// Put a SCHEDULED task's timer reference in the wheel.
    Insert {
        deadline: u64,
        job: JobRef,
        lane: Lane,
    },
    /// A canceller claimed this SCHEDULED task: drop its wheel entry (invariant 6 of
    /// `task/state.rs`).
    Cancel(TaskRef),
    /// Start a periodic schedule, first due at `deadline`.
    InsertPeriodic {
        deadline: u64,
        schedule: Arc<PeriodicState>,
    },
    /// A schedule was cancelled: drop its wheel entry.
    CancelPeriodic(Arc<PeriodicState>),
}

/// A wheel entry.
enum Entry {
    /// A SCHEDULED task's timer reference, and its lane.
    Task(JobRef, Lane),
    /// A periodic schedule and the tick it was scheduled for.
    Periodic(Arc<PeriodicState>, u64),
}

impl Entry {
    /// The key of the driver's map for this entry: the task's or the schedule's address.
    fn id(&self) -> NonNull<()> {
        match self {
            Entry::Task(job, _) => job.as_ptr().cast(),
            Entry::Periodic(s, _) => NonNull::from(&**s).cast(),
        }
    }

    /// Resolves the entry without firing it: a task as shut down (or, if a canceller
    /// claimed it, just drops the timer's reference), a schedule as cancelled.
    fn discard<D: Dispatch + ?Sized>(self, shared: &D) {
        match self {
            Entry::Task(job, _) => job.discard(shared.counters()),
            Entry::Periodic(s, _) => {
                s.cancel();
            }
        }
    }
}

/// What the timer driver and its senders need of the pool: the pool's `Shared`
/// implements it.
pub(crate) trait Dispatch: Send + Sync + 'static {
    /// The pool's timer (its inbox and hand-off).
    fn timer(&self) -> &Timer;

    /// The counter block the current thread writes.
    fn counters(&self) -> &Counters;

    /// Queues a timer that came due in `lane`: a task made QUEUED again, or a run of a
    /// periodic schedule.
    fn push_due(&self, lane: Lane, job: JobRef);

    /// True once the pool shut down and its workers are leaving: the driver resolves
    /// what is left and exits.
    fn is_shut_down(&self) -> bool;

    /// The driver thread finished its work (the pool's shutdown waits for it).
    fn driver_exited(&self);
}

/// The senders' side of the timer, reached through the pool's [`Dispatch`].
pub(crate) struct Timer {
    inbox: Injector<Msg>,
    /// `sleeping_until` and `gone`.
    handoff: Handoff,
    thread: OnceLock<Thread>,
    start: Instant,
    /// Entries in the wheel, as of the driver's last loop (a gauge for metrics).
    pending: AtomicU64,
    /// Timers that came due and were handed to the lanes.
    fired: AtomicU64,
    /// Timers (tasks and schedules) still waiting when the pool shut down.
    dropped: AtomicU64,
}

impl Timer {
    pub(crate) fn new() -> Timer {
        Timer {
            inbox: Injector::new(),
            handoff: Handoff::new(),
            thread: OnceLock::new(),
            start: Instant::now(),
            pending: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// The first tick at or after `at` (deadlines round up: never early).
    pub(crate) fn tick_ceil(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start);
        let ms = d.as_millis();
        let ceil = if d > Duration::from_millis(ms as u64) {
            ms + 1
        } else {
            ms
        };
        u64::try_from(ceil).unwrap_or(NEVER - 1).min(NEVER - 1)
    }

    /// The last tick at or before `now`.
    fn tick_floor(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(NEVER - 1)
    }

    /// The instant a tick begins, if it can be represented.
    fn instant_of(&self, tick: u64) -> Option<Instant> {
        self.start
            .checked_add(TICK.checked_mul(u32::try_from(tick).ok()?)?)
    }

    /// Hands a SCHEDULED task's timer reference to the driver.
    pub(crate) fn insert<D: Dispatch + ?Sized>(
        &self,
        deadline: u64,
        job: JobRef,
        lane: Lane,
        pool: &D,
    ) {
        self.send(
            Msg::Insert {
                deadline,
                job,
                lane,
            },
            deadline,
            pool,
        );
    }

    /// Asks the driver to drop a cancelled task's wheel entry now.
    pub(crate) fn cancel<D: Dispatch + ?Sized>(&self, task: TaskRef, pool: &D) {
        // Deadline 1: wake the driver unless it is awake anyway, so the memory goes now.
        self.send(Msg::Cancel(task), 1, pool);
    }

    /// Starts a periodic schedule, first due at `deadline`.
    pub(crate) fn insert_periodic<D: Dispatch + ?Sized>(
        &self,
        deadline: u64,
        schedule: Arc<PeriodicState>,
        pool: &D,
    ) {
        self.send(Msg::InsertPeriodic { deadline, schedule }, deadline, pool);
    }

    /// Asks the driver to drop a cancelled schedule's wheel entry now.
    pub(crate) fn cancel_periodic<D: Dispatch + ?Sized>(
        &self,
        schedule: Arc<PeriodicState>,
        pool: &D,
    ) {
        self.send(Msg::CancelPeriodic(schedule), 1, pool);
    }

    fn send<D: Dispatch + ?Sized>(&self, msg: Msg, deadline: u64, pool: &D) {
        self.inbox.push(msg);
        match self.handoff.after_send(deadline) {
            AfterSend::DrainAfterExit => self.drain_after_exit(pool),
            AfterSend::Wake => self.wake(),
            AfterSend::Nothing => {}
        }
    }

    /// Unparks the driver (it re-reads its inbox and the pool state).
    pub(crate) fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Timers waiting: in the wheel, and in the inbox on their way to it.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed) + self.inbox.len() as u64
    }

    pub(crate) fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    /// Timers the driver resolved at shutdown instead of firing them.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// After the driver exited: resolve whatever a racing sender left in the inbox.
    fn drain_after_exit<D: Dispatch + ?Sized>(&self, pool: &D) {
        let counters = pool.counters();
        loop {
            match self.inbox.steal() {
                Steal::Success(Msg::Insert { job, .. }) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    job.discard(counters);
                }
                // The driver resolved the entry before exiting; drop the reference.
                Steal::Success(Msg::Cancel(task)) => drop(task),
                Steal::Success(Msg::InsertPeriodic { schedule, .. }) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    schedule.cancel();
                }
                Steal::Success(Msg::CancelPeriodic(_)) => {}
                Steal::Retry => continue,
                Steal::Empty => break,
            }
        }
    }
}

/// The driver thread's own state.
struct Driver {
    wheel: Wheel<Entry>,
    keys: HashMap<NonNull<()>, Key>,
    expired: Vec<Entry>,
    /// `Cancel`s that overtook their task's `Insert` (a retry cancelled right after it
    /// became SCHEDULED); each holds its task reference, so the address stays unique.
    early_cancels: HashMap<NonNull<()>, TaskRef>,
    /// Tasks whose fire lost to a canceller: their `Cancel` is on its way.
    tombstones: HashSet<NonNull<()>>,
}

/// The scheduler thread's body. Returns when the pool shuts down.
pub(crate) fn run<D: Dispatch>(shared: Arc<D>) {
    let timer = shared.timer();
    let _ = timer.thread.set(thread::current());
    let mut driver = Driver {
        wheel: Wheel::new(),
        keys: HashMap::new(),
        expired: Vec::new(),
        early_cancels: HashMap::new(),
        tombstones: HashSet::new(),
    };
    loop {
        timer.handoff.set_awake();
        driver.drain_inbox(&*shared);
        if shared.is_shut_down() {
            break;
        }
        driver.fire_due(&*shared, Instant::now());
        let next = driver.wheel.next_deadline().unwrap_or(NEVER);
        timer
            .pending
            .store(driver.wheel.len() as u64, Ordering::Relaxed);
        timer.handoff.publish_and_fence(next);
        if !timer.inbox.is_empty() || shared.is_shut_down() {
            continue;
        }
        match timer.instant_of(next) {
            Some(at) => {
                let now = Instant::now();
                if at > now {
                    thread::park_timeout(at - now);
                }
            }
            None => thread::park(),
        }
    }
    driver.shut_down(&*shared);
    shared.driver_exited();
}

impl Driver {
    fn drain_inbox<D: Dispatch>(&mut self, shared: &D) {
        loop {
            match shared.timer().inbox.steal() {
                Steal::Success(Msg::Insert {
                    deadline,
                    job,
                    lane,
                }) => {
                    match self.early_cancels.remove(&job.as_ptr().cast()) {
                        // Cancelled already: discarding only waits for the canceller's
                        // COMPLETE and drops the timer's reference.
                        Some(task) => {
                            job.discard(shared.counters());
                            drop(task);
                        }
                        None => self.insert(deadline, Entry::Task(job, lane)),
                    }
                }
                Steal::Success(Msg::Cancel(task)) => {
                    let id: NonNull<()> = task.job_ptr().cast();
                    if self.keys.contains_key(&id) {
                        // Claimed by the canceller: discarding only waits for its COMPLETE
                        // and drops the timer's reference.
                        self.remove(id, shared);
                        drop(task);
                    } else if self.tombstones.remove(&id) {
                        drop(task);
                    } else {
                        // Its `Insert` is still to come.
                        self.early_cancels.insert(id, task);
                    }
                }
                Steal::Success(Msg::InsertPeriodic { deadline, schedule }) => {
                    self.insert(deadline, Entry::Periodic(schedule, deadline));
                }
                Steal::Success(Msg::CancelPeriodic(schedule)) => {
                    self.remove(NonNull::from(&*schedule).cast(), shared);
                }
                Steal::Retry => continue,
                Steal::Empty => break,
            }
        }
    }

    fn insert(&mut self, deadline: u64, entry: Entry) {
        let id = entry.id();
        let key = self.wheel.insert(deadline, entry);
        self.keys.insert(id, key);
    }

    fn remove<D: Dispatch>(&mut self, id: NonNull<()>, shared: &D) {
        if let Some(key) = self.keys.remove(&id) {
            if let Some(entry) = self.wheel.cancel(key) {
                entry.discard(shared);
            }
        }
    }

    fn fire_due<D: Dispatch>(&mut self, shared: &D, now: Instant) {
        let now = shared.timer().tick_floor(now);
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now, &mut expired);
        for entry in expired.drain(..) {
            self.keys.remove(&entry.id());
            match entry {
                Entry::Task(job, lane) => {
                    // SAFETY: task entries are SCHEDULED tasks' timer references.
                    if unsafe { header::fire(&job) } {
                        shared.timer().fired.fetch_add(1, Ordering::Relaxed);
                        shared.push_due(lane, job);
                    } else {
                        // A canceller claimed it while SCHEDULED: its `Cancel` is coming.
                        self.tombstones.insert(job.as_ptr().cast());
                        job.discard(shared.counters());
                    }
                }
                Entry::Periodic(schedule, due) => {
                    if schedule.is_cancelled() {
                        continue;
                    }
                    if let Some(run) = schedule.try_queue_run() {
                        shared.timer().fired.fetch_add(1, Ordering::Relaxed);
                        shared.push_due(schedule.lane, run);
                    }
                    let (next, skipped) = next_due(due, schedule.period, now);
                    schedule.add_missed(skipped);
                    self.insert(next, Entry::Periodic(schedule, next));
                }
            }
        }
        self.expired = expired;
    }

    /// Resolves every pending timer (tasks as shut down, schedules as cancelled), then
    /// leaves.
    fn shut_down<D: Dispatch>(mut self, shared: &D) {
        let timer = shared.timer();
        self.drain_inbox(shared);
        for (_, key) in self.keys.drain() {
            if let Some(entry) = self.wheel.cancel(key) {
                timer.dropped.fetch_add(1, Ordering::Relaxed);
                entry.discard(shared);
            }
        }
        debug_assert!(self.wheel.is_empty());
        // The `Insert`s these wait for are resolved by the final drain below.
        self.early_cancels.clear();
        self.tombstones.clear();
        timer.pending.store(0, Ordering::Relaxed);
        timer.handoff.exit_and_fence();
        timer.drain_after_exit(shared);
    }
}

/// The next scheduled tick after `due`, skipping ticks at or before `now` (a late
/// schedule does not queue a burst), and how many it skipped.
fn next_due(due: u64, period: u64, now: u64) -> (u64, u64) {
    let next = due.saturating_add(period);
    if next > now {
        return (next, 0);
    }
    let skipped = (now - next) / period + 1;
    (next.saturating_add(skipped.saturating_mul(period)), skipped)
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
#[path = "tests/loom_timer.rs"]
mod loom_timer;
