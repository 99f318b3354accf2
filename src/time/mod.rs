//! Time: the hierarchical timing wheel (`wheel.rs`, a pure data structure), the
//! scheduler thread that drives it (`driver.rs`), and periodic schedules (`periodic.rs`).
//!
//! The timer knows the pool only through [`Dispatch`](dispatch::Dispatch): where its timer
//! lives, where a due job goes, and when to stop (`dispatch.rs`).

pub(crate) mod dispatch;
pub(crate) mod driver;
pub(crate) mod periodic;
pub(crate) mod wheel;
