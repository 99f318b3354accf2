//! Celery's remote control (kombu's broadcast "pidbox") over Redis, for a weft
//! [`Worker`](super::Worker): `app.control.ping()` / `celery inspect ping` and
//! `app.control.revoke(id)` (with `terminate=True`, a running task is asked to stop).
//!
//! Requests are published on the fanout channel `/<db>.celery.pidbox` as ordinary kombu
//! envelopes whose body is `{"method", "arguments", "destination", "ticket", "reply_to":
//! {"exchange": "reply.celery.pidbox", "routing_key": <uuid>}}`. A reply is a kombu message
//! with the body `{<hostname>: <answer>}` and the header `ticket`, pushed on the list bound
//! to the reply routing key (kombu's binding set `_kombu.binding.reply.celery.pidbox`,
//! members `routing_key\x06\x16pattern\x06\x16queue`).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::redis::PRIORITY_SEP;

/// The fanout exchange of Celery's control requests.
pub const PIDBOX: &str = "celery.pidbox";
/// The direct exchange of their replies.
pub const REPLY_PIDBOX: &str = "reply.celery.pidbox";

/// Task ids revoked by remote control, remembered up to a bound (oldest forgotten first;
/// Celery keeps 50,000).
pub(crate) struct Revoked {
    inner: Mutex<(HashSet<String>, VecDeque<String>)>,
}

const MAX_REVOKED: usize = 50_000;

impl Revoked {
    pub fn new() -> Revoked {
        Revoked {
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    pub fn add(&self, id: &str) {
        let mut g = self.inner.lock();
        if g.0.insert(id.to_owned()) {
            g.1.push_back(id.to_owned());
            if g.1.len() > MAX_REVOKED {
                if let Some(old) = g.1.pop_front() {
                    g.0.remove(&old);
                }
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.inner.lock().0.contains(id)
    }
}

/// A decoded control request.
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) arguments: Value,
    pub(crate) destination: Option<Vec<String>>,
    pub(crate) ticket: Option<String>,
    pub(crate) reply_to: Option<(String, String)>,
}

impl Request {
    /// Reads a request from the message body (`{"method", "arguments", "destination",
    /// "ticket", "reply_to"}`), whatever the transport; `None` if it is not one.
    pub(crate) fn from_body(body: &Value) -> Option<Request> {
        let destination = match body.get("destination") {
            Some(Value::Array(a)) => Some(
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => None,
        };
        let reply_to = body.get("reply_to").and_then(|r| {
            Some((
                r.get("exchange")?.as_str()?.to_owned(),
                r.get("routing_key")?.as_str()?.to_owned(),
            ))
        });
        Some(Request {
            method: body.get("method")?.as_str()?.to_owned(),
            arguments: body.get("arguments").cloned().unwrap_or(Value::Null),
            destination,
            ticket: body
                .get("ticket")
                .and_then(Value::as_str)
                .map(str::to_owned),
            reply_to,
        })
    }

    /// Whether the request is addressed to `hostname` (no destination: to every worker).
    pub(crate) fn is_for(&self, hostname: &str) -> bool {
        self.destination
            .as_ref()
            .is_none_or(|dest| dest.iter().any(|d| d == hostname))
    }

    /// The answer of a worker: `ping` → `{"ok": "pong"}`; `revoke` hands the ids and its
    /// `terminate` flag to `revoke`; `None` for the methods weft does not serve.
    pub(crate) fn answer(&self, revoke: &dyn Fn(&[String], bool)) -> Option<Value> {
        match self.method.as_str() {
            "ping" => Some(json!({"ok": "pong"})),
            "revoke" => {
                let ids: Vec<String> = match self.arguments.get("task_id") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                    _ => Vec::new(),
                };
                let terminate = self
                    .arguments
                    .get("terminate")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                revoke(&ids, terminate);
                Some(json!({"ok": format!("tasks {} flagged as revoked", ids.join(", "))}))
            }
            _ => None,
        }
    }
}

/// Whether a request's `expires` header (seconds since the epoch; 0 or absent: never) has
/// passed.
pub(crate) fn has_expired(expires: Option<f64>) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    expires.is_some_and(|exp| exp > 0.0 && exp < now)
}

fn decode(raw: &[u8]) -> Option<Request> {
    let env: Value = serde_json::from_slice(raw).ok()?;
    if env.get("content-type")?.as_str()? != super::protocol::CONTENT_TYPE_JSON {
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
        "content-type": super::protocol::CONTENT_TYPE_JSON,
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

/// The remote-control loop of a worker: subscribes to the pidbox channel and answers
/// `ping` and `revoke` (handed to `revoke` with its `terminate` flag); other methods are
/// ignored. Ends when `stop` is set (checked every second).
pub(crate) fn serve(
    client: redis::Client,
    hostname: String,
    revoke: &dyn Fn(&[String], bool),
    stop: &dyn Fn() -> bool,
    subscribed: std::sync::mpsc::Sender<()>,
) {
    let db = client.get_connection_info().redis.db;
    let channel = format!("/{db}.{PIDBOX}");
    let mut clock = 0u64;
    while !stop() {
        let (Ok(mut sub), Ok(mut conn)) = (client.get_connection(), client.get_connection()) else {
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
            let Some(answer) = req.answer(revoke) else {
                continue;
            };
            clock += 1;
            let _ = reply(&mut conn, &hostname, &req, answer, clock);
        }
    }
}
