//! [`AmqpSettler`], the settling side of the AMQP transport: the results of a batch in one
//! transaction of Celery's Redis result backend, then each delivery settled on its
//! channel; a batch the backend cannot take is kept and handed again.

use std::time::Duration;

use super::super::backend::{
    add_chord_size, add_next_records, add_record, add_result, count_parts,
};
use super::super::canvas::after::{ChordPart, Next};
use super::super::canvas::apply::{batches, Batch};
use super::super::error::Error;
use super::super::protocol::TaskMessage;
use super::super::result::TaskResult;
use super::super::source::Source;
use super::super::transport::{Settle, Settlement, Unsettled};
use super::broker::Broker;
use super::delivery::{ack_all, Delivery};
use super::transport::Routes;

/// The settling side: results in one Redis transaction per batch, then each delivery
/// settled on its channel.
pub(crate) struct AmqpSettler {
    pub(super) url: String,
    pub(super) broker: Broker,
    pub(super) backend: Source,
    pub(super) conn: Option<redis::Connection>,
    pub(super) expires: Duration,
    /// Declares queues (the first message to each) and routes messages.
    pub(super) routes: Routes,
    /// The batch being settled is one handed again (see [`Settle::settle`]).
    pub(super) retrying: bool,
}

impl AmqpSettler {
    /// Publishes `msg` (routed and confirmed), on a new connection if the current one
    /// failed.
    fn publish(&mut self, msg: &TaskMessage) -> Result<(), Error> {
        self.publish_declared(&[msg])
    }

    /// Dead-letters `d` (then acks it), on a new connection if the current one failed.
    fn dead_letter(&mut self, d: &Delivery, reason: &str) -> Result<(), Error> {
        if self.broker.dead_letter(d, reason).is_ok() {
            return Ok(());
        }
        self.broker = Broker::connect(&self.url)?;
        self.broker.dead_letter(d, reason)
    }

    /// Writes `results` to the Redis backend in one transaction; true once Redis took
    /// them (or there were none).
    fn write_results(&mut self, results: &[(String, TaskResult)]) -> bool {
        if results.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (id, result) in results {
            add_result(&mut pipe, id, result, self.expires);
        }
        self.write(&pipe)
    }

    /// Runs `pipe` on the Redis backend, tried three times; true once Redis took it.
    fn write(&mut self, pipe: &redis::Pipeline) -> bool {
        for i in 0..3 {
            let conn = match self.conn.take() {
                Some(c) => Some(c),
                None => self.backend.connect().ok(),
            };
            if let Some(mut conn) = conn {
                if pipe.query::<()>(&mut conn).is_ok() {
                    self.conn = Some(conn);
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100 << i));
        }
        false
    }
}

