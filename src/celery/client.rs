//! [`Client`]: sends named tasks to Celery queues on Redis; [`AsyncResult`] waits for
//! their results.

use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde_json::{Map, Value};

use super::protocol::{format_iso8601, TaskMessage, TaskResult};
use super::redis as transport;
use super::Error;

/// Options of one [`Client::send_task`]; the defaults are Celery's.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// The queue (default `celery`).
    pub queue: Option<String>,
    /// The message priority, 0..=9 (0, the default, is served first on Redis).
    pub priority: u8,
    /// Run no sooner than this long after sending.
    pub countdown: Option<Duration>,
    /// Run no sooner than this time.
    pub eta: Option<SystemTime>,
    /// Do not run after this time (the task is revoked instead).
    pub expires: Option<SystemTime>,
    /// The task id (default: a fresh UUID v4).
    pub task_id: Option<String>,
    /// `(hard, soft)` time limits in seconds.
    pub time_limit: (Option<f64>, Option<f64>),
}

/// Sends tasks over Celery's protocol v2 to the Redis at a URL: any Celery worker (Python,
/// or a weft [`Worker`](super::Worker)) consuming the queue runs them.
///
/// ```no_run
/// use std::time::Duration;
/// use weft::celery::{Client, SendOptions};
///
/// let client = Client::new("redis://127.0.0.1:6379/0").unwrap();
/// let r = client
///     .send_task("add", vec![2.into(), 3.into()], Default::default(), SendOptions::default())
///     .unwrap();
/// assert_eq!(r.get_value(Duration::from_secs(10)).unwrap(), 5);
/// ```
pub struct Client {
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
}

impl Client {
    /// A client of the Redis at `url` (`redis://host:port/db`); connects now.
    pub fn new(url: &str) -> Result<Client, Error> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection()?;
        Ok(Client {
            client,
            conn: Mutex::new(Some(conn)),
        })
    }

    /// Sends task `name` with `args` and `kwargs` (`LPUSH` of a protocol v2 message on the
    /// queue's list for its priority) and returns the handle of its result.
    pub fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Result<AsyncResult, Error> {
        let mut msg = TaskMessage::new(name, args, kwargs);
        if let Some(id) = options.task_id {
            msg.root_id = Some(id.clone());
            msg.id = id;
        }
        if let Some(q) = options.queue {
            msg.routing_key = q;
        }
        msg.priority = options.priority;
        let eta = options
            .eta
            .or_else(|| options.countdown.map(|d| SystemTime::now() + d));
        msg.eta = eta.map(format_iso8601);
        msg.expires = options.expires.map(format_iso8601);
        msg.timelimit = options.time_limit;
        self.with_conn(|c| transport::publish(c, &msg))?;
        Ok(AsyncResult {
            id: msg.id,
            client: self.client.clone(),
        })
    }

    /// The handle of task `id`'s result (sent by anyone).
    pub fn result(&self, id: impl Into<String>) -> AsyncResult {
        AsyncResult {
            id: id.into(),
            client: self.client.clone(),
        }
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let mut slot = self.conn.lock();
        let mut conn = match slot.take() {
            Some(c) => c,
            None => self.client.get_connection()?,
        };
        let out = f(&mut conn)?;
        *slot = Some(conn);
        Ok(out)
    }
}

/// The result of a sent task, read from `celery-task-meta-<id>`.
#[derive(Clone)]
pub struct AsyncResult {
    id: String,
    client: redis::Client,
}

impl AsyncResult {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The final result if there is one now (`None` while pending or running).
    pub fn try_get(&self) -> Result<Option<TaskResult>, Error> {
        let mut conn = self.client.get_connection()?;
        let meta: Option<Vec<u8>> = redis::cmd("GET")
            .arg(transport::result_key(&self.id))
            .query(&mut conn)?;
        match meta {
            Some(m) => Ok(TaskResult::from_meta(&m)?),
            None => Ok(None),
        }
    }

    /// Waits at most `timeout` for the final result: subscribes to the result's channel
    /// first, then reads the key (so a result written in between is not missed), then
    /// waits for the publication. No polling.
    pub fn get(&self, timeout: Duration) -> Result<TaskResult, Error> {
        let deadline = Instant::now() + timeout;
        let key = transport::result_key(&self.id);
        let mut sub_conn = self.client.get_connection()?;
        let mut pubsub = sub_conn.as_pubsub();
        pubsub.subscribe(&key)?;
        if let Some(r) = self.try_get()? {
            return Ok(r);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            pubsub.set_read_timeout(Some(left))?;
            let msg = match pubsub.get_message() {
                Ok(m) => m,
                Err(e) if e.is_timeout() => return Err(Error::Timeout),
                Err(e) => return Err(e.into()),
            };
            let payload: Vec<u8> = msg.get_payload()?;
            if let Some(r) = TaskResult::from_meta(&payload)? {
                return Ok(r);
            }
        }
    }

    /// As [`get`](Self::get), but a `FAILURE` or `REVOKED` is an [`Error::Task`] and a
    /// `SUCCESS` its value.
    pub fn get_value(&self, timeout: Duration) -> Result<Value, Error> {
        match self.get(timeout)? {
            TaskResult::Success(v) => Ok(v),
            other => Err(Error::Task(other)),
        }
    }
}
