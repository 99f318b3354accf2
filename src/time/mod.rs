//! Time: the hierarchical timing wheel (`wheel.rs`, a pure data structure), the
//! scheduler thread that drives it (`driver.rs`), and periodic schedules (`periodic.rs`).

pub(crate) mod driver;
pub(crate) mod periodic;
pub(crate) mod wheel;
