use serde_json::{json, Map, Value};

use super::apply::{Apply, Op, Parent};
use super::*;
use crate::celery::protocol::TaskMessage;

fn sent(ops: &[Op]) -> Vec<&TaskMessage> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Send(m) => Some(&**m),
            Op::ChordSize { .. } => None,
        })
        .collect()
}

fn sig(v: &Value) -> Signature {
    Signature::from_value(v).unwrap()
}

fn add(args: &[i64]) -> Signature {
    Signature::new("add").args(args.iter().map(|a| json!(a)))
}

#[test]
fn a_chain_sends_its_first_task_with_the_rest_reversed() {
    let flow = chain([
        add(&[1, 2]),
        add(&[10]),
        Signature::new("mul").args([json!(3)]),
    ]);
    let mut send = Apply::new(None);
    let r = send
        .apply_async(&flow, &[], &Map::new(), Map::new())
        .unwrap();
    let msgs = sent(&send.ops);
    assert_eq!(msgs.len(), 1);
    let first = msgs[0];
    assert_eq!(first.task, "add");
    assert_eq!(first.args, vec![json!(1), json!(2)]);
    let embed = Embed::parse(&first.embed);
    let names: Vec<&str> = embed
        .chain
        .iter()
        .map(|v| v["task"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mul", "add"], "the next step is the last element");
    // The chain's handle is its last step's result.
    assert_eq!(Some(r.id()), sig(&embed.chain[0]).id());
    assert_eq!(first.root_id.as_deref(), Some(first.id.as_str()));
}

#[test]
fn the_next_chain_step_gets_the_result_prepended_and_the_task_as_parent() {
    let flow = chain([
        add(&[1, 2]),
        add(&[10]),
        Signature::new("mul").args([json!(3)]),
    ]);
    let mut send = Apply::new(None);
    send.apply_async(&flow, &[], &Map::new(), Map::new())
        .unwrap();
    let first = sent(&send.ops)[0].clone();
    let mut embed = Embed::parse(&first.embed);
    let next = after::on_success(&first, &mut embed, &json!(3)).unwrap();
    let msgs = sent(&next.ops);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].task, "add");
    assert_eq!(msgs[0].args, vec![json!(3), json!(10)]);
    assert_eq!(msgs[0].parent_id.as_deref(), Some(first.id.as_str()));
    assert_eq!(msgs[0].root_id, first.root_id);
    let rest = Embed::parse(&msgs[0].embed);
    assert_eq!(rest.chain.len(), 1);
    assert_eq!(sig(&rest.chain[0]).name(), "mul");
    assert_eq!(next.children, vec![json!([[msgs[0].id, null], null])]);
}

#[test]
fn an_immutable_step_keeps_its_arguments() {
    let flow = chain([add(&[1, 2]), add(&[5, 5]).immutable(true)]);
    let mut send = Apply::new(None);
    send.apply_async(&flow, &[], &Map::new(), Map::new())
        .unwrap();
    let first = sent(&send.ops)[0].clone();
    let next = after::on_success(&first, &mut Embed::parse(&first.embed), &json!(3)).unwrap();
    assert_eq!(sent(&next.ops)[0].args, vec![json!(5), json!(5)]);
}

#[test]
fn a_chord_sends_its_header_with_the_body_and_sets_its_size_before_the_last_part() {
    let flow = chord((0..3).map(|i| add(&[i, i])), Signature::new("xsum"));
    let mut send = Apply::new(None);
    let r = send
        .apply_async(&flow, &[], &Map::new(), Map::new())
        .unwrap();
    assert_eq!(send.ops.len(), 4);
    assert!(matches!(&send.ops[2], Op::ChordSize { size: 3, .. }));
    let parts = sent(&send.ops);
    let gid = parts[0].group.clone().unwrap();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.group.as_deref(), Some(gid.as_str()));
        assert_eq!(p.extra_headers["group_index"], json!(i));
        let e = Embed::parse(&p.embed);
        let body = e.chord.unwrap();
        assert_eq!(body.name(), "xsum");
        assert_eq!(body.id(), Some(r.id()));
    }
    let Op::ChordSize { group, .. } = &send.ops[2] else {
        unreachable!()
    };
    assert_eq!(group, &gid);
}

