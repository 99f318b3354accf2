//! [`TaskResult`]: the final state of a task as Celery's Redis result backend stores it
//! (`celery-task-meta-<id>`: `status`, `result`, `traceback`, `children`, `date_done`,
//! `task_id`), written and read back. Re-exported as `weft::celery::TaskResult`.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::iso8601::format_iso8601;
use super::protocol::ProtocolError;

/// The final state of a task, as Celery's result backend stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskResult {
    /// `SUCCESS` with the return value.
    Success(Value),
    /// `FAILURE`: an exception Python can rebuild from `exc_module.exc_type(*exc_message)`.
    Failure {
        /// The exception class name (`"ValueError"`, `"NotRegistered"`).
        exc_type: String,
        /// Its module (`"builtins"`, `"celery.exceptions"`).
        exc_module: String,
        /// Its message.
        exc_message: String,
        /// A traceback text, if any.
        traceback: Option<String>,
    },
    /// `REVOKED`: the task was cancelled or expired before it ran.
    Revoked(String),
    /// `RETRY` (not final): the run failed with this message and the task was sent again
    /// with `retries + 1` and a new ETA.
    Retry(String),
}

impl TaskResult {
    /// A failure of a Rust task: Python raises `RuntimeError(message)`.
    pub fn error(message: impl Into<String>) -> TaskResult {
        TaskResult::Failure {
            exc_type: "RuntimeError".into(),
            exc_module: "builtins".into(),
            exc_message: message.into(),
            traceback: None,
        }
    }

    /// An unknown task name: Python raises `celery.exceptions.NotRegistered(name)`.
    pub fn not_registered(name: &str) -> TaskResult {
        TaskResult::Failure {
            exc_type: "NotRegistered".into(),
            exc_module: "celery.exceptions".into(),
            exc_message: name.to_owned(),
            traceback: None,
        }
    }

    /// The status word: `SUCCESS`, `FAILURE`, `REVOKED` or `RETRY`.
    pub fn status(&self) -> &'static str {
        match self {
            TaskResult::Success(_) => "SUCCESS",
            TaskResult::Failure { .. } => "FAILURE",
            TaskResult::Revoked(_) => "REVOKED",
            TaskResult::Retry(_) => "RETRY",
        }
    }

    /// The record stored under `celery-task-meta-<id>` (and published on that channel).
    pub fn to_meta(&self, task_id: &str, date_done: SystemTime) -> Value {
        let (result, traceback) = match self {
            TaskResult::Success(v) => (v.clone(), Value::Null),
            TaskResult::Failure {
                exc_type,
                exc_module,
                exc_message,
                traceback,
            } => (
                json!({"exc_type": exc_type, "exc_message": [exc_message], "exc_module": exc_module}),
                traceback.as_ref().map_or(Value::Null, |t| json!(t)),
            ),
            TaskResult::Revoked(reason) => (
                json!({"exc_type": "TaskRevokedError", "exc_message": [reason],
                       "exc_module": "celery.exceptions"}),
                Value::Null,
            ),
            TaskResult::Retry(reason) => (
                json!({"exc_type": "Retry", "exc_message": [reason],
                       "exc_module": "celery.exceptions"}),
                Value::Null,
            ),
        };
        json!({
            "status": self.status(),
            "result": result,
            "traceback": traceback,
            "children": [],
            "date_done": format_iso8601(date_done),
            "task_id": task_id,
        })
    }

    /// Reads a `celery-task-meta-<id>` record. `None` for a state that is not final
    /// (`PENDING`, `STARTED`, `RETRY`...).
    pub fn from_meta(meta: &[u8]) -> Result<Option<TaskResult>, ProtocolError> {
        let v: Value =
            serde_json::from_slice(meta).map_err(|e| ProtocolError::Json(e.to_string()))?;
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .ok_or(ProtocolError::Field("status"))?;
        let result = v.get("result").cloned().unwrap_or(Value::Null);
        let exc = |r: &Value| {
            let msg = match r.get("exc_message") {
                Some(Value::Array(a)) if a.len() == 1 => a[0]
                    .as_str()
                    .map_or_else(|| a[0].to_string(), str::to_owned),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let field = |k: &str| {
                r.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("exc_type"), field("exc_module"), msg)
        };
        Ok(match status {
            "SUCCESS" => Some(TaskResult::Success(result)),
            "FAILURE" => {
                let (exc_type, exc_module, exc_message) = exc(&result);
                Some(TaskResult::Failure {
                    exc_type,
                    exc_module,
                    exc_message,
                    traceback: v
                        .get("traceback")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                })
            }
            "REVOKED" => Some(TaskResult::Revoked(exc(&result).2)),
            _ => None,
        })
    }
}
