//! How task queues are declared ([`QueueType`], [`Broker::declare_task_queue`]): with
//! exactly the arguments Python Celery declares them with, so that a queue declared first
//! by either side is declared again by the other without a `PRECONDITION_FAILED`.
//!
//! | queue type | exchange `q` | queue `q` arguments | bindings of `q` to exchange `q` |
//! | --- | --- | --- | --- |
//! | [`Classic`](QueueType::Classic) (Celery's default) | durable, direct | none (`x-max-priority` if set) | `q` |
//! | [`Quorum`](QueueType::Quorum) (`task_default_queue_type="quorum"`, `task_default_exchange_type="topic"`) | durable, topic | `x-queue-type` = `quorum` | `q`, and `#.q` from native delayed delivery ([`delayed`](super::delayed)) |
//!
//! Every queue is durable, not exclusive, not auto-deleted; every exchange durable, not
//! auto-deleted, without arguments (kombu's defaults).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::ExchangeKind;

use super::super::error::Error;
use super::Broker;

/// The type of RabbitMQ queue Celery's task queues are declared as (Celery's
/// `task_default_queue_type`, and for queues named on the command line its
/// `task_create_missing_queue_type`).
///
/// ```
/// use weft::celery::amqp::QueueType;
///
/// assert_eq!("quorum".parse::<QueueType>().unwrap(), QueueType::Quorum);
/// assert_eq!(QueueType::default(), QueueType::Classic);
/// assert_eq!(QueueType::Quorum.as_str(), "quorum");
/// assert!("stream".parse::<QueueType>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// A classic queue (no `x-queue-type`), bound to a direct exchange of its name:
    /// Celery's default. Its consumer's prefetch is raised by one per task waiting for
    /// its ETA in the worker, as Celery raises it.
    #[default]
    Classic,
    /// A quorum queue (`x-queue-type` = `quorum`, replicated, RabbitMQ 3.8+ and 4), bound
    /// to a topic exchange of its name, as Celery 5.5+ declares it with
    /// `task_default_queue_type="quorum"` and `task_default_exchange_type="topic"`.
    /// Countdown and ETA tasks wait in the broker (native delayed delivery); the
    /// consumer's prefetch is static (quorum queues have no global QoS).
    Quorum,
}

impl QueueType {
    /// Celery's name of it (`classic`, `quorum`).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    /// The exchange type of a queue's exchange (Celery's `task_default_exchange_type`
    /// that goes with it: native delayed delivery needs a topic exchange).
    pub(crate) fn exchange_kind(self) -> ExchangeKind {
        match self {
            QueueType::Classic => ExchangeKind::Direct,
            QueueType::Quorum => ExchangeKind::Topic,
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueueType {
    type Err = Error;

    /// `classic` or `quorum` (Celery's names); anything else is an [`Error::Config`].
    fn from_str(s: &str) -> Result<QueueType, Error> {
        match s {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(Error::Config(format!(
                "unknown queue type {other:?} (expected classic or quorum)"
            ))),
        }
    }
}

/// A long-string (`S`) argument, as py-amqp writes a Python `str`.
pub(super) fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// An integer argument as py-amqp writes a Python `int`: `I` when it fits, else `l`.
pub(super) fn int(v: i64) -> AMQPValue {
    match i32::try_from(v) {
        Ok(small) => AMQPValue::LongInt(small),
        Err(_) => AMQPValue::LongLongInt(v),
    }
}

/// The arguments Celery declares a task queue of `queue_type` with.
pub(crate) fn queue_arguments(queue_type: QueueType, max_priority: Option<u8>) -> FieldTable {
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), text("quorum"));
    }
    if let Some(p) = max_priority {
        args.insert("x-max-priority".into(), int(i64::from(p)));
    }
    args
}

/// A durable exchange, as kombu declares one.
pub(super) fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

impl Broker {
    /// Declares the task queue `name` as Celery declares a queue of `queue_type` (see the
    /// [module doc](super)'s topology): its durable exchange `name` (direct for classic, topic for
    /// quorum), the durable queue `name` (with `x-queue-type` for quorum, `x-max-priority`
    /// when `max_priority` is given), bound with routing key `name`. The bindings of
    /// native delayed delivery are [`bind_delayed_delivery`](Self::bind_delayed_delivery)'s.
    /// Quorum queues take no `x-max-priority`: asking for both is an [`Error::Config`].
    pub fn declare_task_queue(
        &self,
        name: &str,
        queue_type: QueueType,
        max_priority: Option<u8>,
    ) -> Result<(), Error> {
        if queue_type == QueueType::Quorum && max_priority.is_some() {
            return Err(Error::Config(
                "quorum queues take no x-max-priority: set max_priority only with classic queues"
                    .into(),
            ));
        }
        let args = queue_arguments(queue_type, max_priority);
        self.block_on(async {
            self.channel
                .exchange_declare(
                    name.into(),
                    queue_type.exchange_kind(),
                    durable(),
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
}
