//! Celery's built-in canvas tasks that reach workers: `celery.map` and `celery.starmap`
//! (Python's `xmap` / `xstarmap`: one task that runs a registered task over a list, in
//! process), `celery.chunks` (sends the group of `celery.starmap` tasks of a `chunks`
//! signature and returns the group's handle) and `celery.accumulate` (the body Python's
//! `Task.replace` puts after a group: its arguments, or the one at `index`). A task of the
//! same name in the worker's [`Registry`] replaces the built-in. Celery 5.7 with the Redis
//! result backend sends no other `celery.*` task for canvas (`celery.chord_unlock` only
//! serves backends without native chords; `celery.group`, `celery.chain` and
//! `celery.chord` only name signature kinds).

use serde_json::{Map, Value};

use crate::celery::canvas::after::Sent;
use crate::celery::canvas::apply::{Apply, ApplyError, Op, Parent};
use crate::celery::canvas::{chunks, Signature};
use crate::celery::protocol::TaskMessage;
use crate::registry::Registry;

/// The built-in that sends a group ([`run_chunks`]).
const CHUNKS: &str = "celery.chunks";
/// The built-in that returns its arguments ([`accumulate`]).
const ACCUMULATE: &str = "celery.accumulate";

/// `registry` with the built-ins it does not define itself, and the names of those among
/// them that run from the message itself ([`run_with_message`]).
pub(super) fn with_builtins(registry: Registry) -> (Registry, Vec<&'static str>) {
    let mut out = registry.clone();
    for (name, star) in [("celery.map", false), ("celery.starmap", true)] {
        if !registry.contains(name) {
            let tasks = registry.clone();
            out = out.task(name, move |kw: Value| map(&tasks, &kw, star));
        }
    }
    let mut from_message = Vec::new();
    for name in [CHUNKS, ACCUMULATE] {
        if !registry.contains(name) {
            // Its run needs the message (`run_with_message`); this entry only lets the
            // call through.
            out = out.task(name, |_: Value| Ok::<_, String>(Value::Null));
            from_message.push(name);
        }
    }
    (out, from_message)
}

/// Runs a built-in that needs its message (one [`with_builtins`] named): its value, and
/// what it sent (with the handle stored among its `children`).
pub(super) fn run_with_message(msg: &TaskMessage) -> Result<(Value, Option<Sent>), ApplyError> {
    if msg.task == ACCUMULATE {
        return accumulate(msg).map(|v| (v, None));
    }
    let (value, ops) = run_chunks(msg)?;
    Ok((value.clone(), Some((ops, value))))
}

/// `celery.accumulate(*args, index=None)`: `args[index]`, or all of `args` as a list.
fn accumulate(msg: &TaskMessage) -> Result<Value, ApplyError> {
    match msg.kwargs.get("index").filter(|i| !i.is_null()) {
        None => Ok(Value::Array(msg.args.clone())),
        Some(i) => i
            .as_u64()
            .and_then(|i| msg.args.get(usize::try_from(i).ok()?))
            .cloned()
            .ok_or_else(|| ApplyError(format!("celery.accumulate: no argument at index {i}"))),
    }
}

/// `celery.map` (`star` false: `task(item)` for each item) or `celery.starmap` (`task(*item)`):
/// the list of results, or the first failure's message.
fn map(tasks: &Registry, kw: &Value, star: bool) -> Result<Value, String> {
    let (task, it) = match kw {
        Value::Object(m) => (m.get("task"), m.get("it")),
        // Positional: [task, it].
        Value::Array(a) => (a.first(), a.get(1)),
        _ => (None, None),
    };
    let task = task
        .and_then(|t| Signature::from_value(t).ok())
        .ok_or("celery.map/starmap: `task` is not a signature")?;
    let items = it
        .and_then(Value::as_array)
        .ok_or("celery.map/starmap: `it` is not a list")?;
    let entry = tasks
        .get(task.name())
        .ok_or_else(|| format!("NotRegistered: {}", task.name()))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let args = if star {
            item.clone()
        } else {
            Value::Array(vec![item.clone()])
        };
        let mut attempt = entry
            .prepare(args)
            .map_err(|e| format!("{}: invalid arguments: {e}", task.name()))?;
        out.push(attempt()?);
    }
    Ok(Value::Array(out))
}

/// `celery.chunks(task, it, n)` as a Celery worker runs it: sends the group of
/// `celery.starmap` tasks (the running task as their parent) and returns the group's
/// handle as Celery stores a `GroupResult` (`[[group id, null], [[[id, null], null],
/// ...]]`).
fn run_chunks(msg: &TaskMessage) -> Result<(Value, Vec<Op>), ApplyError> {
    let kw = msg.registry_args();
    let field = |name: &str, i: usize| match &kw {
        Value::Object(m) => m.get(name).cloned(),
        Value::Array(a) => a.get(i).cloned(),
        _ => None,
    };
    let task = field("task", 0)
        .and_then(|t| Signature::from_value(&t).ok())
        .ok_or_else(|| ApplyError("celery.chunks: `task` is not a signature".into()))?;
    let it = field("it", 1)
        .and_then(|v| v.as_array().cloned())
        .ok_or_else(|| ApplyError("celery.chunks: `it` is not a list".into()))?;
    let n = field("n", 2)
        .and_then(|v| v.as_u64())
        .filter(|n| *n > 0)
        .ok_or_else(|| ApplyError("celery.chunks: `n` is not a positive integer".into()))?;
    let parent = Parent {
        id: msg.id.clone(),
        root_id: msg.root_id.clone().unwrap_or_else(|| msg.id.clone()),
    };
    let mut send = Apply::new(Some(&parent));
    let sig = chunks(task, it, n as usize);
    let r = send.apply_async(&sig, &[], &Map::new(), Map::new())?;
    Ok((r.as_tuple(), send.ops))
}
