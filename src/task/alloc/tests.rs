//! Unit tests of `alloc.rs`.

use super::*;

fn spare_ptr() -> Option<NonNull<u8>> {
    SPARE.with(|s| s.0.get().map(|b| b.ptr))
}

#[test]
fn a_freed_block_is_the_next_allocation_of_its_layout() {
    let layout = Layout::from_size_align(80, 8).unwrap();
    let other = Layout::from_size_align(96, 8).unwrap();
    let a = allocate(layout);
    // SAFETY: from `allocate(layout)`, not used again.
    unsafe { free(a, layout) };
    assert_eq!(spare_ptr(), Some(a), "kept as the spare");
    let b = allocate(other);
    assert_ne!(b, a, "another layout goes to the allocator");
    assert_eq!(spare_ptr(), Some(a), "and leaves the spare alone");
    let c = allocate(layout);
    assert_eq!(c, a, "the same layout takes the spare back");
    assert_eq!(spare_ptr(), None);
    // SAFETY: both from `allocate` with these layouts, not used again.
    unsafe {
        free(b, other);
        free(c, layout);
    }
    assert_eq!(
        spare_ptr(),
        Some(b),
        "only one spare: the second free goes back"
    );
    let d = allocate(other);
    assert_eq!(d, b);
    // SAFETY: as above.
    unsafe { free(d, other) };
}

#[test]
fn large_blocks_are_never_kept() {
    let big = Layout::from_size_align(SPARE_MAX + 1, 8).unwrap();
    let p = allocate(big);
    // SAFETY: from `allocate(big)`, not used again.
    unsafe { free(p, big) };
    assert_eq!(spare_ptr(), None);
}

#[test]
fn a_thread_releases_its_spare_when_it_exits() {
    // Under Miri (or a leak checker) a spare left behind would be reported.
    std::thread::spawn(|| {
        let layout = Layout::from_size_align(64, 8).unwrap();
        let p = allocate(layout);
        // SAFETY: from `allocate(layout)`, not used again.
        unsafe { free(p, layout) };
        assert_eq!(spare_ptr(), Some(p));
    })
    .join()
    .unwrap();
}
