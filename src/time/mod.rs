//! Time: the hierarchical timing wheel (`wheel.rs`, a pure data structure), the
//! scheduler thread that drives it (`driver.rs`), and periodic schedules (`periodic.rs`).
//!
//! The timer knows the pool only through [`Dispatch`](driver::Dispatch) (`driver.rs`):
//! where its timer lives, where a due job goes, and when to stop. The user's handle of a
//! periodic schedule is `periodic_handle.rs`.

pub(crate) mod driver;
pub(crate) mod periodic;
pub(crate) mod periodic_handle;
pub(crate) mod wheel;
