//! The worker's rate limits: Celery's per-worker `rate_limit` of each task, as kombu's
//! `TokenBucket(fill_rate, capacity=1)` per task name, which Celery's consumer fills and
//! drains (`celery/worker/consumer/consumer.py`, `_schedule_bucket_request`).
//!
//! # Actors
//!
//! * The consumer asks [`RateLimits::reserve`] when a task of a given name may start; it
//!   answers an instant and counts that start against the task's limit.
//! * Remote control's `rate_limit` command calls [`RateLimits::set`]; `inspect registered`
//!   reads [`RateLimits::get`].
//!
//! # State
//!
//! `buckets` (behind a mutex) holds a [`Bucket`] for every task name with a limit: its
//! [`RateLimit`] and the starts it reserved that are not yet an interval in the past
//! (none: the bucket holds its token, the next start is not held back). `limited` says whether
//! `buckets` holds any bucket, so that a worker without limits takes no lock.
//!
//! # Invariants
//!
//! 1. `limited == !buckets.is_empty()` whenever the mutex is free: only `set` changes
//!    `buckets`' keys, and it stores `limited` before it lets the mutex go.
//! 2. A bucket's reservations are spaced at least its interval apart: reservation `i`
//!    is the first instant not before `earliest_i` an interval away from every start
//!    reserved; with `earliest_i` never going back that is `start_i = max(earliest_i,
//!    start_{i-1} + interval)`. A new or reset bucket has no start (`start_0 =
//!    earliest_0`).
//!
//! # Why this is kombu's token bucket
//!
//! With capacity 1, the bucket is empty right after a start at `s` and refills at
//! `fill_rate = 1 / interval` tokens a second, so it holds a whole token again at
//! `s + interval` and from then on (the token is capped at 1: an idle spell saves no
//! burst). Celery serves a task's waiting requests first in, first out, each as soon as
//! the bucket holds a whole token. So a request that joins the bucket at `a_i` starts at
//! `a_i` when the token is there, else when it is back: `max(a_i, start_{i-1} +
//! interval)`, which is invariant 2 with `earliest_i = a_i`. The module's property test
//! checks the two against each other.
//!
//! Celery puts a task in its bucket when the task is due: at once, or at its ETA
//! (`_limit_post_eta`). weft reserves when it takes the message, with `earliest` the
//! ETA: a start booked at a far ETA does not hold back the tasks due before it (they
//! take the free starts around it), and starts stay an interval apart.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::super::source::Source;
use crate::registry::{RateLimit, Registry};

/// The worker's rate limits by task name (Celery's per-worker token buckets with
/// capacity 1).
pub(super) struct RateLimits {
    /// Whether `buckets` holds any bucket (invariant 1).
    limited: AtomicBool,
    /// The buckets of the tasks with a limit, by task name.
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// One task's token bucket of capacity 1.
struct Bucket {
    /// The limit in force.
    limit: RateLimit,
    /// The starts reserved and not yet an interval in the past.
    starts: BTreeSet<Instant>,
}

impl Bucket {
    /// A full bucket for `limit`.
    fn new(limit: RateLimit) -> Bucket {
        Bucket {
            limit,
            starts: BTreeSet::new(),
        }
    }

    /// Reserves the first start not before `earliest` that is at least an interval away
    /// from every start reserved (invariant 2). With `earliest` never going back (tasks
    /// due as they come) that is `max(earliest, last start + interval)`, kombu's bucket;
    /// a task due later (an ETA) books its own start without holding back the tasks due
    /// before it.
    fn reserve(&mut self, earliest: Instant) -> Instant {
        let interval = self.limit.interval();
        // Starts an interval in the past cannot conflict with any start from now on.
        if let Some(old) = Instant::now().checked_sub(interval) {
            self.starts = self.starts.split_off(&old);
        }
        let mut start = earliest;
        let from = earliest.checked_sub(interval);
        let later = match from {
            Some(f) => self.starts.range((Excluded(f), Unbounded)),
            None => self.starts.range(..),
        };
        for &s in later {
            // `None` only past the instants the platform can hold (each interval is at
            // most `RateLimit::MAX_INTERVAL`, about 136 years): no conflict then.
            match start.checked_add(interval) {
                Some(end) if s < end => {
                    start = start.max(s.checked_add(interval).unwrap_or(s));
                }
                _ => break,
            }
        }
        self.starts.insert(start);
        start
    }
}

impl RateLimits {
    /// The limits the registry's TaskOptions set.
    pub(super) fn new(registry: &Registry) -> RateLimits {
        let buckets: HashMap<String, Bucket> = registry
            .entries()
            .filter_map(|(name, entry)| {
                let limit = entry.options.get_rate_limit()?;
                Some((name.to_owned(), Bucket::new(limit)))
            })
            .collect();
        RateLimits {
            limited: AtomicBool::new(!buckets.is_empty()),
            buckets: Mutex::new(buckets),
        }
    }

