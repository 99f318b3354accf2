//! The worker's and the client's transport over AMQP ([`Transport`], [`Publish`]):
//! [`AmqpTransport`] opens an [`AmqpConsumer`] (one channel consuming every queue,
//! reconnecting after a failure) and an [`AmqpSettler`] (results in Celery's Redis result
//! backend, one transaction per batch, then each delivery settled on its channel);
//! [`AmqpPublisher`] is the client's side.

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::super::control::Panel;
use super::super::error::Error;
use super::super::protocol::{parse_iso8601, TaskMessage};
use super::super::source::Source;
use super::super::transport::{Consume, Incoming, Publish, RefusedMessage, Transport};
use super::broker::Broker;
use super::consumer::Consumer;
use super::delayed::{delayed_routing_key, strip_delay, FIRST_LEVEL};
use super::delivery::Delivery;
use super::settler::AmqpSettler;
use super::topology::QueueType;
use super::wire::amqp_to_json;

/// What a message needs before it is published, and where it goes: its queue declared
/// (once per name, as Celery's producer declares it: a message routed to a queue that
/// does not exist would be dropped) and, with quorum queues, through native delayed
/// delivery when it has an ETA a second or more away (as Celery's `send_task`).
pub(crate) struct Routes {
    queue_type: QueueType,
    max_priority: Option<u8>,
    declared: HashSet<String>,
    /// Whether native delayed delivery's topology was declared (quorum queues).
    delayed: bool,
}

impl Routes {
    pub fn new(queue_type: QueueType, max_priority: Option<u8>) -> Routes {
        Routes {
            queue_type,
            max_priority,
            declared: HashSet::new(),
            delayed: false,
        }
    }

    /// Declares the task queue `q` as this side's queues are declared, once, with its
    /// delayed-delivery bindings for quorum queues.
    fn declare(&mut self, broker: &Broker, q: &str) -> Result<(), Error> {
        if self.declared.contains(q) {
            return Ok(());
        }
        broker.declare_task_queue(q, self.queue_type, self.max_priority)?;
        if self.queue_type == QueueType::Quorum {
            if !self.delayed {
                broker.declare_delayed_delivery()?;
                self.delayed = true;
            }
            broker.bind_delayed_delivery(q)?;
        }
        self.declared.insert(q.to_owned());
        Ok(())
    }

    /// `msg` as it is published, its queue declared first. A message that came through
    /// delayed delivery (a retry or an ETA copy keeps the delivery's routing key) goes to
    /// its queue again, the delay prefix stripped. A message to a queue (the default
    /// exchange, or the queue's own exchange) with an ETA at least a second away goes, with
    /// quorum queues, to [`FIRST_LEVEL`] with the delay in its routing key.
    pub fn route<'m>(
        &mut self,
        broker: &Broker,
        msg: &'m TaskMessage,
    ) -> Result<Cow<'m, TaskMessage>, Error> {
        let stripped = strip_delay(&msg.routing_key);
        let came_delayed =
            stripped.len() != msg.routing_key.len() || msg.exchange.starts_with("celery_delayed");
        let exchange = if came_delayed {
            ""
        } else {
            msg.exchange.as_str()
        };
        if !exchange.is_empty() && exchange != stripped {
            return Ok(Cow::Borrowed(msg)); // an exchange of the sender's: its routing
        }
        self.declare(broker, stripped)?;
        let delay = match (&msg.eta, self.queue_type) {
            (Some(eta), QueueType::Quorum) => parse_iso8601(eta)
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .and_then(|left| delayed_routing_key(left.as_secs(), stripped)),
            _ => None,
        };
        Ok(match delay {
            Some(key) => {
                let mut m = msg.clone();
                m.exchange = FIRST_LEVEL.to_owned();
                m.routing_key = key;
                Cow::Owned(m)
            }
            None if came_delayed => {
                let mut m = msg.clone();
                m.exchange = String::new();
                m.routing_key = stripped.to_owned();
                Cow::Owned(m)
            }
            None => Cow::Borrowed(msg),
        })
    }

    /// Routes every one of `msgs` ([`route`](Self::route)), then publishes them all and
    /// waits for all their confirms at once.
    pub fn publish_all(&mut self, broker: &Broker, msgs: &[&TaskMessage]) -> Result<(), Error> {
        let routed = msgs
            .iter()
            .map(|m| self.route(broker, m))
            .collect::<Result<Vec<_>, _>>()?;
        broker.publish_task_refs(&routed.iter().map(|m| m.as_ref()).collect::<Vec<_>>())
    }
}

