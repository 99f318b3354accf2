//! The worker's and the client's transport over Redis ([`Transport`], [`Publish`]):
//! [`RedisTransport`] opens a [`RedisConsumer`] (pops with [`pop_and_record`], waits on a
//! [`Wake`], heartbeat and restore sweep as upkeep) and a [`RedisSettler`] (every batch of
//! results and acknowledgements in one `MULTI`); [`RedisPublisher`] is the client's side.

use std::time::Duration;

use redis::Connection;
use serde_json::Value;

use super::super::backend::{add_chord_size, add_next_records, add_record, count_parts};
use super::super::canvas::after::Next;
use super::super::canvas::apply::Op;
use super::super::error::Error;
use super::super::protocol::{ProtocolError, TaskMessage};
use super::super::result::TaskResult;
use super::super::source::Source;
use super::super::transport::{Consume, Incoming, Publish, Refused, Settle, Settlement, Transport};
use super::wake::{track_on, Wake};
use super::{
    add_ack, add_dead_letter, add_finish, add_retry, consume_keys, heartbeat, pop_and_record,
    publish, queue_for_priority, queue_of_list, restore_by_tag, restore_visible,
};

/// A [`Worker`](super::super::Worker)'s transport over Redis: kombu's layout, acks emulated with
/// `unacked`, a heartbeat of held messages and the restore sweep.
#[derive(Clone)]
pub(crate) struct RedisTransport {
    pub source: Source,
    pub visibility_timeout: Duration,
    pub restore_interval: Duration,
    pub result_expires: Duration,
}

/// The consumer side: pops with [`pop_and_record`], waits on a [`Wake`] moved by a
/// tracking thread it owns.
pub(crate) struct RedisConsumer {
    source: Source,
    conn: Connection,
    keys: Vec<String>,
    key_queues: Vec<String>,
    wake: std::sync::Arc<Wake>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tracker: Option<std::thread::JoinHandle<()>>,
    visibility_timeout: Duration,
    restore_interval: Duration,
    last_sweep: std::time::Instant,
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.tracker.take() {
            let _ = t.join();
        }
    }
}

/// Reads one popped list entry: the task, or why not; `tag` is what the pop recorded it
/// under (the script's reading of the envelope, which may accept what serde refuses).
fn incoming(list: &str, raw: Vec<u8>, tag: Option<String>) -> Incoming<String> {
    let queue = queue_of_list(list).to_owned();
    let envelope: Result<Value, ProtocolError> =
        serde_json::from_slice(&raw).map_err(|e| ProtocolError::Json(e.to_string()));
    let field = |ptr: &str| {
        envelope
            .as_ref()
            .ok()
            .and_then(|v| v.pointer(ptr)?.as_str().map(str::to_owned))
    };
    let message = match envelope.as_ref().map_err(Clone::clone) {
        Ok(env) => TaskMessage::from_envelope(env),
        Err(e) => Err(e),
    };
    let message = match message {
        Ok(m) => Ok(m),
        Err(error) => Err(Refused {
            error,
            id: field("/headers/id"),
            raw,
        }),
    };
    Incoming {
        queue,
        message,
        tag,
    }
}

impl Consume for RedisConsumer {
    type Tag = String;

    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Incoming<String>>, Error> {
        let seen = self.wake.generation();
        let batch = match pop_and_record(&mut self.conn, &self.keys, &self.key_queues, max) {
            Ok(batch) => batch,
            Err(e) => {
                // A new connection for the next try (the worker backs off meanwhile).
                if let Ok(conn) = self.source.connect() {
                    self.conn = conn;
                }
                return Err(e.into());
            }
        };
        if batch.is_empty() {
            self.wake.wait(seen, wait);
        }
        Ok(batch
            .into_iter()
            .map(|(list, raw, tag)| incoming(&list, raw, tag))
            .collect())
    }

