//! [`Signature`]: Celery's signature dict, and the constructors of the workflow kinds.

use std::fmt;

use serde_json::{json, Map, Value};

/// What a signature stands for (its `subtask_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A plain task (`subtask_type` null).
    Task,
    /// `chain`: `kwargs.tasks` run one after the other, each result prepended to the
    /// next one's arguments.
    Chain,
    /// `group`: `kwargs.tasks` run in parallel.
    Group,
    /// `chord`: the group `kwargs.header`, then `kwargs.body` with the list of their
    /// results.
    Chord,
    /// `chunks`: `kwargs.task` over `kwargs.it` in `kwargs.n`-sized `celery.starmap`
    /// tasks, sent as a group.
    Chunks,
    /// `xmap`: the task `celery.map` (`kwargs.task` over each item of `kwargs.it`).
    Map,
    /// `xstarmap`: the task `celery.starmap` (`kwargs.task` over each item of `kwargs.it`
    /// as its arguments).
    Starmap,
}

impl Kind {
    fn of(subtask_type: Option<&str>) -> Option<Kind> {
        Some(match subtask_type {
            None => Kind::Task,
            Some("chain") => Kind::Chain,
            Some("group") => Kind::Group,
            Some("chord") => Kind::Chord,
            Some("chunks") => Kind::Chunks,
            Some("xmap") => Kind::Map,
            Some("xstarmap") => Kind::Starmap,
            Some(_) => return None,
        })
    }

    fn subtask_type(self) -> Value {
        match self {
            Kind::Task => Value::Null,
            Kind::Chain => json!("chain"),
            Kind::Group => json!("group"),
            Kind::Chord => json!("chord"),
            Kind::Chunks => json!("chunks"),
            Kind::Map => json!("xmap"),
            Kind::Starmap => json!("xstarmap"),
        }
    }
}

/// A Celery signature: a task name with arguments and options (Python's
/// `add.s(2, 3)`), or a workflow ([`chain`], [`group`], [`chord`], [`chunks`]). Kept as
/// Celery's dict, so fields weft does not use pass through unchanged.
///
/// ```
/// use serde_json::json;
/// use weft::celery::canvas::{chain, Signature};
///
/// let step = Signature::new("add").args([json!(1), json!(2)]);
/// let flow = chain([step, Signature::new("mul").args([json!(10)])]);
/// assert_eq!(flow.name(), "celery.chain");
/// assert_eq!(flow.to_value()["kwargs"]["tasks"][1]["task"], "mul");
/// ```
#[derive(Clone, PartialEq)]
pub struct Signature(Map<String, Value>);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", Value::Object(self.0.clone()))
    }
}

impl Signature {
    /// A signature of the task `name`, without arguments or options.
    pub fn new(name: impl Into<String>) -> Signature {
        Signature::of_kind(name.into(), Kind::Task, Map::new(), false)
    }

    fn of_kind(name: String, kind: Kind, kwargs: Map<String, Value>, immutable: bool) -> Self {
        let mut m = Map::new();
        m.insert("task".into(), json!(name));
        m.insert("args".into(), json!([]));
        m.insert("kwargs".into(), Value::Object(kwargs));
        m.insert("options".into(), json!({}));
        m.insert("subtask_type".into(), kind.subtask_type());
        m.insert("immutable".into(), json!(immutable));
        m.insert("chord_size".into(), Value::Null);
        Signature(m)
    }

    /// Reads Celery's signature dict, checking what weft relies on ([`check`](Self::check)).
    pub fn from_value(v: &Value) -> Result<Signature, String> {
        Signature::check(v)?;
        let mut m = v.as_object().cloned().unwrap_or_default();
        for (field, empty) in [
            ("args", json!([])),
            ("kwargs", json!({})),
            ("options", json!({})),
        ] {
            if m.get(field).is_none_or(Value::is_null) {
                m.insert(field.into(), empty);
            }
        }
        Ok(Signature(m))
    }

