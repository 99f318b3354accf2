//! Lanes: [`Priority`], the public name of a lane, and the number of lanes.
//!
//! Both the lanes' queues (`lanes.rs`) and their bounds (`bound.rs`) import this file;
//! it imports nothing of ours.

/// The priority of a task: which lane it waits in.
///
/// Higher lanes are always searched first, but a lower lane is never starved: see the
/// fairness rule in the crate docs. The default is [`Priority::Normal`].
///
/// ```
/// use weft::Priority;
/// assert_eq!(Priority::default(), Priority::Normal);
/// assert!(Priority::High > Priority::Low);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Background work: runs when nothing more urgent waits, and at a guaranteed minimum
    /// rate otherwise.
    Low,
    /// Ordinary work.
    #[default]
    Normal,
    /// Urgent work: searched first.
    High,
}

/// Number of lanes.
pub(crate) const LANES: usize = 3;

impl Priority {
    /// The lane index: 0 is searched first.
    #[inline]
    pub(crate) fn lane(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}
