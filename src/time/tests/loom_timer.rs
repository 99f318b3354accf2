//! Loom models of the scheduler thread's park and exit hand-offs (`driver.rs`), run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
//! (Timer fire vs cancel, on the task's state word, is modelled in `task/tests/loom_state.rs`.)
//!
//! The words and fences are the real ones: each model drives a real [`Handoff`] in the
//! order `run`, `Driver::shut_down` and `Timer::send` do. Loom cannot drive the rest (the
//! inbox is a crossbeam `Injector`, the driver parks with `std::thread::park_timeout`, the
//! wheel reads the clock), so the model uses stand-ins:
//!
//! - the [`Inbox`] holds at most one message: its deadline in a loom atomic, `EMPTY` when
//!   there is none. A push is a Release store, the driver's re-check a load, and a take a
//!   load then a CAS, as crossbeam publishes a slot and steals it; the CAS makes sure one
//!   taker gets the message.
//! - the wheel is a list of ticks, and time is the model driver's own `now`.
//! - parking "until `next`": the timeout ends and time moves on to `next`, unless `next` is
//!   later than the deadline of a message still on its way. That timeout would end too late,
//!   so the model parks with loom's `park`, which has no timeout: only the sender's unpark
//!   ends it, and if none comes loom reports the deadlock. (`std`'s park keeps an unpark that
//!   comes first, and so does loom's.)
//!
//! The fences are the point: `Handoff<false>` has none, and loom then finds both failures:
//! a timer slept past (store buffering: the driver's inbox re-check misses the push while
//! the sender's load misses the new sleep target), and a message nobody drains at exit.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex as StdMutex;

use loom::sync::Arc;
use loom::thread::{self, Thread};

use super::{AfterSend, Handoff, NEVER};
use crate::loom::{AtomicU64, Ordering};

/// Runs `f` under loom. The preemption bound comes from `LOOM_MAX_PREEMPTIONS` if set, else
/// 2, so a plain `cargo test` under `--cfg loom` also finishes.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

/// The inbox's "no message" (no model sends a message due at tick 0).
const EMPTY: u64 = 0;

/// The stand-in for the `Injector` inbox: one message slot.
struct Inbox(AtomicU64);

impl Inbox {
    /// `Injector::push`: publishes the message with Release.
    fn push(&self, deadline: u64) {
        assert_ne!(deadline, EMPTY);
        self.0.store(deadline, Ordering::Release);
    }

    /// `Injector::is_empty`: the driver's re-check after its fence.
    fn is_empty(&self) -> bool {
        self.0.load(Ordering::Acquire) == EMPTY
    }

    /// `Injector::steal`: takes the message if there is one and nobody else took it.
    fn take(&self) -> Option<u64> {
        let deadline = self.0.load(Ordering::Acquire);
        if deadline == EMPTY {
            return None;
        }
        self.0
            .compare_exchange(deadline, EMPTY, Ordering::Acquire, Ordering::Relaxed)
            .ok()
    }
}

/// What `Timer` holds: the real hand-off words, and the inbox.
struct Timer<const FENCED: bool> {
    handoff: Handoff<FENCED>,
    inbox: Inbox,
}

/// What a sender did.
struct Sent {
    after: AfterSend,
    /// Messages it drained itself (`drain_after_exit`).
    drained: usize,
}

impl<const FENCED: bool> Timer<FENCED> {
    fn new() -> Arc<Self> {
        Arc::new(Timer {
            handoff: Handoff::new(),
            inbox: Inbox(AtomicU64::new(EMPTY)),
        })
    }

    /// `Timer::send`: push, then do what `Handoff::after_send` says.
    fn send(&self, deadline: u64, driver: &Thread) -> Sent {
        self.inbox.push(deadline);
        let after = self.handoff.after_send(deadline);
        let drained = match after {
            AfterSend::DrainAfterExit => self.drain(),
            AfterSend::Wake => {
                driver.unpark();
                0
            }
            AfterSend::Nothing => 0,
        };
        Sent { after, drained }
    }

    /// Takes every message (the driver's drains, and `drain_after_exit`); returns how many.
    fn drain(&self) -> usize {
        let mut n = 0;
        while self.inbox.take().is_some() {
            n += 1;
        }
        n
    }
}

