use serde_json::json;

use super::*;

fn parse(body: &str) -> Result<SubmitRequest, String> {
    serde_json::from_str(body).map_err(|e| e.to_string())
}

#[test]
fn every_field_is_optional() {
    assert_eq!(parse("{}"), Ok(SubmitRequest::default()));
    assert_eq!(
        parse(r#"{"priority": null, "retry": null}"#),
        Ok(SubmitRequest::default())
    );
    assert_eq!(SubmitRequest::default().args, Value::Null);
}

/// serde's messages, as the node answers them (`400 invalid request body: ...`); tests in
/// `tests/service.rs` look for parts of them.
#[test]
fn bad_bodies_get_serdes_messages() {
    let cases = [
        (
            r#"{"args": [1, 2], "bogus": 1}"#,
            "unknown field `bogus`, expected one of `args`, `priority`, `delay_ms`, \
             `time_limit_ms`, `retry` at line 1 column 24",
        ),
        (
            r#"{"args": [1, 2], "priority": "urgent"}"#,
            "unknown variant `urgent`, expected one of `high`, `normal`, `low` at line 1 column 37",
        ),
        (
            r#"{"args": [1, 2], "priority": 1}"#,
            "expected value at line 1 column 30",
        ),
        (
            r#"{"args": [1, 2], "retry": {"tries": 1}}"#,
            "unknown field `tries`, expected one of `max_attempts`, `backoff_ms`, \
             `max_backoff_ms`, `multiplier`, `jitter` at line 1 column 34",
        ),
        (
            r#"{"args": [1, 2], "delay_ms": -1}"#,
            "invalid value: integer `-1`, expected u64 at line 1 column 31",
        ),
        (
            r#"{"args": [1, 2], "retry": {"multiplier": "x"}}"#,
            "invalid type: string \"x\", expected f64 at line 1 column 44",
        ),
        (
            "[1]",
            "invalid length 1, expected struct SubmitRequest with 5 elements at line 1 column 3",
        ),
    ];
    for (body, msg) in cases {
        assert_eq!(parse(body), Err(msg.to_owned()), "{body}");
    }
}

#[test]
fn priority_names_are_priority_as_str() {
    for p in [Priority::High, Priority::Normal, Priority::Low] {
        let name = PriorityName::from(p);
        assert_eq!(serde_json::to_value(name).unwrap(), json!(p.as_str()));
        assert_eq!(Priority::from(name), p);
        let back: PriorityName = serde_json::from_value(json!(p.as_str())).unwrap();
        assert_eq!(
            Priority::from_name(p.as_str()).map(PriorityName::from),
            Some(back)
        );
    }
}

#[test]
fn unset_options_are_left_out() {
    let body = SubmitRequest {
        args: json!([1, 2]),
        retry: Some(RetrySpec::default()),
        ..SubmitRequest::default()
    };
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        json!({"args": [1, 2], "retry": {}})
    );
    assert_eq!(
        serde_json::to_value(SubmitRequest::default()).unwrap(),
        json!({"args": null})
    );
}

#[test]
fn a_full_body_round_trips() {
    let text = r#"{"args": {"x": 1}, "priority": "low", "delay_ms": 2500, "time_limit_ms": 5000,
        "retry": {"max_attempts": 4, "backoff_ms": 10, "max_backoff_ms": 1000,
                  "multiplier": 2.0, "jitter": 0.5}}"#;
    let body = parse(text).unwrap();
    assert_eq!(
        body,
        SubmitRequest {
            args: json!({"x": 1}),
            priority: Some(PriorityName::Low),
            delay_ms: Some(2500),
            time_limit_ms: Some(5000),
            retry: Some(RetrySpec {
                max_attempts: Some(4),
                backoff_ms: Some(10),
                max_backoff_ms: Some(1000),
                multiplier: Some(2.0),
                jitter: Some(0.5),
            }),
        }
    );
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        serde_json::from_str::<Value>(text).unwrap()
    );
    assert_eq!(parse(&serde_json::to_string(&body).unwrap()), Ok(body));
}

#[test]
fn policies() {
    let spec = |v: Value| serde_json::from_value::<RetrySpec>(v).unwrap().policy();
    assert_eq!(spec(json!({"max_attempts": 3})).unwrap().attempts(), 3);
    assert!(spec(json!({"multiplier": 2, "jitter": 1})).is_ok());
    assert_eq!(
        spec(json!({"multiplier": 3})).unwrap_err(),
        "retry.multiplier 3 is not supported: use 1 (fixed backoff) or 2 (exponential)"
    );
    assert_eq!(
        spec(json!({"jitter": 1.5})).unwrap_err(),
        "retry.jitter 1.5 is out of range: it must be between 0 and 1"
    );
}
