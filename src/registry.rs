//! [`Registry`]: named tasks, each a typed Rust function over serde values, with its
//! per-task defaults ([`TaskOptions`], among them a Celery [`RateLimit`]). Built with the
//! `service` or the `redis` feature;
//! shared by the node-local service (`weft::service`, which re-exports it) and the Celery
//! worker (`weft::celery`).

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::{Priority, RetryPolicy};

/// One run of a task, with its arguments already decoded: the value as JSON, or the
/// error's message. Called once per attempt.
pub(crate) type Attempt = Box<dyn FnMut() -> Result<Value, String> + Send>;

/// Decodes a submission's arguments into an [`Attempt`], or says why they do not fit.
type Prepare = dyn Fn(Value) -> Result<Attempt, serde_json::Error> + Send + Sync;

/// Per-task defaults: the lane, a retry policy and a time limit. A submission may override
/// each of them.
///
/// ```
/// use std::time::Duration;
/// use weft::registry::TaskOptions;
/// use weft::{Priority, RetryPolicy};
///
/// let opts = TaskOptions::new()
///     .priority(Priority::High)
///     .retry(RetryPolicy::exponential(Duration::from_millis(100)).max_attempts(5))
///     .time_limit(Duration::from_secs(30));
/// assert_eq!(opts.get_priority(), Priority::High);
/// assert_eq!(opts.get_retry().map(|p| p.attempts()), Some(5));
/// assert_eq!(opts.get_time_limit(), Some(Duration::from_secs(30)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TaskOptions {
    priority: Priority,
    retry: Option<RetryPolicy>,
    time_limit: Option<Duration>,
    acks_late: Option<bool>,
    rate_limit: Option<RateLimit>,
}

impl TaskOptions {
    /// Normal priority, no retries, no time limit.
    pub fn new() -> TaskOptions {
        TaskOptions::default()
    }

    /// The lane the task's submissions to a service node go to unless they say otherwise.
    /// (A Celery worker, feature `redis`, runs a message in the lane of the queue it came
    /// from, `Worker::queue`; this option is not used there.)
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Retries a failing run (an `Err`, never a panic) with `policy`'s backoff.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// A soft time limit per run (see [`TaskBuilder::time_limit`](crate::TaskBuilder::time_limit)):
    /// a run that ends after it is a `FAILURE` with the error `"time limit exceeded"`.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// When a Celery worker (feature `redis`) acknowledges this task's messages: `true`
    /// after the task has finished and its result is written (a worker that dies while it
    /// runs leaves the message to be delivered again: at-least-once), `false` as it starts
    /// (a worker that dies while it runs loses it). Unset, the worker's default applies
    /// (`Worker::acks_late`, false as in Celery).
    pub fn acks_late(mut self, late: bool) -> Self {
        self.acks_late = Some(late);
        self
    }

    /// Celery's `rate_limit`: a Celery worker (feature `redis`) starts this task's runs at
    /// most at this rate, [`RateLimit::interval`] apart; the first one after an idle spell
    /// starts at once. Like Celery's it is a limit per worker, not across workers; Celery's
    /// `rate_limit` control command changes it on a running worker. `None` (as
    /// `RateLimit::parse("0")` gives) removes it. The node-local service does not use it.
    ///
    /// ```
    /// use weft::registry::{RateLimit, TaskOptions};
    ///
    /// let opts = TaskOptions::new().rate_limit(RateLimit::per_second(10));
    /// assert_eq!(opts.get_rate_limit().unwrap().to_string(), "10/s");
    /// let opts = opts.rate_limit(RateLimit::parse("0").unwrap());
    /// assert_eq!(opts.get_rate_limit(), None);
    /// ```
    pub fn rate_limit(mut self, limit: impl Into<Option<RateLimit>>) -> Self {
        self.rate_limit = limit.into();
        self
    }

