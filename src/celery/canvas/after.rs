//! What a worker does after a task ends, as Celery 5.7's worker does
//! (`celery/app/trace.py`, `backends/base.py`): the [`Next`] steps of a finished task.
//!
//! * **Success**: `link` callbacks are sent with the result prepended (several: each
//!   group on its own, the other callbacks together as one group); then the next chain
//!   step (the last element of `chain`) with the result prepended and the rest of the
//!   chain as its own `chain`. Both before the result is stored, with the task as
//!   `parent_id` and its `root_id`.
//! * **Failure**: the same failure is stored under the `task_id` of every remaining chain
//!   step (so that whoever waits on the chain's last step hears of it); the errbacks
//!   are sent as one group with the failed task's id as their first argument, with
//!   `parent_id` the failed task and `root_id` its root (Celery's publish path: Python's
//!   in-process call of an errback taking `(request, exc, traceback)` has no Rust
//!   equivalent, so weft always sends errbacks as tasks).
//! * **Chord part** (a task with `chord` and a `group`): after its result is stored, its
//!   result is counted in the chord's keys ([`ChordPart`], carried out by the result
//!   backend); chain steps that belong to a chord are counted as failed parts too.

use serde_json::{json, Map, Value};

use super::apply::{sig_list, Apply, ApplyError, Op, Parent, ResultRef};
use super::signature::{group, Kind, Signature};
use super::{maybe_list, Embed};
use crate::celery::events::py_str_repr;
use crate::celery::protocol::TaskMessage;
use crate::celery::result::TaskResult;

/// A header result to count in a chord (Celery's `on_chord_part_return`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChordPart {
    /// The chord's group id.
    pub group: String,
    /// The part's task id.
    pub id: String,
    /// Its place in the header (`+inf` when unknown, as Celery).
    pub group_index: Option<u64>,
    /// Its final state and result.
    pub result: TaskResult,
    /// The chord body.
    pub body: Signature,
    /// The part's `root_id` (the body is sent with the part as its parent).
    pub root_id: String,
}

/// What follows a task's end.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Next {
    /// Sent (and chord sizes set) before the task's result is stored.
    pub ops: Vec<Op>,
    /// Stored with the task's result: the failure of the remaining chain steps.
    pub results: Vec<(String, TaskResult)>,
    /// Counted after the results are stored.
    pub parts: Vec<ChordPart>,
    /// Celery's `children` of the task's result record (what it sent).
    pub children: Vec<Value>,
}

fn parent_of(msg: &TaskMessage) -> Parent {
    Parent {
        id: msg.id.clone(),
        root_id: msg.root_id.clone().unwrap_or_else(|| msg.id.clone()),
    }
}

fn group_index(msg: &TaskMessage) -> Option<u64> {
    msg.extra_headers.get("group_index").and_then(Value::as_u64)
}

/// The chord part of `msg` itself, if it is one.
fn own_part(msg: &TaskMessage, embed: &Embed, result: &TaskResult) -> Option<ChordPart> {
    Some(ChordPart {
        group: msg.group.clone()?,
        id: msg.id.clone(),
        group_index: group_index(msg),
        result: result.clone(),
        body: embed.chord.clone()?,
        root_id: parent_of(msg).root_id,
    })
}

/// After a success with `value`: callbacks, the next chain step, the chord part. An
/// error sending them (a group given a `link`) fails the task, as in Celery.
pub(crate) fn on_success(
    msg: &TaskMessage,
    embed: &mut Embed,
    value: &Value,
) -> Result<Next, ApplyError> {
    let parent = parent_of(msg);
    let mut send = Apply::new(Some(&parent));
    let mut children = Vec::new();
    let args = [value.clone()];
    let none = Map::new();
    match embed.callbacks.as_slice() {
        [] => {}
        [one] => children.push(send.apply_async(one, &args, &none, Map::new())?),
        many => {
            let (groups, sigs): (Vec<&Signature>, Vec<&Signature>) =
                many.iter().partition(|s| s.kind() == Kind::Group);
            for g in groups {
                children.push(send.apply_async(g, &args, &none, Map::new())?);
            }
            if !sigs.is_empty() {
                let g = group(sigs.into_iter().cloned());
                children.push(send.apply_async(&g, &args, &none, Map::new())?);
            }
        }
    }
    // The rest of the chain goes on as it came (moved when the embed was taken).
    let mut chain = std::mem::take(&mut embed.chain).into_owned();
    if let Some(next) = chain.pop() {
        // Checked when the message was read.
        let next = Signature::from_value(&next).map_err(ApplyError)?;
        let mut opts = Map::new();
        if !chain.is_empty() {
            opts.insert("chain".into(), Value::Array(chain));
        }
        children.push(send.apply_async(&next, &args, &none, opts)?);
    }
    let result = TaskResult::Success(value.clone());
    Ok(Next {
        ops: send.ops,
        results: Vec::new(),
        parts: own_part(msg, embed, &result).into_iter().collect(),
        children: children.iter().map(ResultRef::as_tuple).collect(),
    })
}

