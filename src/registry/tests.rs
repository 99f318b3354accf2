//! Unit tests of [`RateLimit`]'s parsing (against `celery.utils.time.rate`) and its
//! string form.

use std::time::Duration;

use super::{RateLimit, RateLimitError, TaskOptions};

fn parse(rate: &str) -> Option<RateLimit> {
    RateLimit::parse(rate).unwrap_or_else(|e| panic!("{rate:?}: {e}"))
}

fn err(rate: &str) -> RateLimitError {
    match RateLimit::parse(rate) {
        Ok(limit) => panic!("{rate:?} was read as {limit:?}"),
        Err(e) => e,
    }
}

#[test]
fn valid_forms_and_their_intervals() {
    let cases = [
        ("10/s", 100_000_000),
        ("100/m", 600_000_000),
        ("1000/h", 3_600_000_000),
        ("5", 200_000_000),
        ("5/", 200_000_000),
        ("0.5/s", 2_000_000_000),
        ("2.5", 400_000_000),
        ("1e3/h", 3_600_000_000),
        ("1_000/h", 3_600_000_000),
        ("+4/s", 250_000_000),
        (" 5 /m", 12_000_000_000),
        ("\t5", 200_000_000),
        (".5/s", 2_000_000_000),
        ("1/h", 3_600_000_000_000),
    ];
    for (rate, nanos) in cases {
        let limit = parse(rate).unwrap_or_else(|| panic!("{rate:?} is no limit"));
        assert_eq!(limit.interval(), Duration::from_nanos(nanos), "{rate:?}");
    }
}

#[test]
fn zero_and_empty_are_no_limit() {
    for rate in ["", "0", "0/s", "0/m", "0/h", "0.0", "-0", "0/", " 0 "] {
        assert_eq!(parse(rate), None, "{rate:?}");
    }
    assert_eq!(RateLimit::per_second(0), None);
    assert_eq!(RateLimit::per_minute(0), None);
    assert_eq!(RateLimit::per_hour(0), None);
}

#[test]
fn invalid_strings_say_what_is_wrong() {
    // The unit is checked first and not trimmed, as Celery looks it up before it reads
    // the number.
    for rate in [
        "5/x", "5/s ", "5/ s", "5/sec", "5/S", "abc/x", "0/x", "5/s/s",
    ] {
        assert!(err(rate).is_bad_unit(), "{rate:?}");
    }
    for rate in [
        "abc", "/s", "/", " ", "5 5/s", "1__0/s", "_1/s", "1_/s", "1,5/s", "0x10",
    ] {
        assert!(err(rate).is_not_a_number(), "{rate:?}");
    }
    for rate in ["nan", "NaN/s", "inf/s", "-inf", "infinity/m", "1e999/s"] {
        assert!(err(rate).is_not_finite(), "{rate:?}");
    }
    for rate in ["-1/s", "-0.5", "-1e-9/h"] {
        assert!(err(rate).is_negative(), "{rate:?}");
    }
    for rate in ["1e-300/s", "1e-7/h", "5e-324"] {
        assert!(err(rate).is_too_slow(), "{rate:?}");
    }
    let e = err("-1/s");
    assert!(!e.is_bad_unit() && !e.is_not_a_number() && !e.is_not_finite() && !e.is_too_slow());
    let message = e.to_string();
    assert!(message.starts_with("invalid rate limit \"-1/s\": the count must not be negative"));
    for form in ["\"10/s\"", "\"100/m\"", "\"1000/h\"", "\"5\"", "\"0\""] {
        assert!(message.contains(form), "{message} lacks {form}");
    }
}

#[test]
fn max_interval_is_the_slowest_rate() {
    assert_eq!(
        RateLimit::MAX_INTERVAL,
        Duration::from_secs(u32::MAX.into())
    );
    // One start per u32::MAX seconds is the slowest accepted; a little slower is refused.
    let slowest = format!("{}/s", 1.0 / f64::from(u32::MAX));
    assert!(parse(&slowest).unwrap().interval() <= RateLimit::MAX_INTERVAL);
    let slower = format!("{}/s", 0.99 / f64::from(u32::MAX));
    assert!(err(&slower).is_too_slow());
    assert!(err(&slower)
        .to_string()
        .contains(&RateLimit::MAX_INTERVAL.as_secs().to_string()));
}

#[test]
fn display_writes_the_rate_back() {
    for rate in [
        "10/s", "100/m", "1000/h", "5", "5/", "0.5/s", "2.5", "0.001/h",
    ] {
        assert_eq!(parse(rate).unwrap().to_string(), rate);
        // And the written form reads back as the same limit.
        assert_eq!(parse(&parse(rate).unwrap().to_string()), parse(rate));
    }
    // Numbers are written in their shortest form.
    for (given, shown) in [
        ("10.0/s", "10/s"),
        ("1e3/h", "1000/h"),
        ("+5", "5"),
        (" 5 /m", "5/m"),
    ] {
        assert_eq!(parse(given).unwrap().to_string(), shown);
    }
    assert_eq!(RateLimit::per_second(10).unwrap().to_string(), "10/s");
    assert_eq!(RateLimit::per_minute(100).unwrap().to_string(), "100/m");
    assert_eq!(RateLimit::per_hour(1000).unwrap().to_string(), "1000/h");
    assert_eq!(format!("{:?}", parse("10/s").unwrap()), "RateLimit(10/s)");
}

#[test]
fn constructors_match_parse() {
    assert_eq!(RateLimit::per_second(7), parse("7/s"));
    assert_eq!(RateLimit::per_minute(7), parse("7/m"));
    assert_eq!(RateLimit::per_hour(7), parse("7/h"));
    // The form is part of the value: "5" and "5/s" limit alike but are written apart.
    assert_ne!(parse("5"), parse("5/s"));
    assert_eq!(
        parse("5").unwrap().interval(),
        parse("5/s").unwrap().interval()
    );
    let slowest = RateLimit::per_hour(1).unwrap();
    assert_eq!(slowest.interval(), Duration::from_secs(3600));
    assert_eq!(
        RateLimit::per_second(u32::MAX).unwrap().interval(),
        Duration::ZERO
    );
}

#[test]
fn task_options_keep_the_limit() {
    let opts = TaskOptions::new();
    assert_eq!(opts.get_rate_limit(), None);
    let limited = opts.rate_limit(RateLimit::per_second(2).unwrap());
    assert_eq!(limited.get_rate_limit(), RateLimit::per_second(2));
    assert_ne!(limited, opts);
    assert_eq!(limited.rate_limit(None), opts);
}
