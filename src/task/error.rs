//! [`JoinError`]: why a task produced no value.

use std::any::Any;
use std::fmt;

use crate::util::panic_message;

/// Why a [`JoinHandle`](crate::JoinHandle) resolved without a value.
///
/// ```
/// let pool = weft::Pool::builder().workers(1).build().unwrap();
/// let err = pool.spawn(|| panic!("boom")).join().unwrap_err();
/// assert!(err.is_panic());
/// assert_eq!(err.panic_message(), Some("boom"));
/// assert_eq!(err.to_string(), "task panicked: boom");
/// ```
pub struct JoinError {
    repr: Repr,
}

enum Repr {
    Panicked {
        message: Option<String>,
        payload: SyncWrapper<Box<dyn Any + Send>>,
    },
    Cancelled,
    Shutdown,
    SelfJoin,
    TimedOut,
}

/// Makes a `Send` value `Sync` by never handing out `&T`: the payload is reachable only
/// through `JoinError` by value.
struct SyncWrapper<T>(T);

// SAFETY: no method gives shared access to the inner value; it is only moved out by value
// (`into_panic`), which needs ownership, so sharing `&SyncWrapper` across threads exposes
// nothing.
unsafe impl<T: Send> Sync for SyncWrapper<T> {}

impl JoinError {
    pub(crate) fn panicked(payload: Box<dyn Any + Send>) -> JoinError {
        let message = panic_message(&*payload).map(str::to_owned);
        JoinError {
            repr: Repr::Panicked {
                message,
                payload: SyncWrapper(payload),
            },
        }
    }

    pub(crate) fn cancelled() -> JoinError {
        JoinError {
            repr: Repr::Cancelled,
        }
    }

    pub(crate) fn shutdown() -> JoinError {
        JoinError {
            repr: Repr::Shutdown,
        }
    }

    pub(crate) fn timed_out() -> JoinError {
        JoinError {
            repr: Repr::TimedOut,
        }
    }

    /// True if the task ran past its [`time_limit`](crate::TaskBuilder::time_limit). Its
    /// result, if it returned one, was dropped.
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let h = pool.task().time_limit(Duration::from_millis(5)).spawn(|| {
    ///     // A long computation that checks in now and then.
    ///     while weft::checkpoint().is_ok() {
    ///         std::thread::yield_now();
    ///     }
    ///     "gave up"
    /// });
    /// assert!(h.join().unwrap_err().is_time_limit());
    /// assert_eq!(pool.metrics().timed_out, 1);
    /// ```
    pub fn is_time_limit(&self) -> bool {
        matches!(self.repr, Repr::TimedOut)
    }

    pub(crate) fn self_join() -> JoinError {
        JoinError {
            repr: Repr::SelfJoin,
        }
    }

    /// True if `join` was called from inside the task itself (directly, or from a task the
    /// same thread runs while the first one waits): that join could never return, so it
    /// fails at once instead of deadlocking. The task is not affected: it runs on, detached.
    ///
    /// ```
    /// use std::sync::{mpsc::channel, Arc, Mutex};
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let slot: Arc<Mutex<Option<weft::JoinHandle<()>>>> = Arc::default();
    /// let (go_tx, go_rx) = channel::<()>();
    /// let (result_tx, result_rx) = channel();
    /// let s = slot.clone();
    /// let h = pool.spawn(move || {
    ///     go_rx.recv().unwrap();
    ///     let me = s.lock().unwrap().take().unwrap();
    ///     result_tx.send(me.join().unwrap_err().is_self_join()).unwrap();
    /// });
    /// *slot.lock().unwrap() = Some(h); // the task gets its own handle
    /// go_tx.send(()).unwrap();
    /// assert!(result_rx.recv().unwrap());
    /// ```
    pub fn is_self_join(&self) -> bool {
        matches!(self.repr, Repr::SelfJoin)
    }

    /// True if the task panicked. The panic was caught; the worker thread lives on.
    pub fn is_panic(&self) -> bool {
        matches!(self.repr, Repr::Panicked { .. })
    }

    /// True if the task was cancelled (see [`JoinHandle::cancel`](crate::JoinHandle::cancel)):
    /// before it started, or while it ran (then its result, if any, was dropped).
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
    /// let g = gate.clone();
    /// let blocker = pool.spawn(move || { g.wait(); });
    /// let queued = pool.spawn(|| 1);
    /// assert!(queued.cancel());
    /// gate.wait();
    /// assert!(queued.join().unwrap_err().is_cancelled());
    /// blocker.join().unwrap();
    /// ```
    pub fn is_cancelled(&self) -> bool {
        matches!(self.repr, Repr::Cancelled)
    }

    /// True if the pool shut down before the task ran (or refused it at spawn).
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// pool.shutdown();
    /// assert!(pool.spawn(|| 1).join().unwrap_err().is_shutdown());
    /// ```
    pub fn is_shutdown(&self) -> bool {
        matches!(self.repr, Repr::Shutdown)
    }

    /// The panic's message, if the task panicked with a `&str` or `String`.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.repr {
            Repr::Panicked { message, .. } => message.as_deref(),
            _ => None,
        }
    }

