//! Celery's message protocol v2, JSON only, as the Redis transport carries it (kombu's
//! envelope), and the result records of Celery's Redis result backend.
//!
//! # The envelope (one Redis list entry)
//!
//! ```text
//! {"body": base64(JSON [args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]),
//!  "content-type": "application/json", "content-encoding": "utf-8",
//!  "headers": {"lang", "task", "id", "root_id", "parent_id", "group", "eta", "expires",
//!              "retries", "timelimit": [hard, soft], "argsrepr", "kwargsrepr", "origin", ..},
//!  "properties": {"correlation_id", "reply_to", "delivery_mode", "priority",
//!                 "delivery_info": {"exchange", "routing_key"}, "body_encoding": "base64",
//!                 "delivery_tag"}}
//! ```
//!
//! Only `application/json` bodies are accepted: any other content type (pickle, yaml,
//! msgpack) is refused with [`ProtocolError::ContentType`] before the body is looked at, so
//! pickle is never deserialized. Headers this module does not know are kept
//! ([`TaskMessage::extra_headers`]) and ignored.
//!
//! The golden tests decode the list entries that the real Python Celery (5.7, kombu 5.7)
//! wrote, kept in `tests/fixtures/celery/` with the script that captured them.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

pub use super::iso8601::{format_iso8601, parse_iso8601};

/// The fields of a Redis envelope (kombu's `prepare_message`); any other is refused.
const ENVELOPE_FIELDS: [&str; 5] = [
    "body",
    "content-encoding",
    "content-type",
    "headers",
    "properties",
];

