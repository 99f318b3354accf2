//! weft's Celery monitoring (events and the remote-control / inspect panel) driven by the
//! real Python Celery and checked against the golden captures of a Python Celery 5.7
//! prefork worker (`tests/fixtures/celery_monitoring/`), on Redis or, with
//! `WEFT_CELERY_BROKER=amqp://...` (feature `amqp`), on RabbitMQ.
//!
//! Each test starts an in-process weft [`Worker`] with a node name and queues of its own
//! and drives it through `probe.py` (Python Celery's `app.events.Receiver` and
//! `app.control.broadcast`, talking JSON lines). The probe signals that its receiver
//! listens (it sees its own marker event) before the worker starts, so `worker-online` is
//! never missed; every wait is on a condition with a generous timeout.
//!
//! Deliberate differences from the Python worker, allowed by the shape checks:
//! * `stats.pool`: weft's pool is a fixed set of threads: `implementation` names it
//!   (`weft:Pool`), `threads` counts them, `processes` is the worker's own pid, and the
//!   prefork-only `writes` (the pipes to its children) is absent.
//! * `pool_grow` / `pool_shrink` answer an error (the pool's size is fixed).
//! * `conf` holds weft's own settings, `report` weft's own text (only their shapes match).
//! * `worker_pid` (active) is the worker's own pid: weft's tasks run on threads.
//! * `rate_limit` `"0"` removes the limit, as `""` does: `registered` then shows the task
//!   bare, where Celery keeps the string (`[rate_limit=0]`, which Celery too treats as no
//!   limit).
//! * A message that is not a task (dead-lettered) gets `task-rejected` when its id is
//!   readable; Celery's `on_invalid_task` sends no event.
//! * Tasks sent by Python's `send_task` with a list carry `argsrepr` `"[2, 3]"` (the
//!   client's repr); `task-received` shows what the message carries, as Celery's.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
mod common;

use common::celery::{brokers, unique, Brokers};
use common::wait_until;
use weft::celery::{Client, RunningWorker, SendOptions, Stopped, Worker};
use weft::registry::{RateLimit, Registry, TaskOptions};
use weft::{Priority, RetryPolicy};

/// Where the suite runs ([`Brokers`]).
type Env = Brokers;

fn env() -> Option<Env> {
    brokers()
}

impl Env {
    /// A worker named `node` consuming `q` with `workers` threads.
    fn worker(&self, registry: Registry, node: &str, q: &str, workers: usize) -> Worker {
        let w = Worker::new(self.broker.as_str(), registry)
            .hostname(node)
            .queue(q, Priority::Normal)
            .workers(workers);
        if self.amqp {
            w.backend(self.backend.as_str())
        } else {
            w
        }
    }

    fn client(&self) -> Client {
        Client::with_backend(&self.broker, &self.backend).unwrap()
    }

    /// `probe.py` for `node`; with `listen`, its event receiver is subscribed on return.
    fn probe(&self, node: &str, listen: bool) -> Probe {
        let mut cmd = Command::new(&self.python);
        cmd.arg(fixtures().join("probe.py"))
            .args([&self.broker, &self.backend, node]);
        if listen {
            cmd.arg("--listen");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Probe {
            child,
            stdin,
            stdout,
        };
        assert_eq!(p.line(), json!({"ready": true}));
        p
    }
}

/// `tests/fixtures/celery_monitoring`.
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery_monitoring")
}

/// A running `probe.py` (ended when dropped).
struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Probe {
    fn line(&mut self) -> Value {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        assert!(!s.is_empty(), "probe.py ended");
        serde_json::from_str(&s).unwrap()
    }

    fn ask(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }

    /// The node's reply to `method` (panics when it did not answer).
    fn control(&mut self, node: &str, method: &str, arguments: Value) -> Value {
        let r = self.ask(json!({"op": "control", "method": method, "arguments": arguments}));
        let list = r.as_array().unwrap();
        assert_eq!(list.len(), 1, "{method}: {r}");
        list[0][node].clone()
    }

    fn send(&mut self, q: &str, name: &str, args: Value, extra: Value) -> String {
        let mut cmd = json!({"op": "send", "name": name, "args": args, "queue": q});
        for (k, v) in extra.as_object().unwrap() {
            cmd[k] = v.clone();
        }
        self.ask(cmd)["id"].as_str().unwrap().to_owned()
    }

    /// Waits for `count` events of `ty` (of task `uuid`, if given).
    fn wait(&mut self, ty: &str, uuid: Option<&str>, count: usize) {
        let mut cmd = json!({"op": "wait", "type": ty, "count": count, "timeout": 30});
        if let Some(u) = uuid {
            cmd["uuid"] = json!(u);
        }
        assert_eq!(self.ask(cmd), json!({"ok": true}), "no {ty} {uuid:?}");
    }

    fn events(&mut self) -> Vec<Value> {
        self.ask(json!({"op": "events"}))
            .as_array()
            .unwrap()
            .clone()
    }

    /// `[state, repr of the result]` of task `id`.
    fn result(&mut self, id: &str) -> Value {
        self.ask(json!({"op": "result", "id": id}))
    }
}

