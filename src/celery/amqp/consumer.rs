//! [`Consumer`]: a consumer of one or more queues on a channel of its own, with its
//! `basic.qos` (opened by [`Broker::consume`](super::Broker::consume) and [`Broker::consume_queues`](super::Broker::consume_queues)); its messages
//! are [`Delivery`]s; every call blocks on lapin's future (see the [module doc](super)'s
//! runtime section).

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use async_rs::traits::{Executor as _, Reactor as _};
use futures_core::Stream;
use lapin::options::{BasicCancelOptions, BasicRejectOptions};
use lapin::Channel;

use super::super::error::Error;
use super::broker::{join_all, refused, start_consumers};
use super::delivery::Delivery;
use super::Runtime;

/// A consumer of one or more queues on a channel of its own (see [`Broker::consume`](super::Broker::consume) and
/// [`Broker::consume_queues`](super::Broker::consume_queues)).
pub struct Consumer {
    pub(super) rt: Runtime,
    pub(super) channel: Channel,
    pub(super) queues: Vec<String>,
    /// One per queue, in the order of `queues`, started under the prefetch `prefetch`.
    pub(super) consumers: Vec<lapin::Consumer>,
    /// Consumers replaced by [`set_prefetch`](Consumer::set_prefetch) and cancelled:
    /// (queue, consumer), read until lapin ends them (what they had received before the
    /// broker's `cancel-ok` is still delivered).
    pub(super) draining: Vec<(String, lapin::Consumer)>,
    /// Consumers of queues no longer consumed (`cancel_queue`), read until lapin ends
    /// them (at once, normally: their `cancel-ok` came): what they had received and not
    /// handed out is put back (`basic.reject` with requeue), as py-amqp rejects a delivery
    /// that comes for a cancelled consumer.
    pub(super) cancelled: Vec<lapin::Consumer>,
    pub(super) prefetch: u16,
}

/// Moves to `put_back` what the consumers in `cancelled` have received, and drops those
/// that ended (or failed: their channel's other consumers report it).
fn poll_cancelled(
    cancelled: &mut Vec<lapin::Consumer>,
    put_back: &mut Vec<lapin::message::Delivery>,
    cx: &mut std::task::Context<'_>,
) {
    let mut k = 0;
    while k < cancelled.len() {
        match std::pin::Pin::new(&mut cancelled[k]).poll_next(cx) {
            Poll::Ready(Some(Ok(d))) => put_back.push(d),
            Poll::Ready(_) => {
                cancelled.swap_remove(k);
            }
            Poll::Pending => k += 1,
        }
    }
}

/// Puts `deliveries` back on their queues (`basic.reject` with requeue). A failure means
/// their channel is gone: the broker has them back anyway.
fn put_back_all(rt: &Runtime, deliveries: &[lapin::message::Delivery]) {
    if deliveries.is_empty() {
        return;
    }
    let _ = rt.block_on(join_all(
        deliveries
            .iter()
            .map(|d| d.acker.reject(BasicRejectOptions { requeue: true }))
            .collect(),
    ));
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queues", &self.queues)
            .finish()
    }
}