    /// A third of the visibility timeout, between 50 ms and 1 s (at most every second:
    /// other workers may sweep with a shorter visibility timeout).
    fn upkeep_interval(&self) -> Duration {
        (self.visibility_timeout / 3).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// The heartbeat of held messages, so that no sweep restores a message whose worker
    /// is alive.
    fn upkeep(&mut self, held: &[&String]) {
        let _ = heartbeat(&mut self.conn, held);
    }

    /// The restore sweep, every `restore_interval`.
    fn sweep(&mut self) {
        if self.last_sweep.elapsed() >= self.restore_interval {
            self.last_sweep = std::time::Instant::now();
            let _ = restore_visible(&mut self.conn, self.visibility_timeout);
        }
    }
}

/// The settling side: every batch in one `MULTI`.
pub(crate) struct RedisSettler {
    source: Source,
    conn: Connection,
    expires: Duration,
}

impl RedisSettler {
    /// Runs `pipe`, retried a few times on a new connection: what is not written stays
    /// unacknowledged, to be restored and run again (at-least-once). True once written.
    fn write(&mut self, pipe: &redis::Pipeline) -> bool {
        for i in 0..3 {
            if pipe.query::<()>(&mut self.conn).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100 << i));
            if let Ok(conn) = self.source.connect() {
                self.conn = conn;
            }
        }
        false
    }
}

/// Adds to `pipe` what follows a task in its workflow: its messages (`LPUSH`), chord
/// sizes and the failures stored with it, in order.
fn add_next(pipe: &mut redis::Pipeline, next: &Next, expires: Duration) {
    for op in &next.ops {
        match op {
            Op::Send(m) => {
                pipe.lpush(queue_for_priority(&m.routing_key, m.priority), m.encode())
                    .ignore();
            }
            Op::ChordSize { group, size } => add_chord_size(pipe, group, *size, expires),
        }
    }
    add_next_records(pipe, next, expires);
}

impl Settle for RedisSettler {
    type Tag = String;

    /// Every batch in one `MULTI`: a workflow's next messages and chord sizes, then the
    /// results, then the acknowledgements. Then the chord parts of the batch are counted
    /// (a script each), the body of a completed chord sent, and their messages
    /// acknowledged.
    fn settle(&mut self, batch: Vec<Settlement<String>>) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let expires = self.expires;
        let mut chord_parts = Vec::new();
        for s in &batch {
            match s {
                Settlement::Ack(tag) => add_ack(&mut pipe, tag),
                Settlement::Result {
                    id,
                    result,
                    tag,
                    flow,
                } => {
                    if let Some(flow) = flow {
                        add_next(&mut pipe, &flow.next, expires);
                    }
                    add_record(&mut pipe, id, result, flow.as_deref(), expires);
                    match flow {
                        // Acknowledged once its chord part is counted.
                        Some(f) if !f.next.parts.is_empty() => {
                            chord_parts.push((&f.next.parts, tag.as_deref()))
                        }
                        _ => {
                            if let Some(tag) = tag {
                                add_ack(&mut pipe, tag);
                            }
                        }
                    }
                }
                Settlement::Retry { next, failure, tag } => {
                    let reason = match failure {
                        TaskResult::Failure { exc_message, .. } => exc_message.as_str(),
                        _ => "",
                    };
                    add_retry(&mut pipe, next, reason, expires, tag.as_deref())
                }
                Settlement::Refuse {
                    queue,
                    raw,
                    reason,
                    result,
                    tag,
                } => {
                    add_dead_letter(&mut pipe, queue, raw, reason);
                    if let Some((id, result)) = result {
                        add_finish(&mut pipe, id, result, expires, None);
                    }
                    if let Some(tag) = tag {
                        add_ack(&mut pipe, tag);
                    }
                }
                Settlement::Republish { message, tag } => {
                    pipe.lpush(
                        queue_for_priority(&message.routing_key, message.priority),
                        message.encode(),
                    )
                    .ignore();
                    add_ack(&mut pipe, tag);
                }
            }
        }
        if !self.write(&pipe) {
            return;
        }
        for (parts, tag) in chord_parts {
            let counted = count_parts(&mut self.conn, parts, expires, |conn, next| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                add_next(&mut pipe, next, expires);
                pipe.query::<()>(conn).is_ok()
            });
            if let (true, Some(tag)) = (counted, tag) {
                let mut pipe = redis::pipe();
                add_ack(&mut pipe, tag);
                self.write(&pipe);
            }
        }
    }

    fn requeue(&mut self, tags: Vec<String>) -> usize {
        tags.iter()
            .filter(|t| restore_by_tag(&mut self.conn, t).unwrap_or(false))
            .count()
    }
}

