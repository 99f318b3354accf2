//! Celery's remote control (kombu's broadcast "pidbox"), broker-neutral, for a weft
//! [`Worker`](super::Worker): `app.control.ping()` / `celery inspect ping` and
//! `app.control.revoke(id)` (with `terminate=True`, a running task is asked to stop).
//!
//! This module owns what every transport shares: the exchange names ([`PIDBOX`],
//! [`REPLY_PIDBOX`]), the request read from a message body (`{"method", "arguments",
//! "destination", "ticket", "reply_to": {"exchange", "routing_key"}}`), whom it is for, its
//! `expires` header, the answer, and the set of revoked ids. How a request arrives and how
//! the reply goes back is the transport's: on Redis a fanout channel and kombu's binding
//! sets ([`redis`](super::redis)), on RabbitMQ a worker's pidbox queue (`amqp`, feature
//! `amqp`).

use std::collections::{HashSet, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{json, Value};

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
