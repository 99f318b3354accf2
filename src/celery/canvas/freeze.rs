//! Freezing signatures and taking workflows apart: Celery 5.7's `freeze` of each kind
//! (the ids a signature will be sent with, fixed before anything is sent, so that a
//! chain's handle is its last step and a chord's header carries its body's id), and the
//! small rewrites `apply.rs` makes before sending (a group unrolled, a chain's steps,
//! a chord whose body is a chain split, chunks as a group of starmaps).

use serde_json::{json, Map, Value};

use super::apply::{new_id, sig_list, sig_values, ResultRef};
use super::signature::{Kind, Signature};

/// Options a chain consumes itself instead of passing them to its first task.
pub(super) const CHAIN_RUN_OPTIONS: [&str; 8] = [
    "chord",
    "group_id",
    "group_index",
    "link",
    "link_error",
    "parent_id",
    "root_id",
    "task_id",
];

/// Celery's `Signature.freeze`: gives `sig` its ids if it has none yet; returns what
/// its result will be.
pub(crate) fn freeze(sig: &mut Signature, f: &Freeze) -> ResultRef {
    match sig.kind() {
        Kind::Chord => {
            let mut header = chord_header(sig);
            let gid = header_id(sig);
            let body = sig.member("body");
            // As Celery's chord.freeze (and `_strip_chord_header_links`): the header tasks
            // get their ids and index; their group id and the body come when it runs.
            for (i, t) in header.iter_mut().enumerate() {
                freeze(
                    t,
                    &Freeze {
                        root_id: f.root_id.clone(),
                        group_index: Some(i),
                        ..Freeze::default()
                    },
                );
            }
            set_chord_header(sig, &header, &gid);
            sig.options_mut().insert("task_id".into(), json!(gid));
            match body {
                Some(mut body) => {
                    let r = freeze(
                        &mut body,
                        &Freeze {
                            id: f.id.clone(),
                            root_id: f.root_id.clone(),
                            chord: f.chord.clone(),
                            group_id: f.group_id.clone(),
                            group_index: f.group_index,
                            parent_id: None,
                        },
                    );
                    sig.kwargs_mut().insert("body".into(), body.to_value());
                    r
                }
                None => ResultRef::Group(gid, Vec::new()),
            }
        }
        Kind::Group | Kind::Chunks => ResultRef::Group(freeze_own(sig, f), Vec::new()),
        Kind::Chain => {
            let mut tasks = sig.members("tasks");
            let n = tasks.len();
            let mut last = ResultRef::Task(String::new());
            for (i, t) in tasks.iter_mut().enumerate() {
                let r = if i + 1 == n {
                    freeze(t, f)
                } else {
                    freeze(
                        t,
                        &Freeze {
                            root_id: f.root_id.clone(),
                            ..Freeze::default()
                        },
                    )
                };
                last = r;
            }
            sig.kwargs_mut().insert("tasks".into(), sig_values(&tasks));
            last
        }
        Kind::Task | Kind::Map | Kind::Starmap => ResultRef::Task(freeze_own(sig, f)),
    }
}

/// `Signature.freeze` of one signature's own options: its `task_id` (kept, else `f.id`,
/// else new), and `f`'s root, parent, group, chord and index; returns the id.
fn freeze_own(sig: &mut Signature, f: &Freeze) -> String {
    let opts = sig.options_mut();
    let id = match opts.get("task_id").and_then(Value::as_str) {
        Some(id) => id.to_owned(),
        None => {
            let id = f.id.clone().unwrap_or_else(new_id);
            opts.insert("task_id".into(), json!(id));
            id
        }
    };
    set_common(opts, f);
    id
}

fn set_common(opts: &mut Map<String, Value>, f: &Freeze) {
    if let Some(r) = &f.root_id {
        opts.insert("root_id".into(), json!(r));
    }
    if let Some(p) = &f.parent_id {
        opts.insert("parent_id".into(), json!(p));
    }
    if let Some(g) = &f.group_id {
        opts.entry("group_id").or_insert_with(|| json!(g));
    }
    if let Some(c) = &f.chord {
        opts.insert("chord".into(), c.clone());
    }
    if let Some(i) = f.group_index {
        opts.insert("group_index".into(), json!(i));
    }
}

/// The arguments of [`freeze`] (Celery's `freeze(_id, group_id, chord, root_id,
/// parent_id, group_index)`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Freeze {
    pub id: Option<String>,
    pub group_id: Option<String>,
    pub chord: Option<Value>,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group_index: Option<usize>,
}

