//! Scoped tasks that may borrow from the caller's stack.
//!
//! The scope's [`CountLatch`] starts at one (the body) and counts each spawned job; a job
//! decrements it when done, the body when it returns. The scope waits for zero before
//! returning, so every borrow outlives its tasks. A job's panic is kept (the first one) and
//! re-raised at the end.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::job::HeapJob;
use crate::lane::Lane;
use crate::latch::{self, CountLatch, Latch};
use crate::shared::Shared;
use crate::worker::WorkerThread;

/// A scope for spawning tasks that borrow data living outside them. Made by
/// [`Pool::scope`](crate::Pool::scope) or [`weft::scope`](crate::scope).
///
/// A borrow must outlive the scope, not just the closure spawning the task:
///
/// ```compile_fail
/// let pool = weft::Pool::builder().workers(1).build().unwrap();
/// pool.scope(|s| {
///     let local = 5;
///     s.spawn(|_| println!("{local}")); // error: `local` does not live long enough
/// });
/// ```
///
/// and a scope cannot leak out of its closure:
///
/// ```compile_fail
/// let pool = weft::Pool::builder().workers(1).build().unwrap();
/// let mut leaked = None;
/// pool.scope(|s| leaked = Some(s));
/// ```
pub struct Scope<'scope> {
    shared: Arc<Shared>,
    latch: CountLatch,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Invariant in `'scope`, as in rayon and `std::thread::scope`.
    marker: PhantomData<Invariant<'scope>>,
}

/// A type that makes `Scope` invariant in `'scope` while staying `Send + Sync`.
type Invariant<'scope> = Box<dyn FnOnce(&Scope<'scope>) + Send + Sync + 'scope>;

/// A pointer to the scope that a job carries.
struct ScopePtr<'scope>(*const Scope<'scope>);

// SAFETY: `Scope` is `Sync`, and the scope waits for every job before it is dropped, so the
// pointer stays valid for the job's whole life.
unsafe impl Send for ScopePtr<'_> {}

impl<'scope> Scope<'scope> {
    /// Spawns `f` into the scope, in the lane of the task that is running now (normal
    /// outside a task). `f` gets the scope back, to spawn more.
    ///
    /// After the pool shut down, `f` runs right here on the calling thread instead.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// let hits = AtomicUsize::new(0);
    /// weft::scope(|s| {
    ///     s.spawn(|s| {
    ///         hits.fetch_add(1, Ordering::Relaxed);
    ///         s.spawn(|_| { hits.fetch_add(1, Ordering::Relaxed); });
    ///     });
    /// });
    /// assert_eq!(hits.into_inner(), 2);
    /// ```
    pub fn spawn<F>(&self, f: F)
    where
        F: FnOnce(&Scope<'scope>) + Send + 'scope,
    {
        self.latch.increment();
        let ptr = ScopePtr(self);
        let job = HeapJob::into_job_ref(move || {
            let ptr = ptr;
            // SAFETY: the scope outlives its jobs (see `ScopePtr`).
            let scope = unsafe { &*ptr.0 };
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| f(scope))) {
                let mut first = scope.panic.lock();
                if first.is_none() {
                    *first = Some(p);
                } else {
                    // Only the first panic is re-raised; drop the others without unwinding.
                    drop(first);
                    crate::util::drop_quietly(p);
                }
            }
            // SAFETY: live until the count reaches zero and the latch is set.
            unsafe { CountLatch::set(&scope.latch) };
        });
        if self.shared.is_closed() {
            job.execute(self.shared.counters());
            return;
        }
        let lane = self
            .shared
            .current_worker()
            .map_or(Lane::NORMAL, WorkerThread::lane);
        self.shared.push(lane, job, false);
    }
}

impl fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope").finish_non_exhaustive()
    }
}

/// Runs `op` in a new scope of `shared`'s pool (see `Pool::scope`).
pub(crate) fn run<'scope, OP, R>(shared: &Arc<Shared>, op: OP) -> R
where
    OP: FnOnce(&Scope<'scope>) -> R,
{
    let scope = Scope {
        shared: shared.clone(),
        latch: CountLatch::new(),
        panic: Mutex::new(None),
        marker: PhantomData,
    };
    let result = panic::catch_unwind(AssertUnwindSafe(|| op(&scope)));
    // The body's own count.
    // SAFETY: `scope` is live on this frame until after the wait below.
    unsafe { CountLatch::set(&scope.latch) };
    latch::block_until(&scope.latch, None);
    let result = match result {
        Ok(r) => r,
        Err(p) => panic::resume_unwind(p),
    };
    if let Some(p) = scope.panic.lock().take() {
        panic::resume_unwind(p);
    }
    result
}