/// The only content type weft reads or writes.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Why a list entry is not a task message weft can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The entry, or its body, is not valid JSON.
    Json(String),
    /// A content type other than JSON (pickle, yaml, msgpack...): refused unread.
    ContentType(String),
    /// A body encoding other than `base64`, or base64 that does not decode.
    BodyEncoding(String),
    /// A field the protocol requires is missing or has the wrong type.
    Field(&'static str),
    /// The envelope has a field kombu's Redis transport never writes. (Unknown *headers*
    /// are accepted: Celery adds new ones from version to version, and ignores those it
    /// does not know.)
    UnknownField(String),
    /// A workflow field of the embed (`callbacks`, `errbacks`, `chain`, `chord`) that is
    /// not what Celery writes.
    Canvas(String),
    /// An `eta` or `expires` header that is not an ISO 8601 date-time (refused, not run
    /// at once as if it had none): the header's name and value.
    Date(&'static str, String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Json(e) => write!(f, "invalid JSON: {e}"),
            ProtocolError::ContentType(t) => write!(
                f,
                "refused content type {t:?}: weft accepts {CONTENT_TYPE_JSON} only (never pickle)"
            ),
            ProtocolError::BodyEncoding(e) => write!(f, "bad body encoding: {e}"),
            ProtocolError::Date(name, v) => write!(
                f,
                "unreadable {name} {v:?} (expected an ISO 8601 date-time, as Celery writes it)"
            ),
            ProtocolError::Field(name) => write!(f, "missing or malformed field {name:?}"),
            ProtocolError::UnknownField(name) => write!(
                f,
                "unknown envelope field {name:?} (expected body, content-type, \
                 content-encoding, headers, properties)"
            ),
            ProtocolError::Canvas(e) => write!(f, "malformed workflow in the embed: {e}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A task message (protocol v2), decoded; [`TaskMessage::encode`] writes it back as an
/// envelope, [`TaskMessage::decode`] reads one.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// The task id (`headers.id`, also `properties.correlation_id`).
    pub id: String,
    /// The task name (`headers.task`).
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// The body's third element: `callbacks`, `errbacks`, `chain`, `chord` (kept, unused).
    pub embed: Value,
    /// Do not run before this time (ISO 8601, `headers.eta`).
    pub eta: Option<String>,
    /// Do not run after this time (ISO 8601, `headers.expires`).
    pub expires: Option<String>,
    /// How many times the task was retried.
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds.
    pub timelimit: (Option<f64>, Option<f64>),
    /// The first task of the workflow.
    pub root_id: Option<String>,
    /// The task that sent this one.
    pub parent_id: Option<String>,
    /// The group this task belongs to.
    pub group: Option<String>,
    /// A display form of the arguments.
    pub argsrepr: Option<String>,
    /// A display form of the keyword arguments.
    pub kwargsrepr: Option<String>,
    /// `pid@host` of the sender.
    pub origin: Option<String>,
    /// `lang` of the sender (`"py"` for Python Celery; weft writes `"rs"`).
    pub lang: String,
    /// The message priority (0..=255; on Redis 0 is served first).
    pub priority: u8,
    /// The sender's reply queue (unused by the Redis result backend).
    pub reply_to: Option<String>,
    /// `delivery_info.exchange` (`""` for the default exchange).
    pub exchange: String,
    /// `delivery_info.routing_key`: the queue.
    pub routing_key: String,
    /// kombu's delivery tag: the key of the message in `unacked`.
    pub delivery_tag: String,
    /// Headers not listed above, kept as they came.
    pub extra_headers: Map<String, Value>,
}

/// The headers [`TaskMessage`] reads into its own fields.
const KNOWN_HEADERS: &[&str] = &[
    "id",
    "task",
    "eta",
    "expires",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "group",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "lang",
];

impl TaskMessage {
    /// A new message for `task` with a fresh id (UUID v4), as `send_task` makes it: routed
    /// to the queue `celery`, priority 0, no eta, no expiry.
    pub fn new(task: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let argsrepr = Value::Array(args.clone()).to_string();
        let kwargsrepr = Value::Object(kwargs.clone()).to_string();
        TaskMessage {
            root_id: Some(id.clone()),
            id,
            task: task.into(),
            args,
            kwargs,
            embed: json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null}),
            eta: None,
            expires: None,
            retries: 0,
            timelimit: (None, None),
            parent_id: None,
            group: None,
            argsrepr: Some(argsrepr),
            kwargsrepr: Some(kwargsrepr),
            origin: Some(origin()),
            lang: "rs".into(),
            priority: 0,
            reply_to: None,
            exchange: String::new(),
            routing_key: "celery".into(),
            delivery_tag: uuid::Uuid::new_v4().to_string(),
            // The other headers Python Celery 5 writes, with its defaults.
            extra_headers: match json!({
                "shadow": null, "group_index": null, "ignore_result": false,
                "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {},
            }) {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        }
    }

    /// Decodes a list entry (the envelope's JSON bytes).
    pub fn decode(raw: &[u8]) -> Result<TaskMessage, ProtocolError> {
        let envelope: Value =
            serde_json::from_slice(raw).map_err(|e| ProtocolError::Json(e.to_string()))?;
        TaskMessage::from_envelope(&envelope)
    }

    /// Decodes an envelope already parsed as JSON.
    pub fn from_envelope(envelope: &Value) -> Result<TaskMessage, ProtocolError> {
        let env = envelope
            .as_object()
            .ok_or(ProtocolError::Field("envelope"))?;
        if let Some(unknown) = env.keys().find(|k| !ENVELOPE_FIELDS.contains(&k.as_str())) {
            return Err(ProtocolError::UnknownField(unknown.clone()));
        }
        // The content type first: nothing else of a non-JSON message is read.
        let content_type = env
            .get("content-type")
            .and_then(Value::as_str)
            .ok_or(ProtocolError::Field("content-type"))?;
        check_content_type(
            content_type,
            env.get("content-encoding").and_then(Value::as_str),
        )?;
        let empty = Map::new();
        let props = match env.get("properties") {
            Some(Value::Object(p)) => p,
            None => &empty,
            Some(_) => return Err(ProtocolError::Field("properties")),
        };
        let headers = env
            .get("headers")
            .and_then(Value::as_object)
            .ok_or(ProtocolError::Field("headers"))?;
        let body = env
            .get("body")
            .and_then(Value::as_str)
            .ok_or(ProtocolError::Field("body"))?;
        let body: Value = match props.get("body_encoding").and_then(Value::as_str) {
            Some("base64") => {
                let bytes = BASE64
                    .decode(body.trim())
                    .map_err(|e| ProtocolError::BodyEncoding(format!("base64: {e}")))?;
                serde_json::from_slice(&bytes).map_err(|e| ProtocolError::Json(e.to_string()))?
            }
            None => serde_json::from_str(body).map_err(|e| ProtocolError::Json(e.to_string()))?,
            Some(other) => {
                return Err(ProtocolError::BodyEncoding(format!(
                    "body_encoding {other:?}"
                )))
            }
        };
        TaskMessage::from_parts(headers, props, body)
    }

    /// The transport-independent part of decoding: a message from its headers, its
    /// properties (kombu's names: `correlation_id`, `reply_to`, `priority`,
    /// `delivery_info: {exchange, routing_key}`, `delivery_tag`) and its body, already
    /// parsed as JSON. The caller has checked the content type ([`check_content_type`])
    /// before parsing the body. Shared by the Redis envelope ([`TaskMessage::from_envelope`])
    /// and AMQP (`weft::celery::amqp`).
    pub fn from_parts(
        headers: &Map<String, Value>,
        props: &Map<String, Value>,
        body: Value,
    ) -> Result<TaskMessage, ProtocolError> {
        let Value::Array(mut parts) = body else {
            return Err(ProtocolError::Field("body"));
        };
        if parts.len() < 2 || parts.len() > 3 {
            return Err(ProtocolError::Field("body"));
        }
        let embed = if parts.len() == 3 {
            parts.pop().unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let kwargs = match parts.pop() {
            Some(Value::Object(m)) => m,
            Some(Value::Null) => Map::new(),
            _ => return Err(ProtocolError::Field("kwargs")),
        };
        let args = match parts.pop() {
            Some(Value::Array(a)) => a,
            Some(Value::Null) => Vec::new(),
            _ => return Err(ProtocolError::Field("args")),
        };

        let s = |k: &'static str| -> Result<Option<String>, ProtocolError> {
            match headers.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(v)) => Ok(Some(v.clone())),
                Some(_) => Err(ProtocolError::Field(k)),
            }
        };
        let id = s("id")?.ok_or(ProtocolError::Field("id"))?;
        let task = s("task")?.ok_or(ProtocolError::Field("task"))?;
        let retries = match headers.get("retries") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(ProtocolError::Field("retries"))?,
        };
        let limit = |v: Option<&Value>| -> Result<Option<f64>, ProtocolError> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .map(Some)
                    .ok_or(ProtocolError::Field("timelimit")),
            }
        };
        let timelimit = match headers.get("timelimit") {
            None | Some(Value::Null) => (None, None),
            Some(Value::Array(a)) if a.len() == 2 => (limit(a.first())?, limit(a.get(1))?),
            Some(_) => return Err(ProtocolError::Field("timelimit")),
        };
        let priority = match props.get("priority") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .map(|p| p.min(255) as u8)
                .ok_or(ProtocolError::Field("priority"))?,
        };
        let info = props.get("delivery_info").and_then(Value::as_object);
        let info_str = |k: &str| {
            info.and_then(|i| i.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let prop_str = |k: &str| props.get(k).and_then(Value::as_str).map(str::to_owned);
        let extra_headers = headers
            .iter()
            .filter(|(k, _)| !KNOWN_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // A workflow Celery would not have written is refused now, not dropped later.
        super::canvas::Embed::check(&embed)?;
        // A date that cannot be read is refused, not ignored (the task would run at once,
        // or never expire).
        let date = |name: &'static str| -> Result<Option<String>, ProtocolError> {
            let v = s(name)?;
            match v.as_deref() {
                Some(d) if parse_iso8601(d).is_none() => {
                    Err(ProtocolError::Date(name, d.to_owned()))
                }
                _ => Ok(v),
            }
        };
        Ok(TaskMessage {
            eta: date("eta")?,
            expires: date("expires")?,
            root_id: s("root_id")?,
            parent_id: s("parent_id")?,
            group: s("group")?,
            argsrepr: s("argsrepr")?,
            kwargsrepr: s("kwargsrepr")?,
            origin: s("origin")?,
            lang: s("lang")?.unwrap_or_default(),
            id,
            task,
            args,
            kwargs,
            embed,
            retries,
            timelimit,
            priority,
            reply_to: prop_str("reply_to"),
            exchange: info_str("exchange"),
            routing_key: info_str("routing_key"),
            delivery_tag: prop_str("delivery_tag").unwrap_or_default(),
            extra_headers,
        })
    }

    /// The body `[args, kwargs, embed]`, as every transport carries it.
    pub fn body(&self) -> Value {
        json!([self.args, self.kwargs, self.embed])
    }

    /// [`body`](Self::body) as JSON text, written straight from the fields (a long
    /// chain in the embed is not copied into a new value first).
    pub fn body_text(&self) -> String {
        serde_json::to_string(&(&self.args, &self.kwargs, &self.embed))
            .unwrap_or_else(|_| "[[],{},null]".into())
    }

    /// The Celery headers (`lang`, `task`, `id`, `eta`, ..., and [`extra_headers`]), as
    /// every transport carries them.
    ///
    /// [`extra_headers`]: TaskMessage::extra_headers
    pub fn headers(&self) -> Map<String, Value> {
        let mut headers = Map::new();
        for (k, v) in &self.extra_headers {
            headers.insert(k.clone(), v.clone());
        }
        let opt = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| json!(s));
        // A whole number of seconds as an integer, as Python writes `time_limit=60` (on
        // AMQP the type shows: `I`, not `d`).
        let limit = |v: Option<f64>| match v {
            Some(x) if x.fract() == 0.0 && (0.0..=i32::MAX as f64).contains(&x) => json!(x as i64),
            other => json!(other),
        };
        let known = [
            ("lang", json!(self.lang)),
            ("task", json!(self.task)),
            ("id", json!(self.id)),
            ("eta", opt(&self.eta)),
            ("expires", opt(&self.expires)),
            ("group", opt(&self.group)),
            ("retries", json!(self.retries)),
            (
                "timelimit",
                json!([limit(self.timelimit.0), limit(self.timelimit.1)]),
            ),
            ("root_id", opt(&self.root_id)),
            ("parent_id", opt(&self.parent_id)),
            ("argsrepr", opt(&self.argsrepr)),
            ("kwargsrepr", opt(&self.kwargsrepr)),
            ("origin", opt(&self.origin)),
        ];
        for (k, v) in known {
            headers.insert(k.to_owned(), v);
        }
        headers
    }

    /// The envelope as JSON, as Python Celery writes it.
    pub fn to_envelope(&self) -> Value {
        let headers = self.headers();
        let mut props = Map::new();
        props.insert("correlation_id".into(), json!(self.id));
        if let Some(r) = &self.reply_to {
            props.insert("reply_to".into(), json!(r));
        }
        props.insert("delivery_mode".into(), json!(2));
        props.insert(
            "delivery_info".into(),
            json!({"exchange": self.exchange, "routing_key": self.routing_key}),
        );
        props.insert("priority".into(), json!(self.priority));
        props.insert("body_encoding".into(), json!("base64"));
        props.insert("delivery_tag".into(), json!(self.delivery_tag));
        json!({
            "body": BASE64.encode(self.body_text()),
            "content-encoding": "utf-8",
            "content-type": CONTENT_TYPE_JSON,
            "headers": headers,
            "properties": props,
        })
    }

    /// The envelope's JSON text: what goes into the Redis list.
    pub fn encode(&self) -> String {
        self.to_envelope().to_string()
    }

    /// The arguments as one JSON value for a [`Registry`](crate::registry::Registry) task:
    /// the positional arguments as an array (`add(2, 3)` → `[2, 3]`, which fits a tuple);
    /// keyword arguments alone as an object (which fits a struct); both as the array with
    /// the object appended as its last element.
    /// A call with no arguments is `[]`, which fits a task taking `Vec<T>`; the worker also
    /// accepts it for a task taking `()` (tried as `null` when `[]` does not fit).
    pub fn registry_args(&self) -> Value {
        match (self.args.is_empty(), self.kwargs.is_empty()) {
            (_, true) => Value::Array(self.args.clone()),
            (true, false) => Value::Object(self.kwargs.clone()),
            (false, false) => {
                let mut a = self.args.clone();
                a.push(Value::Object(self.kwargs.clone()));
                Value::Array(a)
            }
        }
    }
}

/// Refuses a message that is not JSON in UTF-8 (pickle, yaml, msgpack, other charsets),
/// before anything else of it is read: `content_encoding` may be absent, `utf-8` or `utf8`.
pub fn check_content_type(
    content_type: &str,
    content_encoding: Option<&str>,
) -> Result<(), ProtocolError> {
    if content_type != CONTENT_TYPE_JSON {
        return Err(ProtocolError::ContentType(content_type.to_owned()));
    }
    if let Some(enc) = content_encoding {
        if !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8") {
            return Err(ProtocolError::BodyEncoding(format!(
                "content-encoding {enc:?}"
            )));
        }
    }
    Ok(())
}

/// `pid@host` of this process, as Celery's `origin` header.
/// `<pid>@<host>`, as Celery names a process (a message's `origin` header).
pub(crate) fn origin() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{}@{}", std::process::id(), host)
}

#[cfg(test)]
pub(crate) mod tests;
