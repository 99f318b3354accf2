use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::celery::error::Error;

/// Each case's expected text is what the installed Python Celery's `safe_repr` printed
/// for the same JSON (`kombu.utils.encoding.safe_repr(json.loads(case))`).
#[test]
fn py_repr_matches_python() {
    let cases = [
        ("[2, 3]", "[2, 3]"),
        (
            r#"{"x": "a", "y": [1.5, null, true, false]}"#,
            "{'x': 'a', 'y': [1.5, None, True, False]}",
        ),
        (r#""it's""#, r#""it's""#),
        (r#""say \"hi\" it's""#, r#"'say "hi" it\'s'"#),
        (r#""tab\tnl\n\u0001""#, r"'tab\tnl\n\x01'"),
        ("1e16", "1e+16"),
        ("0.00001", "1e-05"),
        ("0.0001", "0.0001"),
        ("1.0", "1.0"),
        ("-0.0", "-0.0"),
        (r#""é ü \u0085""#, r"'é ü \x85'"),
    ];
    for (json_text, python) in cases {
        let v: Value = serde_json::from_str(json_text).unwrap();
        assert_eq!(py_repr(&v), python, "repr of {json_text}");
    }
}

/// A task's positional arguments are a Python tuple (Celery's `argsrepr`, captured in
/// tests/fixtures/celery_monitoring: `"(2, 3)"`, `"(4,)"`).
#[test]
fn arguments_are_shown_as_a_tuple() {
    assert_eq!(py_tuple_repr(&[json!(2), json!(3)]), "(2, 3)");
    assert_eq!(py_tuple_repr(&[json!(4)]), "(4,)");
    assert_eq!(py_tuple_repr(&[]), "()");
    assert_eq!(py_tuple_repr(&[json!("a")]), "('a',)");
}

#[test]
fn py_repr_is_cut_at_its_bound() {
    let v = json!(["x".repeat(5000)]);
    let r = py_repr(&v);
    assert!(
        r.len() <= repr::MAX_REPR + 3 && r.ends_with("..."),
        "{}",
        r.len()
    );
}

#[test]
fn clock_forwards() {
    let c = Clock::default();
    assert_eq!(c.forward(), 1);
    assert_eq!(c.forward(), 2);
    assert_eq!(c.value(), 2);
}

#[test]
fn task_events_are_off_until_enabled_and_carry_common_fields() {
    let ev = Events::new("w1@host", false, Arc::new(Clock::default()));
    let mut called = false;
    ev.task("task-started", |_| called = true);
    assert!(!called, "fields are not built while task events are off");
    assert!(!ev.set_task_events(true));
    ev.task("task-started", |m| m.insert("uuid", "id-1"));
    let out = ev.outbox.lock();
    let e: Value = serde_json::from_str(&out.events[0]).unwrap();
    assert_eq!(e["type"], "task-started");
    assert_eq!(e["uuid"], "id-1");
    assert_eq!(e["hostname"], "w1@host");
    assert_eq!(e["pid"], std::process::id());
    assert_eq!(e["clock"], 1);
    assert!(e["timestamp"].as_f64().unwrap() > 1.7e9);
    assert_eq!(e["utcoffset"], 0.0);
}

#[test]
fn a_full_outbox_drops_its_oldest_events() {
    let ev = Events::new("w", true, Arc::new(Clock::default()));
    for i in 0..OUTBOX_CAP + 10 {
        ev.task("task-received", |m| m.insert("n", i));
    }
    assert_eq!(ev.dropped(), 10);
    let out = ev.outbox.lock();
    assert_eq!(out.events.len(), OUTBOX_CAP);
    let first: Value = serde_json::from_str(&out.events[0]).unwrap();
    assert_eq!(first["n"], 10);
}

/// Records what is published, and tells `published` each routing key.
#[derive(Default)]
struct Recorder {
    sent: Arc<parking_lot::Mutex<Vec<(String, Value)>>>,
    published: Option<std::sync::mpsc::Sender<String>>,
}

impl EventSink for Recorder {
    fn publish(&mut self, routing_key: &str, body: &str, hostname: &str) -> Result<(), Error> {
        assert_eq!(hostname, "w@h");
        let body = serde_json::from_str(body).expect("events are JSON");
        self.sent.lock().push((routing_key.to_owned(), body));
        if let Some(tx) = &self.published {
            let _ = tx.send(routing_key.to_owned());
        }
        Ok(())
    }
}

#[test]
fn the_send_loop_sends_online_tasks_as_multi_and_offline_last() {
    let ev = Arc::new(Events::new("w@h", true, Arc::new(Clock::default())));
    for kind in ["task-received", "task-started"] {
        ev.task(kind, |m| m.insert("uuid", "a"));
    }
    ev.close();
    let mut sink = Recorder::default();
    let sent = sink.sent.clone();
    let load = || Load {
        active: 1,
        processed: 7,
    };
    send_loop(&ev, &mut sink, &load, HEARTBEAT);
    let sent = sent.lock();
    let keys: Vec<&str> = sent.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["worker.online", "task.multi", "worker.offline"]);
    assert_eq!(sent[1].1.as_array().unwrap().len(), 2);
    let offline = &sent[2].1;
    assert_eq!(offline["type"], "worker-offline");
    assert_eq!(offline["processed"], 7);
    assert_eq!(offline["active"], 1);
    assert_eq!(offline["sw_ident"], "weft");
    assert_eq!(offline["freq"], 2.0);
    // Clocks only move forward, in the order the events were made.
    let clocks: Vec<u64> = [&sent[1].1[0], &sent[1].1[1], offline]
        .iter()
        .map(|e| e["clock"].as_u64().unwrap())
        .collect();
    assert!(clocks.windows(2).all(|w| w[0] < w[1]), "{clocks:?}");
}

#[test]
fn a_heartbeat_asked_for_is_sent_at_once() {
    let ev = Arc::new(Events::new("w@h", false, Arc::new(Clock::default())));
    let (tx, published) = std::sync::mpsc::channel();
    let mut sink = Recorder {
        published: Some(tx),
        ..Recorder::default()
    };
    let t = {
        let ev = ev.clone();
        std::thread::spawn(move || {
            let load = || Load {
                active: 0,
                processed: 0,
            };
            // No periodic heartbeat within the test: only the one asked for.
            send_loop(&ev, &mut sink, &load, Duration::from_secs(3600))
        })
    };
    ev.heartbeat_now();
    loop {
        let key = published
            .recv_timeout(Duration::from_secs(60))
            .expect("no heartbeat");
        if key == "worker.heartbeat" {
            break;
        }
    }
    ev.close();
    t.join().unwrap();
}
