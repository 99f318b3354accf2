//! Celery protocol v2 (JSON) over RabbitMQ / AMQP 0-9-1 (feature `amqp`): the building
//! blocks a worker and a client need, blocking, over [lapin](https://docs.rs/lapin).
//!
//! # The wire format (as Python Celery 5.7 / kombu 5.7 / py-amqp 5.4 write it)
//!
//! A task is published on the default exchange `""` with routing key = queue name. Nothing
//! is base64 here: the body is the JSON `[args, kwargs, embed]` itself.
//!
//! | property           | value                                                          |
//! |--------------------|----------------------------------------------------------------|
//! | `content_type`     | `application/json` (anything else is refused unread)           |
//! | `content_encoding` | `utf-8`                                                        |
//! | `delivery_mode`    | 2 (persistent)                                                 |
//! | `priority`         | 0..=255, always sent (0 by default); **higher runs first**     |
//! | `correlation_id`   | the task id                                                    |
//! | `reply_to`         | the sender's reply queue (Celery sends its app oid)            |
//! | `expiration`       | with `expires` only: milliseconds left, as decimal text        |
//! | `headers`          | the Celery headers, as an AMQP table (see below)               |
//!
//! Header values are typed as py-amqp writes them: strings `S` (long string), `None` `V`
//! (void), `bool` `t`, integers `I` (signed 32-bit) when they fit, else `l` (signed 64),
//! floats `d`, lists `A`, dicts `F`. `timelimit` is `A[I|d|V, I|d|V]`, `stamps` is `F{}`.
//! [`json_to_table`] and [`table_to_json`] convert, [`encode_task`] and [`decode_task`]
//! build and read whole messages. The golden tests decode what Celery really published
//! (`tests/fixtures/celery/amqp_*.json`, from `capture_amqp.py`).
//!
//! # Topology
//!
//! * A task queue `q` is declared as Celery declares its queues: durable, not exclusive,
//!   not auto-deleted, no arguments (Celery's default `celery` queue), bound to a durable
//!   direct exchange of the same name with routing key `q` ([`Broker::declare_queue`]).
//!   Priorities need `x-max-priority` on the queue; every declaration of a queue must
//!   agree on its arguments, or RabbitMQ closes the channel (`PRECONDITION_FAILED`).
//! * Refused messages go to the durable fanout exchange [`DEAD_LETTER_EXCHANGE`], bound to
//!   the durable queue [`DEAD_LETTER_QUEUE`], with the reason in the header
//!   [`REASON_HEADER`] ([`Broker::dead_letter`]).
//! * Remote control ([`Pidbox`]): requests come on the non-durable fanout exchange
//!   `celery.pidbox` to the worker's queue `<hostname>.celery.pidbox` (non-durable,
//!   exclusive, auto-deleted, `x-expires` 10000, `x-message-ttl` 300000: Celery's
//!   `control_queue_expires` and `control_queue_ttl`), consumed without acks. The body is
//!   `{"method", "arguments", "destination", "pattern", "matcher", "ticket", "reply_to":
//!   {"exchange": "reply.celery.pidbox", "routing_key": <oid>}}`, the headers `clock` and
//!   `expires` (epoch seconds, 0 = never). A reply is published on the non-durable direct
//!   exchange `reply.celery.pidbox` with the request's routing key, body `{<hostname>:
//!   <answer>}`, headers `ticket` and `clock`, `delivery_mode` 1.
//!
//! # Acknowledgements
//!
//! A [`Consumer`] holds at most `prefetch` unacknowledged deliveries (`basic.qos`); each is
//! acked ([`Delivery::ack`]), rejected or dead-lettered by its holder. A connection that
//! dies has its unacked deliveries redelivered (with `redelivered` set). RabbitMQ closes a
//! channel whose delivery stays unacked longer than its `consumer_timeout` (30 minutes by
//! default), so a long-held delivery (an ETA task) must be settled (or re-published and
//! acked) before that.
//!
//! # Runtime
//!
//! lapin is async; this module drives it with lapin's `async-global-executor` runtime
//! (async-io reactor, a small executor thread pool of its own, no tokio), and every call
//! blocks the calling thread on its future (`Runtime::block_on`), so plain worker threads
//! can use it.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use async_rs::traits::{Executor as _, Reactor as _};
use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Map, Number, Value};

