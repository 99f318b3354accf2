//! Placeholder: the hierarchical timing wheel is being written.