    /// Reserves the next start of a task `name` that may not start before `earliest`: the
    /// instant it may start (`earliest` itself when it has no limit or a token is there).
    /// Each call reserves one start: for tasks due as they come, `start_i =
    /// max(earliest_i, start_{i-1} + interval)`, kombu's `TokenBucket(rate, capacity=1)`
    /// (see the module's doc); a task due later books its own start.
    pub(super) fn reserve(&self, name: &str, earliest: Instant) -> Instant {
        // Relaxed: `limited` is a hint, the buckets are read under the mutex. A `set`
        // that happened before this call is seen (coherence); one racing with it may
        // apply to it or not, as a control command racing with a message in Celery.
        if !self.limited.load(Ordering::Relaxed) {
            return earliest;
        }
        match self.buckets.lock().get_mut(name) {
            Some(bucket) => bucket.reserve(earliest),
            None => earliest,
        }
    }

    /// Celery's `rate_limit` control command: sets (or with "0"/"" removes) the limit of
    /// `name`, resetting its bucket; `Err(message)` for an invalid rate string. Returns
    /// whether a limit is now set.
    ///
    /// As Celery's `consumer.reset_rate_limits()`, which builds every task's bucket anew,
    /// it refills the buckets of the other tasks too. Starts already reserved keep their
    /// instants. It does not know which tasks are registered: the caller refuses unknown
    /// names (Celery's `'unknown task'`), after the rate string (Celery checks it first).
    pub(super) fn set(&self, name: &str, rate: &str) -> Result<bool, String> {
        let limit = RateLimit::parse(rate).map_err(|e| e.to_string())?;
        let mut buckets = self.buckets.lock();
        for bucket in buckets.values_mut() {
            bucket.starts.clear();
        }
        match limit {
            Some(limit) => buckets.insert(name.to_owned(), Bucket::new(limit)),
            None => buckets.remove(name),
        };
        // Under the mutex (invariant 1); Relaxed as in `reserve`.
        self.limited.store(!buckets.is_empty(), Ordering::Relaxed);
        Ok(limit.is_some())
    }

    /// Whether any task has a limit (when none has, [`reserve`](Self::reserve) need not be
    /// asked).
    pub(super) fn any(&self) -> bool {
        self.limited.load(Ordering::Relaxed)
    }

    /// The limit now in force for `name`, if any (for `inspect registered`).
    pub(super) fn get(&self, name: &str) -> Option<RateLimit> {
        if !self.limited.load(Ordering::Relaxed) {
            return None;
        }
        self.buckets.lock().get(name).map(|bucket| bucket.limit)
    }
}

/// The script of [`SharedLimits`]: KEYS the task's schedule (its next free start, µs by
/// Redis's clock); ARGV the interval (µs), the starts wanted, the least delay (µs).
/// Takes that many consecutive starts, each an interval after the other, from the first
/// free one not before now (no credit builds up while idle: a bucket of capacity 1), and
/// answers {now, first start} (µs, as text: exact in Lua's doubles until the year 2255).
const TAKE_STARTS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local every = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local first = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now + tonumber(ARGV[3]))
local next = first + n * every
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.floor((next - now) / 1000) + 60000)
return {string.format('%.0f', now), string.format('%.0f', first)}
";

/// The most starts one call takes, and the share of a second's worth it takes.
const MAX_BATCH: u32 = 32;
/// Where a task's schedule is kept in Redis: `weft:rate:<task name>`.
pub(crate) const SHARED_KEY_PREFIX: &str = "weft:rate:";

/// Rate limits shared by every weft worker on one Redis
/// ([`TaskOptions::shared_rate_limit`](crate::registry::TaskOptions::shared_rate_limit)).
///
/// # Protocol
///
/// Actors: the consumers of every worker (each asks [`SharedLimits::reserve`] when it
/// takes a message of a limited task), and Redis, which keeps each task's schedule (the
/// next free start).
///
/// 1. Starts are taken from the schedule by one script ([`TAKE_STARTS`]): each call takes
///    `n` consecutive starts an interval apart, from the first free one, so the starts of
///    all workers together are an interval apart; no credit builds up while idle.
/// 2. A worker takes a batch (about a tenth of a second's worth, 1 to 32) when it needs a
///    start and has none left, and keeps it in `slots`; a start it did not use by its time
///    (less half an interval) is dropped: the limit is never exceeded by late starts, at
///    the cost of that start when demand is below the limit.
/// 3. Times are measured from Redis's clock (`first - now`), so workers whose clocks
///    disagree share one schedule.
/// 4. A task due later than the batch (an ETA) takes a start of its own, not before it is
///    due.
pub(super) struct SharedLimits {
    limits: HashMap<String, SharedLimit>,
    source: Option<Source>,
    conn: Mutex<Option<redis::Connection>>,
    script: redis::Script,
    /// Script calls made (for the benchmark's round trips per task).
    calls: AtomicU64,
    /// Whether the last call failed (to log an outage once).
    failing: AtomicBool,
}

