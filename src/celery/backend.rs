//! Celery's Redis result backend: result keys, store + publish; the chord counters come
//! here next.
//!
//! Broker-neutral: both transports write results here (the Redis transport in the same
//! `MULTI` as its acknowledgements, the AMQP transport in a transaction of its own), and the
//! [`Client`](super::Client) reads them. As `celery/backends/redis.py` does, a result is a
//! JSON record (see [`TaskResult::to_meta`]) stored under `celery-task-meta-<id>`
//! ([`result_key`]) with an expiry (`SETEX`, [`DEFAULT_RESULT_EXPIRES`] by default), and
//! `PUBLISH`ed on a channel of the same name for whoever waits. [`connect`] is the Redis
//! connection with timeouts that the transports use too.

use std::time::{Duration, SystemTime};

use redis::{Connection, RedisResult};

use super::protocol::TaskResult;

/// Celery's default result expiry (`result_expires`): one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);

/// How long connecting to Redis may take before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may wait for Redis's answer before it is an error (a worker's
/// commands are short; this only catches a Redis that stopped answering).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection with [`CONNECT_TIMEOUT`] and [`COMMAND_TIMEOUT`].
pub fn connect(client: &redis::Client) -> RedisResult<Connection> {
    let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    conn.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    conn.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    Ok(conn)
}

/// The result key of task `id`.
pub fn result_key(id: &str) -> String {
    format!("celery-task-meta-{id}")
}

/// Adds to `pipe` the result record of task `id` ([`store`]: `SETEX` + `PUBLISH` on its
/// key).
pub fn add_result(pipe: &mut redis::Pipeline, id: &str, result: &TaskResult, expires: Duration) {
    let meta = result.to_meta(id, SystemTime::now()).to_string();
    store(pipe, &result_key(id), &meta, expires);
}

/// The `RETRY` record of task `id`, with `reason` as its message.
pub fn retry_meta(id: &str, reason: &str) -> String {
    TaskResult::Retry(reason.to_owned())
        .to_meta(id, SystemTime::now())
        .to_string()
}

/// Adds to `pipe` the result record `meta` under `key` (`SETEX` with `expires`, at least a
/// second, then `PUBLISH` on the same name).
pub fn store(pipe: &mut redis::Pipeline, key: &str, meta: &str, expires: Duration) {
    pipe.set_ex(key, meta, expires.as_secs().max(1))
        .ignore()
        .publish(key, meta)
        .ignore();
}
