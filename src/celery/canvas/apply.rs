//! Sending a signature: Celery 5.7's `apply_async` of each kind (`Signature`, `chain`,
//! `group`, `chord`, `chunks`, `xmap`/`xstarmap`), as a list of [`Op`]s for a transport
//! to carry out in order (messages to send, chord sizes to set in the result backend).
//!
//! It follows `celery/canvas.py` and `Celery.send_task`: arguments passed on are
//! prepended unless the signature is immutable; options merge with the signature's own
//! winning only where Celery lets them (`group_id` stays); a group's tasks get its
//! `group_id` and their `group_index`; a chord's header tasks carry the frozen body as
//! `chord` and the chord size is set before the last header task is sent; a chain's first
//! task carries the rest, last step first, as `chain`, and a group followed by a step
//! becomes a chord. A message sent while a task runs (a worker passing a workflow on)
//! gets that task as `parent_id`, and its `root_id`.

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::freeze::{
    chord_header, chunks_group, descend, freeze, header_id, led_by_task, unchain, unroll,
    unroll_body, Freeze,
};
use super::signature::{Kind, Signature};
use crate::celery::protocol::{format_iso8601, TaskMessage};

/// One step of sending a workflow, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Send this message.
    Send(Box<TaskMessage>),
    /// The chord of group `group` has `size` header results to wait for: Celery's
    /// `set_chord_size` (`DEL <group key>.c`, `SET <group key>.s size`).
    ChordSize { group: String, size: usize },
}

/// A run of [`Op`]s a transport carries out at once: messages to send together, or a
/// chord size to write before the messages after it.
pub(crate) enum Batch<'a> {
    /// Consecutive messages.
    Send(Vec<&'a TaskMessage>),
    /// [`Op::ChordSize`].
    ChordSize { group: &'a str, size: usize },
}

/// `ops` in order, consecutive messages together.
pub(crate) fn batches(ops: &[Op]) -> Vec<Batch<'_>> {
    let mut out: Vec<Batch<'_>> = Vec::new();
    for op in ops {
        match (op, out.last_mut()) {
            (Op::Send(m), Some(Batch::Send(msgs))) => msgs.push(m),
            (Op::Send(m), _) => out.push(Batch::Send(vec![m])),
            (Op::ChordSize { group, size }, _) => out.push(Batch::ChordSize { group, size: *size }),
        }
    }
    out
}

/// The task running where a workflow is sent from (Celery's `current_worker_task`).
#[derive(Debug, Clone)]
pub(crate) struct Parent {
    pub id: String,
    pub root_id: String,
}

/// The handle of what was sent: a task's result, or a group's (Celery's `as_tuple`).
#[derive(Debug, Clone, PartialEq)]
pub enum ResultRef {
    /// The result of one task, by id.
    Task(String),
    /// A group: its id and its members.
    Group(String, Vec<ResultRef>),
}

impl ResultRef {
    /// The id: the task's, or the group's.
    pub fn id(&self) -> &str {
        match self {
            ResultRef::Task(id) | ResultRef::Group(id, _) => id,
        }
    }

    /// Celery's `as_tuple()`: `[[id, null], null]` for a task, `[[group id, null],
    /// [member, ...]]` for a group (how `children` and a `GroupResult` are stored).
    pub fn as_tuple(&self) -> Value {
        match self {
            ResultRef::Task(id) => json!([[id, null], null]),
            ResultRef::Group(id, members) => json!([
                [id, null],
                members.iter().map(ResultRef::as_tuple).collect::<Vec<_>>()
            ]),
        }
    }
}

/// Why a signature could not be sent; the sending task fails with it, as in Celery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError(pub String);

/// Options Celery never lets an `apply_async` change once a signature has them.
const IMMUTABLE_OPTIONS: [&str; 2] = ["group_id", "stamped_headers"];

pub(super) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Celery's `Signature._merge`: `extra` options win over the signature's, except the
/// immutable ones it already has.
fn merge_options(own: &Map<String, Value>, extra: Map<String, Value>) -> Map<String, Value> {
    let mut out = own.clone();
    for (k, v) in extra {
        if !IMMUTABLE_OPTIONS.contains(&k.as_str()) || !own.contains_key(&k) {
            out.insert(k, v);
        }
    }
    out
}