/// Set while `spin` runs (a task that runs until revoked with terminate or timed out).
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// Runs of `noop`.
static NOOPS: AtomicUsize = AtomicUsize::new(0);

fn registry() -> Registry {
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task_with(
            "limited",
            TaskOptions::new().rate_limit(RateLimit::per_second(10)),
            |(x, y): (i64, i64)| Ok::<_, String>(x + y),
        )
        .task("fail", |(): ()| Err::<(), _>("boom"))
        .task_with(
            "retried",
            TaskOptions::new()
                .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(2)),
            |(): ()| Err::<(), _>("again"),
        )
        .task("spin", |(): ()| {
            SPINNING.fetch_add(1, Ordering::SeqCst);
            // Bounded, so that a failed test's worker still shuts down.
            let end = Instant::now() + Duration::from_secs(20);
            while weft::checkpoint().is_ok() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            SPINNING.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>("stopped")
        })
        .task("noop", |(): ()| {
            NOOPS.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(())
        })
}

/// The golden events (`events_redis.jsonl`), one per type (the first of each).
fn golden_events() -> Map<String, Value> {
    let text = std::fs::read_to_string(fixtures().join("events_redis.jsonl")).unwrap();
    let mut by_type = Map::new();
    for line in text.lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let body = &rec["body"];
        let evs = match body {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for e in evs {
            if let Some(t) = e["type"].as_str() {
                // The `heartbeat` command's heartbeat has fewer fields (and `freq` 5).
                let key = if t == "worker-heartbeat" && e.get("loadavg").is_none() {
                    format!("{t}/command")
                } else {
                    t.to_owned()
                };
                by_type.entry(key).or_insert(e);
            }
        }
    }
    by_type
}

/// A value's shape: objects by key, lists by their elements' shapes, numbers as one kind.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("str"),
        Value::Array(a) => {
            let mut kinds: Vec<Value> = a.iter().map(shape).collect();
            kinds.dedup();
            Value::Array(kinds.into_iter().take(1).collect())
        }
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

/// The objects whose keys are data (task names, task ids), not field names.
const KEYED_BY_DATA: &[&str] = &["stats.total", "query_task"];

/// The paths where `ours` differs in shape from `gold` (an empty list matches any list;
/// `null` matches anything, where one side holds a value the other has not yet).
fn shape_diffs(gold: &Value, ours: &Value, path: &str, diffs: &mut Vec<String>) {
    match (gold, ours) {
        (Value::Null, _) | (_, Value::Null) => {}
        // Maps keyed by data (task names, task ids): their values' shapes only.
        (Value::Object(g), Value::Object(o)) if KEYED_BY_DATA.contains(&path) => {
            if let (Some(a), Some(b)) = (g.values().next(), o.values().next()) {
                shape_diffs(a, b, &format!("{path}.*"), diffs)
            }
        }
        (Value::Object(g), Value::Object(o)) => {
            for k in g.keys().chain(o.keys()) {
                let p = format!("{path}.{k}");
                match (g.get(k), o.get(k)) {
                    (Some(a), Some(b)) if !diffs.contains(&p) => shape_diffs(a, b, &p, diffs),
                    (Some(_), None) if !diffs.contains(&format!("{p} missing")) => {
                        diffs.push(format!("{p} missing"))
                    }
                    (None, Some(_)) if !diffs.contains(&format!("{p} extra")) => {
                        diffs.push(format!("{p} extra"))
                    }
                    _ => {}
                }
            }
        }
        (Value::Array(g), Value::Array(o)) => {
            if let (Some(a), Some(b)) = (g.first(), o.first()) {
                shape_diffs(a, b, &format!("{path}[]"), diffs)
            }
        }
        (g, o) => {
            if shape(g) != shape(o) {
                diffs.push(format!("{path}: {g} vs {o}"));
            }
        }
    }
}

