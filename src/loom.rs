//! The one place that chooses between `std` and [`loom`] synchronization primitives.
//!
//! Everything in weft that builds a lock-free protocol imports its atomics, fences and
//! `UnsafeCell` from here, so that `RUSTFLAGS="--cfg loom"` swaps them for loom's
//! model-checked versions. crossbeam-deque and parking_lot are trusted and not modelled.
//!
//! [`loom`]: https://docs.rs/loom

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// The blocking primitives of the rare slow paths (a submitter waiting for room in a
/// bounded lane): `std`'s, so that loom can swap them too.
/// (Unused when `--cfg shuttle` hands the gate shuttle's instead.)
#[cfg(loom)]
#[cfg_attr(all(test, shuttle), allow(unused_imports))]
pub(crate) use loom::sync::{Condvar, Mutex};

#[cfg(not(loom))]
#[cfg_attr(all(test, shuttle), allow(unused_imports))]
pub(crate) use std::sync::{Condvar, Mutex};

/// `std::cell::UnsafeCell` with loom's closure-based API, so code is written once.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(data: T) -> UnsafeCell<T> {
        UnsafeCell(std::cell::UnsafeCell::new(data))
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    /// Runs `f` with a shared raw pointer to the contents.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a mutable raw pointer to the contents.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// One step of a spin-wait for another thread: crossbeam's `Backoff::snooze`, or under loom
/// a yield, which lets the model run the thread being waited for.
#[inline]
pub(crate) fn snooze(backoff: &crossbeam_utils::Backoff) {
    #[cfg(not(loom))]
    backoff.snooze();
    #[cfg(loom)]
    {
        let _ = backoff;
        loom::thread::yield_now();
    }
}