/// After a final failure (or a revoke: `errbacks` false): the chord part, the failure
/// stored under each remaining chain step (and counted for those in a chord), then the
/// errbacks.
pub(crate) fn on_failure(
    msg: &TaskMessage,
    embed: &Embed,
    result: &TaskResult,
    errbacks: bool,
) -> Next {
    let mut next = Next {
        parts: own_part(msg, embed, result).into_iter().collect(),
        ..Next::default()
    };
    if !errbacks {
        return next;
    }
    fail_chain(&embed.chain, result, &parent_of(msg).root_id, &mut next);
    let ops = send_errbacks(&msg.id, &parent_of(msg).root_id, &embed.errbacks);
    next.ops.extend(ops);
    next
}

/// Celery's `_fail_chain`: `result` stored under each chain step's id; a step that is a
/// chord's header part is counted as a failed part.
pub(crate) fn fail_chain(chain: &[Value], result: &TaskResult, root_id: &str, next: &mut Next) {
    let empty = Map::new();
    for step in chain {
        let opts = step
            .get("options")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let Some(id) = opts.get("task_id").and_then(Value::as_str) else {
            continue;
        };
        next.results.push((id.to_owned(), result.clone()));
        // A chord step: its body's id fails too (whoever waits on the chain waits there).
        if let Some(body_id) = step
            .pointer("/kwargs/body/options/task_id")
            .and_then(Value::as_str)
        {
            if step.get("subtask_type").and_then(Value::as_str) == Some("chord") {
                next.results.push((body_id.to_owned(), result.clone()));
            }
        }
        let body = opts
            .get("chord")
            .and_then(|b| Signature::from_value(b).ok());
        let group = opts.get("group_id").and_then(Value::as_str);
        if let (Some(body), Some(group)) = (body, group) {
            next.parts.push(ChordPart {
                group: group.to_owned(),
                id: id.to_owned(),
                group_index: opts.get("group_index").and_then(Value::as_u64),
                result: result.clone(),
                body,
                root_id: root_id.to_owned(),
            });
        }
    }
}

/// Celery's `_call_task_errbacks` (publish path): the errbacks as one group, with the
/// failed task's id as first argument, `parent_id` the failed task, `root_id` its root.
pub(crate) fn send_errbacks(failed_id: &str, root_id: &str, errbacks: &[Signature]) -> Vec<Op> {
    if errbacks.is_empty() {
        return Vec::new();
    }
    let mut send = Apply::new(None);
    let mut opts = Map::new();
    opts.insert("parent_id".into(), json!(failed_id));
    opts.insert("root_id".into(), json!(root_id));
    let g = group(errbacks.iter().cloned());
    // A group never refuses these options (no link on it).
    let _ = send.apply_async(&g, &[json!(failed_id)], &Map::new(), opts);
    send.ops
}

/// Celery's `ChordError("Dependency <id> raised <repr of its exception>")` for a header
/// part that ended `FAILURE` or `REVOKED`.
pub(crate) fn chord_error(part_id: &str, failed: &TaskResult) -> TaskResult {
    let repr = match failed {
        TaskResult::Failure {
            exc_type,
            exc_message,
            ..
        } => format!("{exc_type}({})", py_str_repr(exc_message)),
        TaskResult::Revoked(reason) => format!("TaskRevokedError({})", py_str_repr(reason)),
        other => format!("{other:?}"),
    };
    TaskResult::Failure {
        exc_type: "ChordError".into(),
        exc_module: "celery.exceptions".into(),
        exc_message: format!("Dependency {part_id} raised {repr}"),
        traceback: None,
    }
}

