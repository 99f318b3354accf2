//! [`RateLimit`]: Celery's `rate_limit` of a task (its strings, as
//! `celery.utils.time.rate` reads them, and the time between two starts), one of a task's
//! [`TaskOptions`](super::TaskOptions).

use std::error::Error;
use std::fmt;
use std::time::Duration;

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
