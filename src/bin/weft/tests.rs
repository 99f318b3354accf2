//! Unit tests of `weft.rs`.

use super::*;

#[test]
fn frames_and_rates_from_stats_events() {
    let before = serde_json::json!({"at_ms": 1000, "succeeded": 8, "failed": 2, "revoked": 0, "submitted": 10});
    let now = serde_json::json!({
        "at_ms": 3000, "succeeded": 25, "failed": 4, "revoked": 1, "submitted": 50,
        "queued": {"high": 2, "normal": 7, "low": 0}, "workers": 4, "busy": 1, "rejected": 3,
    });
    let f = Frame::new(&now, Some(&before));
    assert_eq!(f.rates, Some((10.0, 20.0)));
    let line = f.line();
    assert!(line.contains("queued high=2 normal=7 low=0"), "{line}");
    assert!(line.contains("workers 4 (1 busy)"), "{line}");
    assert!(line.contains("completed 30 (10.0/s)"), "{line}");
    assert!(line.contains("failed 4 | rejected 3"), "{line}");
    let first = Frame::new(&now, None);
    assert!(!first.line().contains("/s"));
}

#[test]
fn cli_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn timeout_needs_wait() {
    assert!(Cli::try_parse_from(["weft", "submit", "add", "--timeout", "5s"]).is_err());
    assert!(Cli::try_parse_from(["weft", "submit", "add", "--wait", "--timeout", "5s"]).is_ok());
    assert!(Cli::try_parse_from(["weft", "submit", "add", "--args", "{nope"]).is_err());
    assert!(Cli::try_parse_from(["weft", "submit", "add", "--delay", "soon"]).is_err());
}
