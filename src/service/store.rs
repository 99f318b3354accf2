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
//!    it is older than the TTL, when more than `capacity` records are finished, or when
//!    the finished records weigh more than `max_bytes` (oldest first; the newest finished
//!    record is kept whatever it weighs, so a large result stays readable by its id until
//!    the next one finishes). A record weighs what its result and error take as JSON, plus
//!    [`RECORD_OVERHEAD`]. Eviction runs on every access, so an expired id is never found.
//! 3. A record's final state is written once, under its own lock, before its `done` flag
//!    turns true; a long-poll waits on `done` (a `watch`), never by polling.
//! 4. Lock order: the store's lock, then a record's lock; never the other way.
//! 5. With a durable store (`journal.rs`), every record leaving the store is deleted from
//!    it too; a final state is written there before [`Store::finish`] shows it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::journal::{JournalTx, Op, StoredTask};
use super::live::Live;
use super::wire::{State, TaskInfo};

/// What a finished record weighs beyond its result and error (the record, its id, name
/// and index entries), in bytes; an estimate, for the byte budgets.
pub(crate) const RECORD_OVERHEAD: usize = 256;

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
    pub seq: u64,
    pub submitted_at_ms: u64,
    /// How many times the node stopped while an attempt of this task ran.
    pub interrupted: u32,
    /// The submission's arguments.
    pub args: Option<Value>,
    inner: Mutex<RecordInner>,
    done: watch::Sender<bool>,
    cancel: mpsc::Sender<CancelRequest>,
    /// What the record weighs ([`RECORD_OVERHEAD`] and its args until it finished); set
    /// under the store's lock.
    weight: AtomicU64,
}

struct RecordInner {
    state: State,
    attempts: u32,
    /// When the first attempt started (ms since the epoch).
    started_at_ms: Option<u64>,
    result: Option<Value>,
    error: Option<String>,
    finished_at_ms: Option<u64>,
}

impl Record {
    /// A new record in `state` (`PENDING` or `SCHEDULED`) and the receiving end of its
    /// cancellation channel, for its resolver.
    pub fn new(
        name: &str,
        state: State,
        args: Option<Value>,
    ) -> (Arc<Record>, mpsc::Receiver<CancelRequest>) {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        Record::build(Uuid::new_v4(), seq, name, state, now_ms(), (0, 0), args)
    }

    /// A record read back from the durable store at start: a finished one as it was, an
    /// unfinished one in `state` (`PENDING` or `SCHEDULED`), to run again. Later records
    /// are numbered after it.
    pub fn restore(
        t: &StoredTask,
        state: State,
        interrupted: u32,
        args: Option<Value>,
    ) -> (Arc<Record>, mpsc::Receiver<CancelRequest>) {
        SEQ.fetch_max(t.seq + 1, Ordering::Relaxed);
        let (record, rx) = Record::build(
            t.id,
            t.seq,
            &t.name,
            state,
            t.submitted_at_ms,
            (t.attempts, interrupted),
            args,
        );
        record.inner.lock().started_at_ms = t.started_at_ms;
        if state.is_finished() {
            let mut inner = record.inner.lock();
            inner.result = t
                .result
                .as_deref()
                .map(|r| serde_json::from_str(r).unwrap_or_else(|_| Value::from(r.to_owned())));
            inner.error = t.error.clone();
            inner.finished_at_ms = t.finished_at_ms;
            drop(inner);
            record.done.send_replace(true);
        }
        (record, rx)
    }

    /// `counts`: (attempts, interruptions) carried over from before a restart.
    fn build(
        id: Uuid,
        seq: u64,
        name: &str,
        state: State,
        submitted_at_ms: u64,
        (attempts, interrupted): (u32, u32),
        args: Option<Value>,
    ) -> (Arc<Record>, mpsc::Receiver<CancelRequest>) {
        let (cancel, rx) = mpsc::channel(4);
        // A list weighs an unfinished record by its args too.
        let args_len = args.as_ref().map_or(0, json_len);
        let record = Record {
            id,
            name: name.to_owned(),
            initial: state,
            seq,
            submitted_at_ms,
            interrupted,
            args,
            inner: Mutex::new(RecordInner {
                state,
                attempts,
                started_at_ms: None,
                result: None,
                error: None,
                finished_at_ms: None,
            }),
            done: watch::Sender::new(false),
            cancel,
            weight: AtomicU64::new((RECORD_OVERHEAD + args_len) as u64),
        };
        (Arc::new(record), rx)
    }

