//! The API's JSON shapes, typed: what the client sends and what the node answers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::service::submission::{RetrySpec, SubmitRequest};
use crate::Priority;

// `State` and `TaskInfo` are the node's own wire types (`service::wire`), re-exported
// here so client code finds every shape in one module.
pub use crate::service::{State, TaskInfo};

/// The node's answer to a submission (`202`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The new task's id (a UUID v4).
    pub id: String,
    /// The task name.
    pub name: String,
    /// `PENDING`, or `SCHEDULED` with a delay.
    pub state: State,
}

/// The node's answer to a cancellation (`DELETE /v1/tasks/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    /// The task's id.
    pub id: String,
    /// True if the task will not run, or, running, its cancellation was requested (its
    /// state then stays `STARTED` until it ends, then reads `REVOKED`).
    pub revoked: bool,
    /// The state after the request.
    pub state: State,
}

/// One entry of the node's registry (`GET /v1/registry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredTask {
    /// The name to submit it under.
    pub name: String,
    /// Its default priority.
    #[serde(with = "crate::service::submission::priority_by_name")]
    pub priority: Priority,
}

/// How to run a submitted task; every field is optional and the node's defaults apply.
///
/// ```
/// use std::time::Duration;
/// use weft::Priority;
/// use weft::service::client::{RetryOptions, SubmitOptions};
///
/// let opts = SubmitOptions::new()
///     .priority(Priority::High)
///     .delay(Duration::from_secs(2))
///     .time_limit(Duration::from_secs(5))
///     .retry(RetryOptions::new().max_attempts(3).backoff(Duration::from_millis(100)));
/// assert_eq!(opts.get_priority(), Some(Priority::High));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubmitOptions {
    priority: Option<Priority>,
    delay: Option<Duration>,
    time_limit: Option<Duration>,
    retry: Option<RetryOptions>,
}

impl SubmitOptions {
    /// No options: the node's defaults.
    pub fn new() -> SubmitOptions {
        SubmitOptions::default()
    }

    /// Runs in this lane instead of the task's registered one.
    pub fn priority(mut self, priority: Priority) -> SubmitOptions {
        self.priority = Some(priority);
        self
    }

    /// Starts no sooner than `delay` from now (the task reads `SCHEDULED` until then).
    pub fn delay(mut self, delay: Duration) -> SubmitOptions {
        self.delay = Some(delay);
        self
    }

    /// Fails an attempt that runs longer than `limit` ("time limit exceeded").
    pub fn time_limit(mut self, limit: Duration) -> SubmitOptions {
        self.time_limit = Some(limit);
        self
    }

    /// Retries failed attempts as `retry` says.
    pub fn retry(mut self, retry: RetryOptions) -> SubmitOptions {
        self.retry = Some(retry);
        self
    }

    /// The priority set, if any.
    pub fn get_priority(&self) -> Option<Priority> {
        self.priority
    }

    /// The request body for `POST /v1/tasks/{name}`.
    pub(crate) fn to_body(&self, args: serde_json::Value) -> SubmitRequest {
        SubmitRequest {
            args,
            priority: self.priority.map(Into::into),
            delay_ms: self.delay.map(millis),
            time_limit_ms: self.time_limit.map(millis),
            retry: self.retry.as_ref().map(RetryOptions::to_spec),
        }
    }
}

/// A retry policy for one submission; unset fields take the node's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryOptions {
    max_attempts: Option<u32>,
    backoff: Option<Duration>,
    max_backoff: Option<Duration>,
    multiplier: Option<f64>,
    jitter: Option<f64>,
}

impl RetryOptions {
    /// The node's default policy.
    pub fn new() -> RetryOptions {
        RetryOptions::default()
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(mut self, n: u32) -> RetryOptions {
        self.max_attempts = Some(n);
        self
    }

    /// The wait before the first retry.
    pub fn backoff(mut self, d: Duration) -> RetryOptions {
        self.backoff = Some(d);
        self
    }

    /// The longest wait between attempts.
    pub fn max_backoff(mut self, d: Duration) -> RetryOptions {
        self.max_backoff = Some(d);
        self
    }

    /// The factor each wait grows by.
    pub fn multiplier(mut self, m: f64) -> RetryOptions {
        self.multiplier = Some(m);
        self
    }

    /// Random spread of each wait, 0 to 1 (the node rejects anything else).
    pub fn jitter(mut self, j: f64) -> RetryOptions {
        self.jitter = Some(j);
        self
    }

    fn to_spec(&self) -> RetrySpec {
        RetrySpec {
            max_attempts: self.max_attempts,
            backoff_ms: self.backoff.map(millis),
            max_backoff_ms: self.max_backoff.map(millis),
            multiplier: self.multiplier,
            jitter: self.jitter,
        }
    }
}

/// Whole milliseconds, saturating at `u64::MAX`.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