/// Celery's `maybe_list` of signatures in an option (`link`, `link_error`, `chain`).
pub(crate) fn sig_list(v: Option<&Value>) -> Vec<Signature> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| Signature::from_value(s).ok())
            .collect(),
        Some(s @ Value::Object(_)) => Signature::from_value(s).into_iter().collect(),
        _ => Vec::new(),
    }
}

pub(super) fn sig_values(sigs: &[Signature]) -> Value {
    Value::Array(sigs.iter().map(Signature::to_value).collect())
}

/// Sends signatures: collects the [`Op`]s of each `apply_async`.
pub(crate) struct Apply<'a> {
    parent: Option<&'a Parent>,
    /// What to do, in order.
    pub ops: Vec<Op>,
}

impl<'a> Apply<'a> {
    /// Sending from `parent` (a running task), or from outside any task.
    pub fn new(parent: Option<&'a Parent>) -> Apply<'a> {
        Apply {
            parent,
            ops: Vec::new(),
        }
    }

    /// Celery's `sig.apply_async(args, kwargs, **options)` (options that are `null` are
    /// dropped, as Celery does).
    pub fn apply_async(
        &mut self,
        sig: &Signature,
        args: &[Value],
        kwargs: &Map<String, Value>,
        mut options: Map<String, Value>,
    ) -> Result<ResultRef, ApplyError> {
        options.retain(|_, v| !v.is_null());
        match sig.kind() {
            Kind::Task => {
                let (args, kwargs, opts) = merge(sig, args, kwargs, options);
                Ok(self.send_task(sig.name(), args, kwargs, opts))
            }
            Kind::Map | Kind::Starmap => {
                // Arguments passed on are ignored: the task and items are its kwargs.
                let opts = merge_options(sig.options(), options);
                let mut kw = Map::new();
                for k in ["task", "it"] {
                    kw.insert(k.into(), sig.kwargs().get(k).cloned().unwrap_or(json!([])));
                }
                Ok(self.send_task(sig.name(), Vec::new(), kw, opts))
            }
            Kind::Chunks => {
                let g = chunks_group(sig);
                self.apply_async(&g, args, kwargs, options)
            }
            Kind::Group => self.group(sig, args, kwargs, options),
            Kind::Chord => self.chord(sig, args, kwargs, options),
            Kind::Chain => {
                let mut opts = sig.options().clone();
                opts.extend(options);
                self.chain(sig, args, kwargs, opts)
            }
        }
    }

    /// `Celery.send_task` with the options of a signature: one message.
    fn send_task(
        &mut self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        mut opts: Map<String, Value>,
    ) -> ResultRef {
        let s = |k: &str| opts.get(k).and_then(Value::as_str).map(str::to_owned);
        let mut msg = TaskMessage::new(name, args, kwargs);
        msg.id = s("task_id").unwrap_or_else(new_id);
        msg.parent_id = s("parent_id").or_else(|| self.parent.map(|p| p.id.clone()));
        msg.root_id = s("root_id")
            .or_else(|| self.parent.map(|p| p.root_id.clone()))
            .or_else(|| Some(msg.id.clone()));
        msg.group = s("group_id");
        if let Some(i) = opts.get("group_index").filter(|v| !v.is_null()) {
            msg.extra_headers.insert("group_index".into(), i.clone());
        }
        for k in [
            "shadow",
            "ignore_result",
            "replaced_task_nesting",
            "stamped_headers",
        ] {
            if let Some(v) = opts.get(k) {
                msg.extra_headers.insert(k.into(), v.clone());
            }
        }
        let now = SystemTime::now();
        let secs = |v: &Value| v.as_f64().and_then(|s| Duration::try_from_secs_f64(s).ok());
        msg.eta = match (opts.get("countdown"), opts.get("eta")) {
            (Some(c), _) if secs(c).is_some() => secs(c).map(|d| format_iso8601(now + d)),
            (_, Some(Value::String(eta))) => Some(eta.clone()),
            _ => None,
        };
        msg.expires = match opts.get("expires") {
            Some(Value::String(e)) => Some(e.clone()),
            Some(v) => secs(v).map(|d| format_iso8601(now + d)),
            None => None,
        };
        let limit = |k: &str| opts.get(k).and_then(Value::as_f64);
        msg.timelimit = (limit("time_limit"), limit("soft_time_limit"));
        if let Some(p) = opts.get("priority").and_then(Value::as_u64) {
            msg.priority = p.min(255) as u8;
        }
        if let Some(r) = opts.get("retries").and_then(Value::as_u64) {
            msg.retries = u32::try_from(r).unwrap_or(u32::MAX);
        }
        msg.reply_to = s("reply_to");
        // Routing: a queue by name (Celery routes it through the default exchange of
        // that name: the queue itself), or an explicit exchange and routing key.
        let queue = match opts.get("queue") {
            Some(Value::String(q)) => Some(q.clone()),
            Some(Value::Object(q)) => q.get("name").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        if let Some(rk) = s("routing_key").or(queue) {
            msg.routing_key = rk;
        }
        if let Some(ex) = s("exchange") {
            if !ex.is_empty() && ex != msg.routing_key {
                msg.exchange = ex;
            }
        }
        // The signatures go as they are (moved, not copied: a chain's rest can be long).
        let mut embed = |k: &str| match opts.remove(k) {
            Some(Value::Array(a)) if !a.is_empty() => Value::Array(a),
            Some(one @ Value::Object(_)) => Value::Array(vec![one]),
            _ => Value::Null,
        };
        // Built by hand: `json!` would serialize the values again (a copy).
        let mut e = Map::new();
        e.insert("callbacks".into(), embed("link"));
        e.insert("errbacks".into(), embed("link_error"));
        e.insert("chain".into(), embed("chain"));
        e.insert("chord".into(), opts.remove("chord").unwrap_or(Value::Null));
        msg.embed = Value::Object(e);
        let id = msg.id.clone();
        self.ops.push(Op::Send(Box::new(msg)));
        ResultRef::Task(id)
    }

    /// `group.apply_async`: each task with the group's id and its index; a chord size is
    /// set before the last task of a chord header is sent.
    fn group(
        &mut self,
        sig: &Signature,
        args: &[Value],
        kwargs: &Map<String, Value>,
        options: Map<String, Value>,
    ) -> Result<ResultRef, ApplyError> {
        if options.contains_key("link") {
            return Err(ApplyError("Cannot add link to group: use a chord".into()));
        }
        if options.contains_key("link_error") {
            return Err(ApplyError(
                "Cannot add link to group: do that on individual tasks".into(),
            ));
        }
        let mut options = merge_options(sig.options(), options);
        let gid = match options.remove("task_id") {
            Some(Value::String(id)) => id,
            _ => new_id(),
        };
        options.insert("group_id".into(), json!(gid));
        let root_id = options
            .get("root_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut tasks = Vec::new();
        unroll(sig, &gid, root_id.as_deref(), &mut tasks);
        let chord = options.remove("chord");
        let mut size = 0;
        let mut refs = Vec::with_capacity(tasks.len());
        let n = tasks.len();
        for (i, task) in tasks.iter().enumerate() {
            let chord_obj = chord
                .clone()
                .or_else(|| task.options().get("chord").cloned());
            size += descend(task);
            if chord_obj.is_some() && i + 1 == n {
                self.ops.push(Op::ChordSize {
                    group: gid.clone(),
                    size,
                });
            }
            let mut opts = options.clone();
            if let Some(c) = chord_obj {
                opts.insert("chord".into(), c);
            }
            refs.push(self.apply_async(task, args, kwargs, opts)?);
        }
        Ok(ResultRef::Group(gid, refs))
    }

    /// `chord.apply_async` + `chord.run`: the body frozen (with the options passed on,
    /// `chain` included, but not `parent_id`), each header task frozen with the group id,
    /// its index and the body as `chord`, then the header sent as a group.
    fn chord(
        &mut self,
        sig: &Signature,
        args: &[Value],
        kwargs: &Map<String, Value>,
        mut options: Map<String, Value>,
    ) -> Result<ResultRef, ApplyError> {
        let args = prepend(sig, args);
        let mut kw = sig
            .kwargs()
            .get("kwargs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        kw.extend(kwargs.clone());
        let mut sig = sig.clone();
        let gid = header_id(&mut sig);
        let Some(mut body) = sig.member("body") else {
            return Err(ApplyError("a chord without a body".into()));
        };
        let mut header_delay = Map::new();
        for k in ["countdown", "eta"] {
            if let Some(v) = options.remove(k) {
                header_delay.insert(k.into(), v);
            }
        }
        let mut merged = sig.options().clone();
        merged.extend(options);
        merged.remove("task_id");
        for k in ["countdown", "eta"] {
            merged.remove(k);
        }
        // Links of the chord are the body's.
        for cb in sig_list(merged.remove("link").as_ref()) {
            body.push_option("link", cb);
        }
        for eb in sig_list(merged.remove("link_error").as_ref()) {
            body.push_option("link_error", eb);
        }
        let body_opts: Map<String, Value> = merged
            .iter()
            .filter(|(k, _)| k.as_str() != "parent_id")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let body_opts = merge_options(body.options(), body_opts);
        *body.options_mut() = body_opts;
        let root_id = body
            .options()
            .get("root_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let body_ref = freeze(
            &mut body,
            &Freeze {
                id: Some(new_id()),
                group_id: Some(gid.clone()),
                root_id: root_id.clone(),
                ..Freeze::default()
            },
        );
        for k in ["chain", "chord", "task_id"] {
            merged.remove(k);
        }
        let mut header = chord_header(&sig);
        if header.is_empty() {
            // An empty header: the body runs at once with an empty list.
            self.apply_async(&body, &[json!([])], &Map::new(), Map::new())?;
            return Ok(body_ref);
        }
        let chord_value = body.to_value();
        for (i, t) in header.iter_mut().enumerate() {
            freeze(
                t,
                &Freeze {
                    group_id: Some(gid.clone()),
                    chord: Some(chord_value.clone()),
                    root_id: root_id.clone(),
                    group_index: Some(i),
                    ..Freeze::default()
                },
            );
        }
        let mut g = super::signature::group(header);
        g.options_mut().insert("task_id".into(), json!(gid));
        let mut header_opts = merged;
        header_opts.extend(header_delay);
        header_opts.insert("task_id".into(), json!(gid));
        self.group(&g, &args, &kw, header_opts)?;
        Ok(body_ref)
    }

    /// `chain.run`: steps flattened (nested chains, a chord whose body is a chain led by
    /// a task), a group followed by a step made a chord, ids frozen, the first step sent
    /// with the rest as its `chain`.
    fn chain(
        &mut self,
        sig: &Signature,
        args: &[Value],
        kwargs: &Map<String, Value>,
        mut options: Map<String, Value>,
    ) -> Result<ResultRef, ApplyError> {
        let take = |o: &mut Map<String, Value>, k: &str| o.remove(k).filter(|v| !v.is_null());
        let group_id = take(&mut options, "group_id").and_then(|v| v.as_str().map(str::to_owned));
        let chord_body = take(&mut options, "chord");
        let task_id = take(&mut options, "task_id").and_then(|v| v.as_str().map(str::to_owned));
        let link = sig_list(take(&mut options, "link").as_ref());
        let link_error = sig_list(take(&mut options, "link_error").as_ref());
        let root_id = take(&mut options, "root_id").and_then(|v| v.as_str().map(str::to_owned));
        take(&mut options, "parent_id");
        let group_index = take(&mut options, "group_index")
            .and_then(|v| v.as_u64())
            .map(|i| i as usize);
        let args = prepend(sig, args);
        // Flatten: nested chains, single-member groups.
        let mut steps: Vec<Signature> = Vec::new();
        let mut pending: std::collections::VecDeque<Signature> =
            sig.members("tasks").into_iter().collect();
        while let Some(t) = pending.pop_front() {
            match t.kind() {
                Kind::Chain => {
                    for (i, inner) in unchain(&t).into_iter().enumerate() {
                        pending.insert(i, inner);
                    }
                }
                Kind::Group if t.members("tasks").len() == 1 => {
                    pending.push_front(t.members("tasks").remove(0));
                }
                Kind::Group if t.members("tasks").is_empty() && !pending.is_empty() => {}
                Kind::Chord if led_by_task(&t) => {
                    for (i, inner) in unroll_body(&t).into_iter().enumerate() {
                        pending.insert(i, inner);
                    }
                }
                _ => steps.push(t),
            }
        }
        if steps.is_empty() {
            return Ok(ResultRef::Task(task_id.unwrap_or_default()));
        }
        // From the last step to the first, as Celery's `prepare_steps`.
        let mut tasks: Vec<Signature> = Vec::new();
        let mut results: Vec<ResultRef> = Vec::new();
        let n = steps.len();
        for (i, mut task) in steps.into_iter().rev().enumerate() {
            let is_first = i + 1 == n;
            let is_last = i == 0;
            if is_first {
                let (a, k, o) = merge(&task, &args, kwargs, Map::new());
                task = task.args(a).kwargs_map(k);
                *task.options_mut() = o;
            }
            if task.kind() == Kind::Group && !tasks.is_empty() {
                // A group followed by a step: a chord with that step as its body.
                let body = tasks.pop().unwrap_or_else(|| Signature::new(""));
                let body_res = results.pop();
                let mut c = super::signature::chord(task.members("tasks"), body);
                if let Some(r) = &body_res {
                    c.options_mut().insert("task_id".into(), json!(r.id()));
                }
                task = c;
            }
            let res = if is_last {
                freeze(
                    &mut task,
                    &Freeze {
                        id: task_id.clone(),
                        root_id: root_id.clone(),
                        group_id: group_id.clone(),
                        chord: chord_body.clone(),
                        group_index,
                        parent_id: None,
                    },
                )
            } else {
                freeze(
                    &mut task,
                    &Freeze {
                        root_id: root_id.clone(),
                        ..Freeze::default()
                    },
                )
            };
            for eb in &link_error {
                task.push_option("link_error", eb.clone());
                if task.kind() == Kind::Chord {
                    if let Some(mut body) = task.member("body") {
                        body.push_option("link_error", eb.clone());
                        task.kwargs_mut().insert("body".into(), body.to_value());
                    }
                }
            }
            tasks.push(task);
            results.push(res);
        }
        for l in link {
            tasks[0].push_option("link", l);
        }
        let Some(first) = tasks.pop() else {
            return Ok(ResultRef::Task(String::new()));
        };
        let mut chain = sig_list(options.get("chain"));
        chain.extend(tasks);
        if chain.is_empty() {
            options.remove("chain");
        } else {
            options.insert("chain".into(), sig_values(&chain));
        }
        let r = self.apply_async(&first, &[], &Map::new(), options)?;
        Ok(if chain.is_empty() {
            r
        } else {
            results.swap_remove(0)
        })
    }
}

/// `Signature._merge` with arguments: `args` prepended and `kwargs` merged unless the
/// signature is immutable; options merged by [`merge_options`].
fn merge(
    sig: &Signature,
    args: &[Value],
    kwargs: &Map<String, Value>,
    options: Map<String, Value>,
) -> (Vec<Value>, Map<String, Value>, Map<String, Value>) {
    let opts = merge_options(sig.options(), options);
    let mut k = sig.kwargs().clone();
    if !sig.is_immutable() {
        k.extend(kwargs.clone());
    }
    (prepend(sig, args), k, opts)
}

/// `args` passed on, then the signature's own, unless it is immutable (its own only).
fn prepend(sig: &Signature, args: &[Value]) -> Vec<Value> {
    if sig.is_immutable() {
        return sig.args_list().to_vec();
    }
    args.iter().chain(sig.args_list()).cloned().collect()
}
