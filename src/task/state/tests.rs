//! Unit tests of `state.rs`.

use super::*;

#[test]
fn claim_has_one_winner() {
    let s = State::new();
    assert!(matches!(s.try_claim(), TransitionToRunning::Success(_)));
    assert!(matches!(s.try_claim(), TransitionToRunning::Failed(x) if x.is_running()));
    let prev = s.complete(Outcome::Cancelled);
    assert!(prev.is_running() && !prev.is_complete());
    let now = s.load();
    assert!(now.is_complete() && !now.is_running());
    assert_eq!(now.outcome(), Outcome::Cancelled);
    assert!(matches!(s.try_claim(), TransitionToRunning::Failed(x) if x.is_complete()));
}

#[test]
fn every_outcome_round_trips() {
    for o in [
        Outcome::Value,
        Outcome::Panicked,
        Outcome::Cancelled,
        Outcome::Shutdown,
        Outcome::TimedOut,
    ] {
        let s = State::new();
        assert!(matches!(s.try_claim(), TransitionToRunning::Success(_)));
        let _ = s.complete(o);
        assert_eq!(s.load().outcome(), o);
        assert_eq!(State::new_complete(o).load().outcome(), o);
    }
}

#[test]
fn join_interest_and_waker_stop_at_complete() {
    let s = State::new();
    assert!(s.set_join_waker().is_ok());
    assert!(s.load().is_join_waker_set());
    assert!(s.unset_join_waker().is_ok());
    assert!(s.set_join_waker().is_ok());
    assert!(matches!(s.try_claim(), TransitionToRunning::Success(_)));
    let prev = s.complete(Outcome::Value);
    assert!(prev.is_join_waker_set() && prev.is_join_interested());
    assert!(s.unset_join_waker().is_err());
    assert!(s.drop_join_interest_and_ref().is_err());

    let s = State::new();
    assert!(s.drop_join_interest_and_ref().is_ok());
    assert_eq!(s.load().ref_count(), 1);
    assert!(matches!(s.try_claim(), TransitionToRunning::Success(_)));
    assert!(s.is_sole_owner());
    assert!(
        !s.complete_and_release_if_unwatched(Outcome::Value),
        "no handle"
    );
    assert!(!s.complete(Outcome::Value).is_join_interested());
}

#[test]
fn only_a_sole_owner_claims_without_a_cas() {
    let s = State::new();
    assert_eq!(s.try_claim_sole_owner(), None, "the handle is alive");
    assert!(s.drop_join_interest_and_ref().is_ok());
    let before = s.try_claim_sole_owner().expect("no handle, one reference");
    assert!(!before.is_claimed());
    assert!(s.load().is_running());
    assert_eq!(s.try_claim_sole_owner(), None, "claimed already");
    assert!(s.is_sole_owner());

    // A task its handle cancelled: complete, so the holder only drops its reference.
    let s = State::new();
    assert!(matches!(s.try_claim(), TransitionToRunning::Success(_)));
    let _ = s.complete(Outcome::Cancelled);
    assert!(s.drop_join_interest_and_ref().is_err());
    assert_eq!(s.try_claim_sole_owner(), None, "complete");

    // A reference besides the holder's (a driver's `Cancel` message) keeps the CAS.
    let s = State::new_scheduled();
    s.ref_inc();
    assert!(s.drop_join_interest_and_ref().is_ok());
    assert_eq!(s.try_claim_sole_owner(), None, "two references");
}

#[test]
fn complete_and_release_in_one_step_only_when_nobody_waits() {
    let s = State::new();
    assert!(matches!(s.try_claim(), TransitionToRunning::Success(_)));
    assert!(!s.is_sole_owner());
    assert!(s.complete_and_release_if_unwatched(Outcome::Value));
    let now = s.load();
    assert!(now.is_complete() && !now.is_running() && now.ref_count() == 1);

    let s = State::new();
    assert!(s.set_join_waker().is_ok());
    assert!(matches!(s.try_claim(), TransitionToRunning::Success(_)));
    assert!(
        !s.complete_and_release_if_unwatched(Outcome::Value),
        "a joiner waits"
    );
    assert_eq!(s.load().ref_count(), 2, "unchanged");
}

#[test]
fn a_scheduled_task_fires_once_unless_claimed_first() {
    let s = State::new_scheduled();
    assert!(s.load().is_scheduled() && !s.load().is_claimed());
    assert!(s.transition_scheduled_to_queued().is_ok());
    assert!(!s.load().is_scheduled());

    let s = State::new_scheduled();
    let TransitionToRunning::Success(prev) = s.try_claim() else {
        panic!("claim")
    };
    assert!(
        prev.is_scheduled(),
        "the canceller learns the task was in the timer"
    );
    assert!(s.transition_scheduled_to_queued().is_err());
    let _ = s.complete(Outcome::Cancelled);
    assert!(s.transition_scheduled_to_queued().is_err());
    s.ref_inc();
    assert_eq!(s.load().ref_count(), 3);
}

#[test]
fn a_cancel_request_sticks_to_a_claimed_task() {
    let s = State::new();
    assert!(matches!(s.try_claim(), TransitionToRunning::Success(_)));
    s.request_cancel();
    assert!(s.load().is_cancel_requested() && s.load().is_running());
    let prev = s.complete(Outcome::Cancelled);
    assert!(prev.is_cancel_requested());
    assert_eq!(s.load().outcome(), Outcome::Cancelled);

    // A retry keeps the request across SCHEDULED; the next claim sees it.
    let s = State::new();
    assert!(matches!(s.try_claim(), TransitionToRunning::Success(_)));
    s.transition_running_to_scheduled();
    s.request_cancel();
    assert!(s.transition_scheduled_to_queued().is_ok());
    let TransitionToRunning::Success(before) = s.try_claim() else {
        panic!("claim")
    };
    assert!(before.is_cancel_requested());
}

#[test]
fn references_count_down_to_the_last() {
    let s = State::new();
    assert_eq!(s.load().ref_count(), 2);
    assert!(!s.ref_dec());
    assert!(s.ref_dec());
    assert_eq!(State::new_complete(Outcome::Shutdown).load().ref_count(), 1);
}