/// What the worker that completes a chord does: the body sent with the header's results
/// (in header order) prepended, from the last part (its `parent_id`); or, if a part failed,
/// the body's failure (Celery's `chord_error_from_stack`): `ChordError` stored under the
/// body's id (each member's, for a group body), its errbacks sent, its chain failed.
pub(crate) fn finish_chord(part: &ChordPart, results: Result<Vec<Value>, TaskResult>) -> Next {
    let parent = Parent {
        id: part.id.clone(),
        root_id: part.root_id.clone(),
    };
    let body = &part.body;
    match results {
        Ok(values) => {
            let mut send = Apply::new(Some(&parent));
            match send.apply_async(body, &[Value::Array(values)], &Map::new(), Map::new()) {
                Ok(_) => Next {
                    ops: send.ops,
                    ..Next::default()
                },
                Err(e) => fail_body(
                    body,
                    &TaskResult::Failure {
                        exc_type: "ChordError".into(),
                        exc_module: "celery.exceptions".into(),
                        exc_message: format!("Callback error: {}", e.0),
                        traceback: None,
                    },
                    &part.root_id,
                ),
            }
        }
        Err(error) => fail_body(body, &error, &part.root_id),
    }
}

fn fail_body(body: &Signature, error: &TaskResult, root_id: &str) -> Next {
    let mut next = Next::default();
    if body.kind() == Kind::Group {
        for member in body.members("tasks") {
            if let Some(id) = member.id() {
                next.results.push((id.to_owned(), error.clone()));
                let errbacks = member_errbacks(&member, body);
                next.ops.extend(send_errbacks(id, root_id, &errbacks));
            }
        }
        if let Some(gid) = body.id() {
            next.results.push((gid.to_owned(), error.clone()));
        }
    } else if let Some(id) = body.id() {
        next.results.push((id.to_owned(), error.clone()));
        let errbacks = sig_list(body.options().get("link_error"));
        next.ops.extend(send_errbacks(id, root_id, &errbacks));
    }
    fail_chain(
        maybe_list(body.options().get("chain")),
        error,
        root_id,
        &mut next,
    );
    next
}

fn member_errbacks(member: &Signature, group: &Signature) -> Vec<Signature> {
    let mut all = Vec::new();
    for s in [member, group] {
        for eb in sig_list(s.options().get("link_error")) {
            if !all.contains(&eb) {
                all.push(eb);
            }
        }
    }
    all
}

/// What a task sent itself while it ran (a built-in such as `celery.chunks`): the ops, and
/// the handle of what they sent (stored among its `children`).
pub(crate) type Sent = (Vec<Op>, Value);

/// A finished task's place in its workflow: the fields of its result record beyond the
/// outcome (`parent_id`, `group_id`, `children`) and what follows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Flow {
    /// The task that sent it.
    pub parent_id: Option<String>,
    /// The group it belongs to.
    pub group_id: Option<String>,
    /// What follows; its `children` go in the record.
    pub next: Next,
}

/// What follows the end of `msg` with `result`: `None` for a task in no workflow (no
/// parent, no group, nothing in its embed). `sent` is what the task itself sent (a
/// built-in such as `celery.chunks`), sent first. If the next steps cannot be sent (a
/// group given a `link`), `result` becomes that `TypeError`, as in Celery.
pub(crate) fn after(
    msg: &mut TaskMessage,
    result: &mut TaskResult,
    sent: Option<Sent>,
) -> Option<Box<Flow>> {
    // Checked when the message was read (a malformed embed is dead-lettered).
    let mut embed = Embed::take(&mut msg.embed);
    if msg.parent_id.is_none() && msg.group.is_none() && embed.is_empty() && sent.is_none() {
        return None;
    }
    let (mut ops, mut children) = match sent {
        Some((ops, child)) => (ops, vec![child]),
        None => (Vec::new(), Vec::new()),
    };
    let mut next = match &*result {
        TaskResult::Success(v) => match on_success(msg, &mut embed, v) {
            Ok(next) => next,
            Err(e) => {
                *result = TaskResult::Failure {
                    exc_type: "TypeError".into(),
                    exc_module: "builtins".into(),
                    exc_message: e.0,
                    traceback: None,
                };
                on_failure(msg, &embed, result, true)
            }
        },
        TaskResult::Failure { .. } => on_failure(msg, &embed, result, true),
        TaskResult::Revoked(_) => on_failure(msg, &embed, result, false),
        TaskResult::Retry(_) => Next::default(),
    };
    ops.append(&mut next.ops);
    children.append(&mut next.children);
    next.ops = ops;
    next.children = children;
    Some(Box::new(Flow {
        parent_id: msg.parent_id.clone(),
        group_id: msg.group.clone(),
        next,
    }))
}
