//! The result store: one [`Record`] per accepted task, kept while it is in flight and for
//! a bounded time and number after it finished.
//!
//! # Protocol
//!
//! Actors: the submit handler (reserves a slot, inserts), the task's attempt wrapper on a
//! pool worker (marks `STARTED` / `RETRY`), the task's resolver (a tokio task awaiting the
//! `JoinHandle`; the only one that finishes a record), readers (GET, list, long-polls).
//!
//! 1. A record is in flight from its insertion until the resolver finishes it. In-flight
//!    records are never evicted; their number is bounded by `max_in_flight`, reserved
//!    before the task is spawned ([`Store::reserve`]) and released when it finishes or
//!    the spawn was refused.
//! 2. Finished records sit in `finished` in the order they finished (their `Instant`s are
//!    taken under the store lock, so the queue is sorted). A record leaves the store when
//!    it is older than the TTL or when more than `capacity` records are finished (oldest
//!    first). Eviction runs on every access, so an expired id is never found.
//! 3. A record's final state is written once, under its own lock, before its `done` flag
//!    turns true; a long-poll waits on `done` (a `watch`), never by polling.
//! 4. Lock order: the store's lock, then a record's lock; never the other way.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::wire::{State, TaskInfo};

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A cancellation request for a task's resolver; it answers with [`CancelReply`].
pub(crate) type CancelRequest = oneshot::Sender<CancelReply>;

/// What the resolver did with a cancellation request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CancelReply {
    /// The task had not started and now never will.
    pub won: bool,
    /// The task had finished already.
    pub finished: bool,
}

/// One accepted task.
pub(crate) struct Record {
    pub id: Uuid,
    pub name: String,
    /// `PENDING` or `SCHEDULED`: what the submission is answered.
    pub initial: State,
    seq: u64,
    submitted_at_ms: u64,
    inner: Mutex<RecordInner>,
    done: watch::Sender<bool>,
    cancel: mpsc::Sender<CancelRequest>,
}

struct RecordInner {
    state: State,
    attempts: u32,
    result: Option<Value>,
    error: Option<String>,
    finished_at_ms: Option<u64>,
}

impl Record {
    /// A new record in `state` (`PENDING` or `SCHEDULED`) and the receiving end of its
    /// cancellation channel, for its resolver.
    pub fn new(name: &str, state: State) -> (Arc<Record>, mpsc::Receiver<CancelRequest>) {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let (cancel, rx) = mpsc::channel(4);
        let record = Record {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            initial: state,
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
            submitted_at_ms: now_ms(),
            inner: Mutex::new(RecordInner {
                state,
                attempts: 0,
                result: None,
                error: None,
                finished_at_ms: None,
            }),
            done: watch::Sender::new(false),
            cancel,
        };
        (Arc::new(record), rx)
    }

    /// An attempt starts: `STARTED`, one more attempt. Returns the attempt's number.
    pub fn start_attempt(&self) -> u32 {
        let mut inner = self.inner.lock();
        inner.attempts += 1;
        if !inner.state.is_finished() {
            inner.state = State::Started;
        }
        inner.attempts
    }

    /// An attempt failed and another will come.
    pub fn mark_retry(&self) {
        let mut inner = self.inner.lock();
        if !inner.state.is_finished() {
            inner.state = State::Retry;
        }
    }

    pub fn state(&self) -> State {
        self.inner.lock().state
    }

    /// A receiver that sees `true` once the record is finished.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.done.subscribe()
    }

    /// Asks the resolver to cancel the task; `None` if it has finished already.
    pub async fn request_cancel(&self) -> Option<CancelReply> {
        let (tx, rx) = oneshot::channel();
        self.cancel.send(tx).await.ok()?;
        rx.await.ok()
    }

    pub fn info(&self) -> TaskInfo {
        let inner = self.inner.lock();
        TaskInfo {
            id: self.id.to_string(),
            name: self.name.clone(),
            state: inner.state,
            result: inner.result.clone(),
            error: inner.error.clone(),
            attempts: inner.attempts,
            submitted_at_ms: self.submitted_at_ms,
            finished_at_ms: inner.finished_at_ms,
        }
    }
}

