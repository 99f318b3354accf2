//! Unit tests of `raw.rs`.

use super::*;
use std::mem;

#[test]
fn header_is_six_words() {
    assert_eq!(mem::size_of::<Header>(), 48);
    // An empty closure with unit output costs one header and one pointer of stage:
    // 56 bytes, the same 64-byte malloc chunk as 48.
    assert_eq!(mem::size_of::<Cell<Once<fn()>, Unowned>>(), 48 + 8);
}
