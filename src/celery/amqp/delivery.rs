//! [`Delivery`]: one message received by a [`Consumer`](super::Consumer), settled by its
//! holder ([`ack`](Delivery::ack), [`reject`](Delivery::reject), ...), and [`ack_all`]
//! for a batch of them at once.

use async_rs::traits::Executor as _;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::BasicProperties;

use super::super::error::Error;
use super::super::protocol::{ProtocolError, TaskMessage};
use super::broker::join_all;
use super::wire::decode_task;
use super::Runtime;

/// A message received by a [`Consumer`](super::Consumer); settle it with [`ack`](Delivery::ack),
/// [`reject`](Delivery::reject) or [`Broker::dead_letter`](super::Broker::dead_letter) (an unsettled delivery stays
/// with this channel until it closes, then is redelivered).
pub struct Delivery {
    pub(super) rt: Runtime,
    pub(super) queue: String,
    pub(super) inner: lapin::message::Delivery,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("delivery_tag", &self.inner.delivery_tag)
            .field("routing_key", &self.inner.routing_key)
            .field("redelivered", &self.inner.redelivered)
            .finish()
    }
}

impl Delivery {
    /// The queue it was consumed from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// The AMQP properties (headers included).
    pub fn properties(&self) -> &BasicProperties {
        &self.inner.properties
    }

    /// The exchange it was published to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        self.inner.exchange.as_str()
    }

    /// The routing key it was published with (the queue, for Celery).
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }

    /// Whether the broker delivered it before (to a consumer that did not settle it).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// The channel's delivery tag.
    pub fn delivery_tag(&self) -> u64 {
        self.inner.delivery_tag
    }

    /// The task message it carries ([`decode_task`]).
    pub fn task(&self) -> Result<TaskMessage, ProtocolError> {
        decode_task(
            &self.inner.data,
            &self.inner.properties,
            self.exchange(),
            self.routing_key(),
            self.inner.delivery_tag,
        )
    }

    /// Acknowledges it: the broker forgets it.
    pub fn ack(&self) -> Result<(), Error> {
        self.rt
            .block_on(self.inner.acker.ack(BasicAckOptions::default()))?;
        Ok(())
    }

    /// Rejects it: back to its queue (`requeue`), or dropped (or dead-lettered by the
    /// queue's own `x-dead-letter-exchange`, if it has one).
    pub fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.rt
            .block_on(self.inner.acker.reject(BasicRejectOptions { requeue }))?;
        Ok(())
    }

    /// Puts it back on its queue (`basic.reject` with requeue): `Ok(false)` if it was
    /// settled already or its channel is gone (the broker then has it back anyway).
    pub fn requeue(&self) -> Result<bool, Error> {
        Ok(self.rt.block_on(
            self.inner
                .acker
                .reject(BasicRejectOptions { requeue: true }),
        )?)
    }

    /// Negatively acknowledges it (`basic.nack`, one message), requeued or not.
    pub fn nack(&self, requeue: bool) -> Result<(), Error> {
        self.rt.block_on(self.inner.acker.nack(BasicNackOptions {
            multiple: false,
            requeue,
        }))?;
        Ok(())
    }
}

/// Acknowledges every one of `deliveries` in one go; true if all were acknowledged.
pub fn ack_all(deliveries: &[Delivery]) -> bool {
    let Some(first) = deliveries.first() else {
        return true;
    };
    let acks = deliveries
        .iter()
        .map(|d| d.inner.acker.ack(BasicAckOptions::default()))
        .collect();
    first
        .rt
        .block_on(join_all(acks))
        .iter()
        .all(|r| matches!(r, Ok(true)))
}
