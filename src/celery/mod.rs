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
//! * [`canvas`]: workflows. A worker honours a message's embed as Celery 5.7's does (the
//!   next chain step, `link` callbacks, `link_error` errbacks sent as tasks, chord parts
//!   counted with Celery's own keys, `celery.map` / `celery.starmap` / `celery.chunks`);
//!   [`Client::apply`] sends chains, groups, chords and chunks. A chord whose counter keys
//!   expired (a day by default, `result_expires`) never completes: its body is not sent,
//!   and no worker waits for it (nothing polls).
//!   A nested group in a chord header is flattened as Celery flattens it. Not supported:
//!   a header member whose own result is a group (a chain ending in a group). Celery saves
//!   such a header's `GroupResult` so that the body gets nested lists; weft neither saves
//!   nor reads it, so the body gets the flat list of the header's results.
//! * [`control`]: Celery's remote control and monitoring reach weft workers: `celery
//!   inspect` (`stats`, `active`, `registered`, ...), `celery control` (`revoke`,
//!   `rate_limit`, `shutdown`, ...), Celery's events (`celery events`), and Flower; see the
//!   [`Worker`] docs.
//! * [`protocol`]: the message and result records; [`redis`]: kombu's Redis key layout
//!   (queues with priority sub-lists, `unacked`, `unacked_index`, `unacked_mutex`);
//!   `amqp` (feature `amqp`): the AMQP wire format, topology and a blocking lapin client.
//!
//! One worker and one client serve both brokers: a crate-private transport trait sits
//! under the protocol layer (a consumer that takes messages, a settler that writes results
//! and acknowledges, remote control), with a Redis and an AMQP implementation. The URL's
//! scheme (`redis://`, `amqp://`) picks one; a Redis behind Redis Sentinel is named by
//! kombu's `sentinel://` URL, with the master's name given apart
//! ([`Worker::sentinel_master`], [`ClientBuilder::sentinel_master`]).
//!
//! A task acknowledged as it starts (Celery's default) is lost if its worker dies while it
//! runs; with late acknowledgement
//! ([`TaskOptions::acks_late`](crate::registry::TaskOptions::acks_late)) its message is
//! acknowledged after its result is written, and a message whose worker died is delivered
//! again (on Redis after the visibility timeout, on RabbitMQ when the connection drops):
//! at-least-once. Messages not yet started are never acknowledged early, and either way a
//! task can run twice when its worker dies between the run and the acknowledgement: make
//! tasks idempotent where that matters, as with Celery. A worker that lives through a
//! broker fault (an outage, a restart, a stall, killed connections, a Sentinel failover)
//! loses nothing, leaves nothing held and runs nothing twice: see the [`Worker`] docs.
//! Only JSON messages are accepted; pickle is never deserialized.
//!
//! Python side: `app = Celery(broker=url, backend=url)` (or `broker="amqp://..."`,
//! `backend="redis://..."`) with the default JSON serializer;
//! `app.send_task("add", args=[2, 3]).get()` is answered by a weft worker that registered
//! `add`.
//!
//! # Files
//!
//! | file | owns |
//! | --- | --- |
//! | `protocol.rs` (+ `protocol/tests.rs`) | the message envelope ([`protocol`]) |
//! | `result.rs` | the result records ([`TaskResult`], re-exported as [`TaskResult`]) |
//! | `iso8601.rs` | `eta` / `expires` date-times as Celery writes them (re-exported as [`TaskResult`]) |
//! | `error.rs` | [`Error`] |
//! | `control.rs` | remote control, broker-neutral: requests, reply shapes, revoked ids ([`control`]) |
//! | `events/` | Celery's events, broker-neutral: the Lamport clock, the bounded outbox, the send loop, Python reprs (`repr.rs`) |
//! | `backend.rs` | Celery's Redis result backend: result keys, store + publish, the chord counters |
//! | `source.rs` | where every Redis connection comes from (a URL; asked again at each reconnect) |
//! | `sentinel.rs` (+ `sentinel/tests.rs`) | Redis Sentinel: kombu's `sentinel://` URL, the lookup of the current master |
//! | `canvas/` | workflows ([`canvas`]): `signature.rs` signatures, `apply.rs` Celery's `apply_async` of each kind, `after.rs` what follows a task's end |
//! | `transport.rs` | the crate-private transport trait under the worker and the client |
//! | `worker/` | [`Worker`]: `mod.rs` builder and start, `running.rs` [`RunningWorker`]: shutdown and signals, `live.rs` shared state, `intake.rs` consumer, `queues.rs` queues added and cancelled at run time, `run.rs` a task's planned run, `finisher.rs` settling, `builtins.rs` Celery's built-in canvas tasks, `panel.rs` the remote-control commands, `limits.rs` rate limits |
//! | `client.rs` | [`Client`], [`AsyncResult`] |
//! | `redis/` | kombu's Redis transport ([`redis`]): `mod.rs` keys and operations, `transport.rs`, `wake.rs`, `pidbox.rs`, `events.rs` |
//! | `amqp/` | RabbitMQ (feature `amqp`): `mod.rs` docs and constants, `wire.rs`, `broker.rs`, `consumer.rs`, `delivery.rs`, `topology.rs` (queue types), `delayed.rs` (native delayed delivery), `pidbox.rs`, `events.rs`, `transport.rs`, `settler.rs` (its settling side) |
//!
//! Arrows run one way: the worker and the client use the transports, which use `backend`,
//! `control`, `events`, `protocol` and `transport`; neither broker's files use the
//! other's.

#[cfg(feature = "amqp")]
pub mod amqp;
mod backend;
pub mod beat;
pub mod canvas;
mod client;
pub mod control;
mod error;
mod events;
mod iso8601;
pub mod protocol;
pub mod redis;
mod result;
mod sentinel;
mod source;
mod transport;
mod worker;

pub use client::{Applied, AsyncResult, Client, ClientBuilder, SendOptions};
pub use error::Error;
pub use protocol::{ProtocolError, TaskMessage};
pub use result::TaskResult;
pub use worker::{RunningWorker, Stopped, Worker};
