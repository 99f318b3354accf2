//! Tests of the protocol layer: golden envelopes and results that Python Celery wrote,
//! round trips, refusals, ISO 8601; [`assert_mixed_options`] is shared with the AMQP tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::celery::result::TaskResult;

/// What Celery's `send_task("tasks.mixed", ...)` with options (the `*send_options`
/// fixtures) decodes to, on either transport.
pub(crate) fn assert_mixed_options(m: &TaskMessage) {
    assert_eq!(m.task, "tasks.mixed");
    assert_eq!(m.args, vec![json!(1), json!("two"), json!([3.5, null])]);
    assert_eq!(m.kwargs["flag"], json!(true));
    assert_eq!(m.kwargs["name"], json!("é"));
    assert_eq!(m.retries, 2);
    assert_eq!(m.timelimit, (Some(60.0), Some(50.0)));
    assert_eq!(m.priority, 6);
    assert_eq!(m.routing_key, "bulk");
    assert_eq!(m.expires.as_deref(), Some("2030-01-02T03:04:05+00:00"));
    let eta = parse_iso8601(m.eta.as_deref().unwrap()).unwrap();
    assert_eq!(format_iso8601(eta), m.eta.clone().unwrap());
    assert_eq!(
        m.registry_args(),
        json!([1, "two", [3.5, null], {"flag": true, "name": "é"}])
    );
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/celery/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn golden_python_send_task() {
    let m = TaskMessage::decode(&fixture("send_add")).unwrap();
    assert_eq!(m.task, "add");
    assert_eq!(m.id, "11111111-1111-1111-1111-111111111111");
    assert_eq!(m.args, vec![json!(2), json!(3)]);
    assert!(m.kwargs.is_empty());
    assert_eq!(m.registry_args(), json!([2, 3]));
    assert_eq!((m.eta.as_deref(), m.expires.as_deref()), (None, None));
    assert_eq!((m.retries, m.timelimit, m.priority), (0, (None, None), 0));
    assert_eq!(m.lang, "py");
    assert_eq!(m.root_id.as_deref(), Some(m.id.as_str()));
    assert_eq!(
        (m.exchange.as_str(), m.routing_key.as_str()),
        ("", "celery")
    );
    assert_eq!(m.delivery_tag, "94a019fa-e5a1-43b2-aa48-045e115659b9");
    assert!(m.extra_headers.contains_key("stamps"));
}

#[test]
fn golden_python_send_task_with_options() {
    let m = TaskMessage::decode(&fixture("send_options")).unwrap();
    assert_mixed_options(&m);
    assert_eq!(
        parse_iso8601(m.expires.as_deref().unwrap()),
        Some(UNIX_EPOCH + Duration::from_secs(1_893_553_445))
    );
}

#[test]
fn encode_decode_round_trip_keeps_every_field() {
    let mut m = TaskMessage::decode(&fixture("send_options")).unwrap();
    m.reply_to = Some("r".into());
    let again = TaskMessage::decode(m.encode().as_bytes()).unwrap();
    assert_eq!(again, m);
    let fresh = TaskMessage::new("add", vec![json!(1)], Map::new());
    let env = fresh.to_envelope();
    let python = serde_json::from_slice::<Value>(&fixture("send_add")).unwrap();
    // The same header and property names as Python Celery's own message.
    let keys = |v: &Value, k: &str| {
        let mut ks: Vec<String> = v[k].as_object().unwrap().keys().cloned().collect();
        ks.sort();
        ks
    };
    assert_eq!(keys(&env, "headers"), keys(&python, "headers"));
    let mut py_props = keys(&python, "properties");
    py_props.retain(|k| k != "reply_to");
    assert_eq!(keys(&env, "properties"), py_props);
    assert_eq!(
        TaskMessage::decode(fresh.encode().as_bytes()).unwrap(),
        fresh
    );
}

#[test]
fn refuses_pickle_and_malformed_messages() {
    let mut env: Value = serde_json::from_slice(&fixture("send_add")).unwrap();
    env["content-type"] = json!("application/x-python-serialize");
    env["body"] = json!("gASVAAAAAAAAAACMCG9zLnN5c3RlbZSTlC4=");
    let e = TaskMessage::from_envelope(&env).unwrap_err();
    assert_eq!(
        e,
        ProtocolError::ContentType("application/x-python-serialize".into())
    );
    assert!(e.to_string().contains("never pickle"));
    let good: Value = serde_json::from_slice(&fixture("send_add")).unwrap();
    let bad = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        TaskMessage::from_envelope(&v).unwrap_err()
    };
    assert!(matches!(
        bad(&|v| v["body"] = json!("%%%")),
        ProtocolError::BodyEncoding(_)
    ));
    assert!(matches!(
        bad(&|v| v["body"] = json!(BASE64.encode("[1, 2"))),
        ProtocolError::Json(_)
    ));
    assert_eq!(
        bad(&|v| {
            v["headers"].as_object_mut().unwrap().remove("task");
        }),
        ProtocolError::Field("task")
    );
    assert_eq!(
        bad(&|v| v["body"] = json!(BASE64.encode("{}"))),
        ProtocolError::Field("body")
    );
    assert!(matches!(
        TaskMessage::decode(b"{\"body\": "),
        Err(ProtocolError::Json(_))
    ));
    assert_eq!(
        bad(&|v| v["surprise"] = json!(1)),
        ProtocolError::UnknownField("surprise".into())
    );
    // A date that cannot be read is refused, not ignored.
    assert_eq!(
        bad(&|v| v["headers"]["eta"] = json!("tomorrow")),
        ProtocolError::Date("eta", "tomorrow".into())
    );
    assert_eq!(
        bad(&|v| v["headers"]["expires"] = json!("2026-13-40T00:00:00")),
        ProtocolError::Date("expires", "2026-13-40T00:00:00".into())
    );
    let mut v = good.clone();
    v["headers"]["eta"] = json!("2026-12-05T11:35:55.123456+00:00");
    assert!(TaskMessage::from_envelope(&v).is_ok());
    // Unknown headers are Celery's own evolution: accepted.
    let mut v = good.clone();
    v["headers"]["stamps"] = json!({});
    v["headers"]["some_future_header"] = json!("x");
    assert!(TaskMessage::from_envelope(&v).is_ok());
}

