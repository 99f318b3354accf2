//! The body of `POST /v1/tasks/{name}`, one definition for both ends: the node reads it
//! ([`http`](super::http), then [`App::plan`](super::app::App::plan)) and reads it again
//! from its durable store after a restart ([`recover`](super::recover)); the client writes
//! it ([`SubmitOptions`](super::client::SubmitOptions)). [`PriorityName`] is also how the
//! registry's answer names a task's lane.
//!
//! Every field is optional and unknown fields are refused. The client leaves an unset
//! option out rather than writing `null`, so that what it sends is what older nodes read.
//! The field names, and the names of the structs (which serde's message for a body that is
//! an array quotes), are the wire's: bodies already kept in a durable store must still
//! parse, and a bad body must still get the same message.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Priority, RetryPolicy};

/// The body of `POST /v1/tasks/{name}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitRequest {
    /// The task's arguments; `null` when left out.
    #[serde(default)]
    pub args: Value,
    /// The lane, instead of the task's registered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<PriorityName>,
    /// Runs no sooner than this many milliseconds from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Fails an attempt that runs longer, instead of the task's registered limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    /// The retry policy, instead of the task's registered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// A lane, by its name on the wire: `"high"`, `"normal"`, `"low"`, as
/// [`Priority::as_str`] writes it (a test checks that they agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PriorityName {
    High,
    Normal,
    Low,
}

impl From<PriorityName> for Priority {
    fn from(p: PriorityName) -> Priority {
        match p {
            PriorityName::High => Priority::High,
            PriorityName::Normal => Priority::Normal,
            PriorityName::Low => Priority::Low,
        }
    }
}

impl From<Priority> for PriorityName {
    fn from(p: Priority) -> PriorityName {
        match p {
            Priority::High => PriorityName::High,
            Priority::Normal => PriorityName::Normal,
            Priority::Low => PriorityName::Low,
        }
    }
}

/// A field that is a [`Priority`], written by its [`PriorityName`]: for
/// `#[serde(with = "...")]` where the lane is not part of a submission (the registry's
/// answer, [`RegisteredTask`](crate::service::client::RegisteredTask)).
pub(crate) mod priority_by_name {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::PriorityName;
    use crate::Priority;

    pub(crate) fn serialize<S: Serializer>(p: &Priority, s: S) -> Result<S::Ok, S::Error> {
        PriorityName::from(*p).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Priority, D::Error> {
        PriorityName::deserialize(d).map(Priority::from)
    }
}

/// A retry policy given with one submission; unset fields take the defaults of
/// [`policy`](Self::policy).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrySpec {
    /// Attempts in all, the first included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The wait before the first retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// The longest wait between attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    /// 1 (fixed backoff) or 2 (exponential); nothing else is accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// Random spread of each wait, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

impl RetrySpec {
    /// The policy it asks for, or what is wrong with it.
    pub fn policy(self) -> Result<RetryPolicy, String> {
        let backoff = Duration::from_millis(self.backoff_ms.unwrap_or(1000));
        let mut policy = match self.multiplier {
            None | Some(1.0) => RetryPolicy::fixed(backoff),
            Some(2.0) => RetryPolicy::exponential(backoff),
            Some(m) => {
                return Err(format!(
                "retry.multiplier {m} is not supported: use 1 (fixed backoff) or 2 (exponential)"
            ))
            }
        };
        if let Some(n) = self.max_attempts {
            policy = policy.max_attempts(n);
        }
        if let Some(max) = self.max_backoff_ms {
            policy = policy.max_delay(Duration::from_millis(max));
        }
        if let Some(j) = self.jitter {
            if !(0.0..=1.0).contains(&j) {
                return Err(format!(
                    "retry.jitter {j} is out of range: it must be between 0 and 1"
                ));
            }
            policy = policy.jitter(j);
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests;