#[test]
fn a_failed_step_fails_the_rest_of_the_chain_and_sends_the_errbacks() {
    let flow = chain([add(&[1, 2]), add(&[10]), add(&[20])])
        .link_error(Signature::new("on_error").args([json!("x")]));
    let mut send = Apply::new(None);
    send.apply_async(&flow, &[], &Map::new(), Map::new())
        .unwrap();
    let first = sent(&send.ops)[0].clone();
    let embed = Embed::parse(&first.embed);
    assert_eq!(embed.errbacks.len(), 1);
    let failure = crate::celery::TaskResult::error("boom");
    let next = after::on_failure(&first, &embed, &failure, true);
    let failed: Vec<&str> = next.results.iter().map(|(id, _)| id.as_str()).collect();
    let chain_ids: Vec<&str> = embed
        .chain
        .iter()
        .filter_map(|v| v.pointer("/options/task_id")?.as_str())
        .collect();
    assert_eq!(failed, chain_ids);
    let errbacks = sent(&next.ops);
    assert_eq!(errbacks.len(), 1);
    assert_eq!(errbacks[0].task, "on_error");
    assert_eq!(errbacks[0].args, vec![json!(first.id), json!("x")]);
    assert_eq!(errbacks[0].parent_id.as_deref(), Some(first.id.as_str()));
}

#[test]
fn chunks_become_a_group_of_starmaps() {
    let items: Vec<Value> = (0..6).map(|i| json!([i, i])).collect();
    let flow = chunks(Signature::new("add"), items, 2);
    let parent = Parent {
        id: "p".into(),
        root_id: "r".into(),
    };
    let mut send = Apply::new(Some(&parent));
    let r = send
        .apply_async(&flow, &[], &Map::new(), Map::new())
        .unwrap();
    let msgs = sent(&send.ops);
    assert_eq!(msgs.len(), 3);
    for m in &msgs {
        assert_eq!(m.task, "celery.starmap");
        assert_eq!(m.kwargs["task"]["task"], "add");
        assert_eq!(m.kwargs["it"].as_array().unwrap().len(), 2);
        assert_eq!(m.parent_id.as_deref(), Some("p"));
        assert_eq!(m.root_id.as_deref(), Some("r"));
    }
    let t = r.as_tuple();
    assert_eq!(t[1].as_array().unwrap().len(), 3);
}

#[test]
fn malformed_embeds_are_refused_with_the_field_named() {
    for (embed, field) in [
        (json!({"chain": 5}), "chain"),
        (json!({"chain": [{"args": []}]}), "chain[0]"),
        (
            json!({"callbacks": [{"task": "a", "args": {}}]}),
            "callbacks[0]",
        ),
        (
            json!({"chord": {"task": "a", "subtask_type": "nope"}}),
            "chord",
        ),
        (
            json!({"errbacks": [{"task": "celery.chord", "subtask_type": "chord", "kwargs": {"header": []}}]}),
            "errbacks[0]",
        ),
        (json!([1]), "embed"),
    ] {
        let e = Embed::check(&embed).unwrap_err().to_string();
        assert!(e.contains(field), "{e} names {field}");
    }
    let empty = json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null});
    assert!(Embed::check(&empty).is_ok());
    assert!(Embed::parse(&empty).is_empty());
}

#[test]
fn a_nested_group_in_a_chord_header_is_flattened_with_one_index() {
    let header = [
        group([add(&[1, 1]), add(&[2, 2])]),
        add(&[3, 3]),
        group([group([add(&[4, 4])]), add(&[5, 5])]),
    ];
    let flow = chord(header, Signature::new("xsum"));
    let mut send = Apply::new(None);
    send.apply_async(&flow, &[], &Map::new(), Map::new())
        .unwrap();
    let parts = sent(&send.ops);
    let args: Vec<Value> = parts.iter().map(|p| p.args[0].clone()).collect();
    // Celery's order: each nested group's tasks reversed (its `extendleft`).
    assert_eq!(args, [json!(2), json!(1), json!(3), json!(5), json!(4)]);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.extra_headers["group_index"], json!(i), "{}", p.args[0]);
    }
    // The size is written before the last part is sent.
    assert!(matches!(send.ops[4], Op::ChordSize { size: 5, .. }));
}

