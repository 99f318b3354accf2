//! [`Entry`]: one entry of a beat's schedule.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::schedule::Schedule;
use crate::celery::protocol::{format_iso8601, TaskMessage};

/// One entry of a beat's schedule: which task to send, with what, and when (Celery's
/// `beat_schedule` entries).
///
/// ```
/// use std::time::Duration;
/// use serde_json::json;
/// use weft::celery::beat::{Entry, Schedule};
///
/// let e = Entry::new("add-every-second", "add", Schedule::every(Duration::from_secs(1)).unwrap())
///     .args([json!(2), json!(3)])
///     .queue("celery")
///     .expires(Duration::from_secs(10));
/// assert_eq!(e.name(), "add-every-second");
/// ```
#[derive(Clone, Debug)]
pub struct Entry {
    pub(super) name: String,
    pub(super) task: String,
    pub(super) args: Vec<Value>,
    pub(super) kwargs: Map<String, Value>,
    pub(super) queue: String,
    pub(super) priority: Option<u8>,
    pub(super) expires: Option<Duration>,
    pub(super) schedule: Schedule,
}

impl Entry {
    /// An entry named `name` (unique in the schedule: its last run is kept under it)
    /// sending task `task` with no arguments to the queue `celery`, on `schedule`.
    pub fn new(name: impl Into<String>, task: impl Into<String>, schedule: Schedule) -> Entry {
        Entry {
            name: name.into(),
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            queue: "celery".into(),
            priority: None,
            expires: None,
            schedule,
        }
    }

    /// The positional arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = Value>) -> Self {
        self.args = args.into_iter().collect();
        self
    }

    /// The keyword arguments.
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }

    /// The queue (default `celery`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// The message priority, 0..=9 (default: none, which on Redis is kombu's plain list).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Each run expires this long after it is sent (Celery's `options={"expires": ..}`):
    /// a worker that takes it later revokes it instead of running it.
    pub fn expires(mut self, after: Duration) -> Self {
        self.expires = Some(after);
        self
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry's schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub(super) fn message(&self, now: SystemTime) -> TaskMessage {
        let mut msg = TaskMessage::new(&self.task, self.args.clone(), self.kwargs.clone());
        msg.routing_key = self.queue.clone();
        msg.priority = self.priority.unwrap_or(0);
        msg.expires = self.expires.map(|d| format_iso8601(now + d));
        msg
    }
}
