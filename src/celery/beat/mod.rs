//! [`Beat`]: Celery beat for a fleet. It sends the entries of a schedule as ordinary
//! Celery task messages (any worker runs them, weft or Python), and any number of beat
//! processes may run: exactly one sends each tick.
//!
//! # Protocol
//!
//! Actors: every beat process (a loop on a thread of its own), and Redis: the broker, or
//! the result backend's Redis when the broker is RabbitMQ. Keys, under a prefix (default
//! `weft:beat:`): `lease` (the sender's lease: `<holder>:<fence>`, with a TTL), `fence`
//! (a counter), `last` (a hash: entry name → its last run, ms since the epoch).
//!
//! 1. A beat sends only while it holds the lease. It takes a free lease with a fresh fence
//!    number (`INCR fence`, then `SET lease NX PX ttl`, in one script), renews it every
//!    third of its TTL (3 s by default), and gives it back when it stops. Another beat
//!    tries to take it every sixth of the TTL, so a sender that dies (even by `kill -9`)
//!    is replaced within the TTL and a sixth.
//! 2. Fencing: a send is one script that checks that the lease still holds the sender's
//!    value (its fence number included) before it writes anything. A beat paused past its
//!    TTL, whose lease another took, cannot send when it wakes: the script refuses, and
//!    the beat steps down.
//! 3. Each tick at most once: the same script reads the entry's last run and refuses a
//!    tick that is not after it (a crontab tick is the pattern's time; an interval tick
//!    is Redis's clock at the send, refused within half an interval of the last one), and
//!    records the tick with the send. On a Redis broker the message is pushed by that
//!    script too, so recording and sending are one step; on RabbitMQ the tick is
//!    recorded, then published (a crash between the two loses that tick, never doubles
//!    it).
//! 4. Catch-up as in Celery: an interval entry runs `interval` after its last run
//!    (`last_run_at + interval`); a crontab entry at its first time after its last run. A
//!    beat that was down (or a new leader) finding that time past sends one run now, not
//!    one per missed tick; an entry never run before starts counting when its beat took
//!    the lease.
//! 5. Times come from Redis's clock (the lease renewal measures the offset), so beats on
//!    hosts whose clocks disagree still agree on every entry's last run.
//! 6. A broker that does not answer is retried with backoff (100 ms, doubling, at most
//!    5 s), logged once per outage; a send whose answer was lost is safe to try again
//!    (rule 3).

mod schedule;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde_json::{Map, Value};

pub use schedule::{Crontab, Schedule, ScheduleError};

use self::schedule::now_ms;
use super::error::Error;
use super::protocol::{format_iso8601, origin, TaskMessage};
use super::redis::queue_for_priority;
use super::source::Source;
use super::{Client, SendOptions};

/// Default for [`Beat::lease_ttl`].
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
/// Default for [`Beat::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "weft:beat:";
/// The longest a beat waits between two tries to reach its broker.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Lateness samples kept for [`BeatStats::lateness_ms`].
const LATENESS_SAMPLES: usize = 4096;

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
    name: String,
    task: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    queue: String,
    priority: Option<u8>,
    expires: Option<Duration>,
    schedule: Schedule,
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

    fn message(&self, now: SystemTime) -> TaskMessage {
        let mut msg = TaskMessage::new(&self.task, self.args.clone(), self.kwargs.clone());
        msg.routing_key = self.queue.clone();
        msg.priority = self.priority.unwrap_or(0);
        msg.expires = self.expires.map(|d| format_iso8601(now + d));
        msg
    }
}

/// A beat: sends the entries of its schedule on time, one process of many (see the
/// [module docs](self) for how they agree).
///
/// ```no_run
/// use std::time::Duration;
/// use serde_json::json;
/// use weft::celery::beat::{Beat, Entry, Schedule};
///
/// Beat::new("redis://127.0.0.1:6379/0")
///     .entry(
///         Entry::new("add-every-second", "add", Schedule::every(Duration::from_secs(1)).unwrap())
///             .args([json!(2), json!(3)]),
///     )
///     .entry(Entry::new("report", "report", Schedule::crontab_in("0 7 * * mon-fri", "Europe/Paris").unwrap()))
///     .run() // until SIGINT or SIGTERM
///     .unwrap();
/// ```
#[derive(Debug)]
pub struct Beat {
    broker: String,
    backend: Option<String>,
    sentinel_master: Option<String>,
    entries: Vec<Entry>,
    key_prefix: String,
    lease_ttl: Duration,
}