/// The outcome a resolver writes into a record.
pub(crate) enum Outcome {
    Success(Value),
    Failure(String),
    Revoked(String),
}

/// Bounds and clock for the store.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    ttl: Duration,
    capacity: usize,
    max_in_flight: usize,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Uuid, Arc<Record>>,
    /// Insertion order, for listing newest first.
    by_seq: BTreeMap<u64, Uuid>,
    /// Finished records, in the order they finished.
    finished: VecDeque<(Instant, Uuid)>,
    /// Reserved slots: in-flight records plus spawns under way.
    in_flight: usize,
}

impl Store {
    pub fn new(ttl: Duration, capacity: usize, max_in_flight: usize) -> Store {
        Store {
            inner: Mutex::new(Inner::default()),
            ttl,
            capacity,
            max_in_flight,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes an in-flight slot; false if all are taken.
    pub fn reserve(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.in_flight >= self.max_in_flight {
            return false;
        }
        inner.in_flight += 1;
        true
    }

    /// Gives back a slot taken by [`reserve`](Self::reserve) for a spawn that was refused.
    pub fn release(&self) {
        let mut inner = self.inner.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
    }

    /// Makes an accepted task visible (its slot is reserved already).
    pub fn insert(&self, record: &Arc<Record>) {
        let mut inner = self.inner.lock();
        inner.by_seq.insert(record.seq, record.id);
        inner.by_id.insert(record.id, record.clone());
        self.evict(&mut inner);
    }

    /// Writes the final state, releases the slot, and wakes the waiters (rule 3).
    pub fn finish(&self, record: &Arc<Record>, outcome: Outcome) {
        let mut inner = self.inner.lock();
        {
            let mut r = record.inner.lock();
            let (state, result, error) = match outcome {
                Outcome::Success(v) => (State::Success, Some(v), None),
                Outcome::Failure(e) => (State::Failure, None, Some(e)),
                Outcome::Revoked(e) => (State::Revoked, None, Some(e)),
            };
            r.state = state;
            r.result = result;
            r.error = error;
            r.finished_at_ms = Some(now_ms());
        }
        inner.in_flight = inner.in_flight.saturating_sub(1);
        if inner.by_id.contains_key(&record.id) {
            inner.finished.push_back((Instant::now(), record.id));
        }
        self.evict(&mut inner);
        drop(inner);
        record.done.send_replace(true);
    }

    pub fn get(&self, id: &Uuid) -> Option<Arc<Record>> {
        let mut inner = self.inner.lock();
        self.evict(&mut inner);
        inner.by_id.get(id).cloned()
    }

    /// Up to `limit` records, newest first.
    pub fn list(&self, limit: usize) -> Vec<Arc<Record>> {
        let mut inner = self.inner.lock();
        self.evict(&mut inner);
        inner
            .by_seq
            .values()
            .rev()
            .take(limit)
            .filter_map(|id| inner.by_id.get(id).cloned())
            .collect()
    }

    /// (records stored, in-flight slots taken).
    pub fn counts(&self) -> (usize, usize) {
        let mut inner = self.inner.lock();
        self.evict(&mut inner);
        (inner.by_id.len(), inner.in_flight)
    }

    /// Rule 2: drops finished records past the TTL, then the oldest beyond capacity.
    fn evict(&self, inner: &mut Inner) {
        let now = Instant::now();
        while let Some(&(at, id)) = inner.finished.front() {
            let expired = now.saturating_duration_since(at) >= self.ttl;
            if !expired && inner.finished.len() <= self.capacity {
                break;
            }
            inner.finished.pop_front();
            if let Some(r) = inner.by_id.remove(&id) {
                inner.by_seq.remove(&r.seq);
            }
        }
    }
}
