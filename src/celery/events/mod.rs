//! Celery's events, as a Python worker sends them (`celery/events/`, `celery/worker/`):
//! what `celery events`, Flower and any `app.events.Receiver` see of a weft worker.
//!
//! * **Worker events** (`worker-online`, `worker-heartbeat` every 2 s, `worker-offline`)
//!   are always sent, as a Celery worker sends them unless started `--without-heartbeat`;
//!   they carry `freq`, `active` (tasks running), `processed` (tasks started since the
//!   worker started), `loadavg`, `sw_ident` (`"weft"`), `sw_ver` and `sw_sys`.
//! * **Task events** (`task-received`, `task-started`, `task-succeeded`, `task-failed`,
//!   `task-retried`, `task-revoked`, `task-rejected`) are sent only while enabled: by
//!   [`Worker::task_events`](super::Worker::task_events) (Celery's `-E`), or by the
//!   `enable_events` broadcast (Flower sends it every few seconds) until `disable_events`.
//!   Task events go out as `task.multi` lists (of those due together, often one), as a
//!   prefork worker's buffered dispatcher sends them.
//!
//! Every event has Celery's common fields: `type`, `hostname` (the worker's node name, as
//! it answers `ping`), `timestamp` (seconds since the epoch), `utcoffset` (hours west of
//! UTC, as Python's `time.timezone // 3600`: 0 on UTC machines), `pid` and `clock` (the
//! worker's Lamport clock, [`Clock`], shared with its remote-control replies).
//!
//! How they travel is the transport's ([`EventSink`]): on
//! Redis kombu's fanout, `PUBLISH /<db>.celeryev/<routing key>`; on RabbitMQ the topic
//! exchange `celeryev`. The routing key is the type with `-` made `.`
//! (`worker.heartbeat`, `task.multi`).
//!
//! **Never in the way.** Producing an event takes one lock and a push onto a bounded
//! outbox ([`OUTBOX_CAP`] events; when it is full, the oldest are dropped and counted), so
//! a task never waits for the broker; with task events off, a task pays one atomic load
//! per event site. One thread ([`send_loop`]) publishes, in batches gathered for up to
//! [`GATHER`] (one `PUBLISH` for many task events under load); while the broker is
//! unreachable events are dropped (as Celery drops them), never piled up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use super::error::Error;

mod repr;
#[cfg(test)]
mod tests;

pub(crate) use repr::{py_repr, py_str_repr, py_tuple_repr};

/// The exchange Celery's events go to (a fanout on Redis, a topic exchange on AMQP).
pub(crate) const EVENT_EXCHANGE: &str = "celeryev";

/// The most events waiting to be published; past it the oldest are dropped.
pub(crate) const OUTBOX_CAP: usize = 8192;

/// How often `worker-heartbeat` is sent (Celery's default, 2 s); also its `freq`.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);

/// The most task events in one `task.multi` message.
const MULTI_MAX: usize = 256;

/// How long the send loop gathers task events after the first of a batch before it
/// publishes them (unless [`MULTI_MAX`] came first): under load one `PUBLISH` carries
/// many events, not one each; a receiver sees them this much later at most.
const GATHER: Duration = Duration::from_millis(20);

/// Where a worker's Celery events go (this module's): kombu's fanout channel
/// on Redis, the topic exchange `celeryev` on RabbitMQ.
pub(crate) trait EventSink: Send + 'static {
    /// Publishes `body` (the JSON text of one event, or of a list of task events under
    /// `task.multi`) with `routing_key` (`worker.heartbeat`, `task.multi`, ...), from the
    /// worker `hostname`. An error drops it; the next publish connects again.
    fn publish(&mut self, routing_key: &str, body: &str, hostname: &str) -> Result<(), Error>;
}

/// A Lamport clock, as Celery's `app.clock` (kombu's `LamportClock`): every event and
/// remote-control reply carries the next value.
#[derive(Default)]
pub(crate) struct Clock(AtomicU64);

