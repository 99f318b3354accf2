//! The transport under the protocol layer: what a [`Worker`](super::Worker) needs from a
//! broker, so that one worker (and one [`Client`](super::Client)) runs over Redis
//! ([`redis`](super::redis)) and over AMQP ([`amqp`](super::amqp), feature `amqp`).
//!
//! A transport takes messages ([`Consume::fetch`]) on the worker's consumer thread and
//! settles them ([`Settle`], in batches) on its finisher thread: results go to the result
//! backend (Celery's Redis backend for both transports), and each message is acknowledged,
//! re-sent (Celery's retry), dead-lettered or put back. What the message means, how a task
//! runs, prefetch, ETA, revoke and shutdown are the worker's, shared by both.

use std::time::Duration;

use super::canvas::after::Flow;
use super::control::Panel;
use super::error::Error;
use super::events::EventSink;
use super::protocol::{ProtocolError, TaskMessage};
use super::result::TaskResult;

/// The kind of broker a URL names, checked against the result backend given with it
/// (`None`: none named).
pub(crate) enum BrokerKind {
    /// `redis://`, `rediss://`, `unix://`, `sentinel://`: its own result backend.
    Redis,
    /// `amqp://`, `amqps://`, with the Redis result backend at this URL.
    #[cfg(feature = "amqp")]
    Amqp { backend: String },
}

impl BrokerKind {
    /// What `url` names; a clear [`Error::Config`] for an unknown scheme, an AMQP broker
    /// without a backend (or without the feature `amqp`), or a Redis broker with another
    /// backend.
    pub fn of(url: &str, backend: Option<&str>) -> Result<BrokerKind, Error> {
        match url.split_once("://").map_or("", |(s, _)| s) {
            "redis" | "rediss" | "unix" | "redis+unix" | "sentinel" => match backend {
                Some(b) if b != url => Err(Error::Config(
                    "a Redis broker is its own result backend: do not name another".into(),
                )),
                _ => Ok(BrokerKind::Redis),
            },
            #[cfg(feature = "amqp")]
            "amqp" | "amqps" => match backend {
                Some(b) => Ok(BrokerKind::Amqp {
                    backend: b.to_owned(),
                }),
                None => Err(Error::Config(
                    "an AMQP broker needs a Redis result backend: Worker::backend(\"redis://...\")"
                        .into(),
                )),
            },
            #[cfg(not(feature = "amqp"))]
            "amqp" | "amqps" => Err(Error::Config(
                "weft was built without the feature `amqp`".into(),
            )),
            other => Err(Error::Config(format!(
                "unknown broker URL scheme {other:?} (expected redis://, sentinel:// or amqp://)"
            ))),
        }
    }
}

/// A message taken from a queue.
pub(crate) struct Incoming<T> {
    /// The queue it was taken from (its lane).
    pub queue: String,
    /// The task, or why it cannot be one.
    pub message: Result<TaskMessage, RefusedMessage>,
    /// What acknowledges it; `None` when there is nothing to acknowledge.
    pub tag: Option<T>,
    /// The broker delivers it again (AMQP's `redelivered`: a connection that held it
    /// closed): this worker may have started its task already.
    pub redelivered: bool,
}

/// A message that is not a task weft can run.
pub(crate) struct RefusedMessage {
    pub error: ProtocolError,
    /// Its bytes, for the dead-letter record.
    pub raw: Vec<u8>,
    /// Its task id, when that much could be read (a `FAILURE` is written for it).
    pub id: Option<String>,
}

/// One thing the finisher writes.
pub(crate) enum Settlement<T> {
    /// Acknowledge now (acks early: the task is starting).
    Ack(T),
    /// The task's final result, and the acknowledgement if it is still held. With a
    /// `flow` (a task in a workflow): its steps are sent before the result is stored,
    /// its record gets `parent_id`, `group_id` and `children`, and its chord parts are
    /// counted after it is stored and before the acknowledgement.
    Result {
        id: String,
        result: TaskResult,
        tag: Option<T>,
        flow: Option<Box<Flow>>,
    },
    /// Celery's retry: send `next`, record `RETRY` with the message of `failure`,
    /// acknowledge. If `next` cannot be sent, `failure` is the task's final result.
    Retry {
        next: TaskMessage,
        failure: TaskResult,
        tag: Option<T>,
    },
    /// A message refused unread: to the dead-letter place with the reason, a `FAILURE` for
    /// its id if known, acknowledged.
    Refuse {
        queue: String,
        raw: Vec<u8>,
        reason: String,
        result: Option<(String, TaskResult)>,
        tag: Option<T>,
    },
    /// Send the message of a held delivery again and acknowledge the old one (an ETA
    /// task held as long as the broker allows, see [`Consume::hold_limit`]).
    Republish { message: TaskMessage, tag: T },
}