    /// The task's rate limit, if set.
    pub fn get_rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }

    /// The task's own acknowledgement choice, if set.
    pub fn get_acks_late(&self) -> Option<bool> {
        self.acks_late
    }

    /// The default lane.
    pub fn get_priority(&self) -> Priority {
        self.priority
    }

    /// The default retry policy, if any.
    pub fn get_retry(&self) -> Option<RetryPolicy> {
        self.retry
    }

    /// The default time limit, if any.
    pub fn get_time_limit(&self) -> Option<Duration> {
        self.time_limit
    }
}

/// Celery's `rate_limit` of a task: at most `count` starts per second, minute or hour on
/// one worker, spaced [`interval`](Self::interval) apart (kombu's `TokenBucket` with
/// capacity 1: the first start after an idle spell is immediate, the next waits a full
/// interval).
///
/// [`parse`](Self::parse) reads Celery's strings as `celery.utils.time.rate` does, and
/// `Display` writes them back: `"10/s"`, `"100/m"`, `"1000/h"`, or a bare number for per
/// second (`"5"`). `"0"` and `""` mean no limit, which is `None` here, never a
/// `RateLimit`.
///
/// ```
/// use std::time::Duration;
/// use weft::registry::RateLimit;
///
/// let limit = RateLimit::parse("100/m").unwrap().unwrap();
/// assert_eq!(limit.interval(), Duration::from_millis(600));
/// assert_eq!(limit.to_string(), "100/m");
/// assert_eq!(RateLimit::per_second(5).unwrap().interval(), Duration::from_millis(200));
/// assert_eq!(RateLimit::parse("5/s").unwrap(), RateLimit::per_second(5));
/// assert_eq!(RateLimit::parse("0").unwrap(), None);
/// assert!(RateLimit::parse("5/x").is_err());
/// ```
#[derive(Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// How many starts per unit: positive and finite.
    count: f64,
    /// The unit, and how the rate string wrote it.
    unit: Unit,
    /// The time between two starts: the unit's seconds over `count`, at most
    /// [`RateLimit::MAX_INTERVAL`].
    interval: Duration,
}

/// The unit of a [`RateLimit`], as its string wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    /// `"5"`: per second.
    Bare,
    /// `"5/"`: per second (Celery reads a missing unit after the slash as `s`).
    Slash,
    /// `"5/s"`.
    Second,
    /// `"5/m"`.
    Minute,
    /// `"5/h"`.
    Hour,
}

impl Unit {
    /// The unit's length in seconds.
    fn seconds(self) -> f64 {
        match self {
            Unit::Bare | Unit::Slash | Unit::Second => 1.0,
            Unit::Minute => 60.0,
            Unit::Hour => 3600.0,
        }
    }

    /// What follows the number in the rate string.
    fn suffix(self) -> &'static str {
        match self {
            Unit::Bare => "",
            Unit::Slash => "/",
            Unit::Second => "/s",
            Unit::Minute => "/m",
            Unit::Hour => "/h",
        }
    }
}

impl RateLimit {
    /// The longest time between two starts a limit may ask for (`u32::MAX` seconds, about
    /// 136 years), so that every reserved start is an `Instant` the platform can hold; a
    /// slower rate is refused ([`RateLimitError::is_too_slow`]).
    pub const MAX_INTERVAL: Duration = Duration::from_secs(u32::MAX as u64);

