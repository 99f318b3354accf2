//! [`Schedule`]: when a beat entry runs: every interval (Celery's `schedule=timedelta`),
//! or at the times of a crontab pattern in a time zone (Celery's `crontab`).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// When a beat entry runs.
///
/// ```
/// use std::time::Duration;
/// use weft::celery::beat::Schedule;
///
/// let every = Schedule::every(Duration::from_secs(30)).unwrap();
/// assert_eq!(every.to_string(), "every 30s");
/// // Celery's crontab(minute=0, hour=7, day_of_week="mon-fri"), in Paris:
/// let cron = Schedule::crontab_in("0 7 * * mon-fri", "Europe/Paris").unwrap();
/// assert_eq!(cron.to_string(), "crontab 0 7 * * mon-fri (Europe/Paris)");
/// assert!(Schedule::crontab("61 * * * *").unwrap_err().to_string().contains("61 * * * *"));
/// assert!(Schedule::every(Duration::ZERO).is_err());
/// ```
#[derive(Clone, Debug)]
pub enum Schedule {
    /// Every interval: an entry runs `interval` after its last run (Celery's
    /// `last_run_at + interval`).
    Interval(Duration),
    /// At the times a crontab pattern matches.
    Crontab(Crontab),
}

/// A crontab pattern in a time zone: Celery's five fields (minute, hour, day of month,
/// month, day of week; names such as `mon` and `jan`, ranges, lists and steps), or six
/// with seconds first. As in Celery, a day must match both the day of month and the day
/// of week when both are given. Across a daylight-saving change, a time that does not
/// exist runs at the first time after the gap; one that occurs twice runs once.
#[derive(Clone)]
pub struct Crontab {
    /// Boxed: a parsed pattern is a few hundred bytes.
    cron: Box<Cron>,
    pattern: String,
    tz: Tz,
}

impl fmt::Debug for Crontab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crontab")
            .field("pattern", &self.pattern)
            .field("tz", &self.tz.name())
            .finish()
    }
}

/// Why a schedule cannot be built: the pattern, zone or interval, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleError(String);

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScheduleError {}

impl Schedule {
    /// Every `interval` (at least 1 ms).
    pub fn every(interval: Duration) -> Result<Schedule, ScheduleError> {
        if interval < Duration::from_millis(1) {
            return Err(ScheduleError(format!(
                "a beat interval must be at least 1 ms, not {interval:?}"
            )));
        }
        Ok(Schedule::Interval(interval))
    }

    /// The crontab `pattern`, in UTC.
    pub fn crontab(pattern: &str) -> Result<Schedule, ScheduleError> {
        Schedule::crontab_in(pattern, "UTC")
    }

    /// The crontab `pattern` in the IANA time zone `tz` (`"Europe/Paris"`).
    pub fn crontab_in(pattern: &str, tz: &str) -> Result<Schedule, ScheduleError> {
        let tz = Tz::from_str(tz).map_err(|_| {
            ScheduleError(format!(
                "unknown time zone {tz:?}: use an IANA name such as \"Europe/Paris\" or \"UTC\""
            ))
        })?;
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .dom_and_dow(true)
            .build();
        let cron = parser
            .parse(pattern)
            .map_err(|e| ScheduleError(format!("invalid crontab {pattern:?}: {e}")))?;
        // A pattern that never matches (the 31st of February) is refused now, not found
        // out at run time.
        cron.find_next_occurrence(&Utc::now().with_timezone(&tz), false)
            .map_err(|e| ScheduleError(format!("crontab {pattern:?} never runs: {e}")))?;
        Ok(Schedule::Crontab(Crontab {
            cron: Box::new(cron),
            pattern: pattern.to_owned(),
            tz,
        }))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Interval(d) => write!(f, "every {d:?}"),
            Schedule::Crontab(c) => write!(f, "crontab {} ({})", c.pattern, c.tz.name()),
        }
    }
}

/// Milliseconds since the epoch as a UTC time.
fn utc(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX))
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn ms(t: DateTime<Tz>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

impl Crontab {
    /// The first time the pattern matches strictly after `after_ms` (ms since the epoch);
    /// `None` past the year 5000.
    pub(crate) fn next_after(&self, after_ms: u64) -> Option<u64> {
        let t = utc(after_ms).with_timezone(&self.tz);
        self.cron.find_next_occurrence(&t, false).ok().map(ms)
    }

    /// The last time the pattern matched at or before `at_ms`.
    pub(crate) fn last_at_or_before(&self, at_ms: u64) -> Option<u64> {
        let t = utc(at_ms).with_timezone(&self.tz);
        self.cron.find_previous_occurrence(&t, true).ok().map(ms)
    }
}

/// Milliseconds since the epoch, by this machine's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
