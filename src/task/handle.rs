//! [`JoinHandle`]: the typed owner of a task's result.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::error::JoinError;
use super::frame;
use super::header::Header;
use crate::latch::{self, Probe};

/// An owned permission to wait for a task's result, or to cancel it.
///
/// Every handle resolves exactly once: to the task's value, to the panic it raised, to
/// "cancelled", or to "shut down" (see [`JoinError`]). Dropping the handle detaches the
/// task: it still runs, and its output is dropped when it finishes.
///
/// Three ways to wait:
/// - [`join`](Self::join) blocks the calling thread, or, on a worker thread, runs other
///   queued work while it waits, so nested joins never deadlock, even on one worker;
/// - [`join_timeout`](Self::join_timeout) and [`try_join`](Self::try_join) give the
///   handle back if the task is not done;
/// - `.await`: the handle is a `Future` (and `Unpin`), usable from any async runtime.
///
/// ```
/// let pool = weft::Pool::builder().workers(2).build().unwrap();
/// let h = pool.spawn(|| 6 * 7);
/// assert_eq!(h.join().unwrap(), 42);
/// ```
pub struct JoinHandle<T> {
    raw: NonNull<Header>,
    /// The output was moved out by `poll`; drop then only releases the reference.
    taken: bool,
    _marker: PhantomData<T>,
}

// SAFETY: the handle gives access to `T` only by moving it out, so it may move between
// threads if `T` can; the task itself is `Send` by construction.
unsafe impl<T: Send> Send for JoinHandle<T> {}
// SAFETY: `&JoinHandle` allows only `cancel`, `is_finished` and `Debug`, which go through
// the atomic state word and never touch `T`.
unsafe impl<T: Send> Sync for JoinHandle<T> {}

impl<T> Unpin for JoinHandle<T> {}

