//! A worker's private list of join frames: the second halves of its joins that no other
//! thread can see yet (see the protocol in [`super`]).
//!
//! Only the owning worker touches a `Frames`, and none of its methods calls out to other
//! code, so the list needs no atomic operation: a frame costs a push and a pop on a
//! `VecDeque` that keeps its capacity.

use std::cell::{Cell, UnsafeCell};
use std::collections::VecDeque;
use std::ptr::NonNull;

use crate::job::{JobHeader, JobRef};

/// Below this many private frames a join always records one (the outermost joins are the
/// ones worth sharing); at or above it, only one join in [`RECORD_EVERY`] does.
pub(crate) const RECORD_BELOW: usize = 3;

/// With [`RECORD_BELOW`] frames or more held, one join in this many records a frame; the
/// others are plain calls. A power of two.
pub(crate) const RECORD_EVERY: u32 = 64;

const _: () = assert!(RECORD_EVERY.is_power_of_two());

/// The private frame list of one worker, oldest first.
pub(crate) struct Frames {
    /// Rule: only the owning worker's thread reaches `list`, and only inside the methods
    /// below, none of which runs user code while it holds the `&mut`.
    list: UnsafeCell<VecDeque<JobRef>>,
    /// Joins seen, modulo 2^32: picks the one in [`RECORD_EVERY`] that records.
    joins: Cell<u32>,
    /// This worker armed the pool's heartbeat and has not disarmed it since.
    pub(crate) armed: Cell<bool>,
}

impl Frames {
    pub(crate) fn new() -> Frames {
        Frames {
            list: UnsafeCell::new(VecDeque::with_capacity(32)),
            joins: Cell::new(0),
            armed: Cell::new(false),
        }
    }

    /// Runs `f` on the list.
    #[inline(always)]
    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<JobRef>) -> R) -> R {
        // SAFETY: `Frames` is not `Sync` (the `Cell`s), so only the owning thread gets
        // here; `f` is one of the closures in this file, which run no other code, so no
        // other `&mut` to the list exists meanwhile (the rule on `list`).
        f(unsafe { &mut *self.list.get() })
    }

    /// Whether the join starting now records a frame (else it is a plain call of both
    /// halves).
    #[inline(always)]
    pub(crate) fn should_record(&self) -> bool {
        let n = self.joins.get().wrapping_add(1);
        self.joins.set(n);
        n & (RECORD_EVERY - 1) == 0 || self.len() < RECORD_BELOW
    }

    /// Frames held.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.with(|l| l.len())
    }

    /// Records the newest frame.
    #[inline(always)]
    pub(crate) fn push(&self, job: JobRef) {
        self.with(|l| l.push_back(job));
    }

    /// Takes the newest frame back if it is `id` (it was not shared), and says so.
    #[inline(always)]
    pub(crate) fn pop_if_newest(&self, id: NonNull<JobHeader>) -> bool {
        self.with(|l| match l.back() {
            Some(job) if job.as_ptr() == id => {
                // The `JobRef` is the owner's again; the caller runs the job inline.
                let _ = l.pop_back();
                true
            }
            _ => false,
        })
    }

    /// Takes the oldest frame, to share it.
    pub(crate) fn take_oldest(&self) -> Option<JobRef> {
        self.with(|l| l.pop_front())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::job::{JobHeader, JobVtable};
    use crate::metrics::Counters;

    unsafe fn noop(_: NonNull<JobHeader>, _: &Counters) {}

    static VTABLE: JobVtable = JobVtable {
        execute: noop,
        discard: noop,
        is_task: false,
    };

    fn header() -> Box<JobHeader> {
        Box::new(JobHeader { vtable: &VTABLE })
    }

    fn job_ref(h: &JobHeader) -> JobRef {
        // SAFETY: `h` outlives the test's use of the reference, and its vtable does nothing.
        unsafe { JobRef::new(NonNull::from(h)) }
    }

    #[test]
    fn records_the_outermost_frames_then_one_join_in_record_every() {
        let f = Frames::new();
        let hs: Vec<_> = (0..RECORD_BELOW).map(|_| header()).collect();
        for h in &hs {
            assert!(f.should_record());
            f.push(job_ref(h));
        }
        let recorded = (0..4 * RECORD_EVERY).filter(|_| f.should_record()).count();
        assert_eq!(recorded, 4);
        // Taking the oldest out (sharing it) makes the next join record again.
        let oldest = f.take_oldest().unwrap();
        assert_eq!(oldest.as_ptr(), NonNull::from(&*hs[0]));
        assert!(f.should_record());
    }

    #[test]
    fn pop_if_newest_only_takes_its_own_frame() {
        let f = Frames::new();
        let (a, b) = (header(), header());
        f.push(job_ref(&a));
        f.push(job_ref(&b));
        assert!(!f.pop_if_newest(NonNull::from(&*a)));
        assert!(f.pop_if_newest(NonNull::from(&*b)));
        assert!(f.pop_if_newest(NonNull::from(&*a)));
        assert_eq!(f.len(), 0);
        // A shared frame is not in the list: its owner learns it was shared.
        f.push(job_ref(&a));
        let shared = f.take_oldest().unwrap();
        assert!(!f.pop_if_newest(shared.as_ptr()));
    }
}
