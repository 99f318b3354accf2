//! Unit tests of `lane.rs`.

use super::*;

const ALL: [Priority; LANES] = [Priority::High, Priority::Normal, Priority::Low];

#[test]
fn a_higher_priority_has_a_lower_index_and_each_lane_one_priority() {
    let indices = ALL.map(|p| p.lane().index());
    assert_eq!(indices, [0, 1, 2], "the table in the module docs");
    assert_eq!(
        Lane::ALL.map(Lane::index),
        [0, 1, 2],
        "Lane::ALL is in index order"
    );
    for a in ALL {
        for b in ALL {
            assert_eq!(
                a > b,
                a.lane().index() < b.lane().index(),
                "{a:?} against {b:?}"
            );
        }
    }
}

#[test]
fn names_round_trip_and_are_distinct() {
    assert_eq!(ALL.map(Priority::as_str), ["high", "normal", "low"]);
    for p in ALL {
        assert_eq!(Priority::from_name(p.as_str()), Some(p));
    }
    assert_eq!(Priority::from_name(""), None);
    assert_eq!(Priority::from_name("NORMAL"), None);
}
