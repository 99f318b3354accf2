//! [`Registry`]: named tasks, each a typed Rust function over serde values, with its
//! per-task defaults ([`TaskOptions`], among them a Celery [`RateLimit`], in `rate.rs`).
//! Built with the `service` or the `redis` feature; shared by the node-local service
//! (`weft::service`, which re-exports it) and the Celery worker (`weft::celery`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::{Priority, RetryPolicy};

mod rate;

pub use rate::{RateLimit, RateLimitError};

/// One run of a task, with its arguments already decoded: the value as JSON, or the
/// error's message. Called once per attempt.
pub(crate) type Invoke = Box<dyn FnMut() -> Result<Value, String> + Send>;

/// Decodes a submission's arguments into an [`Invoke`], or says why they do not fit.
type Prepare = dyn Fn(Value) -> Result<Invoke, serde_json::Error> + Send + Sync;

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
    shared_rate_limit: Option<RateLimit>,
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

    /// weft's extension of Celery's `rate_limit`: a limit shared by every weft Celery
    /// worker (feature `redis`) on the same Redis (the broker, or the result backend when
    /// the broker is RabbitMQ), whatever their number: together they start this task's
    /// runs at most at this rate, [`RateLimit::interval`] apart, in any one-second window
    /// (give or take a start or two). It applies with the per-worker
    /// [`rate_limit`](Self::rate_limit) when both are set. Each worker takes its starts
    /// from a schedule kept in Redis, a few at a time in one script call (about a tenth
    /// of a second's worth); a task waiting for its start is held by the worker and
    /// counts against its prefetch, as a rate-limited task does in Celery, so no worker
    /// hoards the limited tasks. A worker that dies leaves only the few starts it had
    /// taken unused, once; while the limit's Redis does not answer, the limited tasks
    /// wait. Python Celery workers on the same queues do not know it: give such tasks
    /// their own queue. `None` removes it.
    ///
    /// ```
    /// use weft::registry::{RateLimit, TaskOptions};
    ///
    /// let opts = TaskOptions::new().shared_rate_limit(RateLimit::per_second(20));
    /// assert_eq!(opts.get_shared_rate_limit().unwrap().to_string(), "20/s");
    /// ```
    pub fn shared_rate_limit(mut self, limit: impl Into<Option<RateLimit>>) -> Self {
        self.shared_rate_limit = limit.into();
        self
    }

    /// The task's shared rate limit, if set.
    pub fn get_shared_rate_limit(&self) -> Option<RateLimit> {
        self.shared_rate_limit
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

/// A registered task.
#[derive(Clone)]
pub(crate) struct Registered {
    pub options: TaskOptions,
    prepare: Arc<Prepare>,
}

impl Registered {
    /// Decodes `args` for this task: the attempt to run, or serde's reason.
    pub fn prepare(&self, args: Value) -> Result<Invoke, serde_json::Error> {
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
    tasks: BTreeMap<String, Registered>,
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
        let prepare = move |args: Value| -> Result<Invoke, serde_json::Error> {
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
            Registered {
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

    pub(crate) fn get(&self, name: &str) -> Option<&Registered> {
        self.tasks.get(name)
    }

    #[cfg_attr(not(feature = "service"), allow(dead_code))]
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &Registered)> {
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
