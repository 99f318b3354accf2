use std::time::SystemTime;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Map, Value};

use super::super::protocol::{parse_iso8601, CONTENT_TYPE_JSON};
use super::super::protocol::{ProtocolError, TaskMessage};
use super::pidbox::decode_request;
use super::*;

/// A golden fixture of `capture_amqp.py`.
fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/celery/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_slice(&raw).unwrap()
}

/// A typed fixture value (`[letter, value]`) as the exact AMQP value it was on the wire.
fn typed(v: &Value) -> AMQPValue {
    let (t, x) = (v[0].as_str().unwrap(), &v[1]);
    match t {
        "S" => AMQPValue::LongString(x.as_str().unwrap().into()),
        "I" => AMQPValue::LongInt(x.as_i64().unwrap() as i32),
        "l" | "L" => AMQPValue::LongLongInt(x.as_i64().unwrap()),
        "d" => AMQPValue::Double(x.as_f64().unwrap()),
        "t" => AMQPValue::Boolean(x.as_bool().unwrap()),
        "V" => AMQPValue::Void,
        "A" => AMQPValue::FieldArray(
            x.as_array()
                .unwrap()
                .iter()
                .map(typed)
                .collect::<Vec<_>>()
                .into(),
        ),
        "F" => AMQPValue::FieldTable(typed_table(x)),
        other => panic!("type {other} not in the fixtures"),
    }
}

fn typed_table(v: &Value) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, x) in v.as_object().unwrap() {
        t.insert(k.as_str().into(), typed(x));
    }
    t
}

/// The delivery `capture_amqp.py` saw: (body, properties, exchange, routing key).
fn delivery(name: &str) -> (Vec<u8>, BasicProperties, String, String) {
    let f = fixture(name);
    let p = &f["properties"];
    let s = |k: &str| p[k].as_str().map(ShortString::from);
    let mut props = BasicProperties::default()
        .with_headers(typed_table(&f["headers"]))
        .with_delivery_mode(p["delivery_mode"].as_u64().unwrap() as u8)
        .with_priority(p["priority"].as_u64().unwrap() as u8);
    for (k, set) in [
        (
            "content_type",
            BasicProperties::with_content_type as fn(_, _) -> _,
        ),
        ("content_encoding", BasicProperties::with_content_encoding),
        ("correlation_id", BasicProperties::with_correlation_id),
        ("reply_to", BasicProperties::with_reply_to),
        ("expiration", BasicProperties::with_expiration),
    ] {
        if let Some(v) = s(k) {
            props = set(props, v);
        }
    }
    let info = &f["delivery_info"];
    (
        f["body"].as_str().unwrap().as_bytes().to_vec(),
        props,
        info["exchange"].as_str().unwrap().to_owned(),
        info["routing_key"].as_str().unwrap().to_owned(),
    )
}

fn decode_fixture(name: &str) -> TaskMessage {
    let (body, props, exchange, rk) = delivery(name);
    decode_task(&body, &props, &exchange, &rk, 7).unwrap()
}

#[test]
fn golden_python_send_task_over_amqp() {
    let m = decode_fixture("amqp_send_add");
    assert_eq!(m.task, "add");
    assert_eq!(m.id, "11111111-1111-1111-1111-111111111111");
    assert_eq!(m.args, vec![json!(2), json!(3)]);
    assert!(m.kwargs.is_empty());
    assert_eq!((m.eta.as_deref(), m.expires.as_deref()), (None, None));
    assert_eq!((m.retries, m.timelimit, m.priority), (0, (None, None), 0));
    assert_eq!(m.lang, "py");
    assert_eq!(m.root_id.as_deref(), Some(m.id.as_str()));
    assert_eq!(
        (m.exchange.as_str(), m.routing_key.as_str()),
        ("", "celery")
    );
    assert_eq!(m.delivery_tag, "7");
    assert!(m.reply_to.is_some());
    assert_eq!(m.extra_headers["stamps"], json!({}));
    assert_eq!(m.extra_headers["replaced_task_nesting"], json!(0));
}

#[test]
fn golden_python_send_task_with_options_over_amqp() {
    let m = decode_fixture("amqp_send_options");
    crate::celery::protocol::tests::assert_mixed_options(&m);
}

/// What weft publishes has the property set and the header *types* Celery's own message
/// has, so kombu/py-amqp reads it back as it reads Celery's.
#[test]
fn encode_matches_python_types() {
    let (_, py_props, _, _) = delivery("amqp_send_options");
    let mut m = decode_fixture("amqp_send_options");
    m.lang = "rs".into();
    let (body, props) = encode_task(&m);
    let py = fixture("amqp_send_options");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        serde_json::from_str::<Value>(py["body"].as_str().unwrap()).unwrap()
    );
    let ours = props.headers().as_ref().unwrap().inner();
    let theirs = py_props.headers().as_ref().unwrap().inner();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (k, v) in theirs {
        if k.as_str() == "lang" {
            continue;
        }
        assert_eq!(&ours[k], v, "header {k}");
    }
    assert_eq!(props.content_type(), py_props.content_type());
    assert_eq!(props.content_encoding(), py_props.content_encoding());
    assert_eq!(props.delivery_mode(), py_props.delivery_mode());
    assert_eq!(props.priority(), py_props.priority());
    assert_eq!(props.correlation_id(), py_props.correlation_id());
    assert_eq!(props.reply_to(), py_props.reply_to());
    // expires 2030-01-02 → milliseconds left from now, as kombu computes it.
    let ms: u64 = props
        .expiration()
        .as_ref()
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    let left = parse_iso8601("2030-01-02T03:04:05+00:00")
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(ms.abs_diff(left.as_millis() as u64) < 60_000);
    // A fresh message has Python's header names too, and decodes to itself.
    let fresh = TaskMessage::new("add", vec![json!(1)], Map::new());
    let (body, props) = encode_task(&fresh);
    let mut back = decode_task(&body, &props, "", "celery", 1).unwrap();
    assert_eq!(
        props
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    assert!(props.expiration().is_none());
    back.delivery_tag = fresh.delivery_tag.clone();
    assert_eq!(back, fresh);
}