impl Beat {
    /// A beat sending to the broker at `broker`: Redis (`redis://`, `sentinel://` with
    /// [`sentinel_master`](Self::sentinel_master)), which also holds the lease, or with
    /// the feature `amqp` RabbitMQ (`amqp://`), which needs a [`backend`](Self::backend).
    pub fn new(broker: &str) -> Beat {
        Beat {
            broker: broker.to_owned(),
            backend: None,
            sentinel_master: None,
            entries: Vec::new(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }

    /// The Redis that holds the lease and the last runs when the broker is RabbitMQ (the
    /// result backend's, usually). A Redis broker holds them itself; then this must be
    /// the same URL, or not given.
    pub fn backend(mut self, url: &str) -> Self {
        self.backend = Some(url.to_owned());
        self
    }

    /// The master's name, for a broker behind Redis Sentinel (`sentinel://`).
    pub fn sentinel_master(mut self, name: &str) -> Self {
        self.sentinel_master = Some(name.to_owned());
        self
    }

    /// Adds an entry; its name must be unique in the schedule.
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// The prefix of the beat's Redis keys (default [`DEFAULT_KEY_PREFIX`]); beats with
    /// the same prefix on the same Redis are one group, of which one sends.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long the lease lasts without a renewal (default [`DEFAULT_LEASE_TTL`], at
    /// least 300 ms): the longest a dead sender's ticks wait for a successor, less a
    /// sixth of it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Checks the schedule, connects, and runs the beat on a thread of its own until
    /// [`RunningBeat::stop`].
    ///
    /// Fails on an empty schedule, two entries of one name, a priority over 9, a lease
    /// TTL under 300 ms, a RabbitMQ broker without a backend, or a broker URL that cannot
    /// be used. A broker that does not answer is not an error: the beat keeps trying.
    pub fn start(self) -> Result<RunningBeat, Error> {
        if self.entries.is_empty() {
            return Err(Error::Config("a beat needs at least one entry".into()));
        }
        let mut names = std::collections::HashSet::new();
        for e in &self.entries {
            if !names.insert(e.name.as_str()) {
                return Err(Error::Config(format!(
                    "two beat entries are named {:?}: an entry's name must be unique",
                    e.name
                )));
            }
            if e.priority.is_some_and(|p| p > 9) {
                return Err(Error::Config(format!(
                    "beat entry {:?}: priority {} is out of range 0..=9",
                    e.name,
                    e.priority.unwrap_or(0)
                )));
            }
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(Error::Config(format!(
                "a beat's lease TTL must be at least 300 ms, not {:?}",
                self.lease_ttl
            )));
        }
        let is_amqp = self.broker.starts_with("amqp://") || self.broker.starts_with("amqps://");
        let (redis_url, publisher) = if is_amqp {
            let Some(backend) = self.backend.clone() else {
                return Err(Error::Config(
                    "a beat on RabbitMQ needs a Redis backend (Beat::backend) for its lease".into(),
                ));
            };
            let client = Client::builder(&self.broker).backend(&backend).connect()?;
            (backend, Some(client))
        } else {
            if let Some(b) = &self.backend {
                if b != &self.broker {
                    return Err(Error::Config(format!(
                        "a beat on the Redis broker {} keeps its lease there; the backend {b} must be the same URL",
                        self.broker
                    )));
                }
            }
            (self.broker.clone(), None)
        };
        let source = Source::open(&redis_url, self.sentinel_master.as_deref())?;
        let shared = Arc::new(BeatShared::default());
        let mut run = Loop {
            source,
            publisher,
            keys: Keys::new(&self.key_prefix),
            scripts: Scripts::new(),
            holder: format!("{}-{}", origin(), uuid::Uuid::new_v4().simple()),
            ttl_ms: u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            entries: self.entries,
            shared: shared.clone(),
            conn: None,
            lease: None,
            offset_ms: 0,
            last: HashMap::new(),
            leader_since: 0,
            next_lease_check: Instant::now(),
            backoff: Duration::ZERO,
        };
        let thread = thread::Builder::new()
            .name("weft-beat".into())
            .spawn(move || run.run())
            .map_err(Error::Io)?;
        Ok(RunningBeat {
            shared,
            thread: Some(thread),
        })
    }

    /// [`start`](Self::start)s the beat and runs it until SIGINT or SIGTERM; then it
    /// stops (giving back its lease, so another beat takes over at once).
    pub fn run(self) -> Result<(), Error> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let beat = self.start()?;
        let _ = signals.forever().next();
        beat.stop();
        Ok(())
    }
}

/// What a beat has done so far.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct BeatStats {
    /// Messages this process sent.
    pub sent: u64,
    /// Ticks another beat had sent already (refused by rule 3).
    pub already_sent: u64,
    /// Times this process took the lease.
    pub leases_taken: u64,
    /// Times this process lost its broker (each logged once, then retried with backoff).
    pub outages: u64,
    /// How late this process's recent sends were against the times they were due, in ms
    /// by Redis's clock (the last 4,096; catch-ups left out).
    pub lateness_ms: Vec<u64>,
}