impl<T> JoinHandle<T> {
    /// # Safety
    /// `raw` is a task whose output type is `T`, and the caller hands over the handle's
    /// reference to it.
    pub(crate) unsafe fn from_raw(raw: NonNull<Header>) -> JoinHandle<T> {
        JoinHandle {
            raw,
            taken: false,
            _marker: PhantomData,
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the handle's reference keeps the task alive (invariant 4 of state.rs).
        unsafe { self.raw.as_ref() }
    }

    /// True once the task has an outcome (value, error, panic, cancelled, shut down):
    /// `join` would not block.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let h = pool.spawn(|| ());
    /// while !h.is_finished() { std::thread::yield_now(); }
    /// assert!(h.try_join().is_ok());
    /// ```
    pub fn is_finished(&self) -> bool {
        self.taken || self.header().state.load().is_complete()
    }

    /// How many runs of the task have started: 0 before it runs, 1 for a plain task that
    /// ran, up to the policy's attempts for a retrying task. Exact once the task finished.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let h = pool.spawn(|| ());
    /// while !h.is_finished() { std::thread::yield_now(); }
    /// assert_eq!(h.attempts(), 1);
    /// ```
    pub fn attempts(&self) -> u32 {
        // Relaxed: a count; once COMPLETE was seen (Acquire), the final value is visible.
        self.header().attempts.load(crate::loom::Ordering::Relaxed)
    }

    /// Cancels the task if it has not started. Returns true if it had not, and now never
    /// will: the handle then resolves to a cancelled [`JoinError`] at once.
    ///
    /// Returns false if the task is running or finished. A running task is not
    /// interrupted, but asked to stop: [`checkpoint`](crate::checkpoint) returns `Err` in
    /// it from now on, and when it ends the handle resolves to a cancelled `JoinError`
    /// (its value, if it returns one, is dropped; a panic stays a panic). A retrying task
    /// asked to stop is not retried. A finished task keeps its outcome.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel::<()>();
    /// let busy = pool.spawn(move || rx.recv().unwrap());
    /// let waiting = pool.spawn(|| "never");
    /// assert!(waiting.cancel());
    /// assert!(!waiting.cancel(), "only the first cancel wins");
    /// assert!(waiting.join().unwrap_err().is_cancelled());
    /// tx.send(()).unwrap();
    /// busy.join().unwrap();
    /// ```
    pub fn cancel(&self) -> bool {
        if self.taken {
            return false;
        }
        // SAFETY: we hold the handle's reference to a live task.
        unsafe { (self.header().vtable().cancel)(self.raw) }
    }

    /// Waits for the task and returns its result.
    ///
    /// On a worker thread of any weft pool, the worker keeps running queued work of its
    /// own pool while it waits, so joining inside tasks never deadlocks the pool.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let p = pool.clone();
    /// // A nested join on a one-worker pool: the worker runs the inner task itself.
    /// let outer = pool.spawn(move || p.spawn(|| 1).join().unwrap() + 1);
    /// assert_eq!(outer.join().unwrap(), 2);
    /// ```
    pub fn join(mut self) -> Result<T, JoinError> {
        if self.is_own_task() {
            return Err(JoinError::self_join());
        }
        self.wait(None);
        self.take_output()
    }

    /// True if this thread is running the task itself (see [`JoinError::is_self_join`]).
    fn is_own_task(&self) -> bool {
        !self.is_finished() && frame::is_running(self.raw.cast())
    }

    /// Waits at most `timeout`. Gives the handle back if the task is not done by then.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel::<u8>();
    /// let h = pool.spawn(move || rx.recv().unwrap());
    /// let h = h.join_timeout(Duration::from_millis(1)).unwrap_err();
    /// tx.send(9).unwrap();
    /// assert_eq!(h.join_timeout(Duration::from_secs(60)).ok().unwrap().unwrap(), 9);
    /// ```
    pub fn join_timeout(
        mut self,
        timeout: Duration,
    ) -> Result<Result<T, JoinError>, JoinHandle<T>> {
        if self.is_own_task() {
            return Ok(Err(JoinError::self_join()));
        }
        let deadline = Instant::now().checked_add(timeout);
        if self.wait(deadline) {
            Ok(self.take_output())
        } else {
            Err(self)
        }
    }

    /// Returns the result if the task is done, else gives the handle back. Never blocks.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// pool.shutdown();
    /// let h = pool.spawn(|| 1); // refused: already resolved
    /// assert!(h.try_join().unwrap().unwrap_err().is_shutdown());
    /// ```
    pub fn try_join(mut self) -> Result<Result<T, JoinError>, JoinHandle<T>> {
        if self.is_finished() {
            Ok(self.take_output())
        } else {
            Err(self)
        }
    }

    /// Waits until complete or `deadline`; true if complete.
    fn wait(&self, deadline: Option<Instant>) -> bool {
        if self.is_finished() {
            return true;
        }
        let probe = HandleProbe {
            header: self.header(),
            waker: current_thread_waker(),
        };
        latch::block_until(&probe, deadline)
    }

    fn take_output(&mut self) -> Result<T, JoinError> {
        assert!(!self.taken, "JoinHandle polled after it completed");
        debug_assert!(self.header().state.load().is_complete());
        let mut out = MaybeUninit::<Result<T, JoinError>>::uninit();
        // SAFETY: COMPLETE with the handle alive, so the output is ours (invariant 2), and
        // `taken` makes this the only read; `out` has the output's type.
        unsafe { (self.header().vtable().read_output)(self.raw, out.as_mut_ptr().cast()) };
        self.taken = true;
        // SAFETY: `read_output` initialized it.
        unsafe { out.assume_init() }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    /// # Panics
    /// If polled again after it returned `Ready`, as futures may.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(!self.taken, "JoinHandle polled after it completed");
        if register_waker(self.header(), cx.waker()) {
            Poll::Pending
        } else {
            Poll::Ready(self.take_output())
        }
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        let header = self.header();
        let vtable = header.vtable();
        crate::util::jitter();
        if !self.taken {
            if header.state.drop_join_interest_and_ref().is_ok() {
                // Detached: the task still runs and drops its own output.
                return;
            }
            // Complete while we held interest: the output is ours to drop (invariant 2).
            // SAFETY: as above; dropped once, since the handle goes away.
            unsafe { (vtable.drop_output)(self.raw) };
        }
        if header.state.ref_dec() {
            // SAFETY: that was the last reference.
            unsafe { (vtable.dealloc)(self.raw) };
        }
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Stores `waker` for the task's completion. Returns false if the task is already
/// complete (nothing to wait for). Follows invariant 3 of `state.rs`.
fn register_waker(header: &Header, waker: &Waker) -> bool {
    let snapshot = header.state.load();
    if snapshot.is_complete() {
        return false;
    }
    if snapshot.is_join_waker_set() {
        // SAFETY: JOIN_WAKER is set, so reading is allowed (the task side only reads).
        let same = header
            .waker
            .with(|w| unsafe { &*w }.as_ref().is_some_and(|w| w.will_wake(waker)));
        if same {
            return true;
        }
        if header.state.unset_join_waker().is_err() {
            return false;
        }
    }
    // JOIN_WAKER is clear: the slot is ours.
    // SAFETY: exclusive access while JOIN_WAKER is clear (invariant 3).
    header
        .waker
        .with_mut(|w| unsafe { *w = Some(waker.clone()) });
    header.state.set_join_waker().is_ok()
}

/// What a waiting thread polls: done when the task completes; armed by storing a waker
/// that unparks the waiting thread.
struct HandleProbe<'a> {
    header: &'a Header,
    waker: Waker,
}

impl Probe for HandleProbe<'_> {
    fn probe(&self) -> bool {
        self.header.state.load().is_complete()
    }

    fn arm(&self) -> bool {
        register_waker(self.header, &self.waker)
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A waker that unparks the current thread; built once per thread (or afresh while the
/// thread's locals are being destroyed).
fn current_thread_waker() -> Waker {
    thread_local! {
        static WAKER: Waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    }
    WAKER
        .try_with(Waker::clone)
        .unwrap_or_else(|_| Waker::from(Arc::new(ThreadWaker(thread::current()))))
}
