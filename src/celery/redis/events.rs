//! Celery's events over Redis ([`events`](super::super::events)): kombu's fanout
//! exchange `celeryev`, one `PUBLISH` on the channel `/<db>.celeryev/<routing key>` per
//! message (kombu's `fanout_prefix` and `fanout_patterns`, on by default), with kombu's
//! envelope and the header `hostname`, as Celery's `EventDispatcher` sends them.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use redis::Connection;
use serde_json::{json, Value};

use super::super::error::Error;
use super::super::events::{EventSink, EVENT_EXCHANGE};
use super::super::protocol::CONTENT_TYPE_JSON;
use super::super::source::Source;

/// A worker's event publisher on Redis: one connection, opened on the first publish and
/// again after a failed one.
pub(crate) struct RedisEvents {
    source: Source,
    conn: Option<Connection>,
}

impl RedisEvents {
    pub(crate) fn new(source: Source) -> RedisEvents {
        RedisEvents { source, conn: None }
    }
}

/// kombu's envelope of an event message (delivery mode 1: transient, as Celery's events).
pub(crate) fn envelope(routing_key: &str, body: &str, hostname: &str) -> Value {
    json!({
        "body": BASE64.encode(body),
        "content-encoding": "utf-8",
        "content-type": CONTENT_TYPE_JSON,
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": EVENT_EXCHANGE, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    })
}

impl EventSink for RedisEvents {
    fn publish(&mut self, routing_key: &str, body: &str, hostname: &str) -> Result<(), Error> {
        let channel = format!("/{}.{EVENT_EXCHANGE}/{routing_key}", self.source.db());
        let payload = envelope(routing_key, body, hostname).to_string();
        let conn = match &mut self.conn {
            Some(c) => c,
            slot => slot.insert(self.source.connect()?),
        };
        let sent = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query::<i64>(conn);
        if sent.is_err() {
            // A connection whose command failed is never used again.
            self.conn = None;
        }
        sent.map(drop).map_err(Error::from)
    }
}
