use super::*;

#[test]
fn waits_parse_and_cap() {
    assert_eq!(parse_wait("5"), Some(Duration::from_secs(5)));
    assert_eq!(parse_wait("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_wait("0.5"), Some(Duration::from_millis(500)));
    assert_eq!(parse_wait("3600"), Some(MAX_WAIT));
    assert_eq!(parse_wait("1e300"), Some(MAX_WAIT));
    for bad in ["", "-1", "x", "5m", "NaN", "inf", "ms"] {
        assert_eq!(parse_wait(bad), None, "{bad}");
    }
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    for v in ["Bearer t0k", "bearer t0k", "BEARER t0k", "BeArEr   t0k"] {
        assert_eq!(bearer_token(v), Some("t0k"), "{v}");
    }
    for v in ["Basic t0k", "Bearert0k", "Bearer", "Token t0k"] {
        assert_eq!(bearer_token(v), None, "{v}");
    }
}
