//! [`Client`]: sends named tasks to Celery queues (on Redis, or on RabbitMQ with the
//! feature `amqp`); [`AsyncResult`] waits for their results in the Redis result backend.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};

use super::backend::{add_chord_size, result_key, DEFAULT_RESULT_EXPIRES};
use super::canvas::apply::{batches, Apply, Batch, ResultRef};
use super::canvas::Signature;
use super::error::Error;
use super::protocol::{format_iso8601, TaskMessage};
use super::redis::RedisPublisher;
use super::result::TaskResult;
use super::source::Source;
use super::transport::{BrokerKind, Publish};

/// Options of one [`Client::send_task`]; the defaults are Celery's.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// The queue (default `celery`).
    pub queue: Option<String>,
    /// The message priority, 0..=9 (default 0). On Redis 0 is served first; on RabbitMQ
    /// a higher priority is served first, on queues declared with `x-max-priority`.
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

/// Sends tasks over Celery's protocol v2 to a broker: any Celery worker (Python, or a weft
/// [`Worker`](super::Worker)) consuming the queue runs them. The broker is Redis
/// ([`Client::new`]) or, with the feature `amqp`, RabbitMQ with a Redis result backend
/// ([`Client::with_backend`]).
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
    publisher: Box<dyn Publish>,
    backend: Source,
}

impl Client {
    /// A client of the Redis at `url` (`redis://host:port/db`), which is both the broker
    /// and the result backend; connects now. Behind Redis Sentinel (`sentinel://`), use
    /// [`Client::builder`] to give the master's name.
    pub fn new(url: &str) -> Result<Client, Error> {
        Client::builder(url).connect()
    }

    /// A client of the broker at `broker` (`redis://...`, or with the feature `amqp`
    /// `amqp://user:password@host:port/vhost`) whose results are kept in the Redis at
    /// `backend`; connects now. A Redis broker is its own backend: `backend` must be the
    /// same URL.
    ///
    /// On RabbitMQ a queue is declared (durable, bound to a direct exchange of its name,
    /// as Celery declares it) the first time a task is sent to it; see
    /// [`max_priority`](Self::max_priority).
    pub fn with_backend(broker: &str, backend: &str) -> Result<Client, Error> {
        Client::builder(broker).backend(backend).connect()
    }

    /// A client of the broker at `broker` to set up before it connects
    /// ([`ClientBuilder::connect`]): its result backend, the master's name under Redis
    /// Sentinel.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use weft::celery::{Client, SendOptions};
    ///
    /// let client = Client::builder("sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0")
    ///     .sentinel_master("mymaster")
    ///     .connect()
    ///     .unwrap();
    /// let r = client
    ///     .send_task("add", vec![2.into(), 3.into()], Default::default(), SendOptions::default())
    ///     .unwrap();
    /// assert_eq!(r.get_value(Duration::from_secs(10)).unwrap(), 5);
    /// ```
    pub fn builder(broker: &str) -> ClientBuilder {
        ClientBuilder {
            broker: broker.to_owned(),
            backend: None,
            sentinel_master: None,
        }
    }

    /// RabbitMQ: the queues this client declares get `x-max-priority` = `n`, so that
    /// message priorities order delivery; it must agree with how the workers declare them
    /// ([`Worker::max_priority`](super::Worker::max_priority)). Ignored on Redis.
    pub fn max_priority(mut self, n: u8) -> Self {
        self.publisher.set_max_priority(n);
        self
    }

    /// RabbitMQ: the type of the queues this client declares (default
    /// [`Classic`](super::amqp::QueueType::Classic)); it must agree with how the workers
    /// declare them ([`Worker::queue_type`](super::Worker::queue_type)). With
    /// [`Quorum`](super::amqp::QueueType::Quorum) a queue is declared as Celery 5.5+
    /// declares it with `task_default_queue_type="quorum"` and
    /// `task_default_exchange_type="topic"` (a quorum queue on a topic exchange of its
    /// name, bound to native delayed delivery), and a task with a countdown or ETA at least
    /// a second away is published through native delayed delivery (on the exchange
    /// `celery_delayed_27`, its delay in whole seconds in the routing key), so that it
    /// waits in the broker, not in a worker. Ignored on Redis.
    #[cfg(feature = "amqp")]
    pub fn queue_type(mut self, t: super::amqp::QueueType) -> Self {
        self.publisher.set_queue_type(t);
        self
    }