#[derive(Default)]
struct BeatShared {
    stop: Mutex<bool>,
    wake: Condvar,
    leader: AtomicBool,
    sent: AtomicU64,
    stats: Mutex<BeatStats>,
}

/// A beat that runs; made by [`Beat::start`].
pub struct RunningBeat {
    shared: Arc<BeatShared>,
    thread: Option<JoinHandle<()>>,
}

impl RunningBeat {
    /// Whether this process holds the lease (sends) now.
    pub fn is_leader(&self) -> bool {
        self.shared.leader.load(Ordering::Acquire)
    }

    /// What it has done so far.
    pub fn stats(&self) -> BeatStats {
        let mut s = self.shared.stats.lock().clone();
        s.sent = self.shared.sent.load(Ordering::Relaxed);
        s
    }

    /// Stops the beat: gives back its lease (if it holds it and Redis answers) and waits
    /// for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningBeat {
    fn drop(&mut self) {
        self.halt();
    }
}

impl std::fmt::Debug for RunningBeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBeat")
            .field("leader", &self.is_leader())
            .finish_non_exhaustive()
    }
}

struct Keys {
    lease: String,
    fence: String,
    last: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            lease: format!("{prefix}lease"),
            fence: format!("{prefix}fence"),
            last: format!("{prefix}last"),
        }
    }
}

/// Rule 1: takes a free lease with a fresh fence number; the lease's value, or nil.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local n = redis.call('INCR', KEYS[2])
local v = ARGV[1] .. ':' .. n
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return v
";

/// Rule 1 and 5: renews the lease if it is still ours; {renewed, seconds, microseconds}.
const RENEW: &str = r"
local t = redis.call('TIME')
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, t[1], t[2]}
end
return {0, t[1], t[2]}
";

/// Gives the lease back if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Rules 2 and 3: KEYS lease, last, queue (empty: record only); ARGV lease value, entry,
/// tick (0: Redis's clock now), least gap after the last run (ms), message. Returns
/// {-1} (not the leaseholder), {0, last} (sent already), or {1, tick, now}.
const SEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tick = tonumber(ARGV[3])
if tick == 0 then tick = now end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1')
if last >= 0 and (tick <= last or tick - last < tonumber(ARGV[4])) then return {0, last} end
redis.call('HSET', KEYS[2], ARGV[2], tick)
if KEYS[3] ~= '' then redis.call('LPUSH', KEYS[3], ARGV[5]) end
return {1, tick, now}
";

/// The scripts, loaded once (their SHA-1 is computed when made).
struct Scripts {
    acquire: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    send: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
            send: redis::Script::new(SEND),
        }
    }
}

/// What a send script answered.
enum Sent {
    NotLeader,
    Already(u64),
    Done { tick: u64, now: u64 },
}

/// The beat's loop and its state.
struct Loop {
    source: Source,
    /// The RabbitMQ client that publishes after a tick is recorded (rule 3); `None` on a
    /// Redis broker (the send script pushes).
    publisher: Option<Client>,
    keys: Keys,
    scripts: Scripts,
    /// Who this process is in the lease's value.
    holder: String,
    ttl_ms: u64,
    entries: Vec<Entry>,
    shared: Arc<BeatShared>,
    conn: Option<redis::Connection>,
    /// The lease's value while this process holds it.
    lease: Option<String>,
    /// Redis's clock less this machine's (rule 5).
    offset_ms: i64,
    /// Each entry's last run (ms, Redis's clock), read when the lease is taken.
    last: HashMap<String, u64>,
    /// When this process took the lease (ms, Redis's clock).
    leader_since: u64,
    next_lease_check: Instant,
    /// The wait before the next try to reach the broker (zero while it answers).
    backoff: Duration,
}