fn on(q: &str) -> SendOptions {
    SendOptions {
        queue: Some(q.to_owned()),
        ..SendOptions::default()
    }
}

/// Checks every event's field set and value types against the golden event of its type,
/// and the fields every event shares.
fn check_events(events: &[Value], node: &str) {
    let gold = golden_events();
    let mut clock = 0;
    for e in events {
        let ty = e["type"].as_str().unwrap();
        let key = if ty == "worker-heartbeat" && e["freq"] == json!(5) {
            format!("{ty}/command")
        } else {
            ty.to_owned()
        };
        let g = gold.get(&key).unwrap_or_else(|| panic!("no golden {key}"));
        let mut keys: Vec<_> = e.as_object().unwrap().keys().collect();
        let mut gkeys: Vec<_> = g.as_object().unwrap().keys().collect();
        // An unknown task's task-failed has no traceback, as Celery's
        // (`Consumer.on_unknown_task`).
        if e["exception"]
            .as_str()
            .is_some_and(|x| x.starts_with("NotRegistered("))
        {
            gkeys.retain(|k| *k != "traceback");
        }
        keys.sort();
        gkeys.sort();
        assert_eq!(keys, gkeys, "fields of {e}");
        let mut diffs = Vec::new();
        shape_diffs(g, e, ty, &mut diffs);
        diffs.retain(|d| !(d == "task-failed.traceback missing" && gkeys == keys));
        assert!(diffs.is_empty(), "{diffs:?}");
        assert_eq!(e["hostname"], json!(node), "{e}");
        assert!(e["clock"].is_u64(), "{e}");
        assert!(e["pid"].is_u64(), "{e}");
        assert!(e["utcoffset"].is_number(), "{e}");
        assert!(e["timestamp"].is_f64(), "{e}");
        let c = e["clock"].as_u64().unwrap();
        assert!(c > clock, "clock not increasing: {c} after {clock}");
        clock = c;
    }
}

fn types_of<'a>(events: &'a [Value], uuid: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["uuid"] == json!(uuid))
        .map(|e| e["type"].as_str().unwrap())
        .collect()
}

fn event<'a>(events: &'a [Value], uuid: &str, ty: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["uuid"] == json!(uuid) && e["type"] == json!(ty))
        .unwrap_or_else(|| panic!("no {ty} for {uuid}"))
}