    /// Reads a rate string as Celery's `celery.utils.time.rate` does: `"10/s"`, `"100/m"`,
    /// `"1000/h"`, or a number alone for per second (`"5"`, and `"5/"` as Celery reads it).
    /// The number is anything Python's `float()` reads (`"0.5/s"`, `"1e3/h"`, `" 5 /m"`,
    /// `"1_000/h"`). `Ok(None)` is no limit: `""`, `"0"` or any other zero (`"0/m"`,
    /// `"0.0"`).
    ///
    /// Refused, where Celery would take it: a negative, infinite or NaN number (for which
    /// Celery's token bucket never or always has a token) and a rate slower than one start
    /// per [`MAX_INTERVAL`](Self::MAX_INTERVAL). The unit is not trimmed (`"5/s "` is
    /// refused, as in Celery).
    ///
    /// ```
    /// use weft::registry::RateLimit;
    ///
    /// assert_eq!(RateLimit::parse("10/s").unwrap().unwrap().to_string(), "10/s");
    /// assert_eq!(RateLimit::parse("0.5").unwrap().unwrap().to_string(), "0.5");
    /// assert_eq!(RateLimit::parse("").unwrap(), None);
    /// let err = RateLimit::parse("ten/s").unwrap_err();
    /// assert!(err.is_not_a_number());
    /// assert!(err.to_string().contains("\"10/s\""));
    /// ```
    pub fn parse(rate: &str) -> Result<Option<RateLimit>, RateLimitError> {
        if rate.is_empty() {
            return Ok(None);
        }
        let fail = |kind| {
            Err(RateLimitError {
                rate: rate.to_owned(),
                kind,
            })
        };
        // As Celery: the unit is looked up before the number is read.
        let (number, unit) = match rate.split_once('/') {
            None => (rate, Unit::Bare),
            Some((number, "")) => (number, Unit::Slash),
            Some((number, "s")) => (number, Unit::Second),
            Some((number, "m")) => (number, Unit::Minute),
            Some((number, "h")) => (number, Unit::Hour),
            Some(_) => return fail(ErrorKind::Unit),
        };
        let Some(count) = python_float(number) else {
            return fail(ErrorKind::Number);
        };
        if !count.is_finite() {
            return fail(ErrorKind::NotFinite);
        }
        if count < 0.0 {
            return fail(ErrorKind::Negative);
        }
        if count == 0.0 {
            return Ok(None);
        }
        match RateLimit::new(count, unit) {
            Some(limit) => Ok(Some(limit)),
            None => fail(ErrorKind::TooSlow),
        }
    }

    /// At most `n` starts a second, written `"n/s"`; `None` for 0 (no limit).
    ///
    /// ```
    /// use std::time::Duration;
    /// use weft::registry::RateLimit;
    ///
    /// let limit = RateLimit::per_second(4).unwrap();
    /// assert_eq!((limit.to_string(), limit.interval()), ("4/s".into(), Duration::from_millis(250)));
    /// assert_eq!(RateLimit::per_second(0), None);
    /// ```
    pub fn per_second(n: u32) -> Option<RateLimit> {
        RateLimit::new(f64::from(n), Unit::Second)
    }

    /// At most `n` starts a minute, written `"n/m"`; `None` for 0 (no limit).
    ///
    /// ```
    /// use std::time::Duration;
    /// use weft::registry::RateLimit;
    ///
    /// let limit = RateLimit::per_minute(30).unwrap();
    /// assert_eq!((limit.to_string(), limit.interval()), ("30/m".into(), Duration::from_secs(2)));
    /// ```
    pub fn per_minute(n: u32) -> Option<RateLimit> {
        RateLimit::new(f64::from(n), Unit::Minute)
    }

    /// At most `n` starts an hour, written `"n/h"`; `None` for 0 (no limit).
    ///
    /// ```
    /// use std::time::Duration;
    /// use weft::registry::RateLimit;
    ///
    /// let limit = RateLimit::per_hour(1).unwrap();
    /// assert_eq!((limit.to_string(), limit.interval()), ("1/h".into(), Duration::from_secs(3600)));
    /// ```
    pub fn per_hour(n: u32) -> Option<RateLimit> {
        RateLimit::new(f64::from(n), Unit::Hour)
    }

    /// The time between two starts: one second, minute or hour over the count (to the
    /// nanosecond).
    ///
    /// ```
    /// use std::time::Duration;
    /// use weft::registry::RateLimit;
    ///
    /// let limit = RateLimit::parse("3/s").unwrap().unwrap();
    /// assert_eq!(limit.interval(), Duration::from_nanos(333_333_333));
    /// ```
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The limit of `count` per `unit`, or `None` for a count that is not positive or a
    /// rate slower than [`MAX_INTERVAL`](Self::MAX_INTERVAL).
    fn new(count: f64, unit: Unit) -> Option<RateLimit> {
        if count.is_nan() || count <= 0.0 {
            return None;
        }
        let interval = Duration::try_from_secs_f64(unit.seconds() / count).ok()?;
        (interval <= RateLimit::MAX_INTERVAL).then_some(RateLimit {
            count,
            unit,
            interval,
        })
    }
}

