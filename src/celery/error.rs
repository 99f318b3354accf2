//! [`Error`]: what can go wrong talking to a broker or waiting for a result, and the
//! conversions from the errors of the layers below (Redis, AMQP, the protocol, I/O).

use std::fmt;

use super::protocol::ProtocolError;
use super::result::TaskResult;

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
    /// The task ended in `FAILURE` or `REVOKED` (from
    /// [`AsyncResult::get_value`](super::AsyncResult::get_value)).
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

#[cfg(feature = "amqp")]
impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Error {
        Error::Amqp(e)
    }
}