#[test]
fn events_of_every_task_outcome_match_celerys() {
    let Some(env) = env() else { return };
    let node = format!("{}@weft", unique("events"));
    let q = unique("events");
    let mut probe = env.probe(&node, true);
    let worker = env.worker(registry(), &node, &q, 2).start().unwrap();
    probe.wait("worker-online", None, 1);
    assert_eq!(
        probe.control(&node, "ping", json!({})),
        json!({"ok": "pong"})
    );

    // Task events are off until the command turns them on (as `celery -A app control
    // enable_events`, and Flower every 5 s).
    let quiet = probe.send(&q, "add", json!([1, 1]), json!({}));
    assert_eq!(probe.result(&quiet), json!(["SUCCESS", "2"]));
    assert_eq!(
        probe.control(&node, "enable_events", json!({})),
        json!({"ok": "task events enabled"})
    );

    let ok = probe.send(&q, "add", json!([2, 3]), json!({}));
    probe.wait("task-succeeded", Some(&ok), 1);
    let reprs = probe.send(&q, "add", json!([4, 5]), json!({"argsrepr": "(4, <five>)"}));
    probe.wait("task-succeeded", Some(&reprs), 1);
    let failed = probe.send(&q, "fail", json!([]), json!({}));
    probe.wait("task-failed", Some(&failed), 1);
    let retried = probe.send(&q, "retried", json!([]), json!({}));
    probe.wait("task-failed", Some(&retried), 1);
    let unknown = probe.send(&q, "nosuch", json!([]), json!({}));
    probe.wait("task-failed", Some(&unknown), 1);
    // Revoked while waiting for its ETA.
    let eta = probe.send(&q, "add", json!([1, 2]), json!({"countdown": 600}));
    probe.wait("task-received", Some(&eta), 1);
    probe.control(&node, "revoke", json!({"task_id": eta}));
    probe.wait("task-revoked", Some(&eta), 1);
    // Terminated while running.
    let spin = probe.send(&q, "spin", json!([]), json!({}));
    probe.wait("task-started", Some(&spin), 1);
    assert_eq!(
        probe.control(
            &node,
            "revoke",
            json!({"task_id": spin, "terminate": true, "signal": "SIGTERM"})
        ),
        json!({"ok": format!("terminate: {spin}")})
    );
    probe.wait("task-revoked", Some(&spin), 1);
    // A message that is not a task (dead-lettered), its id readable from its headers.
    let bad = format!("bad-{}", unique("id"));
    probe.ask(json!({"op": "raw", "queue": q, "id": bad}));
    probe.wait("task-rejected", Some(&bad), 1);
    // Heartbeats meanwhile (every 2 s).
    probe.wait("worker-heartbeat", None, 2);

    // The `heartbeat` command: a null reply, and a heartbeat of its own (freq 5).
    assert_eq!(probe.control(&node, "heartbeat", json!({})), Value::Null);

    assert_eq!(
        probe.control(&node, "disable_events", json!({})),
        json!({"ok": "task events disabled"})
    );
    let after = probe.send(&q, "add", json!([3, 3]), json!({}));
    assert_eq!(probe.result(&after), json!(["SUCCESS", "6"]));
    worker.shutdown();
    probe.wait("worker-offline", None, 1);

    let events = probe.events();
    check_events(&events, &node);
    assert_eq!(events.first().unwrap()["type"], json!("worker-online"));
    assert_eq!(events.last().unwrap()["type"], json!("worker-offline"));
    assert!(types_of(&events, &quiet).is_empty());
    assert!(types_of(&events, &after).is_empty());

    let beats: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == json!("worker-heartbeat"))
        .collect();
    // The timer's, every 2 s (the command's comes in between).
    let timed: Vec<&Value> = beats
        .iter()
        .copied()
        .filter(|e| e["freq"] == json!(2.0))
        .collect();
    assert!(timed.len() >= 2, "{beats:?}");
    for pair in timed.windows(2) {
        let gap = pair[1]["timestamp"].as_f64().unwrap() - pair[0]["timestamp"].as_f64().unwrap();
        assert!((1.0..3.5).contains(&gap), "heartbeats {gap} s apart");
    }
    let asked: Vec<&Value> = beats
        .iter()
        .copied()
        .filter(|e| e["freq"] == json!(5))
        .collect();
    assert_eq!(asked.len(), 1, "{beats:?}");
    for e in events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("worker-") && e["freq"] != json!(5))
    {
        assert_eq!(e["freq"], json!(2.0), "{e}");
        assert_eq!(e["sw_sys"], json!("Linux"), "{e}");
        assert_eq!(e["loadavg"].as_array().unwrap().len(), 3, "{e}");
    }

    assert_eq!(
        types_of(&events, &ok),
        ["task-received", "task-started", "task-succeeded"]
    );
    let received = event(&events, &ok, "task-received");
    assert_eq!(received["name"], json!("add"));
    // The argsrepr Python's `send_task` put in the message: the repr of its list.
    assert_eq!(received["args"], json!("[2, 3]"));
    assert_eq!(received["kwargs"], json!("{}"));
    assert_eq!(received["root_id"], json!(ok));
    assert_eq!(received["parent_id"], Value::Null);
    assert_eq!(received["retries"], json!(0));
    let succeeded = event(&events, &ok, "task-succeeded");
    assert_eq!(succeeded["result"], json!("5"));
    assert!(succeeded["runtime"].is_f64());
    assert_eq!(
        event(&events, &reprs, "task-received")["args"],
        json!("(4, <five>)")
    );

    assert_eq!(
        types_of(&events, &failed),
        ["task-received", "task-started", "task-failed"]
    );
    let f = event(&events, &failed, "task-failed");
    assert_eq!(f["exception"], json!("RuntimeError('boom')"));
    assert!(f["traceback"].as_str().unwrap().contains("boom"), "{f}");

    assert_eq!(
        types_of(&events, &retried),
        [
            "task-received",
            "task-started",
            "task-retried",
            "task-received",
            "task-started",
            "task-failed"
        ]
    );
    let again: Vec<&Value> = events
        .iter()
        .filter(|e| e["uuid"] == json!(retried) && e["type"] == json!("task-received"))
        .collect();
    assert_eq!(again[1]["retries"], json!(1));
    assert_eq!(again[1]["parent_id"], json!(retried));
    assert!(again[1]["eta"].is_string());

    let u = types_of(&events, &unknown);
    assert_eq!(u.last(), Some(&"task-failed"), "{u:?}");
    assert!(event(&events, &unknown, "task-failed")["exception"]
        .as_str()
        .unwrap()
        .starts_with("NotRegistered("));

    assert_eq!(types_of(&events, &eta), ["task-received", "task-revoked"]);
    let r = event(&events, &eta, "task-revoked");
    assert_eq!(r["terminated"], json!(false));
    assert_eq!(r["expired"], json!(false));
    assert!(event(&events, &eta, "task-received")["eta"].is_string());

    assert_eq!(
        types_of(&events, &spin),
        ["task-received", "task-started", "task-revoked"]
    );
    let t = event(&events, &spin, "task-revoked");
    assert_eq!(t["terminated"], json!(true));
    assert_eq!(t["signum"], json!(15));

    assert_eq!(types_of(&events, &bad), ["task-rejected"]);
    assert_eq!(
        event(&events, &bad, "task-rejected")["requeue"],
        json!(false)
    );
}