    /// An attempt starts: `STARTED`, one more attempt. Returns the attempt's number.
    pub fn start_attempt(&self) -> u32 {
        let mut inner = self.inner.lock();
        inner.attempts += 1;
        inner.started_at_ms.get_or_insert_with(now_ms);
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

    /// When the first attempt started.
    pub fn started_at_ms(&self) -> Option<u64> {
        self.inner.lock().started_at_ms
    }

    /// How many attempts have started (across restarts).
    pub fn attempts(&self) -> u32 {
        self.inner.lock().attempts
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

    /// Sends the record's `task` event (`live.rs`), under the record's lock, so that the
    /// events of one task go out in the order its state changed; with `only_in`, only if
    /// the record is still in that state (the event of its acceptance, which a worker that
    /// started it already may have overtaken).
    pub fn announce(&self, live: &Live, only_in: Option<State>) {
        let inner = self.inner.lock();
        if only_in.is_some_and(|s| s != inner.state) {
            return;
        }
        live.task(|| self.info_of(&inner, false));
    }

    pub fn info(&self) -> TaskInfo {
        self.info_of(&self.inner.lock(), true)
    }

    /// The record as the API shows it; without result and args unless `full`.
    fn info_of(&self, inner: &RecordInner, full: bool) -> TaskInfo {
        TaskInfo {
            id: self.id.to_string(),
            name: self.name.clone(),
            state: inner.state,
            result: if full { inner.result.clone() } else { None },
            error: inner.error.clone(),
            attempts: inner.attempts,
            submitted_at_ms: self.submitted_at_ms,
            started_at_ms: inner.started_at_ms,
            finished_at_ms: inner.finished_at_ms,
            interrupted: self.interrupted,
            args: if full { self.args.clone() } else { None },
        }
    }
}

/// Numbers records in the order they were accepted, across nodes and restarts.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// The outcome a resolver writes into a record.
pub(crate) enum FinalOutcome {
    Success(Value),
    Failure(String),
    Revoked(String),
}

/// A final state as written: the state, the result or the error, and when.
pub(crate) struct Finished {
    pub state: State,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub finished_at_ms: u64,
}

impl From<FinalOutcome> for Finished {
    fn from(outcome: FinalOutcome) -> Finished {
        let (state, result, error) = match outcome {
            FinalOutcome::Success(v) => (State::Success, Some(v), None),
            FinalOutcome::Failure(e) => (State::Failure, None, Some(e)),
            FinalOutcome::Revoked(e) => (State::Revoked, None, Some(e)),
        };
        Finished {
            state,
            result,
            error,
            finished_at_ms: now_ms(),
        }
    }
}

/// Bounds and clock for the store.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    ttl: Duration,
    capacity: usize,
    max_in_flight: usize,
    max_bytes: usize,
    /// The durable store, told of every record that leaves (rule 5).
    journal: Option<JournalTx>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Uuid, Arc<Record>>,
    /// Insertion order, for listing newest first.
    by_seq: BTreeMap<u64, Uuid>,
    /// Finished records, in the order they finished, with their weight.
    finished: VecDeque<(Instant, Uuid, usize)>,
    /// Reserved slots: in-flight records plus spawns under way.
    in_flight: usize,
    /// What the records in `finished` weigh together.
    finished_bytes: usize,
}

impl Store {
    pub fn new(
        ttl: Duration,
        capacity: usize,
        max_in_flight: usize,
        max_bytes: usize,
        journal: Option<JournalTx>,
    ) -> Store {
        Store {
            inner: Mutex::new(Inner::default()),
            ttl,
            capacity,
            max_in_flight,
            max_bytes,
            journal,
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

    /// Takes an in-flight slot even past the limit: for a task accepted before a restart.
    pub fn reserve_anyway(&self) {
        self.inner.lock().in_flight += 1;
    }

    /// Gives back a slot taken by [`reserve`](Self::reserve) for a spawn that was refused,
    /// or for a task left unfinished at shutdown (to run after the next start).
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
    pub fn finish(&self, record: &Arc<Record>, done: Finished) {
        let weight = weigh(done.result.as_ref(), done.error.as_deref())
            + record.args.as_ref().map_or(0, json_len);
        let mut inner = self.inner.lock();
        {
            let mut r = record.inner.lock();
            r.state = done.state;
            r.result = done.result;
            r.error = done.error;
            r.finished_at_ms = Some(done.finished_at_ms);
        }
        inner.in_flight = inner.in_flight.saturating_sub(1);
        record.weight.store(weight as u64, Ordering::Relaxed);
        if inner.by_id.contains_key(&record.id) {
            inner
                .finished
                .push_back((Instant::now(), record.id, weight));
            inner.finished_bytes += weight;
        }
        self.evict(&mut inner);
        drop(inner);
        record.done.send_replace(true);
    }

    /// Puts back a record that finished before a restart, `age` after it finished. Call
    /// in the order they finished.
    pub fn restore_finished(&self, record: &Arc<Record>, age: Duration) {
        let info = record.info();
        let weight = weigh(info.result.as_ref(), info.error.as_deref());
        record.weight.store(weight as u64, Ordering::Relaxed);
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let mut inner = self.inner.lock();
        inner.by_seq.insert(record.seq, record.id);
        inner.by_id.insert(record.id, record.clone());
        inner.finished.push_back((at, record.id, weight));
        inner.finished_bytes += weight;
        self.evict(&mut inner);
    }

    pub fn get(&self, id: &Uuid) -> Option<Arc<Record>> {
        let mut inner = self.inner.lock();
        self.evict(&mut inner);
        inner.by_id.get(id).cloned()
    }

    /// Up to `limit` records, newest first, weighing at most `max_bytes` together (the
    /// first is listed whatever it weighs); and whether the weight cut the list short.
    pub fn list(&self, limit: usize, max_bytes: usize) -> (Vec<Arc<Record>>, bool) {
        let mut inner = self.inner.lock();
        self.evict(&mut inner);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for id in inner.by_seq.values().rev() {
            if out.len() == limit {
                break;
            }
            let Some(r) = inner.by_id.get(id) else {
                continue;
            };
            bytes += r.weight.load(Ordering::Relaxed) as usize;
            if bytes > max_bytes && !out.is_empty() {
                return (out, true);
            }
            out.push(r.clone());
        }
        (out, false)
    }

    /// (records stored, in-flight slots taken).
    pub fn counts(&self) -> (usize, usize) {
        let mut inner = self.inner.lock();
        self.evict(&mut inner);
        (inner.by_id.len(), inner.in_flight)
    }

    /// Records not finished (in flight, or left unfinished at shutdown).
    pub fn unfinished(&self) -> usize {
        let inner = self.inner.lock();
        inner.by_id.len() - inner.finished.len()
    }

    /// What the finished records weigh together.
    pub fn finished_bytes(&self) -> usize {
        let mut inner = self.inner.lock();
        self.evict(&mut inner);
        inner.finished_bytes
    }

    /// Rule 2: drops finished records past the TTL, then the oldest beyond capacity or the
    /// byte budget (never the newest for the budget).
    fn evict(&self, inner: &mut Inner) {
        let now = Instant::now();
        while let Some(&(at, id, weight)) = inner.finished.front() {
            let expired = now.saturating_duration_since(at) >= self.ttl;
            let over_bytes = inner.finished_bytes > self.max_bytes && inner.finished.len() > 1;
            if !expired && inner.finished.len() <= self.capacity && !over_bytes {
                break;
            }
            inner.finished.pop_front();
            inner.finished_bytes -= weight;
            if let Some(r) = inner.by_id.remove(&id) {
                inner.by_seq.remove(&r.seq);
                if let Some(j) = &self.journal {
                    j.send(Op::Delete { seq: r.seq });
                }
            }
        }
    }
}

/// What a finished record weighs: its result and error as JSON, plus [`RECORD_OVERHEAD`].
fn weigh(result: Option<&Value>, error: Option<&str>) -> usize {
    RECORD_OVERHEAD + result.map_or(0, json_len) + error.map_or(0, |e| json_len(&Value::from(e)))
}

/// The length of `v` as compact JSON, without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing to a counter cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[cfg(test)]
mod tests;