impl Clock {
    /// The next value (Celery's `forward`).
    pub(crate) fn forward(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The value now.
    pub(crate) fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the send loop asks of the worker for its heartbeats.
pub(crate) struct Load {
    /// Tasks running now.
    pub(crate) active: usize,
    /// Tasks started since the worker started.
    pub(crate) processed: u64,
}

/// An event's fields, written as JSON as they are given (no map is built): what a task
/// event's closure fills in ([`Events::task`]).
pub(crate) struct Fields {
    buf: Vec<u8>,
}

impl Fields {
    fn new() -> Fields {
        let mut buf = Vec::with_capacity(256);
        buf.push(b'{');
        Fields { buf }
    }

    /// Adds the field `key` (a plain name: no character JSON escapes) with `value`.
    pub(crate) fn insert<V: serde::Serialize>(&mut self, key: &str, value: V) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
        // Writing into a Vec cannot fail, and these values (strings, numbers, JSON
        // values) always serialize; `null` is the fallback all the same.
        if serde_json::to_writer(&mut self.buf, &value).is_err() {
            self.buf.extend_from_slice(b"null");
        }
    }

    /// The event's JSON text.
    fn finish(mut self) -> String {
        self.buf.push(b'}');
        // Only JSON text was written, which is UTF-8.
        String::from_utf8(self.buf).unwrap_or_default()
    }
}

#[derive(Default)]
struct Outbox {
    /// Each event's JSON text.
    events: VecDeque<String>,
    /// Events dropped because the outbox was full.
    dropped: u64,
    /// A heartbeat is asked for now (`heartbeat` command).
    heartbeat_now: bool,
    /// No more events: the send loop publishes what is left, then `worker-offline`.
    closed: bool,
}

/// A worker's events: built here, published by [`send_loop`].
pub(crate) struct Events {
    hostname: String,
    pid: u32,
    clock: std::sync::Arc<Clock>,
    task_events: AtomicBool,
    outbox: Mutex<Outbox>,
    wake: Condvar,
}

impl Events {
    /// The events of the worker `hostname`, with task events on or off, stamped by `clock`.
    pub(crate) fn new(hostname: &str, task_events: bool, clock: std::sync::Arc<Clock>) -> Events {
        Events {
            hostname: hostname.to_owned(),
            pid: std::process::id(),
            clock,
            task_events: AtomicBool::new(task_events),
            outbox: Mutex::new(Outbox::default()),
            wake: Condvar::new(),
        }
    }

    /// Whether task events are sent now.
    pub(crate) fn task_events(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Turns task events on or off (`enable_events` / `disable_events`); whether they were
    /// on before.
    pub(crate) fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed)
    }

    /// A task event `kind` (`task-started`, ...) with the fields `fields` adds, if task
    /// events are on (`fields` is not called otherwise).
    pub(crate) fn task(&self, kind: &'static str, fields: impl FnOnce(&mut Fields)) {
        if !self.task_events() {
            return;
        }
        let mut f = Fields::new();
        fields(&mut f);
        let event = self.stamp(kind, f);
        self.push(event);
    }

    /// Asks the send loop for a `worker-heartbeat` now (the `heartbeat` command).
    pub(crate) fn heartbeat_now(&self) {
        self.outbox.lock().heartbeat_now = true;
        self.wake.notify_one();
    }

    /// No more events: the send loop publishes those left, then `worker-offline`, and
    /// returns.
    pub(crate) fn close(&self) {
        self.outbox.lock().closed = true;
        self.wake.notify_one();
    }

    /// How many events were dropped because nobody could take them fast enough.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.outbox.lock().dropped
    }

    fn push(&self, event: String) {
        let mut out = self.outbox.lock();
        if out.closed {
            return;
        }
        if out.events.len() >= OUTBOX_CAP {
            out.events.pop_front();
            out.dropped += 1;
        }
        out.events.push_back(event);
        // The send loop is woken by the first event of a batch (it then gathers for
        // [`GATHER`]) and by a full one; not by every event.
        let wake = out.events.len() == 1 || out.events.len() == MULTI_MAX;
        drop(out);
        if wake {
            self.wake.notify_one();
        }
    }

    /// `fields` with Celery's common fields: `hostname`, `utcoffset`, `pid`, `clock`,
    /// `timestamp`, `type`.
    fn stamp(&self, kind: &str, mut fields: Fields) -> String {
        fields.insert("hostname", &self.hostname);
        fields.insert("utcoffset", utcoffset());
        fields.insert("pid", self.pid);
        fields.insert("clock", self.clock.forward());
        fields.insert("timestamp", now());
        fields.insert("type", kind);
        fields.finish()
    }

    /// A worker event (`worker-online`, `worker-heartbeat`, `worker-offline`) with the
    /// heartbeat fields of `load`.
    fn worker(&self, kind: &str, load: &Load) -> String {
        let mut f = Fields::new();
        f.insert("freq", HEARTBEAT.as_secs_f64());
        f.insert("active", load.active);
        f.insert("processed", load.processed);
        f.insert("loadavg", loadavg());
        for (k, v) in software_info() {
            f.insert(k, v);
        }
        self.stamp(kind, f)
    }
}