/// Celery's string form: the number (in its shortest form: `"10/s"`, `"0.5/m"`; so
/// `"10.0/s"` is written back `"10/s"` and `"1e3/h"` as `"1000/h"`), then the unit as it
/// was given (`"/s"`, `"/m"`, `"/h"`, `"/"` or none). Celery shows it in `inspect
/// registered` as `add [rate_limit=10/s]`.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.count, self.unit.suffix())
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RateLimit({self})")
    }
}

/// Reads `s` as Python's `float()` does, for the ASCII forms: surrounding whitespace, a
/// sign, digits with single underscores between them, a fraction, an exponent, `inf` and
/// `nan`. (Python also reads non-ASCII digits; those are refused here.)
fn python_float(s: &str) -> Option<f64> {
    let s = s.trim();
    if !s.contains('_') {
        return s.parse().ok();
    }
    let b = s.as_bytes();
    let between_digits = |i: usize| {
        i > 0 && b[i - 1].is_ascii_digit() && b.get(i + 1).is_some_and(u8::is_ascii_digit)
    };
    if (0..b.len()).any(|i| b[i] == b'_' && !between_digits(i)) {
        return None;
    }
    s.replace('_', "").parse().ok()
}

/// A rate string that is not one of Celery's forms ([`RateLimit::parse`]). Its message
/// names the string, what is wrong with it and the accepted forms.
///
/// ```
/// use weft::registry::RateLimit;
///
/// let err = RateLimit::parse("5/x").unwrap_err();
/// assert!(err.is_bad_unit());
/// assert_eq!(
///     err.to_string(),
///     "invalid rate limit \"5/x\": the unit after \"/\" must be s, m or h; \
///      expected a number of tasks per second, minute or hour, as \"10/s\", \"100/m\", \
///      \"1000/h\" or \"5\" (per second), or \"0\" or \"\" for no limit",
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitError {
    rate: String,
    kind: ErrorKind,
}

/// What is wrong with a rate string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    Unit,
    Number,
    NotFinite,
    Negative,
    TooSlow,
}

impl RateLimitError {
    /// The unit after the `/` is not `s`, `m`, `h` or empty (`"5/x"`, `"5/sec"`).
    pub fn is_bad_unit(&self) -> bool {
        self.kind == ErrorKind::Unit
    }

    /// The number before the `/` is not a number (`"abc"`, `"/s"`).
    pub fn is_not_a_number(&self) -> bool {
        self.kind == ErrorKind::Number
    }

    /// The number is infinite or NaN (`"inf/s"`, `"nan"`).
    pub fn is_not_finite(&self) -> bool {
        self.kind == ErrorKind::NotFinite
    }

    /// The number is negative (`"-1/s"`).
    pub fn is_negative(&self) -> bool {
        self.kind == ErrorKind::Negative
    }

    /// The rate asks for more than [`RateLimit::MAX_INTERVAL`] between starts.
    pub fn is_too_slow(&self) -> bool {
        self.kind == ErrorKind::TooSlow
    }
}

impl fmt::Display for RateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid rate limit {:?}: ", self.rate)?;
        match self.kind {
            ErrorKind::Unit => f.write_str("the unit after \"/\" must be s, m or h"),
            ErrorKind::Number => f.write_str("the count is not a number"),
            ErrorKind::NotFinite => f.write_str("the count must be finite"),
            ErrorKind::Negative => f.write_str("the count must not be negative"),
            ErrorKind::TooSlow => write!(
                f,
                "more than {} s between starts is too slow",
                RateLimit::MAX_INTERVAL.as_secs()
            ),
        }?;
        f.write_str(
            "; expected a number of tasks per second, minute or hour, as \"10/s\", \
             \"100/m\", \"1000/h\" or \"5\" (per second), or \"0\" or \"\" for no limit",
        )
    }
}

impl Error for RateLimitError {}

/// A registered task.
#[derive(Clone)]
pub(crate) struct Entry {
    pub options: TaskOptions,
    prepare: Arc<Prepare>,
}

