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
//!
//! # Files
//!
//! This file: [`Beat`], [`RunningBeat`] and [`BeatStats`]; `entry.rs`: [`Entry`];
//! `schedule.rs`: [`Schedule`]; `scripts.rs`: the Redis keys and scripts of rules 1 to 3;
//! `run.rs`: the loop that holds the lease and sends the due ticks.

mod entry;
mod run;
mod schedule;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

pub use entry::Entry;
pub use schedule::{Crontab, Schedule, ScheduleError};

use run::Loop;
use scripts::{Keys, Scripts};

use super::error::Error;
use super::protocol::origin;
use super::source::Source;
use super::Client;

/// Default for [`Beat::lease_ttl`].
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
/// Default for [`Beat::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "weft:beat:";
/// The longest a beat waits between two tries to reach its broker.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Lateness samples kept for [`BeatStats::lateness_ms`].
const LATENESS_SAMPLES: usize = 4096;

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
