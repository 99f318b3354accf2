//! The global pool behind `weft::spawn`, `weft::join` and `weft::scope`: an ordinary
//! [`Pool`] built lazily in a `OnceLock` on first use, or configured once by
//! [`Builder::build_global`]; and [`with_current_or_global`], the one place that chooses
//! between the current worker's pool and the global one.

use std::sync::{Arc, OnceLock};

use crate::pool::{BuildError, Builder, Pool};
use crate::shared::Shared;
use crate::worker::WorkerThread;

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// The global pool, built with default settings on first use.
///
/// # Panics
/// If the operating system refuses to start its threads (there is no caller to return
/// the error to, as with rayon's global pool).
pub(crate) fn pool() -> &'static Pool {
    GLOBAL.get_or_init(|| {
        Builder::new()
            .build()
            .unwrap_or_else(|e| panic!("weft: cannot build the global pool: {e}"))
    })
}

/// Runs `f` with the pool that work started on this thread belongs to: the current
/// worker's pool, or the global pool (built on first use) outside any pool. The pool of
/// `weft::spawn`, `weft::task` and `weft::scope`. The borrow cannot escape `f`.
pub(crate) fn with_current_or_global<R>(f: impl FnOnce(&Arc<Shared>) -> R) -> R {
    match WorkerThread::current() {
        Some(w) => f(&w.shared),
        None => f(pool().shared()),
    }
}

pub(crate) fn set(builder: Builder) -> Result<(), BuildError> {
    if GLOBAL.get().is_some() {
        return Err(BuildError::global_already_initialized());
    }
    let pool = builder.build()?;
    // A racing first use or second `build_global` may have won; then ours is shut down
    // when dropped here.
    GLOBAL
        .set(pool)
        .map_err(|_| BuildError::global_already_initialized())
}
