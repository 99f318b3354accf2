//! A worker's private list of join frames: the second halves of its joins that no other
//! thread can see yet (see the protocol in [`super`]).
//!
//! Only the owning worker touches a `Frames`, and none of its methods calls out to other
//! code, so the list needs no atomic operation: a frame costs a push and a pop on a
//! `VecDeque` that keeps its capacity.

use std::cell::{Cell, UnsafeCell};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::job::{JobHeader, JobRef};

/// The private frame list of one worker, oldest first.
pub(crate) struct Frames {
    /// Rule: only the owning worker's thread reaches `list`, and only inside the methods
    /// below, none of which runs other code while it holds the `&mut`.
    list: UnsafeCell<VecDeque<JobRef>>,
    /// Makes `Frames` `!Sync`, which the rule above relies on.
    _not_sync: PhantomData<Cell<()>>,
}

impl Frames {
    pub(crate) fn new() -> Frames {
        Frames {
            list: UnsafeCell::new(VecDeque::with_capacity(32)),
            _not_sync: PhantomData,
        }
    }

    /// Runs `f` on the list.
    #[inline(always)]
    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<JobRef>) -> R) -> R {
        // SAFETY: `Frames` is not `Sync` (`_not_sync`), so only the owning thread gets
        // here; `f` is one of the closures in this file, which run no other code, so no
        // other `&mut` to the list exists meanwhile (the rule on `list`).
        f(unsafe { &mut *self.list.get() })
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
    use crate::job::JobVtable;
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
    fn pop_if_newest_only_takes_its_own_frame_and_sharing_takes_the_oldest() {
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
        f.push(job_ref(&b));
        let shared = f.take_oldest().unwrap();
        assert_eq!(shared.as_ptr(), NonNull::from(&*a));
        assert!(!f.pop_if_newest(shared.as_ptr()));
        assert!(f.pop_if_newest(NonNull::from(&*b)));
    }
}
