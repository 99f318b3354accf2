//! Time: the hierarchical timing wheel (`wheel.rs`, a pure data structure).

pub(crate) mod wheel;
