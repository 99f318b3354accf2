//! Celery's events over AMQP ([`events`](super::super::events)): published on the topic
//! exchange `celeryev` (declared as Celery declares it: durable, not auto-deleted) with
//! the event's routing key, the header `hostname`, JSON, transient (delivery mode 1), as
//! Celery's `EventDispatcher` sends them. Receivers (`celery events`, Flower) bind their
//! own queues to it.

use lapin::options::ExchangeDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;

use super::super::error::Error;
use super::super::events::{EventSink, EVENT_EXCHANGE};
use super::broker::Broker;
use super::wire::transient_json;

/// A worker's event publisher on RabbitMQ: its own connection, opened (and the exchange
/// declared) on the first publish and again after a failed one.
pub(crate) struct AmqpEvents {
    url: String,
    name: String,
    broker: Option<Broker>,
}

impl AmqpEvents {
    pub(crate) fn new(url: &str, hostname: &str) -> AmqpEvents {
        AmqpEvents {
            url: url.to_owned(),
            name: format!("weft events {hostname}"),
            broker: None,
        }
    }

    fn connect(&self) -> Result<Broker, Error> {
        let broker = Broker::connect_named(&self.url, &self.name)?;
        broker.block_on(broker.channel.exchange_declare(
            EVENT_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))?;
        Ok(broker)
    }
}

impl EventSink for AmqpEvents {
    fn publish(&mut self, routing_key: &str, body: &str, hostname: &str) -> Result<(), Error> {
        let broker = match self.broker.take() {
            Some(b) => b,
            None => self.connect()?,
        };
        let mut headers = FieldTable::default();
        headers.insert("hostname".into(), AMQPValue::LongString(hostname.into()));
        let props = transient_json(headers);
        let sent = broker.publish(EVENT_EXCHANGE, routing_key, body.as_bytes(), props);
        match sent {
            Ok(()) => self.broker = Some(broker),
            // A connection whose publish failed is not used again.
            Err(_) => drop(broker.close()),
        }
        sent
    }
}
