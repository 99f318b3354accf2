//! The AMQP wire format of Celery's messages (see the [module doc](super)): JSON ↔ AMQP
//! field tables typed as py-amqp types Python values, and whole task messages encoded
//! and decoded as body + properties.

use std::time::{Duration, SystemTime};

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::{json, Map, Number, Value};

use super::super::protocol::{check_content_type, parse_iso8601, CONTENT_TYPE_JSON};
use super::super::protocol::{ProtocolError, TaskMessage};

// ---------------------------------------------------------------------------------------
// Header tables
// ---------------------------------------------------------------------------------------

/// A JSON object as an AMQP field table, typed as py-amqp types Python values (see the
/// module doc); [`table_to_json`] reads it back.
///
/// ```
/// use serde_json::json;
/// use weft::celery::amqp::{json_to_table, table_to_json};
///
/// let headers = json!({"id": "x", "retries": 2, "eta": null, "timelimit": [60, 1.5],
///                      "stamps": {}, "big": 1u64 << 40});
/// let table = json_to_table(headers.as_object().unwrap());
/// assert_eq!(table_to_json(&table), *headers.as_object().unwrap());
/// ```
pub fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in map {
        table.insert(ShortString::from(k.as_str()), json_to_amqp(v));
    }
    table
}

/// One JSON value as an AMQP field value: `null` → `V`, bool → `t`, an integer → `I` when
/// it fits 32 bits, else `l` (an integer above `i64::MAX` → `d`), other numbers → `d`,
/// strings → `S`, arrays → `A`, objects → `F`.
pub fn json_to_amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(small) => AMQPValue::LongInt(small),
                    Err(_) => AMQPValue::LongLongInt(i),
                }
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(json_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(m) => AMQPValue::FieldTable(json_to_table(m)),
    }
}

/// An AMQP field table as a JSON object (see [`amqp_to_json`] for the values).
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), amqp_to_json(v)))
        .collect()
}

/// One AMQP field value as JSON: every integer type → a JSON integer, `f`/`d` → a number
/// (a NaN or infinity → `null`), decimals → a number, strings (long, short, byte arrays) →
/// a string (invalid UTF-8 replaced), a timestamp → its seconds, `V` → `null`.
pub fn amqp_to_json(v: &AMQPValue) -> Value {
    let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => json!(i),
        AMQPValue::ShortShortUInt(i) => json!(i),
        AMQPValue::ShortInt(i) => json!(i),
        AMQPValue::ShortUInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::LongUInt(i) => json!(i),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::Float(x) => float(f64::from(*x)),
        AMQPValue::Double(x) => float(*x),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::Void => Value::Null,
    }
}

// ---------------------------------------------------------------------------------------
// Task messages
// ---------------------------------------------------------------------------------------

/// The properties kombu gives a transient JSON message (remote-control replies, events):
/// JSON, UTF-8, delivery mode 1, priority 0, with `headers`.
pub fn transient_json(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_content_encoding("utf-8".into())
        .with_headers(headers)
        .with_delivery_mode(1)
        .with_priority(0)
}

/// The body and properties of `msg` as Celery publishes it over AMQP (see the module doc);
/// publish them on `msg.exchange` with routing key `msg.routing_key`.
///
/// ```
/// use serde_json::{json, Map};
/// use weft::celery::amqp::{decode_task, encode_task};
/// use weft::celery::TaskMessage;
///
/// let msg = TaskMessage::new("add", vec![json!(2), json!(3)], Map::new());
/// let (body, props) = encode_task(&msg);
/// assert_eq!(body, br#"[[2,3],{},{"callbacks":null,"chain":null,"chord":null,"errbacks":null}]"#);
/// let mut back = decode_task(&body, &props, "", "celery", 1).unwrap();
/// back.delivery_tag = msg.delivery_tag.clone();
/// assert_eq!(back, msg);
/// ```
pub fn encode_task(msg: &TaskMessage) -> (Vec<u8>, BasicProperties) {
    let body = msg.body_text().into_bytes();
    let mut props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_content_encoding("utf-8".into())
        .with_headers(json_to_table(&msg.headers()))
        .with_delivery_mode(2)
        .with_priority(msg.priority)
        .with_correlation_id(msg.id.as_str().into());
    if let Some(r) = &msg.reply_to {
        props = props.with_reply_to(r.as_str().into());
    }
    // kombu: `expiration = str(int(seconds_left * 1000))`, never negative.
    if let Some(at) = msg.expires.as_deref().and_then(parse_iso8601) {
        let left = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        props = props.with_expiration(left.as_millis().to_string().into());
    }
    (body, props)
}

/// Reads a task message from an AMQP delivery: its body, properties, the exchange and
/// routing key it came through, and its delivery tag (kept, as text, in
/// [`TaskMessage::delivery_tag`]).
///
/// The content type is checked first: anything but `application/json` in UTF-8 is refused
/// ([`ProtocolError::ContentType`], [`ProtocolError::BodyEncoding`]) before the body is
/// looked at, so pickle is never deserialized. Then the body must be JSON `[args, kwargs,
/// embed]` and the headers must hold at least `id` and `task` (the same rules as the
/// Redis envelope: [`TaskMessage::from_parts`]).
pub fn decode_task(
    body: &[u8],
    props: &BasicProperties,
    exchange: &str,
    routing_key: &str,
    delivery_tag: u64,
) -> Result<TaskMessage, ProtocolError> {
    let content_type = props
        .content_type()
        .as_ref()
        .ok_or(ProtocolError::Field("content_type"))?;
    check_content_type(
        content_type.as_str(),
        props.content_encoding().as_ref().map(ShortString::as_str),
    )?;
    let headers = props
        .headers()
        .as_ref()
        .map(table_to_json)
        .ok_or(ProtocolError::Field("headers"))?;
    let body: Value =
        serde_json::from_slice(body).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let mut p = Map::new();
    if let Some(c) = props.correlation_id() {
        p.insert("correlation_id".into(), json!(c.as_str()));
    }
    if let Some(r) = props.reply_to() {
        p.insert("reply_to".into(), json!(r.as_str()));
    }
    p.insert("priority".into(), json!(props.priority().unwrap_or(0)));
    p.insert(
        "delivery_info".into(),
        json!({"exchange": exchange, "routing_key": routing_key}),
    );
    p.insert("delivery_tag".into(), json!(delivery_tag.to_string()));
    TaskMessage::from_parts(&headers, &p, body)
}
