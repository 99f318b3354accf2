//! Celery's remote control (kombu's broadcast "pidbox") over Redis, for a weft
//! [`Worker`](super::super::Worker): the Redis side of [`control`](super::super::control)
//! (which reads the requests and answers them, whatever the transport).
//!
//! Requests are published on the fanout channel `/<db>.celery.pidbox` as ordinary kombu
//! envelopes whose body is `{"method", "arguments", "destination", "ticket", "reply_to":
//! {"exchange": "reply.celery.pidbox", "routing_key": <uuid>}}`. A reply is a kombu message
//! with the body `{<hostname>: <answer>}` and the header `ticket`, pushed on the list bound
//! to the reply routing key (kombu's binding set `_kombu.binding.reply.celery.pidbox`,
//! members `routing_key\x06\x16pattern\x06\x16queue`).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::super::control::{has_expired, Panel, Request, PIDBOX};
use super::super::source::Source;
use super::PRIORITY_SEP;

fn decode(raw: &[u8]) -> Option<Request> {
    let env: Value = serde_json::from_slice(raw).ok()?;
    if env.get("content-type")?.as_str()? != super::super::protocol::CONTENT_TYPE_JSON {
        return None;
    }
    if has_expired(env.pointer("/headers/expires").and_then(Value::as_f64)) {
        return None;
    }
    let body = env.get("body")?.as_str()?;
    let body: Value = match env
        .pointer("/properties/body_encoding")
        .and_then(Value::as_str)
    {
        Some("base64") => serde_json::from_slice(&BASE64.decode(body).ok()?).ok()?,
        _ => serde_json::from_str(body).ok()?,
    };
    Request::from_body(&body)
}

/// The lists bound to `routing_key` on the direct exchange `exchange` (kombu's binding
/// set), or kombu's default name for a reply queue when none is bound.
fn bound_queues(
    conn: &mut redis::Connection,
    exchange: &str,
    routing_key: &str,
) -> redis::RedisResult<Vec<String>> {
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("_kombu.binding.{exchange}"))
        .query(conn)?;
    let mut queues: Vec<String> = members
        .iter()
        .filter_map(|m| {
            let mut parts = m.split(PRIORITY_SEP);
            let rk = parts.next()?;
            let _pattern = parts.next()?;
            let queue = parts.next()?;
            (rk == routing_key).then(|| queue.to_owned())
        })
        .collect();
    if queues.is_empty() {
        queues.push(format!("{routing_key}.{exchange}"));
    }
    Ok(queues)
}

fn reply(
    conn: &mut redis::Connection,
    hostname: &str,
    req: &Request,
    answer: Value,
    clock: u64,
) -> redis::RedisResult<()> {
    let Some((exchange, routing_key)) = &req.reply_to else {
        return Ok(());
    };
    let body = json!({ hostname: answer }).to_string();
    let msg = json!({
        "body": BASE64.encode(body),
        "content-encoding": "utf-8",
        "content-type": super::super::protocol::CONTENT_TYPE_JSON,
        "headers": {"ticket": req.ticket, "clock": clock},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    })
    .to_string();
    for q in bound_queues(conn, exchange, routing_key)? {
        redis::cmd("LPUSH").arg(q).arg(&msg).query::<()>(conn)?;
    }
    Ok(())
}

/// The remote-control loop of a worker: subscribes to the pidbox channel and hands each
/// request addressed to it to `panel`, replying with its answer. Ends when `stop` is set
/// (checked every second).
pub(crate) fn serve(
    source: Source,
    hostname: String,
    panel: &dyn Panel,
    stop: &dyn Fn() -> bool,
    subscribed: std::sync::mpsc::Sender<()>,
) {
    let db = source.db();
    let channel = format!("/{db}.{PIDBOX}");
    while !stop() {
        let (Ok(mut sub), Ok(mut conn)) = (source.connect(), source.connect()) else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let mut pubsub = sub.as_pubsub();
        if pubsub.subscribe(&channel).is_err()
            || pubsub
                .set_read_timeout(Some(Duration::from_secs(1)))
                .is_err()
        {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let _ = subscribed.send(());
        while !stop() {
            let msg = match pubsub.get_message() {
                Ok(m) => m,
                Err(e) if e.is_timeout() => continue,
                Err(_) => break, // reconnect
            };
            let Ok(payload) = msg.get_payload::<Vec<u8>>() else {
                continue;
            };
            let Some(req) = decode(&payload) else {
                continue;
            };
            if !req.is_for(&hostname) {
                continue;
            }
            let Some(answer) = panel.answer(&req) else {
                continue;
            };
            let _ = reply(&mut conn, &hostname, &req, answer, panel.clock());
        }
    }
}
