//! The pool's errors: [`BuildError`] (a pool that could not be built) and
//! [`TrySpawnError`] (a spawn refused, handing its closure back).

use std::fmt;
use std::io;

use crate::shared::Refused;
use crate::sleep::MAX_WORKERS;

/// A spawn refused by [`try_spawn`](crate::Pool::try_spawn): the lane was full, or the pool shut
/// down. Nothing is lost: [`into_inner`](Self::into_inner) hands the closure back.
pub struct TrySpawnError<F> {
    f: F,
    why: Refused,
}

impl<F> TrySpawnError<F> {
    pub(super) fn new(f: F, why: Refused) -> Self {
        TrySpawnError { f, why }
    }

    /// The lane was at its [`max_queued`](crate::Builder::max_queued) limit.
    pub fn is_full(&self) -> bool {
        self.why == Refused::Full
    }

    /// The pool is shut down.
    pub fn is_shutdown(&self) -> bool {
        self.why == Refused::Shutdown
    }

    /// The closure that was not spawned.
    pub fn into_inner(self) -> F {
        self.f
    }
}

impl<F> fmt::Debug for TrySpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrySpawnError")
            .field("why", &self.why)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Display for TrySpawnError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.why {
            Refused::Full => "the task's lane is full (max_queued)",
            Refused::Shutdown => "the pool is shut down",
        })
    }
}

impl<F> std::error::Error for TrySpawnError<F> {}

/// Why a pool could not be built.
#[derive(Debug)]
pub struct BuildError {
    pub(super) kind: ErrorKind,
}

#[derive(Debug)]
pub(super) enum ErrorKind {
    ZeroWorkers,
    TooManyWorkers(usize),
    ZeroQueue,
    Spawn(io::Error),
    GlobalAlreadyInitialized,
}

impl BuildError {
    pub(crate) fn global_already_initialized() -> BuildError {
        BuildError {
            kind: ErrorKind::GlobalAlreadyInitialized,
        }
    }

    /// The builder asked for zero workers.
    pub fn is_zero_workers(&self) -> bool {
        matches!(self.kind, ErrorKind::ZeroWorkers)
    }

    /// The builder asked for more than 65535 workers.
    ///
    /// ```
    /// let err = weft::Pool::builder().workers(1 << 20).build().unwrap_err();
    /// assert!(err.is_too_many_workers());
    /// ```
    pub fn is_too_many_workers(&self) -> bool {
        matches!(self.kind, ErrorKind::TooManyWorkers(_))
    }

    /// The builder set [`max_queued(0)`](crate::Builder::max_queued): no task could ever be
    /// queued.
    ///
    /// ```
    /// let err = weft::Pool::builder().max_queued(0).build().unwrap_err();
    /// assert!(err.is_zero_queue());
    /// ```
    pub fn is_zero_queue(&self) -> bool {
        matches!(self.kind, ErrorKind::ZeroQueue)
    }

    /// The operating system refused to start a worker thread.
    pub fn is_spawn_failed(&self) -> bool {
        matches!(self.kind, ErrorKind::Spawn(_))
    }

    /// `build_global` was called after the global pool already existed.
    pub fn is_global_already_initialized(&self) -> bool {
        matches!(self.kind, ErrorKind::GlobalAlreadyInitialized)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::ZeroWorkers => f.write_str("a pool needs at least one worker"),
            ErrorKind::TooManyWorkers(n) => {
                write!(f, "{n} workers requested; a pool has at most {MAX_WORKERS}")
            }
            ErrorKind::ZeroQueue => f.write_str("max_queued must be at least 1"),
            ErrorKind::Spawn(e) => write!(f, "could not start a worker thread: {e}"),
            ErrorKind::GlobalAlreadyInitialized => {
                f.write_str("the global pool was already initialized")
            }
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Spawn(e) => Some(e),
            _ => None,
        }
    }
}