impl<K> Settlement<K> {
    /// What acknowledges the message it settles, if anything.
    pub fn tag(&self) -> Option<&K> {
        match self {
            Settlement::Ack(k) | Settlement::Republish { tag: k, .. } => Some(k),
            Settlement::Result { tag, .. }
            | Settlement::Retry { tag, .. }
            | Settlement::Refuse { tag, .. } => tag.as_ref(),
        }
    }

    /// The same settlement with each tag replaced by `f`'s; `None` when an
    /// acknowledgement or a copy to send has no tag any more (already settled).
    pub fn with_tag<T>(self, mut f: impl FnMut(K) -> Option<T>) -> Option<Settlement<T>> {
        Some(match self {
            Settlement::Ack(k) => Settlement::Ack(f(k)?),
            Settlement::Result {
                id,
                result,
                tag,
                flow,
            } => Settlement::Result {
                id,
                result,
                tag: tag.and_then(f),
                flow,
            },
            Settlement::Retry { next, failure, tag } => Settlement::Retry {
                next,
                failure,
                tag: tag.and_then(f),
            },
            Settlement::Refuse {
                queue,
                raw,
                reason,
                result,
                tag,
            } => Settlement::Refuse {
                queue,
                raw,
                reason,
                result,
                tag: tag.and_then(f),
            },
            Settlement::Republish { message, tag } => Settlement::Republish {
                message,
                tag: f(tag)?,
            },
        })
    }
}

/// A batch [`Settle::settle`] could not write, and why.
pub(crate) struct Unsettled<T> {
    pub batch: Vec<Settlement<T>>,
    pub error: Error,
}

/// The consumer side of a transport (the worker's consumer thread).
pub(crate) trait Consume: Send + 'static {
    /// What acknowledges a message.
    type Tag: Send + 'static;

    /// Takes up to `max` messages, waiting at most `wait` for the first (an empty batch
    /// when none came).
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Incoming<Self::Tag>>, Error>;

    /// How often [`upkeep`](Self::upkeep) must run.
    fn upkeep_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Periodic care of the messages held (`held`: every one taken and not settled). Runs
    /// on the consumer thread, then (after shutdown began) on the finisher's, until every
    /// message is settled or put back.
    fn upkeep(&mut self, _held: &[&Self::Tag]) {}

    /// Periodic care of the broker's other messages (Redis: the restore sweep of dead
    /// workers' messages), on the consumer thread.
    fn sweep(&mut self) {}

    /// Which connection to the broker the messages fetched now came on: it moves on when
    /// the consumer had to reconnect, after which the broker delivers again every message
    /// the old connection held (AMQP). Always 0 where held messages outlive a connection
    /// (Redis).
    fn generation(&self) -> u64 {
        0
    }

    /// Whether the broker delivers again, to this live worker, messages it already
    /// delivered (AMQP, after a connection closed): the worker then remembers which tasks
    /// it started, so that a copy of one is acknowledged, not run a second time.
    fn redelivers(&self) -> bool {
        false
    }

    /// Starts consuming `queue` too (Celery's `add_consumer`), declared as the worker's own
    /// queues are (AMQP: the same queue type and `x-max-priority`, on an exchange named like
    /// the queue, bound with the queue's name as routing key); its messages are taken after
    /// those of the queues already consumed. `Ok(false)` if it is consumed already. On an
    /// error nothing changed: the worker asks again.
    fn add_queue(&mut self, queue: &str) -> Result<bool, Error>;

    /// Stops consuming `queue` (Celery's `cancel_consumer`): no new message is taken from
    /// it; the messages already taken stay held (their heartbeat, acknowledgement and
    /// put-back go on) until settled (AMQP: `basic.cancel`, keeping the channel that holds
    /// them). `Ok(false)` if it was not consumed. On an error the worker asks again.
    fn cancel_queue(&mut self, queue: &str) -> Result<bool, Error>;

    /// No more messages will be fetched (shutdown): stop the broker from sending more,
    /// but keep what is held until it is settled or put back.
    fn stop_consuming(&mut self) {}

    /// The broker-side bound on messages held unacknowledged (AMQP's per-consumer
    /// `basic.qos`): the worker asks for one more per task waiting for its ETA, as Celery
    /// does, so that ETA tasks never stop delivery. A transport may keep it static where
    /// ETA tasks wait in the broker (AMQP quorum queues).
    fn set_prefetch(&mut self, _n: usize) {}

    /// How long the broker lets a message stay unacknowledged (RabbitMQ's
    /// `consumer_timeout`); `None` when there is no such limit (Redis, whose held messages
    /// are kept alive by [`upkeep`](Self::upkeep)).
    fn hold_limit(&self) -> Option<Duration> {
        None
    }
}

