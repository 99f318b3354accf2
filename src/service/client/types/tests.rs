//! Unit tests of `types.rs`.

use super::*;
use serde_json::json;

#[test]
fn empty_options_send_only_args() {
    assert_eq!(
        serde_json::to_value(SubmitOptions::new().to_body(json!([1, 2]))).unwrap(),
        json!({"args": [1, 2]})
    );
}

#[test]
fn full_options_body() {
    let opts = SubmitOptions::new()
        .priority(Priority::Low)
        .delay(Duration::from_millis(2500))
        .time_limit(Duration::from_secs(5))
        .retry(
            RetryOptions::new()
                .max_attempts(4)
                .backoff(Duration::from_millis(10))
                .max_backoff(Duration::from_secs(1))
                .multiplier(2.0)
                .jitter(0.5),
        );
    let body = opts.to_body(json!(null));
    // What the client sends is what the node reads.
    let sent = serde_json::to_vec(&body).unwrap();
    assert_eq!(
        serde_json::from_slice::<SubmitRequest>(&sent).unwrap(),
        body
    );
    assert_eq!(
        serde_json::to_value(body).unwrap(),
        json!({"args": null, "priority": "low", "delay_ms": 2500, "time_limit_ms": 5000,
               "retry": {"max_attempts": 4, "backoff_ms": 10, "max_backoff_ms": 1000,
                         "multiplier": 2.0, "jitter": 0.5}})
    );
}

#[test]
fn states_round_trip() {
    for s in [
        State::Pending,
        State::Scheduled,
        State::Started,
        State::Retry,
        State::Success,
        State::Failure,
        State::Revoked,
    ] {
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, format!("\"{}\"", s.as_str()));
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), s);
    }
}

#[test]
fn task_info_optional_fields() {
    let info: TaskInfo = serde_json::from_value(json!({
        "id": "x", "name": "add", "state": "PENDING", "attempts": 0,
        "submitted_at_ms": 1, "finished_at_ms": null}))
    .unwrap();
    assert_eq!(info.result, None);
    assert_eq!(info.finished_at_ms, None);
    let back = serde_json::to_value(&info).unwrap();
    assert!(back.get("result").is_none());
}

#[test]
fn registry_priorities() {
    let t: RegisteredTask =
        serde_json::from_value(json!({"name": "add", "priority": "high"})).unwrap();
    assert_eq!(t.priority, Priority::High);
    let bad = serde_json::from_value::<RegisteredTask>(json!({"name": "a", "priority": "urgent"}));
    assert_eq!(
        bad.unwrap_err().to_string(),
        "unknown variant `urgent`, expected one of `high`, `normal`, `low`"
    );
    let t = RegisteredTask {
        name: "a".into(),
        priority: Priority::Low,
    };
    assert_eq!(
        serde_json::to_value(&t).unwrap(),
        json!({"name": "a", "priority": "low"})
    );
}
