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
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::RateLimits;
    use crate::registry::{RateLimit, Registry, TaskOptions};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Tasks "a" (5/s) and "b" (10/m), and "free" without a limit.
    fn limits() -> RateLimits {
        let with = |limit| TaskOptions::new().rate_limit(limit);
        let registry = Registry::new()
            .task_with("a", with(RateLimit::per_second(5)), |(): ()| {
                Ok::<_, String>(())
            })
            .task_with("b", with(RateLimit::per_minute(10)), |(): ()| {
                Ok::<_, String>(())
            })
            .task("free", |(): ()| Ok::<_, String>(()));
        RateLimits::new(&registry)
    }

    /// A task due later (an ETA) books its own start: the tasks due now are not held
    /// back behind it, and every start stays an interval from the others.
    #[test]
    fn a_later_start_does_not_hold_back_earlier_ones() {
        let limits = limits();
        let t0 = Instant::now();
        assert_eq!(limits.reserve("a", t0 + ms(10_000)), t0 + ms(10_000));
        let now: Vec<_> = (0..3).map(|_| limits.reserve("a", t0)).collect();
        assert_eq!(now, [t0, t0 + ms(200), t0 + ms(400)]);
        // Due just before the booked start: it goes after it.
        assert_eq!(limits.reserve("a", t0 + ms(9_900)), t0 + ms(10_200));
        // A gap between two starts that fits one more is used; one too small is not.
        assert_eq!(limits.reserve("a", t0 + ms(9_000)), t0 + ms(9_000));
        assert_eq!(limits.reserve("a", t0 + ms(9_700)), t0 + ms(9_700));
        assert_eq!(limits.reserve("a", t0 + ms(9_100)), t0 + ms(9_200));
        assert_eq!(limits.reserve("a", t0 + ms(9_300)), t0 + ms(9_400));
        assert_eq!(limits.reserve("a", t0 + ms(9_500)), t0 + ms(10_400));
    }

    #[test]
    fn starts_are_spaced_by_the_interval() {
        let limits = limits();
        let t0 = Instant::now();
        // A burst of five at t0: the first at once, then 200 ms apart.
        let starts: Vec<_> = (0..5).map(|_| limits.reserve("a", t0)).collect();
        assert_eq!(
            starts,
            [t0, t0 + ms(200), t0 + ms(400), t0 + ms(600), t0 + ms(800)]
        );
        // One due within the queue's span still waits its turn.
        assert_eq!(limits.reserve("a", t0 + ms(900)), t0 + ms(1000));
        // Another task's limit is its own.
        assert_eq!(limits.reserve("b", t0), t0);
        assert_eq!(limits.reserve("b", t0), t0 + Duration::from_secs(6));
        // A task without a limit is never held back.
        assert_eq!(limits.reserve("free", t0), t0);
        assert_eq!(limits.reserve("free", t0), t0);
        assert_eq!(limits.reserve("unknown", t0), t0);
    }

    #[test]
    fn a_start_after_an_idle_spell_is_immediate() {
        let limits = limits();
        let t0 = Instant::now();
        assert_eq!(limits.reserve("a", t0), t0);
        // The token is back after one interval, no sooner...
        assert_eq!(limits.reserve("a", t0 + ms(150)), t0 + ms(200));
        assert_eq!(limits.reserve("a", t0 + ms(400)), t0 + ms(400));
        // ...and an idle spell saves no burst (capacity 1).
        let later = t0 + Duration::from_secs(10);
        assert_eq!(limits.reserve("a", later), later);
        assert_eq!(limits.reserve("a", later), later + ms(200));
    }

    #[test]
    fn set_zero_or_empty_removes_the_limit() {
        let limits = limits();
        let t0 = Instant::now();
        assert_eq!(limits.set("a", "0"), Ok(false));
        assert_eq!(limits.get("a"), None);
        assert_eq!(limits.reserve("a", t0), t0);
        assert_eq!(limits.reserve("a", t0), t0);
        assert_eq!(limits.set("b", ""), Ok(false));
        assert_eq!(limits.get("b"), None);
        // No limit left: the lock-free path answers.
        assert!(!limits.limited.load(Ordering::Relaxed));
        assert_eq!(limits.reserve("b", t0), t0);
        assert_eq!(limits.set("free", "0"), Ok(false));
        assert!(!limits.limited.load(Ordering::Relaxed));
    }

    #[test]
    fn set_replaces_the_limit_and_refills_every_bucket() {
        let limits = limits();
        let t0 = Instant::now();
        for _ in 0..3 {
            limits.reserve("a", t0);
            limits.reserve("b", t0);
        }
        assert_eq!(limits.set("a", "100/m"), Ok(true));
        assert_eq!(
            limits.get("a").map(|l| l.to_string()).as_deref(),
            Some("100/m")
        );
        // Both buckets are full again (as Celery's reset_rate_limits), "a" at its new pace.
        assert_eq!(limits.reserve("a", t0), t0);
        assert_eq!(limits.reserve("a", t0), t0 + ms(600));
        assert_eq!(limits.reserve("b", t0), t0);
        // A task without a limit gets one.
        assert_eq!(limits.set("free", "5"), Ok(true));
        assert_eq!(
            limits.get("free").map(|l| l.to_string()).as_deref(),
            Some("5")
        );
        assert_eq!(limits.reserve("free", t0), t0);
        assert_eq!(limits.reserve("free", t0), t0 + ms(200));
        // On a worker that had none, too.
        let none = RateLimits::new(&Registry::new());
        assert_eq!(none.get("x"), None);
        assert_eq!(none.set("x", "1/h"), Ok(true));
        assert_eq!(none.reserve("x", t0), t0);
        assert_eq!(none.reserve("x", t0), t0 + Duration::from_secs(3600));
    }

    #[test]
    fn invalid_strings_are_refused_and_change_nothing() {
        let limits = limits();
        let t0 = Instant::now();
        limits.reserve("a", t0);
        for rate in ["abc", "5/x", "-1/s", "nan", "inf/s", "5/s "] {
            let message = limits.set("a", rate).unwrap_err();
            assert!(message.contains(&format!("{rate:?}")), "{message}");
            assert!(message.contains("\"10/s\""), "{message}");
        }
        assert_eq!(limits.get("a"), RateLimit::per_second(5));
        // The bucket was not refilled.
        assert_eq!(limits.reserve("a", t0), t0 + ms(200));
    }

    /// kombu's `TokenBucket(fill_rate, capacity=1)` on a simulated clock (seconds), as in
    /// `kombu/utils/limits.py`.
    struct TokenBucket {
        fill_rate: f64,
        tokens: f64,
        timestamp: f64,
    }

    impl TokenBucket {
        fn get_tokens(&mut self, now: f64) -> f64 {
            if self.tokens < 1.0 {
                let delta = self.fill_rate * (now - self.timestamp);
                self.tokens = (self.tokens + delta).min(1.0);
            }
            self.timestamp = now;
            self.tokens
        }

        /// Takes the token if it is whole. (The simulated timer fires exactly when the
        /// token is back, where floating point may leave it a hair short of 1.)
        fn can_consume(&mut self, now: f64) -> bool {
            if self.get_tokens(now) >= 1.0 - 1e-9 {
                self.tokens -= 1.0;
                return true;
            }
            false
        }

        fn expected_time(&mut self, now: f64) -> f64 {
            (1.0 - self.get_tokens(now)) / self.fill_rate
        }
    }

    /// When Celery's consumer starts requests that join a bucket of `fill_rate` at
    /// `arrivals` (ascending, seconds): each joins the bucket's queue; the queue's head
    /// starts when it can consume the token, else a timer retries when the token is
    /// expected (`_schedule_bucket_request`).
    fn kombu_starts(fill_rate: f64, arrivals: &[f64]) -> Vec<f64> {
        let mut bucket = TokenBucket {
            fill_rate,
            tokens: 1.0,
            timestamp: 0.0,
        };
        let mut starts = vec![f64::NAN; arrivals.len()];
        let mut waiting = VecDeque::new();
        let mut timer: Option<f64> = None;
        let mut next = 0;
        while next < arrivals.len() || !waiting.is_empty() {
            let now = match (arrivals.get(next), timer) {
                (Some(&a), Some(t)) if t < a => {
                    timer = None;
                    t
                }
                (Some(&a), _) => {
                    waiting.push_back(next);
                    next += 1;
                    a
                }
                (None, Some(t)) => {
                    timer = None;
                    t
                }
                (None, None) => unreachable!("requests wait without a timer"),
            };
            while let Some(&i) = waiting.front() {
                if bucket.can_consume(now) {
                    starts[i] = now;
                    waiting.pop_front();
                } else {
                    timer = Some(now + bucket.expected_time(now));
                    break;
                }
            }
        }
        starts
    }

    proptest! {
        /// `reserve` starts each task when kombu's bucket would, within 1 µs, with
        /// arrivals in bursts, within an interval and after idle spells, for two limited
        /// tasks and one without a limit, interleaved.
        #[test]
        fn reserve_matches_kombus_token_bucket(
            rates in (1u32..50, 1u32..600),
            arrivals in proptest::collection::vec(
                (0usize..3, prop_oneof![Just(0.0), 0.0..0.05f64, 0.0..3.0f64]),
                1..120,
            ),
        ) {
            let (per_second, per_minute) = rates;
            let limit_a = RateLimit::per_second(per_second).unwrap();
            let limit_b = RateLimit::per_minute(per_minute).unwrap();
            let registry = Registry::new()
                .task_with("a", TaskOptions::new().rate_limit(limit_a), |(): ()| Ok::<_, String>(()))
                .task_with("b", TaskOptions::new().rate_limit(limit_b), |(): ()| Ok::<_, String>(()))
                .task("free", |(): ()| Ok::<_, String>(()));
            let limits = RateLimits::new(&registry);
            let names = ["a", "b", "free"];
            let intervals = [limit_a.interval().as_secs_f64(), limit_b.interval().as_secs_f64()];

            // Arrival times: gaps in units of the task's interval (the free task: seconds).
            let base = Instant::now();
            let mut clock = 0.0;
            let mut timed = Vec::new();
            for &(task, gap) in &arrivals {
                clock += gap * intervals.get(task).copied().unwrap_or(1.0);
                timed.push((task, clock));
            }
            let got: Vec<(usize, f64)> = timed
                .iter()
                .map(|&(task, at)| {
                    let start = limits.reserve(names[task], base + Duration::from_secs_f64(at));
                    (task, (start - base).as_secs_f64())
                })
                .collect();

            for (task, name) in names.iter().enumerate() {
                let at: Vec<f64> = timed.iter().filter(|t| t.0 == task).map(|t| t.1).collect();
                let want = match intervals.get(task) {
                    Some(&interval) => kombu_starts(1.0 / interval, &at),
                    None => at.clone(),
                };
                let got: Vec<f64> = got.iter().filter(|g| g.0 == task).map(|g| g.1).collect();
                prop_assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    prop_assert!(
                        (g - w).abs() < 1e-6,
                        "task {} start {}: reserved {} s, kombu {} s (arrivals {:?})",
                        name, i, g, w, at
                    );
                }
            }
        }
    }
}
