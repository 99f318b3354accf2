//! The JSON shapes on the wire: task states and [`TaskInfo`] (a submission's body is
//! `submission.rs`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The state of a submitted task, as Celery names them (`"PENDING"`, `"STARTED"`, ...).
///
/// ```
/// use weft::service::State;
/// assert_eq!(serde_json::to_string(&State::Success).unwrap(), "\"SUCCESS\"");
/// assert!(State::Revoked.is_finished() && !State::Retry.is_finished());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Accepted and queued in its lane.
    Pending,
    /// Accepted, waiting for its delay to pass.
    Scheduled,
    /// Running (an attempt has started).
    Started,
    /// An attempt failed; another one will come after the backoff.
    Retry,
    /// Finished with a value.
    Success,
    /// Finished with an error: the task's `Err`, a panic, or its time limit.
    Failure,
    /// Cancelled, or shut down before it ran.
    Revoked,
}

impl State {
    /// True for the final states: `SUCCESS`, `FAILURE` and `REVOKED`.
    pub fn is_finished(self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }

    /// The name on the wire, such as `"PENDING"`.
    ///
    /// ```
    /// assert_eq!(weft::service::State::Retry.as_str(), "RETRY");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Scheduled => "SCHEDULED",
            State::Started => "STARTED",
            State::Retry => "RETRY",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Revoked => "REVOKED",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `GET /v1/tasks/{id}` answers about one task.
///
/// ```
/// use weft::service::{State, TaskInfo};
/// let info: TaskInfo = serde_json::from_str(
///     r#"{"id": "x", "name": "add", "state": "SUCCESS", "result": 5,
///         "attempts": 1, "submitted_at_ms": 1, "finished_at_ms": 2}"#,
/// ).unwrap();
/// assert_eq!(info.state, State::Success);
/// assert_eq!(info.result, Some(serde_json::json!(5)));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The task's id (a UUID v4).
    pub id: String,
    /// The registered task name.
    pub name: String,
    /// Where the task is now.
    pub state: State,
    /// The task's value; present only on `SUCCESS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed or was revoked; present only on `FAILURE` and `REVOKED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many runs have started.
    pub attempts: u32,
    /// When the node accepted it, in milliseconds since the Unix epoch.
    pub submitted_at_ms: u64,
    /// When its first attempt started, in milliseconds since the Unix epoch; left out
    /// until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// When it finished, in milliseconds since the Unix epoch; `null` until then.
    pub finished_at_ms: Option<u64>,
    /// How many times the node stopped (a crash, or a shutdown past its drain timeout)
    /// while an attempt of this task ran; the task ran again after each. Left out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interrupted: u32,
    /// The submission's `args` (left out only by the event stream, which never carries
    /// them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `1h`, `90s`, `1h30m`, `250ms`: for messages.
pub(crate) fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 {
        out += &format!("{s}s");
    }
    out
}

#[cfg(test)]
mod tests;
