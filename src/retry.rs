//! [`RetryPolicy`]: how long to wait before each retry of a failing task, and when to stop.
//!
//! Pure arithmetic, no clock and no threads: [`RetryPolicy::delay_before`] gives the
//! nominal delay before retry `k`, and jitter draws from `[d * (1 - jitter), d]` with a
//! random number the caller supplies.

use std::time::Duration;

/// The default number of runs a retrying task gets, the first one included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// How a failing task is retried: the backoff between runs, and how many runs it gets.
///
/// - [`fixed(d)`](Self::fixed): wait `d` before every retry.
/// - [`exponential(base)`](Self::exponential): wait `base * 2^(k-1)` before retry `k`
///   (k = 1, 2, ...), capped at [`max_delay`](Self::max_delay).
///
/// Builder methods take and return `Self` and never fail: out-of-range values are clamped
/// (`max_attempts(0)` means 1, a jitter outside `0..=1` is clamped into it, NaN means 0).
/// A panic is never retried: it is a bug, not a transient failure.
///
/// ```
/// use std::time::Duration;
/// use weft::RetryPolicy;
///
/// let p = RetryPolicy::exponential(Duration::from_millis(100))
///     .max_delay(Duration::from_millis(300))
///     .max_attempts(5);
/// assert_eq!(p.delay_before(1), Duration::from_millis(100));
/// assert_eq!(p.delay_before(2), Duration::from_millis(200));
/// assert_eq!(p.delay_before(3), Duration::from_millis(300)); // capped
/// assert_eq!(p.attempts(), 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_delay: Duration,
    jitter: f64,
    max_attempts: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backoff {
    Fixed(Duration),
    Exponential(Duration),
}

impl RetryPolicy {
    /// Waits `delay` before every retry.
    pub fn fixed(delay: Duration) -> RetryPolicy {
        RetryPolicy::new(Backoff::Fixed(delay))
    }

    /// Waits `base * 2^(k-1)` before retry `k`.
    pub fn exponential(base: Duration) -> RetryPolicy {
        RetryPolicy::new(Backoff::Exponential(base))
    }

    fn new(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            backoff,
            max_delay: Duration::MAX,
            jitter: 0.0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Caps every delay at `max`.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Draws each delay uniformly from `[d * (1 - fraction), d]`. Default 0 (off), so
    /// schedules are reproducible. Clamped into `0..=1`; NaN means 0.
    ///
    /// ```
    /// let p = weft::RetryPolicy::fixed(std::time::Duration::from_secs(1)).jitter(7.0);
    /// assert_eq!(p.jitter_fraction(), 1.0);
    /// ```
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// The number of runs, the first one included (default [`DEFAULT_MAX_ATTEMPTS`]).
    /// `0` is taken as 1: the task runs once and is not retried.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The number of runs this policy allows.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The jitter fraction in effect.
    pub fn jitter_fraction(&self) -> f64 {
        self.jitter
    }

    /// The nominal delay (without jitter) before retry `k` (1 is the first retry, after the
    /// first run failed). Saturates instead of overflowing.
    pub fn delay_before(&self, retry: u32) -> Duration {
        let d = match self.backoff {
            Backoff::Fixed(d) => d,
            Backoff::Exponential(base) => {
                let shift = retry.saturating_sub(1);
                let factor = 1u32.checked_shl(shift).filter(|_| shift < 32);
                factor
                    .and_then(|f| base.checked_mul(f))
                    .unwrap_or(Duration::MAX)
            }
        };
        d.min(self.max_delay)
    }

    /// The delay before retry `k` with jitter applied; `random` is any uniformly random
    /// `u64` (only used when jitter is on).
    pub(crate) fn jittered_delay(&self, retry: u32, random: u64) -> Duration {
        let d = self.delay_before(retry);
        if self.jitter == 0.0 {
            return d;
        }
        // A uniform fraction in [0, 1) from the top 53 bits.
        let u = (random >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(1.0 - self.jitter * u)
    }
}

#[cfg(test)]
mod tests;