/// The shape of a signature dict, ids replaced by markers, Python's `reply_to` (a
/// per-process id weft does not write) and null options left out.
fn sig_shape(v: &Value) -> Value {
    let Some(m) = v.as_object() else {
        return v.clone();
    };
    let mut out = serde_json::Map::new();
    for (k, x) in m {
        let x = match k.as_str() {
            "options" => {
                let mut o = serde_json::Map::new();
                for (ok, ov) in x.as_object().into_iter().flatten() {
                    let shaped = match ok.as_str() {
                        "reply_to" => continue,
                        _ if ov.is_null() => continue,
                        "task_id" | "group_id" | "root_id" | "parent_id" => json!("<id>"),
                        "chord" => sig_shape(ov),
                        "chain" | "link" | "link_error" => list_shape(ov),
                        _ => ov.clone(),
                    };
                    o.insert(ok.clone(), shaped);
                }
                Value::Object(o)
            }
            "kwargs" => {
                let mut o = serde_json::Map::new();
                for (kk, kv) in x.as_object().into_iter().flatten() {
                    let shaped = match kk.as_str() {
                        "tasks" | "header" if kv.is_array() => list_shape(kv),
                        "header" | "body" | "task" => sig_shape(kv),
                        _ => kv.clone(),
                    };
                    o.insert(kk.clone(), shaped);
                }
                Value::Object(o)
            }
            "chord_size" => continue,
            _ => x.clone(),
        };
        out.insert(k.clone(), x);
    }
    Value::Object(out)
}

fn list_shape(v: &Value) -> Value {
    match v {
        Value::Array(a) if a.is_empty() => Value::Null,
        Value::Array(a) => Value::Array(a.iter().map(sig_shape).collect()),
        other => sig_shape(other),
    }
}

/// The shape of a message: name, arguments, group membership and its embed.
fn msg_shape(m: &TaskMessage) -> Value {
    json!({
        "task": m.task,
        "args": m.args,
        "kwargs": m.kwargs,
        "in_group": m.group.is_some(),
        "group_index": m.extra_headers.get("group_index"),
        "callbacks": list_shape(&m.embed["callbacks"]),
        "errbacks": list_shape(&m.embed["errbacks"]),
        "chain": list_shape(&m.embed["chain"]),
        "chord": sig_shape(&m.embed["chord"]),
    })
}

fn golden(name: &str) -> TaskMessage {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/celery/canvas")
        .join(name);
    TaskMessage::decode(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn every_golden_canvas_message_of_celery_is_read() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery/canvas");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.ends_with(".backend.json") || name == "index.json" {
            continue;
        }
        TaskMessage::decode(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        n += 1;
    }
    assert!(n >= 20, "{n} golden messages");
}

/// weft's client sends the same workflows as Celery 5.7's (the golden messages captured
/// from it), up to ids.
#[test]
fn weft_sends_workflows_as_celery_does() {
    let s = |name: &str, args: &[i64]| Signature::new(name).args(args.iter().map(|a| json!(a)));
    let cases: Vec<(Signature, Vec<&str>)> = vec![
        (
            chain([s("add", &[1, 2]), s("add", &[10]), s("mul", &[3])]),
            vec!["chain.json"],
        ),
        (
            chain([
                s("add", &[1, 2]),
                s("add", &[5, 5]).immutable(true),
                s("mul", &[3]),
            ]),
            vec!["chain_immutable.json"],
        ),
        (
            chord((0..3).map(|i| s("add", &[i, i])), s("xsum", &[])),
            vec!["chord.0.json", "chord.1.json", "chord.2.json"],
        ),
        (
            group([s("add", &[1, 1]), s("add", &[2, 2])]),
            vec!["group.0.json", "group.1.json"],
        ),
        (
            chain([
                s("add", &[1, 1]),
                group([s("add", &[1]), s("add", &[2])]),
                s("xsum", &[]),
            ]),
            vec!["chain_group_task.json"],
        ),
    ];
    for (flow, files) in cases {
        let mut send = Apply::new(None);
        send.apply_async(&flow, &[], &Map::new(), Map::new())
            .unwrap();
        let ours: Vec<Value> = sent(&send.ops).into_iter().map(msg_shape).collect();
        let theirs: Vec<Value> = files.iter().map(|f| msg_shape(&golden(f))).collect();
        assert_eq!(ours, theirs, "{files:?}");
    }
}
