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
use super::super::control::Panel;
use super::super::error::Error;
use super::super::protocol::{ProtocolError, TaskMessage};
use super::super::result::TaskResult;
use super::super::source::Source;
use super::super::transport::{
    Consume, Incoming, Publish, RefusedMessage, Settle, Settlement, Transport, Unsettled,
};
use super::wake::{track_on, Wake};
use super::{
    add_ack, add_acks, add_dead_letter, add_finish, add_retry, client_id, consume_keys, fence,
    heartbeat, pop_and_record, publish, queue_for_priority, queue_of_list, recover_fetch,
    restore_by_tag, restore_visible, Fetch,
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
    /// The queues consumed now, in the order they are taken from.
    queues: Vec<String>,
    /// Their lists ([`consume_keys`]), and the queue of each.
    keys: Vec<String>,
    key_queues: Vec<String>,
    wake: std::sync::Arc<Wake>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tracker: Option<std::thread::JoinHandle<()>>,
    visibility_timeout: Duration,
    restore_interval: Duration,
    last_sweep: std::time::Instant,
    /// This consumer's take record ([`pop_and_record`]).
    fetch: Fetch,
    /// The `CLIENT ID` of `conn`, to fence it off after a failed command.
    client_id: Option<i64>,
    /// A take whose answer was lost: recovered before the next take.
    lost: Option<Fetch>,
    /// A command on `conn` failed: a new connection before the next.
    broken: bool,
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
        Err(error) => Err(RefusedMessage {
            error,
            id: field("/headers/id"),
            raw,
        }),
    };
    Incoming {
        queue,
        message,
        tag,
        // Put back by a restore: a dead worker's, never this live one's.
        redelivered: false,
    }
}

impl Consume for RedisConsumer {
    type Tag = String;