    /// The panic payload, to re-raise with `std::panic::resume_unwind`; gives the error
    /// back if the task did not panic.
    ///
    /// ```
    /// let pool = weft::Pool::builder().workers(1).build().unwrap();
    /// let err = pool.spawn(|| std::panic::panic_any(7u8)).join().unwrap_err();
    /// let payload = err.try_into_panic().unwrap();
    /// assert_eq!(payload.downcast_ref::<u8>(), Some(&7));
    /// ```
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send>, JoinError> {
        match self.repr {
            Repr::Panicked { payload, .. } => Ok(payload.0),
            repr => Err(JoinError { repr }),
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Panicked {
                message: Some(m), ..
            } => write!(f, "task panicked: {m}"),
            Repr::Panicked { message: None, .. } => f.write_str("task panicked"),
            Repr::Cancelled => f.write_str("task was cancelled"),
            Repr::TimedOut => f.write_str("task ran past its time limit"),
            Repr::Shutdown => f.write_str("the pool shut down before the task ran"),
            Repr::SelfJoin => f.write_str("a task tried to join its own handle"),
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Panicked { message, .. } => f
                .debug_struct("JoinError::Panicked")
                .field("message", message)
                .finish(),
            Repr::Cancelled => f.write_str("JoinError::Cancelled"),
            Repr::Shutdown => f.write_str("JoinError::Shutdown"),
            Repr::SelfJoin => f.write_str("JoinError::SelfJoin"),
            Repr::TimedOut => f.write_str("JoinError::TimedOut"),
        }
    }
}

impl std::error::Error for JoinError {}

/// What [`checkpoint`](crate::checkpoint) returns when the running task should stop: its
/// handle asked for cancellation, or its time limit passed. The task decides how to stop
/// (return early, clean up); whatever it returns then, its handle resolves to the matching
/// [`JoinError`] (`is_cancelled` or `is_time_limit`).
///
/// Made to travel with `?`: it implements `std::error::Error`.
///
/// ```
/// fn step() -> Result<u32, weft::Cancelled> {
///     weft::checkpoint()?;
///     Ok(1)
/// }
/// // Outside any task there is nothing to cancel.
/// assert_eq!(step().unwrap(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled {
    time_limit: bool,
}

impl Cancelled {
    pub(crate) fn requested() -> Cancelled {
        Cancelled { time_limit: false }
    }

    pub(crate) fn time_limit() -> Cancelled {
        Cancelled { time_limit: true }
    }

    /// The task's time limit passed.
    pub fn is_time_limit(&self) -> bool {
        self.time_limit
    }

    /// The task's handle asked for cancellation.
    pub fn is_cancel_requested(&self) -> bool {
        !self.time_limit
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.time_limit {
            "the task's time limit passed"
        } else {
            "the task's cancellation was requested"
        })
    }
}

impl std::error::Error for Cancelled {}

#[cfg(test)]
mod tests;
