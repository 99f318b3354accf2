//! Celery's remote control (kombu's broadcast "pidbox"), broker-neutral, for a weft
//! [`Worker`](super::Worker): `celery inspect` / `app.control.inspect()` and
//! `app.control.*` reach weft workers; the commands and their replies are listed in the
//! [`Worker`](super::Worker) docs.
//!
//! This module owns what every transport shares: the exchange names ([`PIDBOX`],
//! [`REPLY_PIDBOX`]), the request read from a message body (`{"method", "arguments",
//! "destination", "ticket", "reply_to": {"exchange", "routing_key"}}`), whom it is for, its
//! `expires` header, the reply shapes, and the set of revoked ids; the worker's command
//! panel answers. How a request arrives and how
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

    /// The ids, oldest first (Celery's `inspect revoked`, and `hello`'s reply).
    pub fn list(&self) -> Vec<String> {
        self.inner.lock().1.iter().cloned().collect()
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

    /// The argument `name`, if given and not null.
    pub(crate) fn arg(&self, name: &str) -> Option<&Value> {
        self.arguments.get(name).filter(|v| !v.is_null())
    }

    /// The argument `name` as a string list: one string, or a list of them (Celery's
    /// `maybe_list`); `None` if absent or of another type.
    pub(crate) fn arg_list(&self, name: &str) -> Option<Vec<String>> {
        match self.arg(name)? {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(a) => a.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => None,
        }
    }

    /// The argument `name` as a boolean (Celery's `strtobool` for strings); `false` if
    /// absent.
    pub(crate) fn arg_bool(&self, name: &str) -> bool {
        match self.arg(name) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => {
                matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
            _ => false,
        }
    }
}

/// What answers the control requests addressed to a worker (the worker's command panel,
/// as Celery's `Panel`): the transports deliver the requests and send the replies.
pub(crate) trait Panel: Sync {
    /// The reply to `req` (`{"ok": ...}`, `{"error": ...}` or the command's value);
    /// `None` when it gets none (`shutdown`, as in Celery).
    fn answer(&self, req: &Request) -> Option<Value>;

    /// The clock value a reply carries (the worker's Lamport clock, moved forward).
    fn clock(&self) -> u64;
}

/// Celery's `ok(value)` reply.
pub(crate) fn ok(value: impl Into<Value>) -> Value {
    json!({ "ok": value.into() })
}

/// Celery's `nok(value)` reply: `{"error": ...}`.
pub(crate) fn nok(value: impl Into<Value>) -> Value {
    json!({ "error": value.into() })
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