use super::control::{has_expired, Request};
use super::protocol::{check_content_type, parse_iso8601, CONTENT_TYPE_JSON};
use super::transport::{Consume, Incoming, Publish, Refused, Settle, Settlement, Transport};
use super::{Error, ProtocolError, TaskMessage, TaskResult};

/// The exchange refused messages are published to (durable, fanout).
pub const DEAD_LETTER_EXCHANGE: &str = "weft.dead_letter";
/// The queue bound to [`DEAD_LETTER_EXCHANGE`] (durable): where refused messages wait for
/// a human.
pub const DEAD_LETTER_QUEUE: &str = "weft.dead_letter";
/// The header of a dead-lettered message that says why it was refused.
pub const REASON_HEADER: &str = "x-weft-reason";
/// The header of a dead-lettered message naming the exchange it came from.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-weft-original-exchange";
/// The header of a dead-lettered message naming the routing key (queue) it came from.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-weft-original-routing-key";
/// The fanout exchange of Celery's remote-control requests.
pub const PIDBOX_EXCHANGE: &str = super::control::PIDBOX;
/// The direct exchange of remote-control replies.
pub const REPLY_PIDBOX_EXCHANGE: &str = super::control::REPLY_PIDBOX;
/// `x-expires` of a worker's pidbox queue, in milliseconds (Celery's
/// `control_queue_expires`, 10 s).
pub const PIDBOX_QUEUE_EXPIRES_MS: i32 = 10_000;
/// `x-message-ttl` of a worker's pidbox queue, in milliseconds (Celery's
/// `control_queue_ttl`, 300 s).
pub const PIDBOX_MESSAGE_TTL_MS: i32 = 300_000;

type Runtime = async_rs::AGERuntime;

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
    let body = msg.body().to_string().into_bytes();
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

// ---------------------------------------------------------------------------------------
// The connection
// ---------------------------------------------------------------------------------------

/// How long a publish waits for the broker's confirm (a broker under a memory or disk
/// alarm blocks publishers) before it is an error.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// `fut`'s output, or `None` if it takes longer than `limit`.
async fn within<F: Future>(rt: &Runtime, limit: Duration, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut sleep = pin!(rt.sleep(limit));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Runs every one of `futs` to completion, concurrently, in one future (so that a batch of
/// acknowledgements or publishes is handed to lapin at once, not one round trip each).
fn join_all<F: Future>(futs: Vec<F>) -> impl Future<Output = Vec<F::Output>> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut left = futs.len();
    std::future::poll_fn(move |cx| {
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *o = Some(v);
                    left -= 1;
                }
            }
        }
        if left > 0 {
            return Poll::Pending;
        }
        Poll::Ready(out.iter_mut().filter_map(Option::take).collect())
    })
}

/// A blocking connection to RabbitMQ: one AMQP connection with one channel (in publisher
/// confirm mode) for declarations and publishing; each [`Consumer`] and [`Pidbox`] has a
/// channel of its own. `Broker` is `Send + Sync`; calls from several threads are
/// serialized by lapin on the shared channel.
pub struct Broker {
    rt: Runtime,
    conn: Connection,
    channel: Channel,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("connected", &self.conn.status().connected())
            .finish()
    }
}

/// A lapin error for a refusal of ours (a nack'd publish).
fn refused(what: &str) -> Error {
    Error::Io(std::io::Error::other(what.to_owned()))
}

impl Broker {
    /// Connects to `url` (`amqp://user:password@host:port/vhost`, the vhost `/` written
    /// `%2f`) and opens the publishing channel.
    pub fn connect(url: &str) -> Result<Broker, Error> {
        Broker::connect_named(url, "weft")
    }