impl Transport for RedisTransport {
    type Tag = String;
    type Consumer = RedisConsumer;
    type Settler = RedisSettler;

    fn open(
        &self,
        _hostname: &str,
        queues: &[String],
        _prefetch: usize,
    ) -> Result<(RedisConsumer, RedisSettler), Error> {
        let mut conn = self.source.connect()?;
        let _: () = redis::cmd("PING").query(&mut conn)?;
        let settle_conn = self.source.connect()?;
        let keys = consume_keys(queues);
        let wake = std::sync::Arc::new(Wake::new());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tracker = {
            let (source, keys, wake, stop) = (
                self.source.clone(),
                keys.clone(),
                wake.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name("weft-celery-track".into())
                .spawn(move || {
                    track_on(&source, &keys, &wake, || {
                        stop.load(std::sync::atomic::Ordering::Acquire)
                    })
                })?
        };
        Ok((
            RedisConsumer {
                source: self.source.clone(),
                conn,
                key_queues: keys.iter().map(|k| queue_of_list(k).to_owned()).collect(),
                keys,
                wake,
                stop,
                tracker: Some(tracker),
                visibility_timeout: self.visibility_timeout,
                restore_interval: self.restore_interval,
                last_sweep: std::time::Instant::now(),
            },
            RedisSettler {
                source: self.source.clone(),
                conn: settle_conn,
                expires: self.result_expires,
            },
        ))
    }

    fn serve_control(
        self,
        hostname: String,
        revoke: &dyn Fn(&[String], bool),
        stop: &dyn Fn() -> bool,
        ready: std::sync::mpsc::Sender<()>,
    ) {
        super::pidbox::serve(self.source, hostname, revoke, stop, ready);
    }
}

/// The client's side: `LPUSH` on the queue's list for the message's priority.
pub(crate) struct RedisPublisher {
    source: Source,
    conn: parking_lot::Mutex<Option<Connection>>,
}

impl RedisPublisher {
    /// Connects now.
    pub fn new(source: Source) -> Result<RedisPublisher, Error> {
        let conn = source.connect()?;
        Ok(RedisPublisher {
            source,
            conn: parking_lot::Mutex::new(Some(conn)),
        })
    }
}

impl Publish for RedisPublisher {
    fn publish(&self, msg: &TaskMessage) -> Result<(), Error> {
        let mut slot = self.conn.lock();
        let mut conn = match slot.take() {
            Some(c) => c,
            None => self.source.connect()?,
        };
        publish(&mut conn, msg)?;
        // Kept only after a success: a broken connection is replaced next time.
        *slot = Some(conn);
        Ok(())
    }

    fn publish_all(&self, msgs: &[&TaskMessage]) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        for m in msgs {
            pipe.lpush(queue_for_priority(&m.routing_key, m.priority), m.encode())
                .ignore();
        }
        let mut slot = self.conn.lock();
        let mut conn = match slot.take() {
            Some(c) => c,
            None => self.source.connect()?,
        };
        pipe.query::<()>(&mut conn)?;
        *slot = Some(conn);
        Ok(())
    }
}