/// A chord's header tasks.
///
/// Flattened as Celery's `_freeze_unroll` does: the tasks of a nested group take its place
/// (so `group_index` runs over the whole header), an empty chain is left out. Celery puts
/// a nested group's tasks back with `deque.extendleft`, which reverses them, and so does
/// weft: `chord([group(a, b), c], body)` gives the body `[b, a, c]`'s results, as a Python
/// worker does.
pub(super) fn chord_header(sig: &Signature) -> Vec<Signature> {
    let mut stack: std::collections::VecDeque<Signature> = sig.members("header").into();
    let mut out = Vec::new();
    while let Some(t) = stack.pop_front() {
        match t.kind() {
            Kind::Group => {
                for inner in t.members("tasks") {
                    stack.push_front(inner);
                }
            }
            Kind::Chain if t.members("tasks").is_empty() => {}
            _ => out.push(t),
        }
    }
    out
}

/// A chord's group id: its header group's `task_id`, else its own (Celery sets the
/// chord's id to its header's when it freezes it), else a new one (kept in the options).
pub(super) fn header_id(sig: &mut Signature) -> String {
    let from_header = match sig.kwargs().get("header") {
        Some(h @ Value::Object(_)) => Signature::from_value(h)
            .ok()
            .and_then(|g| g.id().map(str::to_owned)),
        _ => None,
    };
    let id = from_header
        .or_else(|| sig.id().map(str::to_owned))
        .unwrap_or_else(new_id);
    sig.options_mut().insert("task_id".into(), json!(id));
    id
}

pub(super) fn set_chord_header(sig: &mut Signature, header: &[Signature], gid: &str) {
    let mut g = super::signature::group(header.iter().cloned());
    g.options_mut().insert("task_id".into(), json!(gid));
    sig.kwargs_mut().insert("header".into(), g.to_value());
}

/// Celery's `_chord._descend`: how many results a header member adds to a chord.
pub(super) fn descend(sig: &Signature) -> usize {
    match sig.kind() {
        Kind::Group => sig.members("tasks").iter().map(descend).sum(),
        Kind::Chain => sig
            .members("tasks")
            .iter()
            .rev()
            .map(descend)
            .find(|n| *n > 0)
            .unwrap_or(0),
        Kind::Chord => sig.member("body").map_or(0, |b| descend(&b)),
        _ => 1,
    }
}

/// A group's tasks, nested groups unrolled, each frozen with the group id, its index and
/// the group's root id (`group._prepared`).
pub(super) fn unroll(sig: &Signature, gid: &str, root_id: Option<&str>, out: &mut Vec<Signature>) {
    for (i, mut t) in sig.members("tasks").into_iter().enumerate() {
        match t.kind() {
            Kind::Group => unroll(&t, gid, root_id, out),
            Kind::Chain if t.members("tasks").is_empty() => {}
            _ => {
                freeze(
                    &mut t,
                    &Freeze {
                        group_id: Some(gid.to_owned()),
                        root_id: root_id.map(str::to_owned),
                        group_index: Some(i),
                        ..Freeze::default()
                    },
                );
                out.push(t);
            }
        }
    }
}

/// `chunks.group()`: a group of `celery.starmap` tasks over `n`-item parts of `it`.
pub(super) fn chunks_group(sig: &Signature) -> Signature {
    let task = sig.member("task").unwrap_or_else(|| Signature::new(""));
    let it = sig
        .kwargs()
        .get("it")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let n = sig
        .kwargs()
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1) as usize;
    let parts = it
        .chunks(n)
        .map(|part| super::signature::xstarmap(task.clone(), part.to_vec()));
    let mut g = super::signature::group(parts);
    *g.options_mut() = sig.options().clone();
    g
}

/// `chain.unchain_tasks`: the chain's steps, its `link`s on the last, its `link_error`s
/// on each.
pub(super) fn unchain(chain: &Signature) -> Vec<Signature> {
    let mut tasks = chain.members("tasks");
    for l in sig_list(chain.options().get("link")) {
        if let Some(last) = tasks.last_mut() {
            last.push_option("link", l);
        }
    }
    for e in sig_list(chain.options().get("link_error")) {
        for t in &mut tasks {
            t.push_option("link_error", e.clone());
        }
    }
    tasks
}

/// A chord whose body is a chain that does not start with a group.
pub(super) fn led_by_task(chord: &Signature) -> bool {
    chord.member("body").is_some_and(|b| {
        b.kind() == Kind::Chain
            && b.members("tasks")
                .first()
                .is_some_and(|t| t.kind() != Kind::Group)
    })
}

/// `chord._unroll_body`: `chord(header, chain(a, b, c))` → `chord(header, a), b, c`.
pub(super) fn unroll_body(chord: &Signature) -> Vec<Signature> {
    let Some(body) = chord.member("body") else {
        return vec![chord.clone()];
    };
    let mut tasks = unchain(&body);
    if tasks.is_empty() {
        return vec![chord.clone()];
    }
    let mut first = tasks.remove(0);
    for (k, v) in body.options() {
        if !CHAIN_RUN_OPTIONS.contains(&k.as_str()) {
            first.options_mut().insert(k.clone(), v.clone());
        }
    }
    let mut c = chord.clone();
    c.kwargs_mut().insert("body".into(), first.to_value());
    let mut out = vec![c];
    out.extend(tasks);
    out
}