/// The model driver: the loop of `run`, on a wheel of ticks and the model's own time.
struct Driver<const FENCED: bool> {
    timer: Arc<Timer<FENCED>>,
    wheel: Vec<u64>,
    now: u64,
    /// The ticks that fired, in order.
    fired: Vec<u64>,
    /// Every sleep target it published.
    targets: Vec<u64>,
    /// `now` when it took the message from the inbox.
    drained_at: Option<u64>,
}

impl<const FENCED: bool> Driver<FENCED> {
    fn new(timer: Arc<Timer<FENCED>>, wheel: &[u64]) -> Self {
        Driver {
            timer,
            wheel: wheel.to_vec(),
            now: 0,
            fired: Vec::new(),
            targets: Vec::new(),
            drained_at: None,
        }
    }

    /// Runs `run`'s loop until the message due at `msg` fired. With `blocking: false` it
    /// stops instead of parking where only an unpark would be in time, and returns false.
    fn run_until_fired(&mut self, msg: u64, blocking: bool) -> bool {
        let timer = Arc::clone(&self.timer);
        loop {
            // Step 1.
            timer.handoff.set_awake();
            while let Some(deadline) = timer.inbox.take() {
                self.wheel.push(deadline);
                self.drained_at = Some(self.now);
            }
            // Step 2: fire what is due, in deadline order.
            self.wheel.sort_unstable();
            let due = self.wheel.partition_point(|&d| d <= self.now);
            self.fired.extend(self.wheel.drain(..due));
            if self.fired.contains(&msg) {
                return true;
            }
            // Step 3.
            let next = self.wheel.first().copied().unwrap_or(NEVER);
            self.targets.push(next);
            timer.handoff.publish_and_fence(next);
            if !timer.inbox.is_empty() {
                continue;
            }
            // `next > msg` only while the message is on its way: once in the wheel, it
            // bounds `next`.
            if next > msg {
                // The timeout would end past the message's deadline: only an unpark is in
                // time.
                if !blocking {
                    return false;
                }
                thread::park();
            } else {
                // The timeout ends.
                self.now = next;
            }
        }
    }
}

/// Runs a driver with a timer due at `wheel` against a sender of a message due at `msg`.
/// Returns the driver (once it fired the message) and what the sender did.
fn race(wheel: u64, msg: u64) -> (Driver<true>, Sent) {
    let timer = Timer::<true>::new();
    let driver = {
        let timer = timer.clone();
        thread::spawn(move || {
            let mut driver = Driver::new(timer, &[wheel]);
            assert!(driver.run_until_fired(msg, true));
            driver
        })
    };
    let parker = driver.thread().clone();
    let sender = thread::spawn(move || timer.send(msg, &parker));
    let sent = sender.join().unwrap();
    let driver = driver.join().unwrap();
    (driver, sent)
}

/// An earlier timer inserted while the driver is about to sleep until a later one (tick 10):
/// the driver either sees it in its re-check after publishing the target, or the sender sees
/// the target and unparks it. It fires the message at its tick, 5, never later (the only
/// park in this model that could end after tick 5 is one only an unpark ends; a lost unpark
/// is a deadlock loom reports), and the timer at tick 10 is still waiting.
#[test]
fn loom_timer_earlier_deadline_wakes_the_driver() {
    model(|| {
        let (driver, sent) = race(10, 5);
        assert_ne!(sent.after, AfterSend::DrainAfterExit);
        assert_eq!(sent.drained, 0);
        assert_eq!(driver.fired, [5]);
        assert_eq!(driver.now, 5, "fired late");
        assert_eq!(driver.wheel, [10]);
        assert_eq!(driver.drained_at, Some(0));
    });
}