    /// As [`connect`](Self::connect), with the connection name the broker shows (e.g. in
    /// `rabbitmqctl list_connections client_properties`).
    pub fn connect_named(url: &str, name: &str) -> Result<Broker, Error> {
        let rt = Runtime::async_global_executor();
        let (conn, channel) = rt.block_on(async {
            let conn = Connection::connect_with_runtime(
                url,
                ConnectionProperties::default().with_connection_name(name.into()),
                rt.clone(),
            )
            .await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>((conn, channel))
        })?;
        Ok(Broker { rt, conn, channel })
    }

    fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Declares the task queue `name` as Celery does: a durable direct exchange `name`,
    /// the durable queue `name` (with `x-max-priority` when `max_priority` is given, none
    /// otherwise, like Celery's default `celery` queue), bound with routing key `name`.
    pub fn declare_queue(&self, name: &str, max_priority: Option<u8>) -> Result<(), Error> {
        let mut args = FieldTable::default();
        if let Some(p) = max_priority {
            args.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(p)));
        }
        self.block_on(async {
            self.channel
                .exchange_declare(
                    name.into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            self.channel
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await?;
            self.channel
                .queue_bind(
                    name.into(),
                    name.into(),
                    name.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })?;
        Ok(())
    }

    /// Publishes raw `body` with `props`, and waits until the broker has taken it
    /// (publisher confirm).
    pub fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), Error> {
        let confirm = self.block_on(within(&self.rt, CONFIRM_TIMEOUT, async {
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await?
                .await
        }));
        let Some(confirm) = confirm else {
            return Err(refused(
                "no publisher confirm within 30 s (is the broker blocked?)",
            ));
        };
        if confirm?.is_nack() {
            return Err(refused("the broker refused the message (publisher nack)"));
        }
        Ok(())
    }

    /// Publishes a task message ([`encode_task`]) on `msg.exchange` with routing key
    /// `msg.routing_key`, confirmed by the broker.
    pub fn publish_task(&self, msg: &TaskMessage) -> Result<(), Error> {
        let (body, props) = encode_task(msg);
        self.publish(&msg.exchange, &msg.routing_key, &body, props)
    }

    /// Publishes every one of `msgs` (as [`publish_task`](Self::publish_task)), then waits
    /// for all their publisher confirms: one wait for the batch instead of one per message.
    pub fn publish_tasks(&self, msgs: &[TaskMessage]) -> Result<(), Error> {
        let encoded: Vec<(Vec<u8>, BasicProperties)> = msgs.iter().map(encode_task).collect();
        let nacked = self.block_on(async {
            let sends = msgs.iter().zip(&encoded).map(|(msg, (body, props))| {
                self.channel.basic_publish(
                    msg.exchange.as_str().into(),
                    msg.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    props.clone(),
                )
            });
            let mut confirms = Vec::with_capacity(msgs.len());
            for sent in join_all(sends.collect()).await {
                confirms.push(sent?);
            }
            let mut nacked = 0;
            for confirm in join_all(confirms).await {
                if confirm?.is_nack() {
                    nacked += 1;
                }
            }
            Ok::<_, lapin::Error>(nacked)
        })?;
        if nacked > 0 {
            return Err(refused("the broker refused messages (publisher nack)"));
        }
        Ok(())
    }

    /// How many messages wait in `queue`, ready for delivery (not counting those
    /// delivered and not yet acknowledged): a passive `queue.declare`.
    pub fn queue_len(&self, queue: &str) -> Result<u32, Error> {
        let q = self.block_on(async {
            let channel = self.conn.create_channel().await?;
            let q = channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = channel.close(200, "bye".into()).await;
            Ok::<_, lapin::Error>(q)
        })?;
        Ok(q.message_count())
    }

    /// Starts consuming `queue` on a channel of its own that holds at most `prefetch`
    /// unacknowledged deliveries (`basic.qos`; 0 means no bound).
    pub fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, Error> {
        self.consume_queues(&[queue], prefetch)
    }

    /// Starts consuming every one of `queues` on one channel of its own, which holds at
    /// most `prefetch` unacknowledged deliveries in all (`basic.qos` shared by the
    /// channel's consumers; 0 means no bound). When several queues have deliveries
    /// waiting, [`Consumer::next`] takes from the first of `queues` first.
    pub fn consume_queues<S: AsRef<str>>(
        &self,
        queues: &[S],
        prefetch: u16,
    ) -> Result<Consumer, Error> {
        let (channel, consumers) = self.block_on(async {
            let channel = self.conn.create_channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions { global: true })
                .await?;
            let mut consumers = Vec::with_capacity(queues.len());
            for q in queues {
                consumers.push(
                    channel
                        .basic_consume(
                            q.as_ref().into(),
                            "".into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await?,
                );
            }
            Ok::<_, lapin::Error>((channel, consumers))
        })?;
        Ok(Consumer {
            rt: self.rt.clone(),
            channel,
            queues: queues.iter().map(|q| q.as_ref().to_owned()).collect(),
            consumers,
        })
    }

    /// Declares the dead-letter exchange and queue ([`DEAD_LETTER_EXCHANGE`],
    /// [`DEAD_LETTER_QUEUE`]); [`dead_letter`](Broker::dead_letter) does it on first use.
    pub fn declare_dead_letter(&self) -> Result<(), Error> {
        self.block_on(async {
            self.channel
                .exchange_declare(
                    DEAD_LETTER_EXCHANGE.into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            self.channel
                .queue_declare(
                    DEAD_LETTER_QUEUE.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            self.channel
                .queue_bind(
                    DEAD_LETTER_QUEUE.into(),
                    DEAD_LETTER_EXCHANGE.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })?;
        Ok(())
    }

    /// Refuses `delivery` for good: publishes its body and properties unchanged, plus the
    /// headers [`REASON_HEADER`] = `reason`, [`ORIGINAL_EXCHANGE_HEADER`] and
    /// [`ORIGINAL_ROUTING_KEY_HEADER`], on [`DEAD_LETTER_EXCHANGE`] (persistent), and once
    /// the broker has confirmed that, acks the original.
    pub fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), Error> {
        self.declare_dead_letter()?;
        let d = &delivery.inner;
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        let s = |v: &str| AMQPValue::LongString(LongString::from(v));
        headers.insert(REASON_HEADER.into(), s(reason));
        headers.insert(ORIGINAL_EXCHANGE_HEADER.into(), s(d.exchange.as_str()));
        headers.insert(
            ORIGINAL_ROUTING_KEY_HEADER.into(),
            s(d.routing_key.as_str()),
        );
        let props = d
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        self.publish(DEAD_LETTER_EXCHANGE, "", &d.data, props)?;
        delivery.ack()
    }

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
            },
            hostname: hostname.to_owned(),
            clock: 0,
        })
    }

    /// Closes the connection (unacked deliveries of its consumers go back to their queues).
    pub fn close(self) -> Result<(), Error> {
        self.block_on(self.conn.close(200, "bye".into()))?;
        Ok(())
    }
}