/// A [`Worker`](super::super::Worker)'s transport over AMQP, with results in Celery's Redis
/// result backend.
#[derive(Clone)]
pub(crate) struct AmqpTransport {
    pub url: String,
    pub backend: Source,
    pub result_expires: Duration,
    pub max_priority: Option<u8>,
    pub queue_type: QueueType,
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
    queue_type: QueueType,
    /// The connection and its consumer of `queues`; `None` after a failure, until the next
    /// fetch (or `add_queue`).
    live: Option<(Broker, Consumer)>,
    /// How many times it connected.
    generation: u64,
    hold_limit: Duration,
    prefetch: usize,
}

impl AmqpConsumer {
    /// Connects, declares the queues as Celery's worker does (with quorum queues, native
    /// delayed delivery's topology and each queue's bindings to it), and consumes them.
    fn connect(&self) -> Result<(Broker, Consumer), Error> {
        let broker = Broker::connect_named(&self.url, &self.name)?;
        for q in &self.queues {
            broker.declare_task_queue(q, self.queue_type, self.max_priority)?;
        }
        if self.queue_type == QueueType::Quorum {
            broker.declare_delayed_delivery()?;
            for q in &self.queues {
                broker.bind_delayed_delivery(q)?;
            }
        }
        let consumer = broker.consume_queues(
            &self.queues,
            u16::try_from(self.prefetch).unwrap_or(u16::MAX),
        )?;
        Ok((broker, consumer))
    }

    /// The connection and its consumer, connected again if there is none or its
    /// consumer's channel was closed (the next fetch sees the new generation).
    fn live(&mut self) -> Result<(&mut Broker, &mut Consumer), Error> {
        if self
            .live
            .as_ref()
            .is_some_and(|(_, consumer)| !consumer.is_open())
        {
            self.live = None;
        }
        if self.live.is_none() {
            self.live = Some(self.connect()?);
            self.generation += 1;
        }
        let (broker, consumer) = self.live.as_mut().expect("just connected");
        Ok((broker, consumer))
    }
}