/// Celery's `SOFTWARE_INFO`, for weft: `sw_ident` `"weft"`, `sw_ver` the crate's
/// version, `sw_sys` the operating system as Python's `platform.system()` names it.
pub(crate) fn software_info() -> [(&'static str, &'static str); 3] {
    let sys = match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    };
    [
        ("sw_ident", "weft"),
        ("sw_ver", env!("CARGO_PKG_VERSION")),
        ("sw_sys", sys),
    ]
}

/// Seconds since the epoch, as Python's `time.time()`.
pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The machine's time zone offset as Celery's `utcoffset()` gives it: hours west of UTC
/// (`time.timezone / 3600`, or `time.altzone / 3600` in daylight saving time). weft
/// reads no time-zone database: it reports 0.0, what Celery reports on UTC machines (the
/// usual for servers and containers); timestamps are absolute either way.
fn utcoffset() -> f64 {
    0.0
}

/// The 1, 5 and 15 minute load averages, rounded to two places as Celery's
/// `load_average()`; zeros where the system does not say.
pub(crate) fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = field
            .parse::<f64>()
            .map(|v| (v * 100.0).round() / 100.0)
            .unwrap_or(0.0);
    }
    out
}

/// Publishes `events` until [`Events::close`]: `worker-online` first, a `worker-heartbeat`
/// every `interval` ([`HEARTBEAT`] in a worker; and when asked for), the task events as they come (several at once
/// as one `task.multi`), and `worker-offline` last. `load` gives the heartbeat's figures.
/// A publish that fails drops its events; the sink reconnects on the next one.
pub(crate) fn send_loop(
    events: &Events,
    sink: &mut dyn EventSink,
    load: &dyn Fn() -> Load,
    interval: Duration,
) {
    let hostname = events.hostname.clone();
    let _ = sink.publish(
        "worker.online",
        &events.worker("worker-online", &load()),
        &hostname,
    );
    let mut next_beat = Instant::now() + interval;
    loop {
        let (batch, beat, asked, closed) = {
            let mut out = events.outbox.lock();
            while out.events.is_empty()
                && !out.heartbeat_now
                && !out.closed
                && Instant::now() < next_beat
            {
                events.wake.wait_until(&mut out, next_beat);
            }
            // Gathers a batch: more events come within GATHER under load.
            if !out.events.is_empty() && !out.closed {
                let until = Instant::now() + GATHER;
                while out.events.len() < MULTI_MAX && !out.closed && Instant::now() < until {
                    events.wake.wait_until(&mut out, until);
                }
            }
            let asked = std::mem::take(&mut out.heartbeat_now);
            let beat = Instant::now() >= next_beat;
            (
                out.events.drain(..).collect::<Vec<_>>(),
                beat,
                asked,
                out.closed,
            )
        };
        publish_tasks(sink, batch, &hostname);
        if asked {
            // As Celery's `heartbeat` command sends it: `freq` 5 and the software fields.
            let mut f = Fields::new();
            f.insert("freq", 5);
            for (k, v) in software_info() {
                f.insert(k, v);
            }
            let _ = sink.publish(
                "worker.heartbeat",
                &events.stamp("worker-heartbeat", f),
                &hostname,
            );
        }
        if closed {
            let _ = sink.publish(
                "worker.offline",
                &events.worker("worker-offline", &load()),
                &hostname,
            );
            return;
        }
        if beat {
            next_beat = Instant::now() + interval;
            let _ = sink.publish(
                "worker.heartbeat",
                &events.worker("worker-heartbeat", &load()),
                &hostname,
            );
        }
    }
}

/// Publishes task events as a prefork Celery worker's buffered dispatcher does: as
/// `task.multi` lists (of one event too), of at most [`MULTI_MAX`].
fn publish_tasks(sink: &mut dyn EventSink, batch: Vec<String>, hostname: &str) {
    for chunk in batch.chunks(MULTI_MAX) {
        let mut body = String::with_capacity(chunk.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e);
        }
        body.push(']');
        let _ = sink.publish("task.multi", &body, hostname);
    }
}
