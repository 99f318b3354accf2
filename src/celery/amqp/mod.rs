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
//! * A task queue `q` is declared as Celery declares its queues, with exactly Celery's
//!   arguments and no others, so that a Python worker or client and a weft one may
//!   declare it in either order ([`Broker::declare_task_queue`], `topology.rs`): durable,
//!   not exclusive, not auto-deleted, bound with routing key `q` to a durable exchange `q`.
//!   By [`QueueType`] ([`Worker::queue_type`](super::Worker::queue_type),
//!   [`Client::queue_type`](super::Client::queue_type)):
//!   * [`Classic`](QueueType::Classic) (default; Celery's default): a direct exchange, no
//!     queue arguments (Celery's default `celery` queue). Priorities need
//!     `x-max-priority` on the queue.
//!   * [`Quorum`](QueueType::Quorum) (Celery 5.5+ with `task_default_queue_type="quorum"`,
//!     `task_default_exchange_type="topic"`): a topic exchange, `x-queue-type` =
//!     `quorum`. The worker also declares Celery's native delayed delivery (levels
//!     `celery_delayed_27`..`celery_delayed_0`, the exchange
//!     [`DELAYED_DELIVERY_EXCHANGE`], and `#.q` bindings: [`Broker::declare_delayed_delivery`],
//!     [`Broker::bind_delayed_delivery`], `delayed.rs`), and countdown and ETA tasks (a
//!     client's, a retry, a held ETA task sent again) are published on [`FIRST_LEVEL`]
//!     with the delay in whole seconds in the routing key ([`delayed_routing_key`]): they
//!     wait in the broker, and arrive up to a second before their `eta`, which the worker
//!     still honours.
//!
//!   Every declaration of a queue must agree on its arguments, or RabbitMQ closes the
//!   channel (`PRECONDITION_FAILED`): a queue of the other type, or with another
//!   `x-max-priority`, is refused.
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
//! Each queue's consumer in a [`Consumer`] holds at most `prefetch` unacknowledged
//! deliveries: a per-consumer `basic.qos` (`global` false) set before the consumers start,
//! never a channel-wide one (quorum queues refuse it: `540 NOT_IMPLEMENTED`), as Celery
//! 5.5+ sets it. Such a `basic.qos` reaches only consumers started after it, so
//! [`Consumer::set_prefetch`] starts the consumers again (the worker does, for classic
//! queues, as its ETA tasks come and go; with quorum queues the prefetch is static).
//! Each delivery is acked ([`Delivery::ack`]), rejected or dead-lettered by its holder. A connection that
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
//!
//! # Files
//!
//! `wire.rs`: header tables and task messages ([`json_to_table`], [`encode_task`],
//! [`decode_task`], ...); `broker.rs`: the blocking client ([`Broker`], [`Consumer`]),
//! bounded by [`CONNECT_TIMEOUT`] and [`CONFIRM_TIMEOUT`]; `delivery.rs`: [`Delivery`],
//! [`ack_all`];
//! `topology.rs`: [`QueueType`] and the task queues' declarations; `delayed.rs`: native
//! delayed delivery; `pidbox.rs`: remote control ([`Pidbox`],
//! [`ControlRequest`]); `transport.rs`: the worker's and the client's transport, whose
//! settling side, with results in the Redis result backend (`celery/backend.rs`), is
//! `settler.rs`. This file: the constants of
//! the topology.

use super::control;

mod broker;
mod consumer;
mod delayed;
mod delivery;
mod events;
mod pidbox;
mod settler;
mod topology;
mod transport;
mod wire;

pub use broker::{Broker, CONFIRM_TIMEOUT, CONNECT_TIMEOUT};
pub use consumer::Consumer;
pub use delayed::{
    delayed_routing_key, level_name, strip_delay, DELAYED_DELIVERY_EXCHANGE, DELAYED_LEVELS,
    FIRST_LEVEL, MAX_DELAY_SECS,
};
pub use delivery::{ack_all, Delivery};
pub use pidbox::{ControlRequest, Pidbox};
pub use topology::QueueType;
pub(crate) use transport::{AmqpPublisher, AmqpTransport};
pub use wire::{
    amqp_to_json, decode_task, encode_task, json_to_amqp, json_to_table, table_to_json,
};

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
pub const PIDBOX_EXCHANGE: &str = control::PIDBOX;
/// The direct exchange of remote-control replies.
pub const REPLY_PIDBOX_EXCHANGE: &str = control::REPLY_PIDBOX;
/// `x-expires` of a worker's pidbox queue, in milliseconds (Celery's
/// `control_queue_expires`, 10 s).
pub const PIDBOX_QUEUE_EXPIRES_MS: i32 = 10_000;
/// `x-message-ttl` of a worker's pidbox queue, in milliseconds (Celery's
/// `control_queue_ttl`, 300 s).
pub const PIDBOX_MESSAGE_TTL_MS: i32 = 300_000;

type Runtime = async_rs::AGERuntime;

#[cfg(test)]
mod tests;