#[test]
fn task_events_option_and_the_shutdown_broadcast() {
    let Some(env) = env() else { return };
    let node = format!("{}@weft", unique("shutdown"));
    let q = unique("shutdown");
    let mut probe = env.probe(&node, true);
    let worker = env
        .worker(registry(), &node, &q, 2)
        .task_events(true)
        .start()
        .unwrap();
    assert_eq!(worker.hostname(), node);
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || stopped_tx.send(worker.wait_for_signal()));
    probe.wait("worker-online", None, 1);
    let id = probe.send(&q, "add", json!([2, 3]), json!({}));
    probe.wait("task-succeeded", Some(&id), 1);
    // Celery's `shutdown` has no reply: nobody answers within the timeout.
    let reply = probe.ask(json!({"op": "control", "method": "shutdown", "timeout": 1.0}));
    assert_eq!(reply, json!([]));
    let stopped = stopped
        .recv_timeout(Duration::from_secs(60))
        .expect("wait_for_signal did not return");
    assert!(matches!(stopped.unwrap(), Stopped::Warm(_)));
    probe.wait("worker-offline", None, 1);
    let events = probe.events();
    check_events(&events, &node);
    assert_eq!(
        types_of(&events, &id),
        ["task-received", "task-started", "task-succeeded"]
    );
    assert_eq!(events.last().unwrap()["type"], json!("worker-offline"));
}

#[test]
fn events_never_block_the_worker() {
    let Some(env) = env() else { return };
    let node = format!("{}@weft", unique("quiet"));
    let q = unique("quiet");
    let worker = env
        .worker(registry(), &node, &q, 4)
        .task_events(true)
        .start()
        .unwrap();
    let client = env.client();
    let before = NOOPS.load(Ordering::SeqCst);
    for _ in 0..5000 {
        client
            .send_task("noop", vec![], Map::new(), on(&q))
            .unwrap();
    }
    wait_until("5,000 no-op tasks", || {
        NOOPS.load(Ordering::SeqCst) - before >= 5000
    });
    worker.shutdown();
}