impl Consumer {
    /// The next delivery, waiting at most `timeout`: `Ok(None)` when none came in time.
    /// With several queues, a waiting delivery of an earlier queue is taken first.
    /// An error when the channel or the connection is gone (or the consumer was
    /// cancelled by the broker, e.g. its queue was deleted).
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Delivery>, Error> {
        let rt = self.rt.clone();
        let consumers = &mut self.consumers;
        let draining = &mut self.draining;
        let cancelled = &mut self.cancelled;
        let mut put_back = Vec::new();
        let mut sleep = pin!(rt.sleep(timeout));
        let got = rt.block_on(std::future::poll_fn(|cx| {
            // Received for queues no longer consumed: put back (below).
            poll_cancelled(cancelled, &mut put_back, cx);
            // What cancelled consumers still hold first: it came before.
            let mut k = 0;
            while k < draining.len() {
                match std::pin::Pin::new(&mut draining[k].1).poll_next(cx) {
                    Poll::Ready(None) => {
                        draining.swap_remove(k);
                    }
                    Poll::Ready(Some(item)) => {
                        return Poll::Ready(Some((draining[k].0.clone(), Some(item))))
                    }
                    Poll::Pending => k += 1,
                }
            }
            for (i, c) in consumers.iter_mut().enumerate() {
                if let Poll::Ready(item) = std::pin::Pin::new(c).poll_next(cx) {
                    return Poll::Ready(Some((self.queues[i].clone(), item)));
                }
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        }));
        put_back_all(&rt, &put_back);
        match got {
            None => Ok(None),
            Some((queue, Some(Ok(d)))) => Ok(Some(Delivery {
                rt: self.rt.clone(),
                queue,
                inner: d,
            })),
            Some((_, Some(Err(e)))) => Err(e.into()),
            Some((_, None)) => Err(refused("the consumer was cancelled")),
        }
    }

    /// Stops the broker from delivering more (`basic.cancel` of each queue's consumer);
    /// deliveries already received stay held until settled or until the channel closes.
    pub fn cancel(&self) -> Result<(), Error> {
        self.rt.block_on(async {
            for c in &self.consumers {
                self.channel
                    .basic_cancel(c.tag(), BasicCancelOptions::default())
                    .await?;
            }
            Ok::<_, lapin::Error>(())
        })?;
        Ok(())
    }

    /// The bound on unacknowledged deliveries of each queue's consumer.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// Changes the bound on unacknowledged deliveries of each queue's consumer. A
    /// per-consumer `basic.qos` applies only to consumers started after it, so this starts
    /// a new consumer of each queue under the new bound and cancels the old ones; what
    /// they received before their cancellation is still returned by [`next`](Self::next),
    /// and their unacknowledged deliveries stay held (and are settled) on this channel.
    /// Until those are settled the broker may hand out up to `prefetch` more per queue.
    pub fn set_prefetch(&mut self, prefetch: u16) -> Result<(), Error> {
        if prefetch == self.prefetch {
            return Ok(());
        }
        let fresh = self
            .rt
            .block_on(start_consumers(&self.channel, &self.queues, prefetch))?;
        let old = std::mem::replace(&mut self.consumers, fresh);
        self.prefetch = prefetch;
        self.rt.block_on(async {
            for c in &old {
                self.channel
                    .basic_cancel(c.tag(), BasicCancelOptions::default())
                    .await?;
            }
            Ok::<_, lapin::Error>(())
        })?;
        self.draining.extend(self.queues.iter().cloned().zip(old));
        Ok(())
    }

    /// Whether its channel is open (a channel the broker closed fails every call).
    pub(super) fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Starts consuming `queue` too (declared already), on this channel, under the bound
    /// of the others: the per-consumer `basic.qos` is set again first, as it reaches only
    /// consumers started after it. Its deliveries are taken after those of the queues
    /// already consumed. `Ok(false)` if it is consumed already.
    pub(super) fn add_queue(&mut self, queue: &str) -> Result<bool, Error> {
        if self.queues.iter().any(|q| q == queue) {
            return Ok(false);
        }
        let queues = [queue.to_owned()];
        let mut fresh = self
            .rt
            .block_on(start_consumers(&self.channel, &queues, self.prefetch))?;
        self.consumers.append(&mut fresh);
        self.queues.push(queue.to_owned());
        Ok(true)
    }

    /// Stops consuming `queue` (`basic.cancel` of its consumer, and of those
    /// [`set_prefetch`](Self::set_prefetch) replaced): the broker sends no more of its
    /// messages; what this side had received and not handed out by [`next`](Self::next) is
    /// put back on the queue now (`basic.reject` with requeue); the deliveries handed out
    /// stay held on this channel until settled. `Ok(false)` if it was not consumed.
    pub(super) fn cancel_queue(&mut self, queue: &str) -> Result<bool, Error> {
        let Some(i) = self.queues.iter().position(|q| q == queue) else {
            return Ok(false);
        };
        self.rt.block_on(
            self.channel
                .basic_cancel(self.consumers[i].tag(), BasicCancelOptions::default()),
        )?;
        self.queues.remove(i);
        self.cancelled.push(self.consumers.remove(i));
        let (of_queue, others) = std::mem::take(&mut self.draining)
            .into_iter()
            .partition(|(q, _)| q == queue);
        self.draining = others;
        self.cancelled
            .extend(of_queue.into_iter().map(|(_, c): (String, _)| c));
        // lapin has queued every delivery that came before the `cancel-ok`, then the end:
        // they go back now, not at the next call of `next`.
        let mut put_back = Vec::new();
        self.rt.block_on(std::future::poll_fn(|cx| {
            poll_cancelled(&mut self.cancelled, &mut put_back, cx);
            Poll::Ready(())
        }));
        put_back_all(&self.rt, &put_back);
        Ok(true)
    }

    /// Closes the channel: its unacknowledged deliveries go back to the queue.
    pub fn close(self) -> Result<(), Error> {
        self.rt.block_on(self.channel.close(200, "bye".into()))?;
        Ok(())
    }
}
