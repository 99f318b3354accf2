//! Celery's remote control over AMQP (see the [module doc](super)'s topology): a worker's
//! mailbox [`Pidbox`] (its queue `<hostname>.celery.pidbox` on the fanout exchange
//! `celery.pidbox`, opened by [`Broker::pidbox`]), the [`ControlRequest`]s it receives and
//! the replies it publishes; what a request means and its answer are
//! [`control`](super::super::control)'s, whatever the transport.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{json, Value};

use super::super::control::{has_expired, Panel, Request};
use super::super::error::Error;
use super::super::protocol::check_content_type;
use super::broker::Broker;
use super::consumer::Consumer;
use super::wire::{amqp_to_json, json_to_amqp, transient_json};
use super::{PIDBOX_EXCHANGE, PIDBOX_MESSAGE_TTL_MS, PIDBOX_QUEUE_EXPIRES_MS};

/// A worker's remote-control mailbox over AMQP (see [`Broker::pidbox`] and the module
/// doc): receives Celery's control requests and publishes replies.
#[derive(Debug)]
pub struct Pidbox {
    consumer: Consumer,
    hostname: String,
    clock: u64,
}

/// A remote-control request (`ping`, `revoke`, ...) for this worker.
pub struct ControlRequest {
    req: Request,
}

impl std::fmt::Debug for ControlRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlRequest")
            .field("method", &self.req.method)
            .field("arguments", &self.req.arguments)
            .field("ticket", &self.req.ticket)
            .finish()
    }
}

impl ControlRequest {
    /// The method: `ping`, `revoke`, ...
    pub fn method(&self) -> &str {
        &self.req.method
    }

    /// Its arguments (`{"task_id": ..., "terminate": ..., "signal": ...}` for `revoke`).
    pub fn arguments(&self) -> &Value {
        &self.req.arguments
    }

    /// The ticket the reply must carry; `None` when no reply is wanted.
    pub fn ticket(&self) -> Option<&str> {
        self.req.ticket.as_deref()
    }

    /// Where the reply goes: `(exchange, routing key)`; `None` when no reply is wanted.
    pub fn reply_to(&self) -> Option<(&str, &str)> {
        self.req
            .reply_to
            .as_ref()
            .map(|(e, k)| (e.as_str(), k.as_str()))
    }
}

/// Reads a control request from a pidbox delivery: JSON only, not expired.
pub(super) fn decode_request(body: &[u8], props: &BasicProperties) -> Option<Request> {
    let ct = props.content_type().as_ref()?;
    check_content_type(
        ct.as_str(),
        props.content_encoding().as_ref().map(ShortString::as_str),
    )
    .ok()?;
    let expires = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("expires"))
        .and_then(|v| amqp_to_json(v).as_f64());
    if has_expired(expires) {
        return None;
    }
    let body: Value = serde_json::from_slice(body).ok()?;
    Request::from_body(&body)
}

impl Broker {
    /// Opens the remote-control mailbox of the worker `hostname` (see the module doc):
    /// declares `celery.pidbox` and the queue `<hostname>.celery.pidbox`, and consumes it.
    pub fn pidbox(&self, hostname: &str) -> Result<Pidbox, Error> {
        let queue = format!("{hostname}.{PIDBOX_EXCHANGE}");
        let (channel, consumer) = self.block_on(async {
            let channel = self.conn.create_channel().await?;
            // kombu: Exchange('celery.pidbox', 'fanout', durable=False).
            channel
                .exchange_declare(
                    PIDBOX_EXCHANGE.into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let mut args = FieldTable::default();
            args.insert(
                "x-expires".into(),
                AMQPValue::LongInt(PIDBOX_QUEUE_EXPIRES_MS),
            );
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongInt(PIDBOX_MESSAGE_TTL_MS),
            );
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    args,
                )
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    PIDBOX_EXCHANGE.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((channel, consumer))
        })?;
        Ok(Pidbox {
            consumer: Consumer {
                rt: self.rt.clone(),
                channel,
                queues: vec![queue],
                consumers: vec![consumer],
                draining: Vec::new(),
                cancelled: Vec::new(),
                prefetch: 0,
            },
            hostname: hostname.to_owned(),
            clock: 0,
        })
    }
}

impl Pidbox {
    /// The worker's name, as in its queue `<hostname>.celery.pidbox` and its replies.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The next request addressed to this worker, waiting at most `timeout`; requests
    /// that are not JSON, have expired or are for other workers are skipped. `Ok(None)`
    /// when none came in time.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<ControlRequest>, Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(d) = self.consumer.next(left)? else {
                return Ok(None);
            };
            if let Some(req) = decode_request(d.body(), d.properties()) {
                if req.is_for(&self.hostname) {
                    return Ok(Some(ControlRequest { req }));
                }
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }

    /// Publishes `{<hostname>: answer}` as the reply to `req` (nothing if it wants none).
    pub fn reply(
        &mut self,
        broker: &Broker,
        req: &ControlRequest,
        answer: Value,
    ) -> Result<(), Error> {
        self.clock += 1;
        self.reply_at(broker, req, answer, self.clock)
    }

    /// [`reply`](Self::reply) with `clock` as the reply's clock (a worker's own Lamport
    /// clock, which its events share).
    fn reply_at(
        &self,
        broker: &Broker,
        req: &ControlRequest,
        answer: Value,
        clock: u64,
    ) -> Result<(), Error> {
        let Some((exchange, routing_key)) = req.reply_to() else {
            return Ok(());
        };
        let mut headers = FieldTable::default();
        headers.insert(
            "ticket".into(),
            req.ticket()
                .map_or(AMQPValue::Void, |t| AMQPValue::LongString(t.into())),
        );
        headers.insert("clock".into(), json_to_amqp(&json!(clock)));
        let props = transient_json(headers);
        let body = json!({ self.hostname.as_str(): answer }).to_string();
        // kombu: Exchange(exchange, 'direct', durable=False), declared before each reply.
        broker.block_on(broker.channel.exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))?;
        broker.publish(exchange, routing_key, body.as_bytes(), props)
    }

    /// Serves one request, if one comes within `timeout`: `panel` answers it, and its
    /// answer (if any) is the reply. Returns whether a request was answered.
    pub(crate) fn serve_one(
        &mut self,
        broker: &Broker,
        panel: &dyn Panel,
        timeout: Duration,
    ) -> Result<bool, Error> {
        let Some(req) = self.recv(timeout)? else {
            return Ok(false);
        };
        let Some(answer) = panel.answer(&req.req) else {
            return Ok(false);
        };
        self.reply_at(broker, &req, answer, panel.clock())?;
        Ok(true)
    }

    /// Closes the mailbox's channel (its queue is deleted by the broker: auto-delete).
    pub fn close(self) -> Result<(), Error> {
        self.consumer.close()
    }
}