/// The reply's method and arguments of each golden reply file.
fn golden_requests(
    spin: &str,
    reserved: &str,
    node: &str,
) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("ping", "ping", json!({})),
        ("stats", "stats", json!({})),
        ("stats_busy", "stats", json!({})),
        ("active", "active", json!({})),
        ("active_safe", "active", json!({"safe": true})),
        ("reserved", "reserved", json!({})),
        ("scheduled", "scheduled", json!({})),
        ("query_task", "query_task", json!({"ids": [spin]})),
        (
            "query_task_reserved",
            "query_task",
            json!({"ids": [reserved]}),
        ),
        (
            "query_task_unknown",
            "query_task",
            json!({"ids": [UNKNOWN_ID]}),
        ),
        ("registered", "registered", json!({})),
        (
            "registered_taskinfoitems",
            "registered",
            json!({"taskinfoitems": ["rate_limit", "time_limit", "soft_time_limit", "acks_late", "ignore_result", "max_retries", "nosuch"]}),
        ),
        ("active_queues", "active_queues", json!({})),
        ("conf", "conf", json!({})),
        (
            "conf_with_defaults_false",
            "conf",
            json!({"with_defaults": false}),
        ),
        ("report", "report", json!({})),
        ("clock", "clock", json!({})),
        (
            "hello",
            "hello",
            json!({"from_node": "other@host", "revoked": ["x"]}),
        ),
        ("hello_self", "hello", json!({"from_node": node})),
        ("heartbeat", "heartbeat", json!({})),
        ("enable_events", "enable_events", json!({})),
        ("enable_events_again", "enable_events", json!({})),
        ("disable_events", "disable_events", json!({})),
        ("disable_events_again", "disable_events", json!({})),
        ("enable_events_reenable", "enable_events", json!({})),
        (
            "rate_limit",
            "rate_limit",
            json!({"task_name": "limited", "rate_limit": "5/s"}),
        ),
        (
            "rate_limit_zero",
            "rate_limit",
            json!({"task_name": "limited", "rate_limit": "0"}),
        ),
        (
            "rate_limit_invalid",
            "rate_limit",
            json!({"task_name": "limited", "rate_limit": "abc"}),
        ),
        (
            "rate_limit_unknown_task",
            "rate_limit",
            json!({"task_name": "nosuch", "rate_limit": "5/s"}),
        ),
        (
            "time_limit",
            "time_limit",
            json!({"task_name": "spin", "soft": 10.0, "hard": 20.0}),
        ),
        (
            "time_limit_unknown_task",
            "time_limit",
            json!({"task_name": "nosuch", "soft": 10.0, "hard": 20.0}),
        ),
        ("pool_restart", "pool_restart", json!({})),
        ("autoscale", "autoscale", json!({"max": 4, "min": 1})),
        ("nosuch", "nosuch", json!({})),
        ("revoke_missing_argument", "revoke", json!({})),
        (
            "add_consumer",
            "add_consumer",
            json!({"queue": format!("extra-{node}")}),
        ),
        (
            "cancel_consumer",
            "cancel_consumer",
            json!({"queue": format!("extra-{node}")}),
        ),
        ("revoked", "revoked", json!({})),
        ("ping_final", "ping", json!({})),
        ("amqp_ping", "ping", json!({})),
        ("amqp_enable_events", "enable_events", json!({})),
        ("active_empty", "active", json!({})),
        ("reserved_empty", "reserved", json!({})),
        ("scheduled_after_revoke", "scheduled", json!({})),
        ("active_queues_extra", "active_queues", json!({})),
        ("revoke", "revoke", json!({"task_id": UNKNOWN_ID})),
        ("revoke_scheduled", "revoke", json!({"task_id": UNKNOWN_ID})),
        (
            "revoke_terminate",
            "revoke",
            json!({"task_id": UNKNOWN_ID, "terminate": true, "signal": "SIGTERM"}),
        ),
    ]
}

/// A task id no test sends.
const UNKNOWN_ID: &str = "00000000-0000-0000-0000-000000000001";

/// The golden replies that differ on purpose, checked as weft's own: `pool_grow` /
/// `pool_shrink` (weft's pool has a fixed size): errors; `shutdown`, which has no reply,
/// in `task_events_option_and_the_shutdown_broadcast`.
const NOT_AS_GOLDEN: &[&str] = &["pool_grow", "pool_shrink", "shutdown"];