    /// Checks Celery's signature dict without copying it: a `task` name, `args` a list,
    /// `kwargs` and `options` objects (or null), a known `subtask_type`, and the parts of
    /// each workflow kind (a chain's and a group's `tasks`, a chord's `header` and `body`,
    /// the `task` and `it` of chunks, map and starmap), recursively. Returns its kind.
    pub fn check(v: &Value) -> Result<Kind, String> {
        let m = v.as_object().ok_or("a signature is not an object")?;
        match m.get("task") {
            Some(Value::String(_)) => {}
            _ => return Err("a signature without a task name".into()),
        }
        for (field, array) in [("args", true), ("kwargs", false), ("options", false)] {
            match m.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Array(_)) if array => {}
                Some(Value::Object(_)) if !array => {}
                Some(_) => return Err(format!("`{field}` has the wrong type")),
            }
        }
        match m.get("immutable") {
            None | Some(Value::Null) | Some(Value::Bool(_)) => {}
            Some(_) => return Err("`immutable` is not a boolean".into()),
        }
        let kind = match m.get("subtask_type") {
            None | Some(Value::Null) => Kind::Task,
            Some(Value::String(t)) => {
                Kind::of(Some(t)).ok_or_else(|| format!("unknown subtask_type {t:?}"))?
            }
            Some(_) => return Err("`subtask_type` is not a string".into()),
        };
        let empty = Map::new();
        let kwargs = m.get("kwargs").and_then(Value::as_object).unwrap_or(&empty);
        let sigs = |v: Option<&Value>, what: &str| -> Result<(), String> {
            match v {
                Some(Value::Array(a)) => a.iter().enumerate().try_for_each(|(i, s)| {
                    Signature::check(s)
                        .map(drop)
                        .map_err(|e| format!("{what}[{i}]: {e}"))
                }),
                _ => Err(format!("`{what}` is not a list of signatures")),
            }
        };
        match kind {
            Kind::Task => {}
            Kind::Chain | Kind::Group => sigs(kwargs.get("tasks"), "tasks")?,
            Kind::Chord => {
                match kwargs.get("header") {
                    Some(h @ Value::Object(_)) => {
                        Signature::check(h).map_err(|e| format!("header: {e}"))?;
                    }
                    h => sigs(h, "header")?,
                }
                match kwargs.get("body") {
                    Some(b @ Value::Object(_)) => {
                        Signature::check(b).map_err(|e| format!("body: {e}"))?;
                    }
                    _ => return Err("a chord without a body".into()),
                }
            }
            Kind::Chunks | Kind::Map | Kind::Starmap => {
                Signature::check(kwargs.get("task").unwrap_or(&Value::Null))
                    .map_err(|e| format!("task: {e}"))?;
                if !kwargs.get("it").is_some_and(Value::is_array) {
                    return Err("`it` is not a list".into());
                }
                if kind == Kind::Chunks && kwargs.get("n").and_then(Value::as_u64).unwrap_or(0) == 0
                {
                    return Err("`n` is not a positive integer".into());
                }
            }
        }
        Ok(kind)
    }

    /// Celery's dict.
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// The task name (`celery.chain`, `celery.group`, ... for the workflow kinds).
    pub fn name(&self) -> &str {
        self.0
            .get("task")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// What it stands for.
    pub fn kind(&self) -> Kind {
        Kind::of(self.0.get("subtask_type").and_then(Value::as_str)).unwrap_or(Kind::Task)
    }

    /// The positional arguments.
    pub fn args_list(&self) -> &[Value] {
        self.0
            .get("args")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// The keyword arguments (for a workflow kind, its parts).
    pub fn kwargs(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match self.0.get("kwargs") {
            Some(Value::Object(m)) => m,
            _ => EMPTY.get_or_init(Map::new),
        }
    }

    /// The options (`task_id`, `queue`, `link`, `link_error`, `group_id`, ...).
    pub fn options(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match self.0.get("options") {
            Some(Value::Object(m)) => m,
            _ => EMPTY.get_or_init(Map::new),
        }
    }

    pub(crate) fn options_mut(&mut self) -> &mut Map<String, Value> {
        if !self.0.get("options").is_some_and(Value::is_object) {
            self.0.insert("options".into(), json!({}));
        }
        match self.0.get_mut("options") {
            Some(Value::Object(m)) => m,
            _ => unreachable!("options was just made an object"),
        }
    }

    pub(crate) fn kwargs_mut(&mut self) -> &mut Map<String, Value> {
        if !self.0.get("kwargs").is_some_and(Value::is_object) {
            self.0.insert("kwargs".into(), json!({}));
        }
        match self.0.get_mut("kwargs") {
            Some(Value::Object(m)) => m,
            _ => unreachable!("kwargs was just made an object"),
        }
    }

    /// True if the results of earlier steps are not prepended to its arguments (Python's
    /// `.si()`).
    pub fn is_immutable(&self) -> bool {
        self.0
            .get("immutable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The task id it will be sent with, once known (`options.task_id`).
    pub fn id(&self) -> Option<&str> {
        self.options().get("task_id").and_then(Value::as_str)
    }

    /// With these positional arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = Value>) -> Signature {
        self.0
            .insert("args".into(), Value::Array(args.into_iter().collect()));
        self
    }

    /// With these keyword arguments.
    pub fn kwargs_map(mut self, kwargs: Map<String, Value>) -> Signature {
        self.0.insert("kwargs".into(), Value::Object(kwargs));
        self
    }

    /// Immutable (`true`: Python's `.si()`): earlier results are not prepended.
    pub fn immutable(mut self, yes: bool) -> Signature {
        self.0.insert("immutable".into(), json!(yes));
        self
    }

    /// With option `key` set (Python's `.set(key=value)`): `queue`, `priority`,
    /// `countdown`, `expires`, `task_id`, `time_limit`, `soft_time_limit`, ...
    pub fn set(mut self, key: &str, value: Value) -> Signature {
        self.options_mut().insert(key.to_owned(), value);
        self
    }

    /// Sent to `queue` (Python's `.set(queue=...)`).
    pub fn queue(self, queue: &str) -> Signature {
        self.set("queue", json!(queue))
    }

    /// With the task id `id` (its result is read under that id).
    pub fn task_id(self, id: &str) -> Signature {
        self.set("task_id", json!(id))
    }

    /// Adds a callback sent with this task's result prepended when it succeeds
    /// (Python's `.link()`; on a chord, the body's).
    pub fn link(mut self, callback: Signature) -> Signature {
        self.push_option("link", callback);
        self
    }

    /// Adds an errback sent with this task's id as its first argument when it fails
    /// (Python's `.link_error()`).
    pub fn link_error(mut self, errback: Signature) -> Signature {
        self.push_option("link_error", errback);
        self
    }

    pub(crate) fn push_option(&mut self, key: &str, sig: Signature) {
        let opts = self.options_mut();
        match opts.get_mut(key) {
            Some(Value::Array(a)) => a.push(sig.to_value()),
            Some(one @ Value::Object(_)) => {
                let first = one.take();
                *one = json!([first, sig.to_value()]);
            }
            _ => {
                opts.insert(key.to_owned(), json!([sig.to_value()]));
            }
        }
    }

    /// The signatures of a list in `kwargs` (`tasks`, `header`), read leniently (what
    /// [`from_value`](Self::from_value) checked).
    pub(crate) fn members(&self, key: &str) -> Vec<Signature> {
        match self.kwargs().get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|s| Signature::from_value(s).ok())
                .collect(),
            // A chord's header may be a group signature.
            Some(v @ Value::Object(_)) => match Signature::from_value(v) {
                Ok(g) if g.kind() == Kind::Group => g.members("tasks"),
                Ok(one) => vec![one],
                Err(_) => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// The signature in `kwargs[key]` (a chord's `body`, a map's `task`).
    pub(crate) fn member(&self, key: &str) -> Option<Signature> {
        self.kwargs()
            .get(key)
            .and_then(|v| Signature::from_value(v).ok())
    }
}

/// A chain: each task's result is prepended to the next one's arguments (Python's
/// `chain(a, b, c)` or `a | b | c`).
pub fn chain(tasks: impl IntoIterator<Item = Signature>) -> Signature {
    let tasks: Vec<Value> = tasks.into_iter().map(|s| s.to_value()).collect();
    let mut kw = Map::new();
    kw.insert("tasks".into(), Value::Array(tasks));
    Signature::of_kind("celery.chain".into(), Kind::Chain, kw, false)
}

/// A group: the tasks run in parallel (Python's `group(a, b)`).
pub fn group(tasks: impl IntoIterator<Item = Signature>) -> Signature {
    let tasks: Vec<Value> = tasks.into_iter().map(|s| s.to_value()).collect();
    let mut kw = Map::new();
    kw.insert("tasks".into(), Value::Array(tasks));
    Signature::of_kind("celery.group".into(), Kind::Group, kw, false)
}

/// A chord: the `header` tasks run in parallel, then `body` with the list of their
/// results, in header order, prepended (Python's `chord(header, body)`).
pub fn chord(header: impl IntoIterator<Item = Signature>, body: Signature) -> Signature {
    let header: Vec<Value> = header.into_iter().map(|s| s.to_value()).collect();
    let mut kw = Map::new();
    kw.insert("header".into(), Value::Array(header));
    kw.insert("body".into(), body.to_value());
    kw.insert("kwargs".into(), json!({}));
    Signature::of_kind("celery.chord".into(), Kind::Chord, kw, false)
}

/// `task` over `items` (each a list of arguments) in tasks of `n` items each
/// (`celery.starmap`), sent as a group (Python's `add.chunks(items, n)`).
pub fn chunks(task: Signature, items: Vec<Value>, n: usize) -> Signature {
    let mut kw = Map::new();
    kw.insert("task".into(), task.to_value());
    kw.insert("it".into(), Value::Array(items));
    kw.insert("n".into(), json!(n));
    Signature::of_kind("celery.chunks".into(), Kind::Chunks, kw, true)
}

/// One task, `celery.map`, that runs `task` on each of `items` in turn and returns the
/// list of results (Python's `add.map(items)`).
pub fn xmap(task: Signature, items: Vec<Value>) -> Signature {
    basemap("celery.map", Kind::Map, task, items)
}

/// One task, `celery.starmap`, that runs `task` with each of `items` (a list of
/// arguments) in turn and returns the list of results (Python's `add.starmap(items)`).
pub fn xstarmap(task: Signature, items: Vec<Value>) -> Signature {
    basemap("celery.starmap", Kind::Starmap, task, items)
}

fn basemap(name: &str, kind: Kind, task: Signature, items: Vec<Value>) -> Signature {
    let mut kw = Map::new();
    kw.insert("task".into(), task.to_value());
    kw.insert("it".into(), Value::Array(items));
    Signature::of_kind(name.into(), kind, kw, true)
}