impl Loop {
    fn run(&mut self) {
        while !*self.shared.stop.lock() {
            let wait = match self.step() {
                Ok(wait) => {
                    if !self.backoff.is_zero() {
                        eprintln!("weft beat: the broker answers again");
                        self.backoff = Duration::ZERO;
                    }
                    wait
                }
                Err(e) => {
                    if self.backoff.is_zero() {
                        self.shared.stats.lock().outages += 1;
                        eprintln!(
                            "weft beat: cannot reach the broker ({e}); trying again with backoff"
                        );
                        self.backoff = Duration::from_millis(100);
                    } else {
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                    self.conn = None;
                    self.backoff
                }
            };
            let mut stop = self.shared.stop.lock();
            if !*stop {
                self.shared.wake.wait_for(&mut stop, wait);
            }
        }
        if let Some(lease) = self.lease.take() {
            let key = self.keys.lease.clone();
            let release = self.scripts.release.clone();
            if let Ok(conn) = self.connection() {
                let _ = release.key(&key).arg(lease).invoke::<i64>(conn);
            }
        }
        self.shared.leader.store(false, Ordering::Release);
    }

    fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.conn.is_none() {
            self.conn = Some(self.source.connect()?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Now, by Redis's clock (rule 5).
    fn now(&self) -> u64 {
        now_ms().saturating_add_signed(self.offset_ms)
    }

    /// One pass: the lease, then every entry due; returns how long to wait for the next.
    fn step(&mut self) -> Result<Duration, Error> {
        let ttl = Duration::from_millis(self.ttl_ms);
        if Instant::now() >= self.next_lease_check {
            self.check_lease()?;
            self.next_lease_check = Instant::now()
                + if self.lease.is_some() {
                    ttl / 3
                } else {
                    ttl / 6
                };
        }
        let mut wait = self
            .next_lease_check
            .saturating_duration_since(Instant::now());
        if self.lease.is_none() {
            return Ok(wait);
        }
        for i in 0..self.entries.len() {
            let now = self.now();
            let (due, tick, gap) = self.due(i, now);
            if due > now {
                wait = wait.min(Duration::from_millis(due - now));
                continue;
            }
            match self.send(i, tick, gap)? {
                Sent::NotLeader => {
                    eprintln!("weft beat: lost the lease to another beat; not sending");
                    self.lease = None;
                    self.shared.leader.store(false, Ordering::Release);
                    return Ok(ttl / 6);
                }
                Sent::Already(last) => {
                    self.shared.stats.lock().already_sent += 1;
                    self.last.insert(self.entries[i].name.clone(), last);
                }
                Sent::Done { tick: t, now } => {
                    self.shared.sent.fetch_add(1, Ordering::Relaxed);
                    // Lateness against the tick's time; a catch-up (a time from before
                    // this process led) is not a sample.
                    if due >= self.leader_since {
                        let mut s = self.shared.stats.lock();
                        if s.lateness_ms.len() == LATENESS_SAMPLES {
                            s.lateness_ms.remove(0);
                        }
                        s.lateness_ms.push(now.saturating_sub(due));
                    }
                    self.last.insert(self.entries[i].name.clone(), t);
                }
            }
            // Look at this entry again at once: its next time is known now.
            wait = Duration::ZERO;
        }
        Ok(wait.max(Duration::from_millis(1)))
    }

    /// Entry `i`'s next run (rule 4): (when it is due, the tick to send (0: Redis's clock
    /// at the send), the least gap after the last run).
    fn due(&self, i: usize, now: u64) -> (u64, u64, u64) {
        let e = &self.entries[i];
        let last = self.last.get(&e.name).copied();
        match &e.schedule {
            Schedule::Interval(every) => {
                let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
                let due = last.unwrap_or(self.leader_since).saturating_add(every);
                (due, 0, (every / 2).max(1))
            }
            Schedule::Crontab(c) => {
                let base = last.unwrap_or(self.leader_since);
                match c.next_after(base) {
                    // Past: the latest time at or before now, once (a catch-up).
                    Some(due) if due <= now => {
                        (due, c.last_at_or_before(now).unwrap_or(due).max(due), 1)
                    }
                    Some(due) => (due, due, 1),
                    None => (u64::MAX, 0, 1),
                }
            }
        }
    }

    /// Takes or renews the lease (rule 1), measuring Redis's clock (rule 5).
    fn check_lease(&mut self) -> Result<(), Error> {
        let sent_at = now_ms();
        let ttl_ms = self.ttl_ms;
        let (lease_key, fence_key, last_key) = (
            self.keys.lease.clone(),
            self.keys.fence.clone(),
            self.keys.last.clone(),
        );
        let value = self.lease.clone();
        let holder = self.holder.clone();
        let (renew, acquire) = (self.scripts.renew.clone(), self.scripts.acquire.clone());
        let conn = self.connection()?;
        let (renewed, secs, micros): (i64, u64, u64) = renew
            .key(&lease_key)
            .arg(value.as_deref().unwrap_or(""))
            .arg(ttl_ms)
            .invoke(conn)?;
        let server = secs * 1000 + micros / 1000;
        let local = sent_at + now_ms().saturating_sub(sent_at) / 2;
        let offset = i64::try_from(server).unwrap_or(i64::MAX) - i64::try_from(local).unwrap_or(0);
        if value.is_some() && renewed == 0 {
            eprintln!(
                "weft beat: the lease expired (paused, or cut off from Redis); stepping down"
            );
            self.lease = None;
            self.shared.leader.store(false, Ordering::Release);
        }
        if self.lease.is_none() {
            let conn = self.connection()?;
            let taken: Option<String> = acquire
                .key(&lease_key)
                .key(&fence_key)
                .arg(&holder)
                .arg(ttl_ms)
                .invoke(conn)?;
            if let Some(v) = taken {
                let last: HashMap<String, u64> =
                    redis::cmd("HGETALL").arg(&last_key).query(conn)?;
                self.last = last;
                self.leader_since = server;
                eprintln!(
                    "weft beat: took the lease ({v}); sending {} entries",
                    self.entries.len()
                );
                self.lease = Some(v);
                self.shared.stats.lock().leases_taken += 1;
                self.shared.leader.store(true, Ordering::Release);
            }
        }
        self.offset_ms = offset;
        Ok(())
    }

    /// Sends entry `i`'s tick (rules 2 and 3).
    fn send(&mut self, i: usize, tick: u64, gap: u64) -> Result<Sent, Error> {
        let e = &self.entries[i];
        // On a Redis broker the script pushes the message; on RabbitMQ it only records.
        let (queue, body) = if self.publisher.is_some() {
            (String::new(), String::new())
        } else {
            let msg = e.message(SystemTime::now());
            (
                queue_for_priority(&msg.routing_key, msg.priority),
                msg.encode(),
            )
        };
        let (lease_key, last_key, name) = (
            self.keys.lease.clone(),
            self.keys.last.clone(),
            e.name.clone(),
        );
        let value = self.lease.clone().unwrap_or_default();
        let send = self.scripts.send.clone();
        let conn = self.connection()?;
        let answer: Vec<u64> = match send
            .key(&lease_key)
            .key(&last_key)
            .key(&queue)
            .arg(&value)
            .arg(&name)
            .arg(tick)
            .arg(gap)
            .arg(&body)
            .invoke::<Vec<i64>>(conn)
        {
            Ok(v) if v.first() == Some(&-1) => return Ok(Sent::NotLeader),
            Ok(v) => v
                .into_iter()
                .map(|x| u64::try_from(x).unwrap_or(0))
                .collect(),
            Err(err) => return Err(err.into()),
        };
        match answer.as_slice() {
            [1, t, now] => {
                if let Some(client) = &self.publisher {
                    let e = &self.entries[i];
                    let options = SendOptions {
                        queue: Some(e.queue.clone()),
                        priority: e.priority.unwrap_or(0),
                        expires: e.expires.map(|d| SystemTime::now() + d),
                        ..SendOptions::default()
                    };
                    if let Err(err) =
                        client.send_task(&e.task, e.args.clone(), e.kwargs.clone(), options)
                    {
                        eprintln!(
                            "weft beat: entry {:?}: its tick was recorded but the publish failed ({err}); this tick is lost",
                            e.name
                        );
                    }
                }
                Ok(Sent::Done {
                    tick: *t,
                    now: *now,
                })
            }
            [0, last, ..] => Ok(Sent::Already(*last)),
            other => Err(Error::Config(format!(
                "unexpected answer from the beat's send script: {other:?}"
            ))),
        }
    }
}