/// The settling side of a transport (the worker's finisher thread).
pub(crate) trait Settle: Send + 'static {
    /// What acknowledges a message.
    type Tag: Send + 'static;

    /// Writes `batch` in order: every result before any acknowledgement of its message.
    /// When it cannot (the broker or the result backend is unreachable), the batch comes
    /// back in [`Unsettled`], and the worker hands the same batch again, unchanged, before
    /// any other, until it is written: the settler must make that retry take effect
    /// once, whether or not the failed try took effect.
    fn settle(&mut self, batch: Vec<Settlement<Self::Tag>>) -> Result<(), Unsettled<Self::Tag>>;

    /// Puts held messages back on their queues (shutdown): how many were put back, and
    /// the ones the broker could not be reached for (handed again later).
    fn requeue(&mut self, tags: Vec<Self::Tag>) -> (usize, Vec<Self::Tag>);
}

/// A broker a worker can run on: opens its consumer and settler, and serves remote control.
pub(crate) trait Transport: Clone + Send + 'static {
    /// What acknowledges a message.
    type Tag: Send + 'static;
    /// The consumer side.
    type Consumer: Consume<Tag = Self::Tag>;
    /// The settling side.
    type Settler: Settle<Tag = Self::Tag>;
    /// Where events go.
    type Events: EventSink;

    /// The event publisher of the worker `hostname` (it connects on its first publish).
    fn events(&self, hostname: &str) -> Self::Events;

    /// Connects the worker `hostname` consuming `queues` (highest lane first) holding at
    /// most `prefetch` messages.
    fn open(
        &self,
        hostname: &str,
        queues: &[String],
        prefetch: usize,
    ) -> Result<(Self::Consumer, Self::Settler), Error>;

    /// Serves Celery's remote control for the worker `hostname` until `stop()`: each
    /// request addressed to it goes to `panel`, whose answer (if any) is the reply. Sends
    /// on `ready` once requests are being received.
    fn serve_control(
        self,
        hostname: String,
        panel: &dyn Panel,
        stop: &dyn Fn() -> bool,
        ready: std::sync::mpsc::Sender<()>,
    );
}

/// Sends task messages (the [`Client`](super::Client)'s side of a transport).
pub(crate) trait Publish: Send + Sync {
    /// Sends `msg` to its queue (`msg.routing_key`).
    fn publish(&self, msg: &TaskMessage) -> Result<(), Error>;

    /// Sends `msgs`, in order, in as few round trips as the broker allows (Redis: one
    /// pipeline; RabbitMQ: every publish, then every confirm).
    fn publish_all(&self, msgs: &[&TaskMessage]) -> Result<(), Error> {
        msgs.iter().try_for_each(|m| self.publish(m))
    }

    /// The `x-max-priority` of the queues this publisher declares (AMQP only).
    fn set_max_priority(&mut self, _n: u8) {}

    /// The type of the queues this publisher declares (AMQP only): with quorum queues,
    /// countdown and ETA tasks go through native delayed delivery.
    #[cfg(feature = "amqp")]
    fn set_queue_type(&mut self, _t: super::amqp::QueueType) {}
}