/// A consumer of one or more queues on a channel of its own (see [`Broker::consume`] and
/// [`Broker::consume_queues`]).
pub struct Consumer {
    rt: Runtime,
    channel: Channel,
    queues: Vec<String>,
    consumers: Vec<lapin::Consumer>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queues", &self.queues)
            .finish()
    }
}

impl Consumer {
    /// The next delivery, waiting at most `timeout`: `Ok(None)` when none came in time.
    /// With several queues, a waiting delivery of an earlier queue is taken first.
    /// An error when the channel or the connection is gone (or the consumer was
    /// cancelled by the broker, e.g. its queue was deleted).
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Delivery>, Error> {
        let rt = self.rt.clone();
        let consumers = &mut self.consumers;
        let mut sleep = pin!(rt.sleep(timeout));
        let got = rt.block_on(std::future::poll_fn(|cx| {
            for (i, c) in consumers.iter_mut().enumerate() {
                if let Poll::Ready(item) = std::pin::Pin::new(c).poll_next(cx) {
                    return Poll::Ready(Some((i, item)));
                }
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        }));
        match got {
            None => Ok(None),
            Some((i, Some(Ok(d)))) => Ok(Some(Delivery {
                rt: self.rt.clone(),
                queue: self.queues[i].clone(),
                inner: d,
            })),
            Some((_, Some(Err(e)))) => Err(e.into()),
            Some((_, None)) => Err(refused("the consumer was cancelled")),
        }
    }

    /// Stops the broker from delivering more (`basic.cancel` of each queue's consumer);
    /// deliveries already received stay held until settled or until the channel closes.
    pub fn cancel(&self) -> Result<(), Error> {
        self.rt.block_on(async {
            for c in &self.consumers {
                self.channel
                    .basic_cancel(c.tag(), lapin::options::BasicCancelOptions::default())
                    .await?;
            }
            Ok::<_, lapin::Error>(())
        })?;
        Ok(())
    }

    /// Changes the channel's bound on unacknowledged deliveries (`basic.qos`).
    pub fn set_prefetch(&self, prefetch: u16) -> Result<(), Error> {
        self.rt.block_on(
            self.channel
                .basic_qos(prefetch, BasicQosOptions { global: true }),
        )?;
        Ok(())
    }

    /// Closes the channel: its unacknowledged deliveries go back to the queue.
    pub fn close(self) -> Result<(), Error> {
        self.rt.block_on(self.channel.close(200, "bye".into()))?;
        Ok(())
    }
}

/// A message received by a [`Consumer`]; settle it with [`ack`](Delivery::ack),
/// [`reject`](Delivery::reject) or [`Broker::dead_letter`] (an unsettled delivery stays
/// with this channel until it closes, then is redelivered).
pub struct Delivery {
    rt: Runtime,
    queue: String,
    inner: lapin::message::Delivery,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("delivery_tag", &self.inner.delivery_tag)
            .field("routing_key", &self.inner.routing_key)
            .field("redelivered", &self.inner.redelivered)
            .finish()
    }
}