impl AmqpSettler {
    /// Carries out the ops of `next` in order: its messages published in batches
    /// (confirmed, each queue declared the first time), a chord size written in Redis
    /// before the messages after it (so the last header part always finds it).
    fn send_next(&mut self, next: &Next) -> Result<(), Error> {
        for batch in batches(&next.ops) {
            match batch {
                Batch::Send(msgs) => self.publish_declared(&msgs)?,
                Batch::ChordSize { group, size } => {
                    let mut pipe = redis::pipe();
                    add_chord_size(&mut pipe, group, size, self.expires);
                    if !self.write(&pipe) {
                        return Err(Error::Config(format!(
                            "the size of chord {group} could not be written"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes `msgs` (confirmed as one batch), each routed by [`Routes::route`] (its
    /// queue declared the first time); on a failure, once more on a new connection.
    fn publish_declared(&mut self, msgs: &[&TaskMessage]) -> Result<(), Error> {
        if self.routes.publish_all(&self.broker, msgs).is_ok() {
            return Ok(());
        }
        self.broker = Broker::connect(&self.url)?;
        self.routes.publish_all(&self.broker, msgs)
    }

    /// Counts chord parts in the Redis backend and sends a completed chord's body.
    fn count_parts(&mut self, parts: &[ChordPart]) -> bool {
        let conn = match self.conn.take() {
            Some(c) => Some(c),
            None => self.backend.connect().ok(),
        };
        let Some(mut conn) = conn else {
            return false;
        };
        let expires = self.expires;
        let counted = count_parts(&mut conn, parts, expires, |conn, next| {
            if self.send_next(next).is_err() {
                return false;
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            add_next_records(&mut pipe, next, expires);
            pipe.query::<()>(conn).is_ok()
        });
        self.conn = Some(conn);
        counted
    }
}

impl Settle for AmqpSettler {
    type Tag = Delivery;

    /// Results first (one Redis transaction), then each delivery acknowledged (all the
    /// plain ones at once). When the results cannot be written (the Redis result backend
    /// does not answer), the batch is handed back, and written again until the backend
    /// answers, without sending its workflow's next steps a second time. A retry or an ETA copy is sent (confirmed)
    /// before the old delivery is acknowledged; a retry that cannot be sent makes the
    /// failure final; a dead letter or ETA copy that cannot be sent goes back to its queue.
    ///
    /// A task in a workflow: its next messages are sent (confirmed) before its result is
    /// written (a message that cannot be sent makes the task `FAILURE`, so that nobody
    /// waits for a step that will never run), its record gets its workflow fields, and
    /// its chord parts are counted (and a completed chord's body sent) before its
    /// delivery is acknowledged.
    fn settle(&mut self, mut batch: Vec<Settlement<Delivery>>) -> Result<(), Unsettled<Delivery>> {
        // A batch handed again (its results could not be written) has sent its next steps
        // already: they are not sent twice.
        if !std::mem::take(&mut self.retrying) {
            for s in &mut batch {
                if let Settlement::Result {
                    result,
                    flow: Some(flow),
                    ..
                } = s
                {
                    if let Err(e) = self.send_next(&flow.next) {
                        *result = TaskResult::error(format!(
                            "the next step of its workflow could not be sent: {e}"
                        ));
                    }
                }
            }
        }
        let expires = self.expires;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for s in &batch {
            if let Settlement::Result {
                id, result, flow, ..
            } = s
            {
                if let Some(flow) = flow {
                    add_next_records(&mut pipe, &flow.next, expires);
                }
                add_record(&mut pipe, id, result, flow.as_deref(), expires);
            }
        }
        let results: Vec<(String, TaskResult)> = batch
            .iter()
            .filter_map(|s| match s {
                Settlement::Retry { next, failure, .. } => {
                    let reason = match failure {
                        TaskResult::Failure { exc_message, .. } => exc_message.clone(),
                        _ => String::new(),
                    };
                    Some((next.id.clone(), TaskResult::Retry(reason)))
                }
                Settlement::Refuse {
                    result: Some(r), ..
                } => Some(r.clone()),
                _ => None,
            })
            .collect();
        for (id, result) in &results {
            add_result(&mut pipe, id, result, expires);
        }
        let any =
            !results.is_empty() || batch.iter().any(|s| matches!(s, Settlement::Result { .. }));
        if any && !self.write(&pipe) {
            // Kept, deliveries and all, and handed again until the backend answers: a
            // delivery put back instead would run its task a second time.
            self.retrying = true;
            return Err(Unsettled {
                batch,
                error: Error::Io(std::io::Error::other(
                    "the Redis result backend does not answer",
                )),
            });
        }
        // Chord parts are counted before any delivery is acknowledged. A count that fails
        // keeps the batch too (counting is idempotent: each part counts once, by its id
        // and index), instead of putting the delivery back (a second run) or, for a part
        // acknowledged early, leaving its chord one part short for good.
        for s in &batch {
            if let Settlement::Result {
                flow: Some(flow), ..
            } = s
            {
                if !flow.next.parts.is_empty() && !self.count_parts(&flow.next.parts) {
                    self.retrying = true;
                    return Err(Unsettled {
                        batch,
                        error: Error::Io(std::io::Error::other(
                            "a chord part could not be counted in the Redis result backend",
                        )),
                    });
                }
            }
        }
        let mut acks = Vec::new();
        let mut final_failures = Vec::new();
        for s in batch {
            match s {
                Settlement::Ack(d) => acks.push(d),
                Settlement::Result { tag: Some(d), .. } => acks.push(d),
                Settlement::Retry { next, failure, tag } => {
                    if self.publish(&next).is_err() {
                        final_failures.push((next.id.clone(), failure));
                    }
                    acks.extend(tag);
                }
                Settlement::Refuse {
                    reason,
                    tag: Some(d),
                    ..
                } if self.dead_letter(&d, &reason).is_err() => {
                    let _ = d.reject(true);
                }
                Settlement::Republish { message, tag } => {
                    if self.publish(&message).is_ok() {
                        acks.push(tag);
                    } else {
                        let _ = tag.reject(true);
                    }
                }
                _ => {}
            }
        }
        let _ = self.write_results(&final_failures);
        ack_all(&acks);
        Ok(())
    }

    /// A delivery whose channel is gone is delivered again by the broker anyway.
    fn requeue(&mut self, tags: Vec<Delivery>) -> (usize, Vec<Delivery>) {
        let n = tags
            .iter()
            .filter(|d| matches!(d.requeue(), Ok(true)))
            .count();
        (n, Vec::new())
    }
}
