//! Unit tests of `util.rs`.

use super::*;

#[test]
fn xorshift_stays_in_range() {
    let rng = XorShift64Star::new(0);
    for n in 1..50 {
        for _ in 0..100 {
            assert!(rng.next_usize(n) < n);
        }
    }
}

#[test]
fn panic_message_reads_str_and_string() {
    let a: Box<dyn std::any::Any + Send> = Box::new("static");
    let b: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
    let c: Box<dyn std::any::Any + Send> = Box::new(7u32);
    assert_eq!(panic_message(&*a), Some("static"));
    assert_eq!(panic_message(&*b), Some("owned"));
    assert_eq!(panic_message(&*c), None);
}