/// A timer due later (tick 20) than the driver's sleep target (tick 10): the sender wakes
/// the driver only if it sleeps with no deadline (`NEVER`), never while it sleeps until 10.
/// In the runs where the sender leaves it asleep, the driver finds the message when its
/// timeout ends at 10, and fires it at 20. Both kinds of run are checked to occur.
#[test]
fn loom_timer_later_deadline_needs_no_wake() {
    // Runs in which the sender did not wake the driver, and the driver took the message
    // when its timeout ended at tick 10.
    let picked_up_at_timeout = std::sync::Arc::new(StdMutex::new(0_usize));
    let woken_from_never = std::sync::Arc::new(StdMutex::new(0_usize));
    {
        let picked_up_at_timeout = picked_up_at_timeout.clone();
        let woken_from_never = woken_from_never.clone();
        model(move || {
            let (driver, sent) = race(10, 20);
            assert_eq!(driver.fired, [10, 20]);
            assert_eq!(driver.now, 20, "fired late");
            assert!(driver.wheel.is_empty());
            match sent.after {
                AfterSend::Wake => {
                    // The only target later than 20 the sender can have read.
                    assert!(driver.targets.contains(&NEVER), "needless wake");
                    *woken_from_never.lock().unwrap() += 1;
                }
                AfterSend::Nothing => {
                    if driver.drained_at == Some(10) {
                        *picked_up_at_timeout.lock().unwrap() += 1;
                    }
                }
                AfterSend::DrainAfterExit => panic!("the driver never exits here"),
            }
        });
    }
    assert!(*picked_up_at_timeout.lock().unwrap() > 0);
    assert!(*woken_from_never.lock().unwrap() > 0);
}

/// The park race decided without blocking: the driver stops where it would park past the
/// message's deadline, and the model asserts "the driver got the message in time, or the
/// sender unparks it".
fn missed_timer_model<const FENCED: bool>() {
    model(|| {
        let timer = Timer::<FENCED>::new();
        let driver = {
            let timer = timer.clone();
            thread::spawn(move || Driver::new(timer, &[10]).run_until_fired(5, false))
        };
        let parker = driver.thread().clone();
        let sender = thread::spawn(move || timer.send(5, &parker));
        let woke = sender.join().unwrap().after == AfterSend::Wake;
        let in_time = driver.join().unwrap();
        assert!(
            in_time || woke,
            "missed timer: the driver sleeps past the message's deadline and nobody wakes it"
        );
    });
}

/// Shutdown: the driver's exit (`Driver::shut_down`: drain, set `gone`, fence, final drain)
/// races a sender. The message is resolved exactly once: by the driver's drains, or by the
/// sender, which drains itself when it sees `gone` after its fence.
fn exit_model<const FENCED: bool>() {
    model(|| {
        let timer = Timer::<FENCED>::new();
        let driver = {
            let timer = timer.clone();
            thread::spawn(move || {
                // What this drain takes is resolved with the wheel's entries.
                let before = timer.drain();
                timer.handoff.exit_and_fence();
                // `drain_after_exit`.
                before + timer.drain()
            })
        };
        let parker = driver.thread().clone();
        let sender = {
            let timer = timer.clone();
            thread::spawn(move || timer.send(7, &parker))
        };
        let sent = sender.join().unwrap();
        let by_driver = driver.join().unwrap();
        // The driver exits awake: nobody needs waking.
        assert_ne!(sent.after, AfterSend::Wake);
        let resolved = by_driver + sent.drained;
        assert_eq!(resolved, 1, "message resolved {resolved} times");
        assert!(timer.inbox.is_empty());
    });
}

/// The exit hand-off with the real fences: exactly once.
#[test]
fn loom_timer_exit_resolves_a_racing_message_once() {
    exit_model::<true>();
}

/// Runs `f`, which must fail with a panic whose message contains `expected`.
fn expect_caught(f: impl FnOnce(), expected: &str) {
    let err = panic::catch_unwind(AssertUnwindSafe(f)).expect_err("loom should catch it");
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("");
    assert!(msg.contains(expected), "unexpected failure: {msg:?}");
}

/// The negative control: both hand-offs pass with the fences, and loom finds the failure
/// of each without them (a timer slept past; a message stranded at exit). Not
/// `#[should_panic]`: the models run under `catch_unwind`, and they fail by an assertion,
/// never a deadlock, so loom's cleanup runs.
#[test]
fn loom_timer_without_fences_misses_a_timer() {
    missed_timer_model::<true>();
    exit_model::<true>();
    expect_caught(missed_timer_model::<false>, "missed timer");
    expect_caught(exit_model::<false>, "message resolved 0 times");
}
