//! The global pool behind `weft::spawn`, `weft::join` and `weft::scope`: an ordinary
//! [`Pool`] built lazily in a `OnceLock` on first use, or configured once by
//! [`Builder::build_global`].

use std::sync::OnceLock;

use crate::pool::{BuildError, Builder, Pool};

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
