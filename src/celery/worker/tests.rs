//! Unit tests of the worker's prefetch count ([`InFlight`]).

use super::live::{InFlight, TAKEN_PER_PREFETCH};

#[test]
fn early_acknowledged_starts_free_prefetch_room_up_to_the_taken_bound() {
    let prefetch = 8;
    let mut n = InFlight::default();
    assert_eq!(n.room(prefetch), prefetch);
    n.taken = prefetch;
    assert_eq!(n.room(prefetch), 0, "unacked = prefetch");
    // Every task started with an early ack: Celery's bound lets as many more in...
    n.started = prefetch;
    assert_eq!(n.room(prefetch), prefetch);
    // ...up to TAKEN_PER_PREFETCH x prefetch taken and not written.
    n.taken = TAKEN_PER_PREFETCH * prefetch;
    n.started = n.taken - 1;
    assert_eq!(n.room(prefetch), 0, "results waiting are bounded");
    // The finisher writes 5 results, 4 of them of early-acknowledged tasks.
    n.written(5, 4);
    assert_eq!(n.taken, TAKEN_PER_PREFETCH * prefetch - 5);
    assert_eq!(n.started, TAKEN_PER_PREFETCH * prefetch - 1 - 4);
    assert_eq!(n.room(prefetch), 5);
}
