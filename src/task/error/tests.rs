//! Unit tests of `error.rs`.

use super::*;

#[test]
fn join_error_is_send_sync_error() {
    fn check<E: std::error::Error + Send + Sync + 'static>() {}
    check::<JoinError>();
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(JoinError::cancelled());
    assert_eq!(boxed.to_string(), "task was cancelled");
    assert_eq!(
        JoinError::timed_out().to_string(),
        "task ran past its time limit"
    );
    assert!(JoinError::timed_out().is_time_limit() && !JoinError::timed_out().is_cancelled());
}

#[test]
fn kinds_are_exclusive() {
    let p = JoinError::panicked(Box::new(5u32));
    assert!(p.is_panic() && !p.is_cancelled() && !p.is_shutdown());
    assert_eq!(p.panic_message(), None);
    assert_eq!(p.to_string(), "task panicked");
    let s = JoinError::shutdown();
    assert!(s.is_shutdown() && !s.is_panic());
    assert!(s.try_into_panic().unwrap_err().is_shutdown());
    assert_eq!(
        format!("{:?}", JoinError::cancelled()),
        "JoinError::Cancelled"
    );
}
