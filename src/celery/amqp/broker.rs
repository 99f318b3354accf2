//! The blocking lapin client: [`Broker`] (one connection, a confirmed publishing channel,
//! Celery's queue and dead-letter topology); its [`Consumer`]s are in `consumer.rs`, their
//! messages ([`Delivery`]s) in `delivery.rs`; every call blocks on lapin's future (see the
//! [module doc](super)'s runtime section).

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use async_rs::traits::{Executor as _, Reactor as _};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::super::error::Error;
use super::super::protocol::TaskMessage;
use super::consumer::Consumer;
use super::delivery::Delivery;
use super::wire::encode_task;
use super::{
    Runtime, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER, REASON_HEADER,
};

/// How long a publish waits for the broker's confirm (a broker under a memory or disk
/// alarm blocks publishers) before it is an error.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Broker::connect`] waits for the broker to open the connection and its
/// channel (a host that takes the TCP connection and never answers would hang lapin's
/// connect forever) before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
pub(super) fn join_all<F: Future>(futs: Vec<F>) -> impl Future<Output = Vec<F::Output>> {
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

/// Sets the per-consumer `basic.qos` of `channel` to `prefetch` (`global` false: it
/// applies to the consumers started after it), then starts a consumer of each of `queues`.
pub(super) async fn start_consumers(
    channel: &Channel,
    queues: &[String],
    prefetch: u16,
) -> Result<Vec<lapin::Consumer>, lapin::Error> {
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let mut consumers = Vec::with_capacity(queues.len());
    for q in queues {
        consumers.push(
            channel
                .basic_consume(
                    q.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        );
    }
    Ok(consumers)
}

/// A blocking connection to RabbitMQ: one AMQP connection with one channel (in publisher
/// confirm mode) for declarations and publishing; each [`Consumer`] and
/// [`Pidbox`](super::Pidbox) has a channel of its own. `Broker` is `Send + Sync`; calls
/// from several threads are serialized by lapin on the shared channel.
pub struct Broker {
    pub(super) rt: Runtime,
    pub(super) conn: Connection,
    pub(super) channel: Channel,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("connected", &self.conn.status().connected())
            .finish()
    }
}

/// `url` with its password (if any) written `***`, for error messages.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// A lapin error for a refusal of ours (a nack'd publish).
pub(super) fn refused(what: &str) -> Error {
    Error::Io(std::io::Error::other(what.to_owned()))
}

impl Broker {
    /// Connects to `url` (`amqp://user:password@host:port/vhost`, the vhost `/` written
    /// `%2f`) and opens the publishing channel.
    pub fn connect(url: &str) -> Result<Broker, Error> {
        Broker::connect_named(url, "weft")
    }

    /// As [`connect`](Self::connect), with the connection name the broker shows (e.g. in
    /// `rabbitmqctl list_connections client_properties`). A broker that has not opened
    /// the connection within [`CONNECT_TIMEOUT`] is an error ([`Error::Io`] of kind
    /// [`TimedOut`](std::io::ErrorKind::TimedOut)).
    pub fn connect_named(url: &str, name: &str) -> Result<Broker, Error> {
        let rt = Runtime::async_global_executor();
        let opened = rt.block_on(within(&rt, CONNECT_TIMEOUT, async {
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
        }));
        let Some(opened) = opened else {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the AMQP broker at {} did not open a connection within {} s",
                    without_password(url),
                    CONNECT_TIMEOUT.as_secs()
                ),
            )));
        };
        let (conn, channel) = opened?;
        Ok(Broker { rt, conn, channel })
    }

    pub(super) fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Opens a new publishing channel if the broker closed this one (a refused
    /// declaration, `PRECONDITION_FAILED`, closes the channel it came on); an error if the
    /// connection is gone too.
    pub(super) fn reopen_channel(&mut self) -> Result<(), Error> {
        if self.channel.status().connected() {
            return Ok(());
        }
        self.channel = self.block_on(async {
            let channel = self.conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        })?;
        Ok(())
    }

    /// Declares the task queue `name` as Celery declares its classic queues: a durable
    /// direct exchange `name`, the durable queue `name` (with `x-max-priority` when
    /// `max_priority` is given, none otherwise, like Celery's default `celery` queue),
    /// bound with routing key `name`. [`declare_task_queue`](Self::declare_task_queue)
    /// declares quorum queues too.
    pub fn declare_queue(&self, name: &str, max_priority: Option<u8>) -> Result<(), Error> {
        self.declare_task_queue(name, super::QueueType::Classic, max_priority)
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
        self.publish_task_refs(&msgs.iter().collect::<Vec<_>>())
    }

    /// [`publish_tasks`](Self::publish_tasks) of borrowed messages.
    pub(crate) fn publish_task_refs(&self, msgs: &[&TaskMessage]) -> Result<(), Error> {
        let encoded: Vec<(Vec<u8>, BasicProperties)> =
            msgs.iter().map(|m| encode_task(m)).collect();
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

    /// Starts consuming `queue` on a channel of its own whose consumer holds at most
    /// `prefetch` unacknowledged deliveries (per-consumer `basic.qos`; 0 means no bound).
    pub fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, Error> {
        self.consume_queues(&[queue], prefetch)
    }

    /// Starts consuming every one of `queues` on one channel of its own; each queue's
    /// consumer holds at most `prefetch` unacknowledged deliveries (`basic.qos` with
    /// `global` false, set once before the consumers start, as Celery 5.5+ sets it:
    /// quorum queues have no channel-wide QoS; 0 means no bound). When several queues
    /// have deliveries waiting, [`Consumer::next`] takes from the first of `queues` first.
    pub fn consume_queues<S: AsRef<str>>(
        &self,
        queues: &[S],
        prefetch: u16,
    ) -> Result<Consumer, Error> {
        let queues: Vec<String> = queues.iter().map(|q| q.as_ref().to_owned()).collect();
        let (channel, consumers) = self.block_on(async {
            let channel = self.conn.create_channel().await?;
            let consumers = start_consumers(&channel, &queues, prefetch).await?;
            Ok::<_, lapin::Error>((channel, consumers))
        })?;
        Ok(Consumer {
            rt: self.rt.clone(),
            channel,
            queues,
            consumers,
            draining: Vec::new(),
            cancelled: Vec::new(),
            prefetch,
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

    /// Closes the connection (unacked deliveries of its consumers go back to their queues).
    pub fn close(self) -> Result<(), Error> {
        self.block_on(self.conn.close(200, "bye".into()))?;
        Ok(())
    }
}
