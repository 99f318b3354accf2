//! Celery's native delayed delivery (kombu 5.5+'s `native_delayed_delivery.py`): with
//! quorum queues a countdown or ETA task waits in the broker, not unacknowledged in a
//! worker.
//!
//! The topology is [`Broker::declare_delayed_delivery`]'s doc.
//!
//! Each task queue `q` then gets ([`Broker::bind_delayed_delivery`], kombu's
//! `bind_queue_to_native_delayed_delivery_exchange`): exchange `q` bound to
//! [`DELAYED_DELIVERY_EXCHANGE`] with `#.q`, and queue `q` bound to exchange `q` with
//! `#.q`. A direct exchange cannot carry the binary prefix, so classic queues (on direct
//! exchanges) do not use this.
//!
//! The delay is truncated to whole seconds, so a task arrives up to a second before its
//! `eta` header: the worker still holds it until then.

use lapin::options::{ExchangeBindOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;

use super::super::error::Error;
use super::topology::{durable, int, text};
use super::Broker;

/// How many levels (binary digits of the delay, in seconds) native delayed delivery has
/// (kombu's `MAX_NUMBER_OF_BITS_TO_USE`): delays up to 2^28 - 1 s, about 8.5 years.
pub const DELAYED_LEVELS: u32 = 28;
/// The longest delay, in seconds, that native delayed delivery can carry.
pub const MAX_DELAY_SECS: u64 = (1 << DELAYED_LEVELS) - 1;
/// The exchange a delayed message is published on (`celery_delayed_27`).
pub const FIRST_LEVEL: &str = "celery_delayed_27";
/// The topic exchange a delayed message reaches once its delay is over (kombu's
/// `CELERY_DELAYED_DELIVERY_EXCHANGE`); each queue's exchange is bound to it with `#.q`.
pub const DELAYED_DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";

const _: () = assert!(MAX_DELAY_SECS == 268_435_455);

/// The exchange and queue of level `level` (kombu's `level_name`): `celery_delayed_<level>`.
///
/// ```
/// use weft::celery::amqp::{level_name, DELAYED_LEVELS, FIRST_LEVEL};
///
/// assert_eq!(level_name(DELAYED_LEVELS - 1), FIRST_LEVEL);
/// ```
pub fn level_name(level: u32) -> String {
    format!("celery_delayed_{level}")
}

/// The routing key of a message delayed `delay_secs` seconds to the queue routed by
/// `routing_key` (kombu's `calculate_routing_key`): the delay as 28 binary digits, each
/// followed by a dot, then `routing_key` without the delay prefix it may already carry
/// (a retried task's). `None` for a delay under one second (send it directly); a delay
/// over [`MAX_DELAY_SECS`] is cut to it.
///
/// ```
/// use weft::celery::amqp::delayed_routing_key;
///
/// assert_eq!(
///     delayed_routing_key(5, "celery").unwrap(),
///     "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.celery"
/// );
/// let again = delayed_routing_key(5, "celery").unwrap();
/// assert_eq!(delayed_routing_key(5, &again).unwrap(), again);
/// assert_eq!(delayed_routing_key(0, "celery"), None);
/// ```
pub fn delayed_routing_key(delay_secs: u64, routing_key: &str) -> Option<String> {
    if delay_secs == 0 {
        return None;
    }
    let delay = delay_secs.min(MAX_DELAY_SECS);
    let mut key = String::with_capacity(2 * DELAYED_LEVELS as usize + routing_key.len());
    for bit in (0..DELAYED_LEVELS).rev() {
        key.push(if delay >> bit & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(strip_delay(routing_key));
    Some(key)
}

/// `routing_key` without a delay prefix (28 binary digits each followed by a dot), as
/// kombu strips it (`_delay_prefix_re`): the queue's own routing key.
///
/// ```
/// use weft::celery::amqp::{delayed_routing_key, strip_delay};
///
/// assert_eq!(strip_delay(&delayed_routing_key(3, "q").unwrap()), "q");
/// assert_eq!(strip_delay("q"), "q");
/// assert_eq!(strip_delay("1.q"), "1.q");
/// ```
pub fn strip_delay(routing_key: &str) -> &str {
    let b = routing_key.as_bytes();
    let n = 2 * DELAYED_LEVELS as usize;
    if b.len() >= n
        && b[..n]
            .chunks(2)
            .all(|d| matches!(d[0], b'0' | b'1') && d[1] == b'.')
    {
        &routing_key[n..]
    } else {
        routing_key
    }
}

/// The binding key of level `level` for the digit `digit` (`*.` once per higher level).
fn level_key(level: u32, digit: char) -> String {
    format!(
        "{}{digit}.#",
        "*.".repeat((DELAYED_LEVELS - 1 - level) as usize)
    )
}

impl Broker {
    /// Declares native delayed delivery's exchanges, queues and bindings exactly as
    /// Celery's worker does at start, so that either may declare them first:
    ///
    /// For each level `L` = 27..=0 ([`DELAYED_LEVELS`] levels), the durable topic exchange
    /// `celery_delayed_L` ([`level_name`]) and the durable queue of the same name, with
    /// exactly these arguments (Celery's `broker_native_delayed_delivery_queue_type` is
    /// `quorum` by default):
    ///
    /// | argument | value |
    /// | --- | --- |
    /// | `x-queue-type` | `quorum` |
    /// | `x-overflow` | `reject-publish` |
    /// | `x-message-ttl` | 2^L × 1000 (milliseconds) |
    /// | `x-dead-letter-exchange` | `celery_delayed_{L-1}`; level 0: [`DELAYED_DELIVERY_EXCHANGE`] |
    /// | `x-dead-letter-strategy` | `at-least-once` |
    ///
    /// A message's routing key is its delay in whole seconds as 28 binary digits, most
    /// significant first, each followed by a dot, then the queue's routing key
    /// ([`delayed_routing_key`]). Bit `27 - L` (counting from the left, 0-based) is level
    /// `L`'s: queue `celery_delayed_L` is bound to exchange `celery_delayed_L` with
    /// `*.`×(27-L) `1.#` (the message waits 2^L s, then is dead-lettered to the next level),
    /// and exchange `celery_delayed_{L-1}` to exchange `celery_delayed_L` with `*.`×(27-L)
    /// `0.#` (it goes on at once); exchange [`DELAYED_DELIVERY_EXCHANGE`] (durable, topic) to
    /// `celery_delayed_0` with `*.`×27 `0.#`. A message is published on `celery_delayed_27`
    /// ([`FIRST_LEVEL`]); it reaches the delivery exchange after the sum of its levels' TTLs.
    pub fn declare_delayed_delivery(&self) -> Result<(), Error> {
        self.block_on(async {
            let ch = &self.channel;
            for level in (0..DELAYED_LEVELS).rev() {
                let name = level_name(level);
                let dead_letter = match level {
                    0 => DELAYED_DELIVERY_EXCHANGE.to_owned(),
                    l => level_name(l - 1),
                };
                ch.exchange_declare(
                    name.as_str().into(),
                    ExchangeKind::Topic,
                    durable(),
                    FieldTable::default(),
                )
                .await?;
                let mut args = FieldTable::default();
                args.insert("x-queue-type".into(), text("quorum"));
                args.insert("x-overflow".into(), text("reject-publish"));
                args.insert("x-message-ttl".into(), int((1i64 << level) * 1000));
                args.insert("x-dead-letter-exchange".into(), text(&dead_letter));
                args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
                ch.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await?;
                ch.queue_bind(
                    name.as_str().into(),
                    name.as_str().into(),
                    level_key(level, '1').into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            }
            for level in (1..DELAYED_LEVELS).rev() {
                ch.exchange_bind(
                    level_name(level - 1).into(),
                    level_name(level).into(),
                    level_key(level, '0').into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            }
            ch.exchange_declare(
                DELAYED_DELIVERY_EXCHANGE.into(),
                ExchangeKind::Topic,
                durable(),
                FieldTable::default(),
            )
            .await?;
            ch.exchange_bind(
                DELAYED_DELIVERY_EXCHANGE.into(),
                level_name(0).into(),
                level_key(0, '0').into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
        })?;
        Ok(())
    }

    /// Binds the task queue `queue` (declared as a quorum queue, on its topic exchange of
    /// the same name) to native delayed delivery as kombu's
    /// `bind_queue_to_native_delayed_delivery_exchange` does: exchange `queue` to
    /// [`DELAYED_DELIVERY_EXCHANGE`] with `#.queue`, queue `queue` to exchange `queue`
    /// with `#.queue`.
    pub fn bind_delayed_delivery(&self, queue: &str) -> Result<(), Error> {
        let key = format!("#.{queue}");
        self.block_on(async {
            self.channel
                .exchange_bind(
                    queue.into(),
                    DELAYED_DELIVERY_EXCHANGE.into(),
                    key.as_str().into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            self.channel
                .queue_bind(
                    queue.into(),
                    queue.into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
