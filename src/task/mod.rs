//! Tasks: one allocation holding the closure and, once it ran, its outcome.
//!
//! - `state.rs`: the atomic state word, its bit table and invariants, every RMW;
//! - `header.rs`: the fixed-layout start of every task, its vtable, and `TaskRef`, all
//!   that code outside the harness sees of a task;
//! - `raw.rs`: the allocation (header + stage) and the harness that runs, cancels,
//!   completes and frees a task;
//! - `schedule.rs`: [`Schedule`](schedule::Schedule), all the harness knows of the pool
//!   that owns a task;
//! - `alloc.rs`: where the allocation comes from: the global allocator, or the one spare
//!   block a thread keeps from the last task it freed;
//! - `body.rs`: what a task runs: one `FnOnce` attempt, or a retrying `FnMut`;
//! - `frame.rs`: the jobs this thread is executing, innermost first (checkpoints, time
//!   limits, self-joins);
//! - `handle.rs`: [`JoinHandle`], the typed owner of the result;
//! - `error.rs`: [`JoinError`].
//!
//! A task's life: `spawn` allocates it QUEUED with two references (handle, queue) and
//! pushes the queue's reference as a `JobRef`. A worker pops it and claims it
//! (QUEUED → RUNNING), runs the closure under `catch_unwind`, stores the output or panic,
//! and completes it (RUNNING → COMPLETE), waking the joiner. A `cancel` that claims it
//! first resolves it as cancelled; the worker that pops it later loses the claim and only
//! drops the queue's reference.

mod alloc;
pub(crate) mod body;
mod error;
pub(crate) mod frame;
mod handle;
pub(crate) mod header;
#[cfg(all(test, loom))]
#[path = "tests/loom_raw.rs"]
mod loom_raw;
#[cfg(all(test, loom))]
#[path = "tests/loom_state.rs"]
mod loom_state;
pub(crate) mod raw;
pub(crate) mod schedule;
pub(crate) mod state;

pub use body::{RetryAny, ShouldRetry};
pub use error::{Cancelled, JoinError};
pub use handle::JoinHandle;
