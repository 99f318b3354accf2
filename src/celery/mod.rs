//! Celery protocol v2 (JSON only) over Redis (feature `redis`) and over RabbitMQ / AMQP
//! 0-9-1 (feature `amqp`, with results in Celery's Redis result backend): weft workers run
//! tasks that Python Celery sends, and weft sends tasks that Python Celery workers (or
//! other weft workers) run.
//!
//! * [`Worker`]: consumes queues, runs the named tasks of a
//!   [`Registry`](crate::registry::Registry) on a weft [`Pool`](crate::Pool), writes results
//!   as Celery's Redis result backend does (`celery-task-meta-<id>`).
//! * [`Client`]: [`send_task`](Client::send_task) → an [`AsyncResult`] whose
//!   [`get`](AsyncResult::get) waits by `SUBSCRIBE`.
//! * [`control`]: Celery's remote control reaches weft workers: `app.control.ping()` and
//!   `app.control.revoke(id)` (honoured for tasks not yet started; with `terminate=True`,
//!   a running task is asked to stop).
//! * [`protocol`]: the message and result records; [`redis`]: kombu's Redis key layout
//!   (queues with priority sub-lists, `unacked`, `unacked_index`, `unacked_mutex`);
//!   `amqp` (feature `amqp`): the AMQP wire format, topology and a blocking lapin client.
//!
//! One worker and one client serve both brokers: a crate-private transport trait sits
//! under the protocol layer (a consumer that takes messages, a settler that writes results
//! and acknowledges, remote control), with a Redis and an AMQP implementation. The URL's
//! scheme (`redis://`, `amqp://`) picks one.
//!
//! A task acknowledged as it starts (Celery's default) is lost if its worker dies while it
//! runs; with late acknowledgement
//! ([`TaskOptions::acks_late`](crate::registry::TaskOptions::acks_late)) its message is
//! acknowledged after its result is written, and a message whose worker died is delivered
//! again (on Redis after the visibility timeout, on RabbitMQ when the connection drops):
//! at-least-once. Messages not yet started are never acknowledged early, and either way a
//! task can run twice (a worker dead between the run and the acknowledgement, a dropped
//! broker connection): make tasks idempotent where that matters, as with Celery. Only
//! JSON messages are accepted; pickle is never deserialized.
//!
//! Python side: `app = Celery(broker=url, backend=url)` (or `broker="amqp://..."`,
//! `backend="redis://..."`) with the default JSON serializer;
//! `app.send_task("add", args=[2, 3]).get()` is answered by a weft worker that registered
//! `add`.

use std::fmt;

#[cfg(feature = "amqp")]
pub mod amqp;
mod client;
pub mod control;
pub mod protocol;
pub mod redis;
mod transport;
mod worker;

pub use client::{AsyncResult, Client, SendOptions};
pub use protocol::{ProtocolError, TaskMessage, TaskResult};
pub use worker::{RunningWorker, Worker};

/// What can go wrong talking to the broker or waiting for a result.
#[derive(Debug)]
pub enum Error {
    /// Redis refused, or the connection failed.
    Redis(::redis::RedisError),
    /// RabbitMQ refused, or the AMQP connection or channel failed (feature `amqp`).
    #[cfg(feature = "amqp")]
    Amqp(lapin::Error),
    /// A message or result record that does not follow the protocol.
    Protocol(ProtocolError),
    /// No result within the time given.
    Timeout,
    /// The task ended in `FAILURE` or `REVOKED` (from [`AsyncResult::get_value`]).
    Task(TaskResult),
    /// A thread could not be started.
    Io(std::io::Error),
    /// A setting that cannot work (a broker URL of an unknown kind, an AMQP broker without
    /// a result backend, ...).
    Config(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Redis(e) => write!(f, "redis: {e}"),
            #[cfg(feature = "amqp")]
            Error::Amqp(e) => write!(f, "amqp: {e}"),
            Error::Protocol(e) => write!(f, "protocol: {e}"),
            Error::Timeout => f.write_str("timed out waiting for the result"),
            Error::Task(TaskResult::Failure {
                exc_type,
                exc_message,
                ..
            }) => write!(f, "task failed: {exc_type}: {exc_message}"),
            Error::Task(r) => write!(f, "task ended {}", r.status()),
            Error::Io(e) => write!(f, "{e}"),
            Error::Config(e) => write!(f, "configuration: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<::redis::RedisError> for Error {
    fn from(e: ::redis::RedisError) -> Error {
        Error::Redis(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Error {
        Error::Protocol(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}
