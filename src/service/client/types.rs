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
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_options_send_only_args() {
        assert_eq!(
            serde_json::to_value(SubmitOptions::new().to_body(json!([1, 2]))).unwrap(),
            json!({"args": [1, 2]})
        );
    }

    #[test]
    fn full_options_body() {
        let opts = SubmitOptions::new()
            .priority(Priority::Low)
            .delay(Duration::from_millis(2500))
            .time_limit(Duration::from_secs(5))
            .retry(
                RetryOptions::new()
                    .max_attempts(4)
                    .backoff(Duration::from_millis(10))
                    .max_backoff(Duration::from_secs(1))
                    .multiplier(2.0)
                    .jitter(0.5),
            );
        let body = opts.to_body(json!(null));
        // What the client sends is what the node reads.
        let sent = serde_json::to_vec(&body).unwrap();
        assert_eq!(
            serde_json::from_slice::<SubmitRequest>(&sent).unwrap(),
            body
        );
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            json!({"args": null, "priority": "low", "delay_ms": 2500, "time_limit_ms": 5000,
                   "retry": {"max_attempts": 4, "backoff_ms": 10, "max_backoff_ms": 1000,
                             "multiplier": 2.0, "jitter": 0.5}})
        );
    }

    #[test]
    fn states_round_trip() {
        for s in [
            State::Pending,
            State::Scheduled,
            State::Started,
            State::Retry,
            State::Success,
            State::Failure,
            State::Revoked,
        ] {
            let text = serde_json::to_string(&s).unwrap();
            assert_eq!(text, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<State>(&text).unwrap(), s);
        }
    }

    #[test]
    fn task_info_optional_fields() {
        let info: TaskInfo = serde_json::from_value(json!({
            "id": "x", "name": "add", "state": "PENDING", "attempts": 0,
            "submitted_at_ms": 1, "finished_at_ms": null}))
        .unwrap();
        assert_eq!(info.result, None);
        assert_eq!(info.finished_at_ms, None);
        let back = serde_json::to_value(&info).unwrap();
        assert!(back.get("result").is_none());
    }

    #[test]
    fn registry_priorities() {
        let t: RegisteredTask =
            serde_json::from_value(json!({"name": "add", "priority": "high"})).unwrap();
        assert_eq!(t.priority, Priority::High);
        let bad =
            serde_json::from_value::<RegisteredTask>(json!({"name": "a", "priority": "urgent"}));
        assert_eq!(
            bad.unwrap_err().to_string(),
            "unknown variant `urgent`, expected one of `high`, `normal`, `low`"
        );
        let t = RegisteredTask {
            name: "a".into(),
            priority: Priority::Low,
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"name": "a", "priority": "low"})
        );
    }
}
