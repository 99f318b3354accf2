//! Lanes: [`Priority`], the public name of a lane; [`Lane`], its index inside the pool;
//! and the number of lanes, [`LANES`].
//!
//! | `Priority` | `Lane` | index |
//! | --- | --- | --- |
//! | `High` | `Lane::HIGH` | 0 (searched first) |
//! | `Normal` | `Lane::NORMAL` | 1 |
//! | `Low` | `Lane::LOW` | 2 |
//!
//! Names (`Priority::as_str`, `Priority::from_name`) are what the service's API, its
//! event stream and the `weft` command write: `"high"`, `"normal"`, `"low"`.
//!
//! Indices run over `0..LANES` and index every per-lane array (injectors, deques, bounds);
//! the `const` checks below and `lane::tests` keep this table true. The lane a task waits
//! in is fixed when it is spawned; `join` halves and scope jobs take the lane of the job
//! running on their worker, or `Lane::NORMAL` off the pool.
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

/// A lane inside the pool: the index of its injector, deques and bound (see the table in
/// the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lane(u8);

impl Lane {
    /// `Priority::High`'s lane, searched first.
    pub(crate) const HIGH: Lane = Lane(0);
    /// `Priority::Normal`'s lane; also that of scope jobs and `install` closures queued
    /// from outside the pool.
    pub(crate) const NORMAL: Lane = Lane(1);
    /// `Priority::Low`'s lane, searched last.
    pub(crate) const LOW: Lane = Lane(2);

    /// Every lane, in search order (`ALL[i].index() == i`).
    pub(crate) const ALL: [Lane; LANES] = [Lane::HIGH, Lane::NORMAL, Lane::LOW];

    /// The index into per-lane arrays, in `0..LANES`.
    #[inline]
    pub(crate) const fn index(self) -> usize {
        self.0 as usize
    }
}

// The lanes are exactly `0..LANES`, in search order.
const _: () = assert!(Lane::HIGH.index() == 0);
const _: () = assert!(Lane::NORMAL.index() == Lane::HIGH.index() + 1);
const _: () = assert!(Lane::LOW.index() == Lane::NORMAL.index() + 1);
const _: () = assert!(Lane::LOW.index() + 1 == LANES);

/// Per-lane arrays are indexed by lane.
impl<T> std::ops::Index<Lane> for [T; LANES] {
    type Output = T;

    #[inline]
    fn index(&self, lane: Lane) -> &T {
        &self[lane.index()]
    }
}

impl<T> std::ops::IndexMut<Lane> for [T; LANES] {
    #[inline]
    fn index_mut(&mut self, lane: Lane) -> &mut T {
        &mut self[lane.index()]
    }
}

impl From<Priority> for Lane {
    #[inline]
    fn from(priority: Priority) -> Lane {
        match priority {
            Priority::High => Lane::HIGH,
            Priority::Normal => Lane::NORMAL,
            Priority::Low => Lane::LOW,
        }
    }
}

impl Priority {
    /// The priority's name: `"high"`, `"normal"` or `"low"`, as the service's HTTP API
    /// and the `weft` command write it.
    ///
    /// ```
    /// use weft::Priority;
    /// assert_eq!(Priority::High.as_str(), "high");
    /// assert_eq!(Priority::default().as_str(), "normal");
    /// assert_eq!(Priority::Low.as_str(), "low");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// The priority named `name`, as [`as_str`](Self::as_str) writes it (lowercase, no
    /// spaces), or `None`.
    ///
    /// ```
    /// use weft::Priority;
    /// assert_eq!(Priority::from_name("high"), Some(Priority::High));
    /// assert_eq!(Priority::from_name(Priority::Low.as_str()), Some(Priority::Low));
    /// assert_eq!(Priority::from_name("High"), None);
    /// assert_eq!(Priority::from_name("urgent"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Priority> {
        match name {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    /// The priority's lane.
    #[inline]
    pub(crate) fn lane(self) -> Lane {
        Lane::from(self)
    }
}

#[cfg(test)]
mod tests;
