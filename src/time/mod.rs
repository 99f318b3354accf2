//! Time: the hierarchical timing wheel (`wheel.rs`, a pure data structure) and the
//! scheduler thread that drives it (`driver.rs`).

pub(crate) mod driver;
pub(crate) mod wheel;