/// The golden reply of file `name` (the value under the Python node's name).
fn golden_reply(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(format!("replies/{name}.json"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v[0]["pyworker@vm"].clone()
}

/// The shape differences weft has on purpose (see the file's doc).
const ALLOWED: &[&str] = &["stats.pool.threads extra", "stats.pool.writes missing"];

#[test]
fn inspect_and_control_replies_have_celerys_shapes() {
    let Some(env) = env() else { return };
    let node = format!("{}@weft", unique("panel"));
    let q = unique("panel");
    let mut probe = env.probe(&node, false);
    let worker = env.worker(registry(), &node, &q, 1).start().unwrap();
    let before = SPINNING.load(Ordering::SeqCst);
    // One running, two reserved behind it, one scheduled.
    let spin = probe.send(&q, "spin", json!([]), json!({}));
    wait_until("spin running", || SPINNING.load(Ordering::SeqCst) > before);
    let r1 = probe.send(&q, "add", json!([4, 4]), json!({}));
    let r2 = probe.send(&q, "add", json!([5, 5]), json!({}));
    let eta = probe.send(&q, "add", json!([6, 6]), json!({"countdown": 600}));
    wait_until("tasks reserved and scheduled", || {
        let r = probe.control(&node, "reserved", json!({}));
        let s = probe.control(&node, "scheduled", json!({}));
        r.as_array().unwrap().len() == 2 && s.as_array().unwrap().len() == 1
    });

    // The registry's rate limit, as Celery's `registered` shows a task's.
    let registered = probe.control(&node, "registered", json!({}));
    assert!(
        registered
            .as_array()
            .unwrap()
            .contains(&json!("limited [rate_limit=10/s]")),
        "{registered}"
    );

    let mut failures = Vec::new();
    for (file, method, args) in golden_requests(&spin, &r1, &node) {
        let ours = probe.control(&node, method, args.clone());
        let gold = golden_reply(file);
        if method == "conf" {
            // weft's own settings (with Celery's names), never Python's.
            assert_eq!(
                ours["broker_url"],
                json!(env.broker.replace("guest:guest", "guest:********"))
            );
            assert!(ours["result_backend"].is_string(), "{ours}");
            continue;
        }
        let mut diffs = Vec::new();
        shape_diffs(&gold, &ours, method, &mut diffs);
        diffs.retain(|d| !ALLOWED.contains(&d.as_str()));
        // `hello` from self and `heartbeat` answer null, as Celery's.
        if gold.is_null() != ours.is_null() {
            diffs.push(format!("{method}: null {gold} vs {ours}"));
        }
        if !diffs.is_empty() {
            failures.push(format!("{file} {args}: {diffs:?}\n  ours {ours}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every golden reply is checked, here or in NOT_AS_GOLDEN.
    let table = golden_requests(&spin, &r1, &node);
    for f in std::fs::read_dir(fixtures().join("replies")).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        let name = name.trim_end_matches(".json");
        assert!(
            table.iter().any(|(file, _, _)| *file == name) || NOT_AS_GOLDEN.contains(&name),
            "golden reply {name} is not checked"
        );
    }
    for method in ["pool_grow", "pool_shrink"] {
        let reply = probe.control(&node, method, json!({"n": 1}));
        assert!(reply["error"].is_string(), "{method}: {reply}");
    }

    // The values that matter, beyond the shapes.
    let active = probe.control(&node, "active", json!({}));
    assert_eq!(active[0]["id"], json!(spin));
    assert_eq!(active[0]["hostname"], json!(node));
    assert_eq!(active[0]["acknowledged"], json!(true));
    let safe = probe.control(&node, "active", json!({"safe": true}));
    assert_eq!(safe[0]["args"], json!("()"));
    assert_eq!(safe[0]["kwargs"], json!("{}"));
    let reserved = probe.control(&node, "reserved", json!({}));
    // In no particular order (Celery's are a set).
    let mut ids: Vec<&str> = reserved
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut sent = [r1.as_str(), r2.as_str()];
    sent.sort();
    assert_eq!(ids, sent);
    assert_eq!(reserved[0]["acknowledged"], json!(false));
    let scheduled = probe.control(&node, "scheduled", json!({}));
    assert_eq!(scheduled[0]["request"]["id"], json!(eta));
    assert!(scheduled[0]["eta"].as_str().unwrap().ends_with("+00:00"));
    assert_eq!(
        probe.control(&node, "query_task", json!({"ids": [spin]}))[&spin][0],
        json!("active")
    );
    assert_eq!(
        probe.control(&node, "query_task", json!({"ids": [r1]}))[&r1][0],
        json!("reserved")
    );
    assert_eq!(
        probe.control(&node, "query_task", json!({"ids": [eta]}))[&eta][0],
        json!("scheduled")
    );
    let stats = probe.control(&node, "stats", json!({}));
    assert_eq!(stats["pool"]["max-concurrency"], json!(1));
    assert_eq!(
        probe.control(&node, "revoke", json!({"task_id": eta})),
        json!({"ok": format!("tasks {{'{eta}'}} flagged as revoked")})
    );
    let revoked = probe.control(&node, "revoked", json!({}));
    assert!(
        revoked.as_array().unwrap().contains(&json!(eta)),
        "{revoked}"
    );
    let hello = probe.control(
        &node,
        "hello",
        json!({"from_node": "other@host", "revoked": ["x"]}),
    );
    let merged = hello["revoked"].as_array().unwrap();
    assert!(
        merged.contains(&json!("x")) && merged.contains(&json!(eta)),
        "{hello}"
    );
    let c1 = probe.control(&node, "clock", json!({}))["clock"]
        .as_u64()
        .unwrap();
    let c2 = probe.control(&node, "clock", json!({}))["clock"]
        .as_u64()
        .unwrap();
    assert!(c2 > c1);
    // `registered` with the registry's rate limit, then the command's.
    let registered = probe.control(&node, "registered", json!({}));
    assert!(
        registered.as_array().unwrap().contains(&json!("add")),
        "{registered}"
    );
    probe.control(
        &node,
        "rate_limit",
        json!({"task_name": "add", "rate_limit": "10/s"}),
    );
    let registered = probe.control(&node, "registered", json!({}));
    assert!(
        registered
            .as_array()
            .unwrap()
            .contains(&json!("add [rate_limit=10/s]")),
        "{registered}"
    );
    probe.control(
        &node,
        "rate_limit",
        json!({"task_name": "add", "rate_limit": ""}),
    );
    let registered = probe.control(&node, "registered", json!({}));
    assert!(
        registered.as_array().unwrap().contains(&json!("add")),
        "{registered}"
    );

    // Stop the spinner; the reserved ones run; stats count the started tasks by name.
    probe.control(&node, "revoke", json!({"task_id": spin, "terminate": true}));
    assert_eq!(probe.result(&r2)[0], json!("SUCCESS"));
    let total = probe.control(&node, "stats", json!({}))["total"].clone();
    assert_eq!(total["add"], json!(2), "{total}");
    assert_eq!(total["spin"], json!(1), "{total}");

    // A time limit set by the command.
    assert_eq!(
        probe.control(
            &node,
            "time_limit",
            json!({"task_name": "spin", "soft": 0.2, "hard": 0.3})
        ),
        json!({"ok": "time limits set successfully"})
    );
    let limited = probe.send(&q, "spin", json!([]), json!({}));
    let r = probe.result(&limited);
    assert_eq!(r[0], json!("FAILURE"), "{r}");
    assert!(r[1].as_str().unwrap().contains("TimeLimitExceeded"), "{r}");

    // Bad input: an error, and the worker goes on.
    for (method, args) in [
        ("revoke", json!({})),
        ("revoke", json!({"task_id": 5})),
        ("rate_limit", json!({"task_name": "add"})),
        (
            "rate_limit",
            json!({"task_name": "add", "rate_limit": "x/s"}),
        ),
        ("rate_limit", json!({"task_name": 3, "rate_limit": "1/s"})),
        ("time_limit", json!({"task_name": "add", "soft": "x"})),
        ("time_limit", json!({})),
        ("query_task", json!({"ids": 7})),
        ("hello", json!({})),
        ("hello", json!({"from_node": "a@b", "revoked": 5})),
    ] {
        let reply = probe.control(&node, method, args.clone());
        assert!(reply["error"].is_string(), "{method} {args}: {reply}");
    }
    assert_eq!(
        probe.control(&node, "ping", json!({})),
        json!({"ok": "pong"})
    );
    let id = probe.send(&q, "add", json!([20, 22]), json!({}));
    assert_eq!(probe.result(&id), json!(["SUCCESS", "42"]));
    worker.shutdown();
}

#[test]
fn rate_limit_command_spaces_the_starts() {
    let Some(env) = env() else { return };
    let node = format!("{}@weft", unique("rate"));
    let q = unique("rate");
    let mut probe = env.probe(&node, true);
    let worker: RunningWorker = env
        .worker(registry(), &node, &q, 4)
        .task_events(true)
        .start()
        .unwrap();
    assert_eq!(
        probe.control(
            &node,
            "rate_limit",
            json!({"task_name": "add", "rate_limit": "5/s"})
        ),
        json!({"ok": "new rate limit set successfully"})
    );
    let ids: Vec<String> = (0..6)
        .map(|i| probe.send(&q, "add", json!([i, 1]), json!({})))
        .collect();
    for id in &ids {
        probe.wait("task-started", Some(id), 1);
    }
    let events = probe.events();
    let mut starts: Vec<f64> = ids
        .iter()
        .map(|id| {
            event(&events, id, "task-started")["timestamp"]
                .as_f64()
                .unwrap()
        })
        .collect();
    starts.sort_by(f64::total_cmp);
    for pair in starts.windows(2) {
        assert!(pair[1] - pair[0] >= 0.18, "starts {starts:?}");
    }
    assert!(starts[5] - starts[0] >= 0.9, "starts {starts:?}");
    // "0" removes it (as "" does): 6 more start without the spacing's 1 s.
    for off in ["0", ""] {
        probe.control(
            &node,
            "rate_limit",
            json!({"task_name": "add", "rate_limit": off}),
        );
        let ids: Vec<String> = (0..6)
            .map(|i| probe.send(&q, "add", json!([i, 2]), json!({})))
            .collect();
        for id in &ids {
            probe.wait("task-started", Some(id), 1);
        }
        let events = probe.events();
        let starts: Vec<f64> = ids
            .iter()
            .map(|id| {
                event(&events, id, "task-started")["timestamp"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        let spread = starts.iter().cloned().fold(f64::MIN, f64::max)
            - starts.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread < 0.9, "{off:?}: still limited, {starts:?}");
    }
    worker.shutdown();
}