    /// A take whose answer was lost is recovered first: on a new connection, the old one
    /// is fenced off and what the take recorded is put back on its queues
    /// ([`recover_fetch`]), so that nothing stays in `unacked` without this worker knowing.
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Incoming<String>>, Error> {
        if self.broken || self.lost.is_some() {
            self.recover()?;
        }
        let seen = self.wake.generation();
        self.fetch.seq += 1;
        let batch = match pop_and_record(
            &mut self.conn,
            &self.keys,
            &self.key_queues,
            max,
            &self.fetch,
        ) {
            Ok(batch) => batch,
            Err(e) => {
                // Whether it ran is found out on a new connection (the worker backs off
                // between tries).
                self.lost = Some(self.fetch.clone());
                let _ = self.recover();
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
        if self.broken && self.recover().is_err() {
            return;
        }
        if heartbeat(&mut self.conn, held).is_err() {
            self.broken = true;
        }
    }

    /// Nothing to declare on Redis: the queue's lists join the take script's and the
    /// tracker's, last at each priority step ([`consume_keys`]: its priority-0 list after
    /// the other queues' priority-0 lists, before their step-3 lists).
    fn add_queue(&mut self, queue: &str) -> Result<bool, Error> {
        if self.queues.iter().any(|q| q == queue) {
            return Ok(false);
        }
        self.queues.push(queue.to_owned());
        self.set_keys();
        Ok(true)
    }

    /// The queue's lists leave the take script's and the tracker's; its messages held are
    /// kept alive and settled by their tags, whatever queue they came from.
    fn cancel_queue(&mut self, queue: &str) -> Result<bool, Error> {
        let before = self.queues.len();
        self.queues.retain(|q| q != queue);
        if self.queues.len() == before {
            return Ok(false);
        }
        self.set_keys();
        Ok(true)
    }

    /// The restore sweep, every `restore_interval`.
    fn sweep(&mut self) {
        if self.broken || self.last_sweep.elapsed() < self.restore_interval {
            return;
        }
        self.last_sweep = std::time::Instant::now();
        if restore_visible(&mut self.conn, self.visibility_timeout).is_err() {
            self.broken = true;
        }
    }
}

impl RedisConsumer {
    /// The lists of `queues`, for the next take and the tracker's next arm.
    fn set_keys(&mut self) {
        self.keys = consume_keys(&self.queues);
        self.key_queues = self
            .keys
            .iter()
            .map(|k| queue_of_list(k).to_owned())
            .collect();
        self.wake.watch(self.keys.clone());
    }

    /// After a command failed: a new connection, the old one fenced off, and, if a take's
    /// answer was lost, what it recorded put back. `broken` and `lost` stay set until
    /// this succeeds. (A connection whose command failed is never used again: a reply that
    /// comes late would be read as the next command's.)
    fn recover(&mut self) -> Result<(), Error> {
        let mut conn = self.source.connect()?;
        fence(&mut conn, self.client_id)?;
        if let Some(lost) = &self.lost {
            let restored = recover_fetch(&mut conn, lost)?;
            if restored > 0 {
                eprintln!(
                    "weft celery: a take from Redis lost its answer; the {restored} message(s) it took were put back on their queues"
                );
            }
        }
        self.client_id = client_id(&mut conn);
        self.conn = conn;
        self.lost = None;
        self.broken = false;
        Ok(())
    }
}

/// The settling side: every batch in one `MULTI`, retried until Redis takes it, never
/// applied twice.
///
/// Each `MULTI` also sets this settler's marker key (`weft.settled.<uuid>`) to the batch's
/// number. When a write fails, whether it took effect is not known (the connection may
/// have dropped after `EXEC`, or a stalled Redis may still run it); the next try is on a new
/// connection that first fences the old one off ([`fence`]) and then reads the marker: if
/// it holds this batch's number, the `MULTI` ran and is not sent again (its `LPUSH`es of a
/// workflow's next steps would run them twice). The worker hands a failed batch again,
/// unchanged, until it is written ([`Settle::settle`]).
pub(crate) struct RedisSettler {
    source: Source,
    conn: Option<Connection>,
    client_id: Option<i64>,
    expires: Duration,
    marker: String,
    /// The number of the batch being written.
    seq: u64,
    /// The last try of batch `seq` failed: its `MULTI` may or may not have run.
    unsure: bool,
}

impl RedisSettler {
    fn new(source: Source, expires: Duration) -> RedisSettler {
        RedisSettler {
            source,
            conn: None,
            client_id: None,
            expires,
            marker: format!("weft.settled.{}", uuid::Uuid::new_v4()),
            seq: 0,
            unsure: false,
        }
    }

    /// The connection, a new one (with the old fenced off) after a failure.
    fn conn(&mut self) -> redis::RedisResult<&mut Connection> {
        if self.conn.is_none() {
            let mut conn = self.source.connect()?;
            fence(&mut conn, self.client_id.take())?;
            self.client_id = client_id(&mut conn);
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Runs `pipe`; on an error the connection is dropped (never used again: a late reply
    /// would be read as the next command's).
    fn run(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
        let r = pipe.query::<()>(self.conn()?);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// Whether the `MULTI` of batch `seq` ran (read after a fenced reconnect).
    fn applied(&mut self) -> redis::RedisResult<bool> {
        let marker = self.marker.clone();
        let seq = self.seq;
        let conn = self.conn()?;
        let r: redis::RedisResult<Option<u64>> = redis::cmd("GET").arg(&marker).query(conn);
        match r {
            Ok(v) => Ok(v == Some(seq)),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
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
    fn settle(&mut self, batch: Vec<Settlement<String>>) -> Result<(), Unsettled<String>> {
        match self.try_settle(&batch) {
            Ok(()) => Ok(()),
            Err(error) => Err(Unsettled {
                batch,
                error: error.into(),
            }),
        }
    }

    fn requeue(&mut self, tags: Vec<String>) -> (usize, Vec<String>) {
        let mut restored = 0;
        let mut left = tags.into_iter();
        while let Some(tag) = left.next() {
            let done = match self.conn() {
                Ok(conn) => restore_by_tag(conn, &tag),
                Err(e) => Err(e),
            };
            match done {
                Ok(true) => restored += 1,
                Ok(false) => {}
                Err(_) => {
                    self.conn = None;
                    return (restored, std::iter::once(tag).chain(left).collect());
                }
            }
        }
        (restored, Vec::new())
    }
}

impl RedisSettler {
    /// One try of [`Settle::settle`]: the `MULTI` (unless a failed try of the same batch
    /// is found to have run it), then the chord parts.
    fn try_settle(&mut self, batch: &[Settlement<String>]) -> redis::RedisResult<()> {
        if !self.unsure {
            self.seq += 1;
        }
        if self.unsure {
            // Kept alive first: a long outage must not let a restore sweep take them.
            let tags: Vec<&String> = batch.iter().filter_map(Settlement::tag).collect();
            let r = heartbeat(self.conn()?, &tags);
            if r.is_err() {
                self.conn = None;
                r?;
            }
        }
        let ran = self.unsure && self.applied()?;
        self.unsure = true;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let expires = self.expires;
        let mut chord_parts = Vec::new();
        // Every acknowledgement of the batch, in one `ZREM` and one `HDEL` at the end of
        // the `MULTI` (which applies all of it at once).
        let mut acks: Vec<&str> = Vec::new();
        for s in batch {
            match s {
                Settlement::Ack(tag) => acks.push(tag),
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
                        _ => acks.extend(tag.as_deref()),
                    }
                }
                Settlement::Retry { next, failure, tag } => {
                    let reason = match failure {
                        TaskResult::Failure { exc_message, .. } => exc_message.as_str(),
                        _ => "",
                    };
                    add_retry(&mut pipe, next, reason, expires, None);
                    acks.extend(tag.as_deref());
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
                    acks.extend(tag.as_deref());
                }
                Settlement::Republish { message, tag } => {
                    pipe.lpush(
                        queue_for_priority(&message.routing_key, message.priority),
                        message.encode(),
                    )
                    .ignore();
                    acks.push(tag);
                }
            }
        }
        add_acks(&mut pipe, &acks);
        pipe.set_ex(&self.marker, self.seq, expires.as_secs().max(1))
            .ignore();
        if !ran {
            self.run(&pipe)?;
        }
        // Counting is idempotent (each part is counted once, by its id and index), so a
        // retry counts again what a failed try may have counted.
        for (parts, tag) in chord_parts {
            let conn = self.conn()?;
            let mut sent = Ok(());
            let counted = count_parts(conn, parts, expires, |conn, next| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                add_next(&mut pipe, next, expires);
                sent = pipe.query::<()>(conn);
                sent.is_ok()
            });
            if !counted {
                self.conn = None;
                sent?;
                return Err((
                    redis::ErrorKind::IoError,
                    "a chord part could not be counted",
                )
                    .into());
            }
            if let Some(tag) = tag {
                let mut pipe = redis::pipe();
                add_ack(&mut pipe, tag);
                self.run(&pipe)?;
            }
        }
        self.unsure = false;
        Ok(())
    }
}

impl Transport for RedisTransport {
    type Tag = String;
    type Consumer = RedisConsumer;
    type Settler = RedisSettler;
    type Events = super::RedisEvents;

    fn events(&self, _hostname: &str) -> Self::Events {
        super::RedisEvents::new(self.source.clone())
    }

    fn open(
        &self,
        _hostname: &str,
        queues: &[String],
        _prefetch: usize,
    ) -> Result<(RedisConsumer, RedisSettler), Error> {
        let mut conn = self.source.connect()?;
        let _: () = redis::cmd("PING").query(&mut conn)?;
        let client_id = client_id(&mut conn);
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
                queues: queues.to_vec(),
                key_queues: keys.iter().map(|k| queue_of_list(k).to_owned()).collect(),
                keys,
                wake,
                stop,
                tracker: Some(tracker),
                visibility_timeout: self.visibility_timeout,
                restore_interval: self.restore_interval,
                last_sweep: std::time::Instant::now(),
                fetch: Fetch::new(),
                client_id,
                lost: None,
                broken: false,
            },
            RedisSettler::new(self.source.clone(), self.result_expires),
        ))
    }

    fn serve_control(
        self,
        hostname: String,
        panel: &dyn Panel,
        stop: &dyn Fn() -> bool,
        ready: std::sync::mpsc::Sender<()>,
    ) {
        super::pidbox::serve(self.source, hostname, panel, stop, ready);
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