impl Delivery {
    /// The queue it was consumed from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// The AMQP properties (headers included).
    pub fn properties(&self) -> &BasicProperties {
        &self.inner.properties
    }

    /// The exchange it was published to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        self.inner.exchange.as_str()
    }

    /// The routing key it was published with (the queue, for Celery).
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }

    /// Whether the broker delivered it before (to a consumer that did not settle it).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// The channel's delivery tag.
    pub fn delivery_tag(&self) -> u64 {
        self.inner.delivery_tag
    }

    /// The task message it carries ([`decode_task`]).
    pub fn task(&self) -> Result<TaskMessage, ProtocolError> {
        decode_task(
            &self.inner.data,
            &self.inner.properties,
            self.exchange(),
            self.routing_key(),
            self.inner.delivery_tag,
        )
    }

    /// Acknowledges it: the broker forgets it.
    pub fn ack(&self) -> Result<(), Error> {
        self.rt
            .block_on(self.inner.acker.ack(BasicAckOptions::default()))?;
        Ok(())
    }

    /// Rejects it: back to its queue (`requeue`), or dropped (or dead-lettered by the
    /// queue's own `x-dead-letter-exchange`, if it has one).
    pub fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.rt
            .block_on(self.inner.acker.reject(BasicRejectOptions { requeue }))?;
        Ok(())
    }

    /// Puts it back on its queue (`basic.reject` with requeue): `Ok(false)` if it was
    /// settled already or its channel is gone (the broker then has it back anyway).
    pub fn requeue(&self) -> Result<bool, Error> {
        Ok(self.rt.block_on(
            self.inner
                .acker
                .reject(BasicRejectOptions { requeue: true }),
        )?)
    }

    /// Negatively acknowledges it (`basic.nack`, one message), requeued or not.
    pub fn nack(&self, requeue: bool) -> Result<(), Error> {
        self.rt.block_on(self.inner.acker.nack(BasicNackOptions {
            multiple: false,
            requeue,
        }))?;
        Ok(())
    }
}

/// Acknowledges every one of `deliveries` in one go; true if all were acknowledged.
pub fn ack_all(deliveries: &[Delivery]) -> bool {
    let Some(first) = deliveries.first() else {
        return true;
    };
    let acks = deliveries
        .iter()
        .map(|d| d.inner.acker.ack(BasicAckOptions::default()))
        .collect();
    first
        .rt
        .block_on(join_all(acks))
        .iter()
        .all(|r| matches!(r, Ok(true)))
}