impl Entry {
    /// Decodes `args` for this task: the attempt to run, or serde's reason.
    pub fn prepare(&self, args: Value) -> Result<Attempt, serde_json::Error> {
        (self.prepare)(args)
    }
}

/// The named tasks a node serves: the service's `Node` (feature `service`) or a
/// `celery::Worker` (feature `redis`).
///
/// A task is a function from a deserializable argument type to `Result<O, E>`, where `O` is
/// serializable (the `result` on the wire) and `E: Display` (its message is the `error` of
/// a `FAILURE`). Arguments arrive as JSON: `"args": [2, 3]` fits a tuple `(i64, i64)`, an
/// object fits a struct with `#[derive(Deserialize)]`. A submission whose arguments do not
/// fit is refused with a 400 before anything runs. A panic in the function is a `FAILURE`
/// with the panic's message.
///
/// A later registration under the same name replaces the earlier one.
///
/// ```
/// use std::time::Duration;
/// use weft::registry::{Registry, TaskOptions};
/// use weft::RetryPolicy;
///
/// #[derive(serde::Deserialize)]
/// struct Resize { width: u32, height: u32 }
///
/// let registry = Registry::new()
///     .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
///     .task("resize", |r: Resize| {
///         if r.width == 0 { Err("zero width") } else { Ok(r.width * r.height) }
///     })
///     .task_with(
///         "fetch",
///         TaskOptions::new().retry(RetryPolicy::fixed(Duration::from_millis(10))),
///         |url: String| Err::<(), _>(format!("cannot reach {url}")),
///     );
/// assert_eq!(registry.names().collect::<Vec<_>>(), ["add", "fetch", "resize"]);
/// assert!(registry.contains("add") && !registry.contains("nope"));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, Entry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `f` under `name` with default options ([`TaskOptions::new`]).
    pub fn task<A, O, E, F>(self, name: impl Into<String>, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        E: fmt::Display + 'static,
        F: Fn(A) -> Result<O, E> + Send + Sync + 'static,
    {
        self.task_with(name, TaskOptions::new(), f)
    }

    /// Registers `f` under `name` with `options` as its defaults.
    pub fn task_with<A, O, E, F>(
        mut self,
        name: impl Into<String>,
        options: TaskOptions,
        f: F,
    ) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        E: fmt::Display + 'static,
        F: Fn(A) -> Result<O, E> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let prepare = move |args: Value| -> Result<Attempt, serde_json::Error> {
            // Decode once now, to refuse bad arguments before anything runs; a retry
            // decodes the kept JSON again, so `A` need not be `Clone`.
            let first: A = serde_json::from_value(args.clone())?;
            let mut first = Some(first);
            let f = f.clone();
            Ok(Box::new(move || {
                let a = match first.take() {
                    Some(a) => a,
                    None => serde_json::from_value(args.clone())
                        .map_err(|e| format!("invalid arguments: {e}"))?,
                };
                let out = f(a).map_err(|e| e.to_string())?;
                serde_json::to_value(out).map_err(|e| format!("cannot encode the result: {e}"))
            }))
        };
        self.tasks.insert(
            name.into(),
            Entry {
                options,
                prepare: Arc::new(prepare),
            },
        );
        self
    }

    /// True if a task is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
    }

    /// The registered names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    /// The defaults registered for `name`.
    ///
    /// ```
    /// use weft::{registry::Registry, Priority};
    /// let r = Registry::new().task("id", |x: u8| Ok::<_, String>(x));
    /// assert_eq!(r.options("id").unwrap().get_priority(), Priority::Normal);
    /// assert!(r.options("other").is_none());
    /// ```
    pub fn options(&self, name: &str) -> Option<TaskOptions> {
        self.tasks.get(name).map(|e| e.options)
    }

    /// The number of registered tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True if no task is registered.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.tasks.get(name)
    }

    #[cfg_attr(not(feature = "service"), allow(dead_code))]
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.tasks.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.tasks.iter().map(|(k, v)| (k, v.options)))
            .finish()
    }
}

#[cfg(test)]
mod tests;