#[test]
fn header_tables_round_trip() {
    let v = json!({
        "s": "é", "n": null, "t": true, "f": false, "i": 7, "neg": -3,
        "i32max": i32::MAX, "i32min": i32::MIN, "big": 1i64 << 40, "bigneg": -(1i64 << 40),
        "i64max": i64::MAX, "i64min": i64::MIN, "x": 1.5, "a": [1, "two", null, [3.5]],
        "nested": {"deep": {"k": [true]}}, "empty_a": [], "empty_t": {},
    });
    let table = json_to_table(v.as_object().unwrap());
    assert_eq!(Value::Object(table_to_json(&table)), v);
    let t = table.inner();
    assert_eq!(t["i"], AMQPValue::LongInt(7));
    assert_eq!(t["i32min"], AMQPValue::LongInt(i32::MIN));
    assert_eq!(t["big"], AMQPValue::LongLongInt(1 << 40));
    assert_eq!(t["x"], AMQPValue::Double(1.5));
    assert_eq!(t["n"], AMQPValue::Void);
    assert_eq!(t["s"], AMQPValue::LongString("é".into()));
    // u64 above i64::MAX has no AMQP integer type: a double.
    assert_eq!(
        json_to_amqp(&json!(u64::MAX)),
        AMQPValue::Double(u64::MAX as f64)
    );
    // Other AMQP types read as the JSON they mean.
    assert_eq!(amqp_to_json(&AMQPValue::ShortShortUInt(9)), json!(9));
    assert_eq!(
        amqp_to_json(&AMQPValue::LongUInt(u32::MAX)),
        json!(u32::MAX)
    );
    assert_eq!(
        amqp_to_json(&AMQPValue::ShortString("k".into())),
        json!("k")
    );
    assert_eq!(amqp_to_json(&AMQPValue::Float(0.5)), json!(0.5));
    assert_eq!(amqp_to_json(&AMQPValue::Double(f64::NAN)), Value::Null);
    assert_eq!(amqp_to_json(&AMQPValue::Timestamp(5)), json!(5));
}

#[test]
fn refuses_pickle_and_malformed_deliveries() {
    let (body, props, ex, rk) = delivery("amqp_send_add");
    let refuse =
        |body: &[u8], props: BasicProperties| decode_task(body, &props, &ex, &rk, 1).unwrap_err();
    // Pickle is refused unread (the body here is not even valid pickle).
    let e = refuse(
        b"\x80\x04garbage",
        props
            .clone()
            .with_content_type("application/x-python-serialize".into()),
    );
    assert_eq!(
        e,
        ProtocolError::ContentType("application/x-python-serialize".into())
    );
    assert!(matches!(
        refuse(&body, props.clone().with_content_encoding("latin-1".into())),
        ProtocolError::BodyEncoding(_)
    ));
    let no_type = BasicProperties::default().with_headers(props.headers().clone().unwrap());
    assert_eq!(refuse(&body, no_type), ProtocolError::Field("content_type"));
    assert!(matches!(
        refuse(b"[1, 2", props.clone()),
        ProtocolError::Json(_)
    ));
    assert_eq!(refuse(b"{}", props.clone()), ProtocolError::Field("body"));
    let mut headers = props.headers().clone().unwrap();
    let mut without_task = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != "task" {
            without_task.insert(k.clone(), v.clone());
        }
    }
    assert_eq!(
        refuse(&body, props.clone().with_headers(without_task)),
        ProtocolError::Field("task")
    );
    let bare = BasicProperties::default().with_content_type(CONTENT_TYPE_JSON.into());
    assert_eq!(refuse(&body, bare), ProtocolError::Field("headers"));
    // Unknown headers are accepted.
    headers.insert(
        "some_future_header".into(),
        AMQPValue::LongString("x".into()),
    );
    assert!(decode_task(&body, &props.with_headers(headers), &ex, &rk, 1).is_ok());
}

#[test]
fn control_requests_decode_like_kombu_sends_them() {
    let body = json!({"method": "ping", "arguments": {}, "destination": null,
                      "pattern": null, "matcher": null, "ticket": "t-1",
                      "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "oid"}});
    let body = body.to_string();
    let mut headers = FieldTable::default();
    headers.insert("clock".into(), AMQPValue::LongInt(3));
    let later = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 60.0;
    headers.insert("expires".into(), AMQPValue::Double(later));
    let props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_content_encoding("utf-8".into())
        .with_headers(headers.clone());
    let req = decode_request(body.as_bytes(), &props).unwrap();
    assert_eq!(req.method, "ping");
    assert_eq!(req.ticket.as_deref(), Some("t-1"));
    assert!(req.is_for("any"));
    // Expired, or 0 (never expires), or not JSON.
    let mut old = headers.clone();
    old.insert("expires".into(), AMQPValue::Double(1.0));
    assert!(decode_request(body.as_bytes(), &props.clone().with_headers(old)).is_none());
    let mut never = headers;
    never.insert("expires".into(), AMQPValue::LongInt(0));
    assert!(decode_request(body.as_bytes(), &props.clone().with_headers(never)).is_some());
    let pickle = props.with_content_type("application/x-python-serialize".into());
    assert!(decode_request(body.as_bytes(), &pickle).is_none());
}