    /// Sends task `name` with `args` and `kwargs` (a protocol v2 message on the queue: on
    /// Redis an `LPUSH` on the queue's list for its priority, on RabbitMQ a publish
    /// confirmed by the broker) and returns the handle of its result.
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
        self.publisher.publish(&msg)?;
        Ok(AsyncResult {
            id: msg.id,
            source: self.backend.clone(),
        })
    }

    /// Sends a workflow ([`Signature`]: a task, [`chain`](super::canvas::chain),
    /// [`group`](super::canvas::group), [`chord`](super::canvas::chord),
    /// [`chunks`](super::canvas::chunks), ...) as Celery's `apply_async` does, so that any
    /// Celery worker, Python or weft, runs its steps; returns the handle of its result: a
    /// chain's last step, a chord's body, a group's members.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use serde_json::json;
    /// use weft::celery::canvas::{chain, chord, Signature};
    /// use weft::celery::Client;
    ///
    /// let client = Client::new("redis://127.0.0.1:6379/0").unwrap();
    /// let add = |a: i64, b: i64| Signature::new("add").args([json!(a), json!(b)]);
    /// let flow = chain([add(1, 2), Signature::new("mul").args([json!(10)])]);
    /// let r = client.apply(&flow).unwrap();
    /// assert_eq!(r.get_value(Duration::from_secs(10)).unwrap(), 30);
    /// let sum = chord((0..3).map(|i| add(i, i)), Signature::new("xsum"));
    /// assert_eq!(client.apply(&sum).unwrap().get_value(Duration::from_secs(10)).unwrap(), 6);
    /// ```
    pub fn apply(&self, sig: &Signature) -> Result<Applied, Error> {
        let mut send = Apply::new(None);
        let r = send
            .apply_async(sig, &[], &Map::new(), Map::new())
            .map_err(|e| Error::Config(e.0))?;
        // In order, consecutive messages in one batch; a chord's size is written before
        // its last header part is sent.
        for batch in batches(&send.ops) {
            match batch {
                Batch::Send(msgs) => self.publisher.publish_all(&msgs)?,
                Batch::ChordSize { group, size } => {
                    let mut pipe = redis::pipe();
                    add_chord_size(&mut pipe, group, size, DEFAULT_RESULT_EXPIRES);
                    pipe.query::<()>(&mut self.backend.connect()?)?;
                }
            }
        }
        Ok(self.applied(&r))
    }

    fn applied(&self, r: &ResultRef) -> Applied {
        match r {
            ResultRef::Task(id) => Applied::Task(self.result(id.clone())),
            ResultRef::Group(id, members) => Applied::Group {
                id: id.clone(),
                members: members.iter().map(|m| self.applied(m)).collect(),
            },
        }
    }

    /// The handle of task `id`'s result (sent by anyone).
    pub fn result(&self, id: impl Into<String>) -> AsyncResult {
        AsyncResult {
            id: id.into(),
            source: self.backend.clone(),
        }
    }
}

/// The result of a workflow sent with [`Client::apply`].
#[derive(Clone)]
pub enum Applied {
    /// One task's result (a task, a chain's last step, a chord's body).
    Task(AsyncResult),
    /// A group's: its id and its members' results, in order.
    Group {
        /// The group id.
        id: String,
        /// The members' results.
        members: Vec<Applied>,
    },
}

impl Applied {
    /// The task's id, or the group's.
    pub fn id(&self) -> &str {
        match self {
            Applied::Task(r) => r.id(),
            Applied::Group { id, .. } => id,
        }
    }

    /// Waits for the value (a group's: the list of its members' values, in order, as
    /// Python's `GroupResult.get()`); the first `FAILURE` or `REVOKED` is an error.
    /// `timeout` bounds the whole wait.
    pub fn get_value(&self, timeout: Duration) -> Result<Value, Error> {
        let deadline = Instant::now() + timeout;
        self.get_until(deadline)
    }

    fn get_until(&self, deadline: Instant) -> Result<Value, Error> {
        match self {
            Applied::Task(r) => r.get_value(deadline.saturating_duration_since(Instant::now())),
            Applied::Group { members, .. } => members
                .iter()
                .map(|m| m.get_until(deadline))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
        }
    }
}

/// A [`Client`] before it connects ([`Client::builder`]).
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    broker: String,
    backend: Option<String>,
    sentinel_master: Option<String>,
}

impl ClientBuilder {
    /// The Redis result backend (`redis://...` or `sentinel://...`), for an AMQP broker;
    /// default: the broker itself (a Redis broker is its own backend: naming another is
    /// an error).
    pub fn backend(mut self, url: &str) -> Self {
        self.backend = Some(url.to_owned());
        self
    }

    /// The master's name under Redis Sentinel (Celery's transport option `master_name`):
    /// required when the broker or the result backend is a `sentinel://` URL (kombu's:
    /// sentinels separated by `;`, each `sentinel://[user:password@]host[:port][/db]`, port
    /// 26379 by default, the database and password those of the first one, for the
    /// master); ignored otherwise. Each connection asks the sentinels for the current
    /// master, so the client follows a failover.
    pub fn sentinel_master(mut self, name: &str) -> Self {
        self.sentinel_master = Some(name.to_owned());
        self
    }

    /// Connects now: to the broker, and to the result backend (`PING`).
    pub fn connect(self) -> Result<Client, Error> {
        let backend = self.backend.as_deref().unwrap_or(&self.broker);
        let master = self.sentinel_master.as_deref();
        let publisher: Box<dyn Publish> = match BrokerKind::of(&self.broker, Some(backend))? {
            BrokerKind::Redis => {
                Box::new(RedisPublisher::new(Source::open(&self.broker, master)?)?)
            }
            #[cfg(feature = "amqp")]
            BrokerKind::Amqp { .. } => Box::new(super::amqp::AmqpPublisher::new(&self.broker)?),
        };
        let backend = Source::open(backend, master)?;
        // Fails now rather than at the first `get`.
        let _: () = redis::cmd("PING").query(&mut backend.connect()?)?;
        Ok(Client { publisher, backend })
    }
}

/// The result of a sent task, read from `celery-task-meta-<id>`.
#[derive(Clone)]
pub struct AsyncResult {
    id: String,
    source: Source,
}

impl AsyncResult {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The final result if there is one now (`None` while pending or running).
    pub fn try_get(&self) -> Result<Option<TaskResult>, Error> {
        let mut conn = self.source.connect()?;
        let meta: Option<Vec<u8>> = redis::cmd("GET")
            .arg(result_key(&self.id))
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
        let key = result_key(&self.id);
        let mut sub_conn = self.source.connect()?;
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