// ---------------------------------------------------------------------------------------
// Remote control
// ---------------------------------------------------------------------------------------

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
fn decode_request(body: &[u8], props: &BasicProperties) -> Option<Request> {
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
        let Some((exchange, routing_key)) = req.reply_to() else {
            return Ok(());
        };
        self.clock += 1;
        let mut headers = FieldTable::default();
        headers.insert(
            "ticket".into(),
            req.ticket()
                .map_or(AMQPValue::Void, |t| AMQPValue::LongString(t.into())),
        );
        headers.insert("clock".into(), json_to_amqp(&json!(self.clock)));
        let props = BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_content_encoding("utf-8".into())
            .with_headers(headers)
            .with_delivery_mode(1)
            .with_priority(0);
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

    /// Serves one request, if one comes within `timeout`: `ping`, and `revoke` (the ids and
    /// the `terminate` flag go to `revoke`); other methods are ignored. Returns whether a
    /// request was answered.
    pub(crate) fn serve_one(
        &mut self,
        broker: &Broker,
        revoke: &dyn Fn(&[String], bool),
        timeout: Duration,
    ) -> Result<bool, Error> {
        let Some(req) = self.recv(timeout)? else {
            return Ok(false);
        };
        let Some(answer) = req.req.answer(revoke) else {
            return Ok(false);
        };
        self.reply(broker, &req, answer)?;
        Ok(true)
    }

    /// Closes the mailbox's channel (its queue is deleted by the broker: auto-delete).
    pub fn close(self) -> Result<(), Error> {
        self.consumer.close()
    }
}

// ---------------------------------------------------------------------------------------
// The worker's and the client's transport over AMQP
// ---------------------------------------------------------------------------------------

/// A [`Worker`](super::Worker)'s transport over AMQP, with results in Celery's Redis
/// result backend.
#[derive(Clone)]
pub(crate) struct AmqpTransport {
    pub url: String,
    pub backend: redis::Client,
    pub result_expires: Duration,
    pub max_priority: Option<u8>,
    pub hold_limit: Duration,
}

/// The consumer side: one channel consuming every queue, on a connection of its own;
/// reconnects after the connection or the channel failed (its unsettled deliveries are
/// then redelivered by the broker).
pub(crate) struct AmqpConsumer {
    url: String,
    /// The connection name: `weft consumer <worker hostname>`.
    name: String,
    queues: Vec<String>,
    max_priority: Option<u8>,
    /// The connection and its consumer; `None` after a failure, until the next fetch.
    live: Option<(Broker, Consumer)>,
    /// How many times it connected.
    generation: u64,
    hold_limit: Duration,
    prefetch: usize,
}

impl AmqpConsumer {
    fn connect(&self) -> Result<(Broker, Consumer), Error> {
        let broker = Broker::connect_named(&self.url, &self.name)?;
        for q in &self.queues {
            broker.declare_queue(q, self.max_priority)?;
        }
        let consumer = broker.consume_queues(
            &self.queues,
            u16::try_from(self.prefetch).unwrap_or(u16::MAX),
        )?;
        Ok((broker, consumer))
    }
}

/// What a delivery holds for the worker.
fn incoming(d: Delivery) -> Incoming<Delivery> {
    let message = d.task().map_err(|error| Refused {
        error,
        raw: d.body().to_vec(),
        id: d
            .properties()
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("id"))
            .and_then(|v| amqp_to_json(v).as_str().map(str::to_owned)),
    });
    Incoming {
        queue: d.queue().to_owned(),
        message,
        tag: Some(d),
    }
}

impl Consume for AmqpConsumer {
    type Tag = Delivery;

    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Incoming<Delivery>>, Error> {
        if self.live.is_none() {
            self.live = Some(self.connect()?);
            self.generation += 1;
        }
        let Some((_, consumer)) = self.live.as_mut() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut wait = wait;
        while out.len() < max {
            match consumer.next(wait) {
                Ok(Some(d)) => out.push(incoming(d)),
                Ok(None) => break,
                Err(e) if out.is_empty() => {
                    self.live = None;
                    return Err(e);
                }
                Err(_) => break, // the next fetch sees it again
            }
            // The rest only if they are here already.
            wait = Duration::ZERO;
        }
        Ok(out)
    }

