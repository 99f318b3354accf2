//! Task allocations, with one spare block per thread.
//!
//! A task is one heap allocation (`raw.rs`). When a thread frees a task's block and holds
//! no spare yet, it keeps that block as its spare instead of returning it to the
//! allocator (blocks of at most [`SPARE_MAX`] bytes only); the next task that thread
//! allocates with the same layout takes the spare back. That is the shape of a chain of
//! tasks, each spawning the next from a worker and finishing: the block of the task that
//! finished is the block of the one its successor spawns, so a steady chain on one worker
//! calls the allocator not at all, where `malloc` and `free` had been a quarter of a hop's
//! instructions.
//!
//! The spare is the thread's own (a `thread_local`, no atomics): it never moves between
//! threads, and a block freed on another thread goes to that thread's spare or to the
//! allocator. A thread holds at most one block of at most [`SPARE_MAX`] bytes, released
//! when the thread exits (the thread-local's destructor). While thread-locals are being
//! destroyed, allocations and frees go straight to the allocator.

use std::alloc::Layout;
use std::cell::Cell;
use std::ptr::NonNull;

/// The largest block a thread keeps as its spare, in bytes (a task header is 48 bytes,
/// `raw::tests` checks it; this leaves room for a closure of 26 words).
pub(crate) const SPARE_MAX: usize = 256;

/// A free block and the layout it was allocated with.
#[derive(Clone, Copy)]
struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

/// The thread's spare block, if it holds one.
struct Spare(Cell<Option<Block>>);

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            // SAFETY: the block came from `std::alloc::alloc(b.layout)` and, being the
            // spare, is used by nobody.
            unsafe { std::alloc::dealloc(b.ptr.as_ptr(), b.layout) };
        }
    }
}

thread_local! {
    static SPARE: Spare = const { Spare(Cell::new(None)) };
}

#[cfg(loom)]
thread_local! {
    /// Blocks handed out and not yet freed, for the loom models' leak and double-free
    /// checks (loom runs a model's threads on the test's own thread).
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

/// Blocks allocated and not yet freed on this thread's models (loom only).
#[cfg(loom)]
pub(crate) fn live_blocks() -> isize {
    LIVE.get()
}

/// Allocates a block for `layout`: the thread's spare if it has that layout, else from
/// the global allocator (aborting through `handle_alloc_error` if that fails).
///
/// `layout` must have a non-zero size.
#[inline]
pub(crate) fn allocate(layout: Layout) -> NonNull<u8> {
    debug_assert!(layout.size() > 0);
    #[cfg(loom)]
    LIVE.set(LIVE.get() + 1);
    let spare = SPARE.try_with(|s| match s.0.get() {
        Some(b) if b.layout == layout => {
            s.0.set(None);
            Some(b.ptr)
        }
        _ => None,
    });
    if let Ok(Some(ptr)) = spare {
        return ptr;
    }
    // SAFETY: the caller passes a layout of non-zero size.
    let ptr = unsafe { std::alloc::alloc(layout) };
    NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// Frees a block from [`allocate`]: keeps it as the thread's spare if the thread has none
/// and it is small enough, else returns it to the global allocator.
///
/// # Safety
/// `ptr` was returned by `allocate(layout)` (on any thread), with this `layout`, and is
/// not used again by the caller.
#[inline]
pub(crate) unsafe fn free(ptr: NonNull<u8>, layout: Layout) {
    #[cfg(loom)]
    LIVE.set(LIVE.get() - 1);
    if layout.size() <= SPARE_MAX {
        let kept = SPARE.try_with(|s| {
            if s.0.get().is_none() {
                s.0.set(Some(Block { ptr, layout }));
                true
            } else {
                false
            }
        });
        if kept == Ok(true) {
            return;
        }
    }
    // SAFETY: the caller's promise: a block of the global allocator with this layout,
    // unused from now on.
    unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
}

#[cfg(all(test, not(loom)))]
mod tests;