/// What a delivery holds for the worker.
fn incoming(d: Delivery) -> Incoming<Delivery> {
    let message = d.task().map_err(|error| RefusedMessage {
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
        redelivered: d.redelivered(),
        tag: Some(d),
    }
}

impl Consume for AmqpConsumer {
    type Tag = Delivery;

    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Incoming<Delivery>>, Error> {
        let (_, consumer) = self.live()?;
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

    /// Quorum queues: nothing, the prefetch is static (Celery: "Global QoS is disabled.
    /// Prefetch count is now static"; ETA tasks wait in the broker). Classic queues: the
    /// consumers are started again under the new bound when it grows, or shrinks to half
    /// or less (not on every change: each is a new consumer per queue).
    fn set_prefetch(&mut self, n: usize) {
        if self.queue_type == QueueType::Quorum {
            return;
        }
        let n16 = u16::try_from(n).unwrap_or(u16::MAX);
        match self.live.as_mut() {
            Some((_, consumer)) => {
                let current = consumer.prefetch();
                if n16 > current || u32::from(n16) * 2 <= u32::from(current) {
                    self.prefetch = n;
                    let _ = consumer.set_prefetch(n16);
                }
            }
            None => self.prefetch = n,
        }
    }

    fn hold_limit(&self) -> Option<Duration> {
        Some(self.hold_limit)
    }

    /// Declared as [`connect`](AmqpConsumer::connect) declares the worker's queues (the
    /// worker's queue type and `x-max-priority`, its exchange named like it and bound with
    /// its name; with quorum queues, its native delayed delivery binding), then consumed
    /// on the consumer's channel under the same per-consumer prefetch. Celery's
    /// `add_consumer` of a queue missing from its `task_queues` declares a classic queue
    /// on a direct exchange whatever `task_default_queue_type` says; weft keeps one type
    /// per worker, so that its own clients and the queue agree. A refused declaration
    /// (the queue exists with other arguments) leaves the consumer as it was.
    fn add_queue(&mut self, queue: &str) -> Result<bool, Error> {
        if self.queues.iter().any(|q| q == queue) {
            return Ok(false);
        }
        let (queue_type, max_priority) = (self.queue_type, self.max_priority);
        let (broker, consumer) = self.live()?;
        broker.reopen_channel()?;
        broker.declare_task_queue(queue, queue_type, max_priority)?;
        if queue_type == QueueType::Quorum {
            broker.bind_delayed_delivery(queue)?;
        }
        consumer.add_queue(queue)?;
        self.queues.push(queue.to_owned());
        Ok(true)
    }

    /// `basic.cancel` of the queue's consumer, on the channel that keeps holding its
    /// deliveries (what was received and not fetched yet is put back); without a
    /// connection, only forgotten (the next connection does not consume it).
    fn cancel_queue(&mut self, queue: &str) -> Result<bool, Error> {
        if !self.queues.iter().any(|q| q == queue) {
            return Ok(false);
        }
        if let Some((_, consumer)) = self.live.as_mut() {
            if consumer.is_open() {
                consumer.cancel_queue(queue)?;
            }
        }
        self.queues.retain(|q| q != queue);
        Ok(true)
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn redelivers(&self) -> bool {
        true
    }

    fn stop_consuming(&mut self) {
        if let Some((_, consumer)) = &self.live {
            let _ = consumer.cancel();
        }
    }
}

impl Transport for AmqpTransport {
    type Tag = Delivery;
    type Consumer = AmqpConsumer;
    type Settler = AmqpSettler;
    type Events = super::events::AmqpEvents;

    fn events(&self, hostname: &str) -> Self::Events {
        super::events::AmqpEvents::new(&self.url, hostname)
    }

    fn open(
        &self,
        hostname: &str,
        queues: &[String],
        prefetch: usize,
    ) -> Result<(AmqpConsumer, AmqpSettler), Error> {
        let mut backend = self.backend.connect()?;
        let _: () = redis::cmd("PING").query(&mut backend)?;
        let mut consumer = AmqpConsumer {
            url: self.url.clone(),
            name: format!("weft consumer {hostname}"),
            queues: queues.to_vec(),
            max_priority: self.max_priority,
            queue_type: self.queue_type,
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
                routes: Routes::new(self.queue_type, self.max_priority),
                retrying: false,
            },
        ))
    }

    fn serve_control(
        self,
        hostname: String,
        panel: &dyn Panel,
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
                    pidbox.serve_one(&broker, panel, Duration::from_millis(500))?;
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
/// producer does: a message routed to a queue that does not exist would be dropped), routes
/// countdown and ETA tasks through native delayed delivery with quorum queues, and
/// publishes with a publisher confirm.
pub(crate) struct AmqpPublisher {
    url: String,
    /// The connection and the routes, behind one lock (a publish declares, then sends).
    inner: parking_lot::Mutex<(Broker, Routes)>,
}

impl AmqpPublisher {
    /// Connects now.
    pub fn new(url: &str) -> Result<AmqpPublisher, Error> {
        Ok(AmqpPublisher {
            url: url.to_owned(),
            inner: parking_lot::Mutex::new((
                Broker::connect(url)?,
                Routes::new(QueueType::Classic, None),
            )),
        })
    }
}

impl Publish for AmqpPublisher {
    /// Routes (declaring the queue the first time), then publishes (confirmed); on a
    /// failure, once more on a new connection.
    fn publish(&self, msg: &TaskMessage) -> Result<(), Error> {
        self.publish_all(&[msg])
    }

    /// Routes every message (declaring the queues not declared yet), then publishes all
    /// and waits for all the confirms at once; on a failure, once more on a new
    /// connection.
    fn publish_all(&self, msgs: &[&TaskMessage]) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        let (broker, routes) = &mut *inner;
        if routes.publish_all(broker, msgs).is_ok() {
            return Ok(());
        }
        *broker = Broker::connect(&self.url)?;
        routes.publish_all(broker, msgs)
    }

    fn set_max_priority(&mut self, n: u8) {
        self.inner.get_mut().1.max_priority = Some(n);
    }

    fn set_queue_type(&mut self, t: QueueType) {
        self.inner.get_mut().1.queue_type = t;
    }
}