    fn set_prefetch(&mut self, n: usize) {
        if n != self.prefetch {
            self.prefetch = n;
            if let Some((_, consumer)) = &self.live {
                let _ = consumer.set_prefetch(u16::try_from(n).unwrap_or(u16::MAX));
            }
        }
    }

    fn hold_limit(&self) -> Option<Duration> {
        Some(self.hold_limit)
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn stop_consuming(&mut self) {
        if let Some((_, consumer)) = &self.live {
            let _ = consumer.cancel();
        }
    }
}

/// The settling side: results in one Redis transaction per batch, then each delivery
/// settled on its channel.
pub(crate) struct AmqpSettler {
    url: String,
    broker: Broker,
    backend: redis::Client,
    conn: Option<redis::Connection>,
    expires: Duration,
}

impl AmqpSettler {
    /// Publishes `msg` (confirmed), on a new connection if the current one failed.
    fn publish(&mut self, msg: &TaskMessage) -> Result<(), Error> {
        if self.broker.publish_task(msg).is_ok() {
            return Ok(());
        }
        self.broker = Broker::connect(&self.url)?;
        self.broker.publish_task(msg)
    }

    /// Dead-letters `d` (then acks it), on a new connection if the current one failed.
    fn dead_letter(&mut self, d: &Delivery, reason: &str) -> Result<(), Error> {
        if self.broker.dead_letter(d, reason).is_ok() {
            return Ok(());
        }
        self.broker = Broker::connect(&self.url)?;
        self.broker.dead_letter(d, reason)
    }

    /// Writes `results` to the Redis backend in one transaction; true once Redis took
    /// them (or there were none).
    fn write_results(&mut self, results: &[(String, TaskResult)]) -> bool {
        if results.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (id, result) in results {
            super::backend::add_result(&mut pipe, id, result, self.expires);
        }
        for i in 0..3 {
            let conn = match self.conn.take() {
                Some(c) => Some(c),
                None => super::backend::connect(&self.backend).ok(),
            };
            if let Some(mut conn) = conn {
                if pipe.query::<()>(&mut conn).is_ok() {
                    self.conn = Some(conn);
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100 << i));
        }
        false
    }
}

impl Settle for AmqpSettler {
    type Tag = Delivery;

    /// Results first (one Redis transaction), then each delivery: acknowledged (all the
    /// plain ones at once), or, when its result could not be written, put back on its
    /// queue to run again (at-least-once). A retry or an ETA copy is sent (confirmed)
    /// before the old delivery is acknowledged; a retry that cannot be sent makes the
    /// failure final; a dead letter or ETA copy that cannot be sent goes back to its queue.
    fn settle(&mut self, batch: Vec<Settlement<Delivery>>) {
        let results: Vec<(String, TaskResult)> = batch
            .iter()
            .filter_map(|s| match s {
                Settlement::Result { id, result, .. } => Some((id.clone(), result.clone())),
                Settlement::Retry { next, failure, .. } => {
                    let reason = match failure {
                        TaskResult::Failure { exc_message, .. } => exc_message.clone(),
                        _ => String::new(),
                    };
                    Some((next.id.clone(), TaskResult::Retry(reason)))
                }
                Settlement::Refuse {
                    result: Some(r), ..
                } => Some(r.clone()),
                _ => None,
            })
            .collect();
        let written = self.write_results(&results);
        let mut acks = Vec::new();
        let mut final_failures = Vec::new();
        for s in batch {
            match s {
                Settlement::Ack(d) => acks.push(d),
                Settlement::Result { tag: Some(d), .. } if written => acks.push(d),
                Settlement::Result { tag: Some(d), .. } => {
                    let _ = d.reject(true);
                }
                Settlement::Retry { tag: Some(d), .. } if !written => {
                    let _ = d.reject(true);
                }
                Settlement::Retry { next, failure, tag } => {
                    if self.publish(&next).is_err() {
                        final_failures.push((next.id.clone(), failure));
                    }
                    acks.extend(tag);
                }
                Settlement::Refuse {
                    reason,
                    tag: Some(d),
                    ..
                } if self.dead_letter(&d, &reason).is_err() => {
                    let _ = d.reject(true);
                }
                Settlement::Republish { message, tag } => {
                    if self.publish(&message).is_ok() {
                        acks.push(tag);
                    } else {
                        let _ = tag.reject(true);
                    }
                }
                _ => {}
            }
        }
        let _ = self.write_results(&final_failures);
        ack_all(&acks);
    }