#[test]
fn golden_results_match_python_backend() {
    let ok = TaskResult::from_meta(&fixture("result_success")).unwrap();
    assert_eq!(ok, Some(TaskResult::Success(json!(5))));
    let fail = TaskResult::from_meta(&fixture("result_failure"))
        .unwrap()
        .unwrap();
    assert_eq!(
        fail,
        TaskResult::Failure {
            exc_type: "ValueError".into(),
            exc_module: "builtins".into(),
            exc_message: "bad value".into(),
            traceback: Some("Traceback ...".into()),
        }
    );
    let nr = TaskResult::from_meta(&fixture("result_not_registered")).unwrap();
    assert_eq!(nr, Some(TaskResult::not_registered("nope")));
    // What weft writes has Python's shape: same keys, same failure encoding.
    let python: Value = serde_json::from_slice(&fixture("result_not_registered")).unwrap();
    let ours = TaskResult::not_registered("nope")
        .to_meta("55555555-5555-5555-5555-555555555555", SystemTime::now());
    let keys = |v: &Value| {
        let mut k: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(&python));
    assert_eq!(ours["result"], python["result"]);
    assert_eq!(ours["status"], python["status"]);
}

#[test]
fn iso8601_round_trips() {
    for s in [
        "1970-01-01T00:00:00.000000+00:00",
        "2000-02-29T12:34:56.789012+00:00",
        "2026-11-25T03:54:41.085914+00:00",
    ] {
        assert_eq!(format_iso8601(parse_iso8601(s).unwrap()), s);
    }
    assert_eq!(
        parse_iso8601("2026-01-01T02:00:00+02:00"),
        parse_iso8601("2026-01-01T00:00:00Z")
    );
    assert_eq!(parse_iso8601("2026-01-01"), None);
    assert_eq!(parse_iso8601("2026-01-01T00:00:00+0"), None);
}