struct SharedLimit {
    limit: RateLimit,
    /// Starts taken and not used yet, in order.
    slots: Mutex<VecDeque<Instant>>,
}

impl SharedLimits {
    /// The shared limits the registry sets, kept in the Redis of `source`.
    pub(super) fn new(registry: &Registry, source: Option<Source>) -> SharedLimits {
        let limits = registry
            .entries()
            .filter_map(|(name, entry)| {
                let limit = entry.options.get_shared_rate_limit()?;
                Some((
                    name.to_owned(),
                    SharedLimit {
                        limit,
                        slots: Mutex::new(VecDeque::new()),
                    },
                ))
            })
            .collect();
        SharedLimits {
            limits,
            source,
            conn: Mutex::new(None),
            script: redis::Script::new(TAKE_STARTS),
            calls: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// Whether any task has a shared limit.
    pub(super) fn any(&self) -> bool {
        !self.limits.is_empty()
    }

    /// Script calls made so far.
    pub(super) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The start of a task `name` due at `due`: `due` itself without a shared limit, else
    /// a start from the fleet's schedule, not before `due` (rules 1 to 4). While Redis
    /// does not answer it tries again with backoff (logged once), until it answers or
    /// `stopping()`; then it answers `due`.
    pub(super) fn reserve(&self, name: &str, due: Instant, stopping: &dyn Fn() -> bool) -> Instant {
        let Some(l) = self.limits.get(name) else {
            return due;
        };
        let every = l.limit.interval();
        let mut slots = l.slots.lock();
        let now = Instant::now();
        while slots.front().is_some_and(|s| *s + every / 2 < now) {
            slots.pop_front();
        }
        let later = due.saturating_duration_since(now);
        if later <= every {
            if let Some(s) = slots.pop_front() {
                return s.max(due);
            }
        }
        // A batch of about a tenth of a second's worth; one start for a task due later.
        let n = if later > every {
            1
        } else {
            let per_tenth = Duration::from_millis(100).as_nanos() / every.as_nanos().max(1);
            u32::try_from(per_tenth)
                .unwrap_or(MAX_BATCH)
                .clamp(1, MAX_BATCH)
        };
        let mut backoff = Duration::from_millis(100);
        let (ahead, at) = loop {
            match self.take(name, every, n, later) {
                Ok(v) => break v,
                Err(e) => {
                    if stopping() {
                        return due;
                    }
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        eprintln!("weft worker: cannot take starts of {name:?} from its shared rate limit ({e}); its tasks wait until Redis answers");
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        if self.failing.swap(false, Ordering::Relaxed) {
            eprintln!("weft worker: the shared rate limits' Redis answers again");
        }
        let first = at + ahead;
        slots.extend((1..n).map(|i| first + every * i));
        first.max(due)
    }

    /// One script call: `n` starts from the schedule of `name`, not before `later` from
    /// now; (how far ahead the first is, measured from the reply's arrival).
    fn take(
        &self,
        name: &str,
        every: Duration,
        n: u32,
        later: Duration,
    ) -> redis::RedisResult<(Duration, Instant)> {
        let mut conn = self.conn.lock();
        if conn.is_none() {
            let source = self.source.as_ref().ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::ClientError,
                    "no Redis for shared rate limits",
                ))
            })?;
            *conn = Some(source.connect()?);
        }
        let c = conn.as_mut().expect("connected above");
        self.calls.fetch_add(1, Ordering::Relaxed);
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let answer: redis::RedisResult<(u64, u64)> = self
            .script
            .key(format!("{SHARED_KEY_PREFIX}{name}"))
            .arg(micros(every).max(1))
            .arg(n)
            .arg(micros(later))
            .invoke(c);
        let at = Instant::now();
        match answer {
            Ok((now, first)) => Ok((Duration::from_micros(first.saturating_sub(now)), at)),
            Err(e) => {
                *conn = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