    fn requeue(&mut self, tags: Vec<Delivery>) -> usize {
        tags.iter()
            .filter(|d| matches!(d.requeue(), Ok(true)))
            .count()
    }
}

impl Transport for AmqpTransport {
    type Tag = Delivery;
    type Consumer = AmqpConsumer;
    type Settler = AmqpSettler;

    fn open(
        &self,
        hostname: &str,
        queues: &[String],
        prefetch: usize,
    ) -> Result<(AmqpConsumer, AmqpSettler), Error> {
        let mut backend = super::backend::connect(&self.backend)?;
        let _: () = redis::cmd("PING").query(&mut backend)?;
        let mut consumer = AmqpConsumer {
            url: self.url.clone(),
            name: format!("weft consumer {hostname}"),
            queues: queues.to_vec(),
            max_priority: self.max_priority,
            live: None,
            generation: 1,
            hold_limit: self.hold_limit,
            prefetch,
        };
        // Connected now, so that a bad URL or a refused declaration fails `start`.
        consumer.live = Some(consumer.connect()?);
        Ok((
            consumer,
            AmqpSettler {
                url: self.url.clone(),
                broker: Broker::connect(&self.url)?,
                backend: self.backend.clone(),
                conn: Some(backend),
                expires: self.result_expires,
            },
        ))
    }

    fn serve_control(
        self,
        hostname: String,
        revoke: &dyn Fn(&[String], bool),
        stop: &dyn Fn() -> bool,
        ready: std::sync::mpsc::Sender<()>,
    ) {
        let mut backoff = Duration::from_millis(100);
        while !stop() {
            let session = (|| -> Result<(), Error> {
                let broker = Broker::connect(&self.url)?;
                let mut pidbox = broker.pidbox(&hostname)?;
                let _ = ready.send(());
                while !stop() {
                    pidbox.serve_one(&broker, revoke, Duration::from_millis(500))?;
                }
                let _ = pidbox.close();
                broker.close()
            })();
            if session.is_ok() {
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// The client's side: declares a queue the first time it sends to it (as Celery's
/// producer does: a message routed to a queue that does not exist would be dropped), then
/// publishes with a publisher confirm.
pub(crate) struct AmqpPublisher {
    url: String,
    broker: parking_lot::Mutex<Broker>,
    max_priority: Option<u8>,
    declared: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl AmqpPublisher {
    /// Connects now.
    pub fn new(url: &str) -> Result<AmqpPublisher, Error> {
        Ok(AmqpPublisher {
            url: url.to_owned(),
            broker: parking_lot::Mutex::new(Broker::connect(url)?),
            max_priority: None,
            declared: parking_lot::Mutex::new(std::collections::HashSet::new()),
        })
    }
}

impl Publish for AmqpPublisher {
    /// Declares the queue the first time, then publishes (confirmed); on a failure,
    /// once more on a new connection.
    fn publish(&self, msg: &TaskMessage) -> Result<(), Error> {
        let mut broker = self.broker.lock();
        let send = |broker: &Broker| -> Result<(), Error> {
            if msg.exchange.is_empty() && !self.declared.lock().contains(&msg.routing_key) {
                broker.declare_queue(&msg.routing_key, self.max_priority)?;
                self.declared.lock().insert(msg.routing_key.clone());
            }
            broker.publish_task(msg)
        };
        if send(&broker).is_ok() {
            return Ok(());
        }
        *broker = Broker::connect(&self.url)?;
        send(&broker)
    }

    fn set_max_priority(&mut self, n: u8) {
        self.max_priority = Some(n);
    }
}

#[cfg(test)]
mod test;
