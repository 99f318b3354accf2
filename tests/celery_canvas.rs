//! Celery workflows (canvas) between Python Celery 5.7 and weft workers, on the broker of
//! `WEFT_CELERY_BROKER` (Redis or RabbitMQ; default the Redis of `WEFT_REDIS_URL`, which is
//! the result backend either way): Python sends chains, groups, chords, links, errbacks,
//! chunks, map and starmap; weft workers run them, alone or taking turns step by step with
//! a Python worker. Skipped (loudly) without `WEFT_REDIS_URL` and `WEFT_CELERY_PYTHON`;
//! `.ci/run` sets them.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
mod common;

use common::celery::{
    brokers, fixtures, python_worker_command, spawn_ready_child, unique, Brokers, Killed,
};
use weft::celery::Worker;
use weft::registry::Registry;
use weft::Priority;

/// The broker, the Redis result backend, and the Python with Celery installed.
type Env = Brokers;

fn env() -> Option<Env> {
    brokers()
}

/// The tasks of `examples/celery_worker.rs`, and `on_error(failed_id, key)`, an errback
/// that pushes the failed task's id on the Redis list `key`.
fn registry(backend: &str) -> Registry {
    let url = backend.to_owned();
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("mul", |(x, y): (i64, i64)| Ok::<_, String>(x * y))
        .task("xsum", |(numbers,): (Vec<i64>,)| {
            Ok::<_, String>(numbers.iter().sum::<i64>())
        })
        .task("fail", |(): ()| Err::<(), _>("fail() always fails"))
        .task("echo", |(v,): (Value,)| Ok::<_, String>(v))
        .task("on_error", move |(failed, key): (String, String)| {
            let mut c = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .map_err(|e| e.to_string())?;
            redis::cmd("RPUSH")
                .arg(&key)
                .arg(&failed)
                .query::<()>(&mut c)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(failed)
        })
}

impl Env {
    fn worker(&self, q: &str) -> weft::celery::RunningWorker {
        let mut w = Worker::new(self.broker.as_str(), registry(&self.backend))
            .queue(q, Priority::Normal)
            .workers(2);
        if self.broker != self.backend {
            w = w.backend(self.backend.as_str());
        }
        w.start().unwrap()
    }

    /// A Python Celery worker (`pytasks.py`) consuming `q`.
    fn python_worker(&self, q: &str) -> Killed {
        self.python_worker_with(q, &["--pool", "solo"])
    }

    /// A Python Celery worker (`pytasks.py`) consuming `q` with `pool` options.
    fn python_worker_with(&self, q: &str, pool: &[&str]) -> Killed {
        let child = python_worker_command(&self.python, &self.broker, &self.backend, q, pool)
            .spawn()
            .unwrap();
        Killed(child)
    }

    /// Runs `interop_canvas.py` with steps on `queues`; what it saw.
    fn run_python_client(&self, queues: &[&str]) -> Value {
        let out = Command::new(&self.python)
            .arg(fixtures().join("interop_canvas.py"))
            .args([&self.broker, &self.backend])
            .args(queues)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "interop_canvas.py failed: {text}");
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// What every case must give, whoever ran its steps.
fn check(seen: &Value) {
    assert_eq!(seen["chain"], json!(39), "{seen}");
    assert_eq!(seen["chain_immutable"], json!(30), "{seen}");
    let fail = &seen["chain_fail_middle"];
    assert_eq!(fail["first"], json!(3), "{seen}");
    assert_eq!(fail["errback_got_failed_id"], json!(true), "{seen}");
    // The failure reached the last step: its get() raised.
    assert!(fail["last"].is_array(), "{seen}");
    assert_eq!(seen["link"], json!([4, [40]]), "{seen}");
    assert_eq!(seen["two_links"], json!([2, [[4, 6]]]), "{seen}");
    assert_eq!(seen["link_error"], json!(true), "{seen}");
    assert_eq!(seen["chord"], json!(20), "{seen}");
    assert_eq!(
        seen["chord_fail"],
        json!(["ChordError", "Dependency"]),
        "{seen}"
    );
    // What Python Celery 5.7's own worker gives: its client flattens a nested group of a
    // chord header in reverse (`deque.extendleft`), and the results come in that order.
    assert_eq!(seen["chord_nested_group"], json!([4, 2, 6]), "{seen}");
    assert_eq!(seen["group"], json!([0, 2, 4]), "{seen}");
    assert_eq!(seen["chain_group_task"], json!(7), "{seen}");
    assert_eq!(seen["chunks"], json!([[0, 2], [4, 6], [8, 10]]), "{seen}");
    assert_eq!(seen["map"], json!([3, 7]), "{seen}");
    assert_eq!(seen["starmap"], json!([3, 7]), "{seen}");
    assert_eq!(seen["accumulate"], json!([2, [1, 2, 3]]), "{seen}");
    let unknown = &seen["unknown_callback"];
    assert_eq!(unknown[0], json!(2), "{seen}");
    assert_eq!(unknown[1][0][0], json!("NotRegistered"), "{seen}");
}

#[test]
fn python_workflows_run_on_a_weft_worker() {
    let Some(env) = env() else { return };
    let q = unique("canvas-weft");
    let _worker = env.worker(&q);
    let seen = env.run_python_client(&[&q]);
    check(&seen);
}

#[test]
fn workflows_whose_steps_alternate_between_weft_and_python_workers_complete() {
    let Some(env) = env() else { return };
    let (qw, qp) = (unique("canvas-w"), unique("canvas-p"));
    let _worker = env.worker(&qw);
    let _python = env.python_worker(&qp);
    let seen = env.run_python_client(&[&qw, &qp]);
    check(&seen);
}

#[test]
fn a_malformed_workflow_is_dead_lettered_with_its_reason() {
    let Some(env) = env() else { return };
    let q = unique("canvas-bad");
    let mut msg =
        weft::celery::TaskMessage::new("add", vec![json!(1), json!(2)], Default::default());
    msg.routing_key = q.clone();
    msg.embed =
        json!({"callbacks": null, "errbacks": null, "chain": [{"args": [1]}], "chord": null});
    if env.broker != env.backend {
        return malformed_workflow_over_amqp(&env, &q, &msg);
    }
    let mut conn = redis::Client::open(env.backend.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let before: usize = redis::cmd("LLEN")
        .arg(weft::celery::redis::DEAD_LETTER)
        .query(&mut conn)
        .unwrap();
    redis::cmd("LPUSH")
        .arg(&q)
        .arg(msg.encode())
        .query::<()>(&mut conn)
        .unwrap();
    let _worker = env.worker(&q);
    let client = weft::celery::Client::new(&env.backend).unwrap();
    let got = client
        .result(msg.id.clone())
        .get(Duration::from_secs(20))
        .unwrap();
    match got {
        weft::celery::TaskResult::Failure { exc_message, .. } => {
            assert!(exc_message.contains("chain[0]"), "{exc_message}")
        }
        other => panic!("{other:?}"),
    }
    let entries: Vec<String> = redis::cmd("LRANGE")
        .arg(weft::celery::redis::DEAD_LETTER)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert!(entries.len() > before);
    assert!(entries
        .iter()
        .any(|e| e.contains(&msg.id) && e.contains("chain[0]")));
}

/// The same over RabbitMQ: the `FAILURE` names the field, and the message goes to the
/// dead-letter queue.
#[cfg(feature = "amqp")]
fn malformed_workflow_over_amqp(env: &Env, q: &str, msg: &weft::celery::TaskMessage) {
    use weft::celery::amqp::{Broker, DEAD_LETTER_QUEUE};
    let broker = Broker::connect(&env.broker).unwrap();
    broker.declare_dead_letter().unwrap();
    broker.declare_queue(q, None).unwrap();
    let before = broker.queue_len(DEAD_LETTER_QUEUE).unwrap();
    let _worker = env.worker(q);
    broker.publish_task(msg).unwrap();
    let client = weft::celery::Client::with_backend(&env.broker, &env.backend).unwrap();
    match client
        .result(msg.id.clone())
        .get(Duration::from_secs(20))
        .unwrap()
    {
        weft::celery::TaskResult::Failure { exc_message, .. } => {
            assert!(exc_message.contains("chain[0]"), "{exc_message}")
        }
        other => panic!("{other:?}"),
    }
    // The dead letter is published after the result is written.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while broker.queue_len(DEAD_LETTER_QUEUE).unwrap() <= before {
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        std::thread::yield_now();
    }
}

#[cfg(not(feature = "amqp"))]
fn malformed_workflow_over_amqp(_: &Env, _: &str, _: &weft::celery::TaskMessage) {
    panic!("an amqp:// broker needs --features amqp");
}

/// weft's `Client` builds chain, chord, group, link and chunks; their steps go to `qa`
/// and `qb` in turn (the same queue twice: one kind of worker runs them all).
fn weft_client_workflows(env: &Env, qa: &str, qb: &str) {
    use weft::celery::canvas::{chain, chord, chunks, group, Signature};
    let client = weft::celery::Client::with_backend(&env.broker, &env.backend).unwrap();
    let turn = std::cell::Cell::new(0usize);
    let t = |name: &str, args: &[i64]| {
        turn.set(turn.get() + 1);
        Signature::new(name)
            .args(args.iter().map(|a| json!(a)))
            .queue(if turn.get().is_multiple_of(2) { qb } else { qa })
    };
    let q = qa;
    let wait = Duration::from_secs(60);
    let flow = chain([t("add", &[1, 2]), t("add", &[10]), t("mul", &[3])]);
    assert_eq!(client.apply(&flow).unwrap().get_value(wait).unwrap(), 39);
    let sum = chord((0..5).map(|i| t("add", &[i, i])), t("xsum", &[]));
    assert_eq!(client.apply(&sum).unwrap().get_value(wait).unwrap(), 20);
    let nested = chord(
        [
            group([t("add", &[1, 1]), t("add", &[2, 2])]),
            t("add", &[3, 3]),
        ],
        t("echo", &[]),
    );
    // The same order as Celery's client gives it (see `check`).
    assert_eq!(
        client.apply(&nested).unwrap().get_value(wait).unwrap(),
        json!([4, 2, 6])
    );
    let g = group((0..3).map(|i| t("add", &[i, i])));
    assert_eq!(
        client.apply(&g).unwrap().get_value(wait).unwrap(),
        json!([0, 2, 4])
    );
    let mixed = chain([
        t("add", &[1, 1]),
        group([t("add", &[1]), t("add", &[2])]),
        t("xsum", &[]),
    ]);
    assert_eq!(client.apply(&mixed).unwrap().get_value(wait).unwrap(), 7);
    let linked = t("add", &[2, 2]).link(t("mul", &[10]).task_id(&unique("child")));
    let child = linked.options()["link"][0]["options"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(client.apply(&linked).unwrap().get_value(wait).unwrap(), 4);
    assert_eq!(client.result(child).get_value(wait).unwrap(), 40);
    let items = (0..6).map(|i| json!([i, i])).collect();
    let parts = chunks(Signature::new("add"), items, 2).queue(q);
    assert_eq!(
        client.apply(&parts).unwrap().get_value(wait).unwrap(),
        json!([[0, 2], [4, 6], [8, 10]])
    );
}

#[test]
fn weft_sent_workflows_run_on_python_workers() {
    let Some(env) = env() else { return };
    let q = unique("canvas-rs2py");
    let _python = env.python_worker(&q);
    weft_client_workflows(&env, &q, &q);
}

#[test]
fn weft_sent_workflows_alternating_between_weft_and_python_workers_complete() {
    let Some(env) = env() else { return };
    let (qw, qp) = (unique("canvas-rs-w"), unique("canvas-rs-p"));
    let _worker = env.worker(&qw);
    let _python = env.python_worker(&qp);
    weft_client_workflows(&env, &qw, &qp);
}

#[test]
fn weft_sent_workflows_run_on_weft_workers() {
    let Some(env) = env() else { return };
    let q = unique("canvas-rs2rs");
    let _worker = env.worker(&q);
    weft_client_workflows(&env, &q, &q);
}

/// `examples/celery_worker.rs` started in the background as a service manager starts it
/// (no terminal, stdin closed): prints its line once it consumes, runs a Python chain and
/// chord, and exits on SIGTERM. Runs in the Redis pass (where `cargo test` has built the
/// example); on another broker it is left to that pass.
#[test]
fn the_example_worker_runs_until_sigterm() {
    let Some(env) = env() else { return };
    if env.broker != env.backend {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/celery_worker");
    assert!(
        bin.exists(),
        "{} is built by `cargo test --features redis`",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .env("REDIS_URL", &env.backend)
        .env_remove("BROKER_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\n") {
        match out.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => panic!("the example ended: {}", String::from_utf8_lossy(&seen)),
        }
    }
    let line = String::from_utf8_lossy(&seen);
    assert!(
        line.starts_with(&format!("weft celery worker on {}", env.backend)),
        "{line}"
    );
    let script = "import sys; from celery import Celery, chain, chord\n\
        app = Celery(broker=sys.argv[1], backend=sys.argv[1])\n\
        s = app.signature\n\
        print(chain(s('add', (1, 2)), s('mul', (10,))).apply_async().get(timeout=30), \
        chord([s('add', (i, i)) for i in range(4)], s('xsum')).apply_async().get(timeout=30), \
        s('sleep_ms', (5,)).apply_async().get(timeout=30))";
    let py = Command::new(&env.python)
        .args(["-c", script, &env.backend])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        "30 12 5",
        "{py:?}"
    );
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the example exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Released by the test: the `block` task of `a_chord_part_revoked_in_the_pool_fails_the_chord`.
static GATE: (std::sync::Mutex<(bool, bool)>, std::sync::Condvar) = (
    std::sync::Mutex::new((false, false)),
    std::sync::Condvar::new(),
);

/// A chord part revoked while it waits in the weft pool (behind a blocked part, one
/// worker thread) still counts: the body is not left waiting, it fails with Celery's
/// `ChordError` naming the revoked part.
#[test]
fn a_chord_part_revoked_in_the_pool_fails_the_chord() {
    use weft::celery::canvas::{chord, Signature};
    let Some(env) = env() else { return };
    let q = unique("canvas-revoke");
    let registry = registry(&env.backend).task("block", |(): ()| {
        let (lock, cv) = &GATE;
        let mut g = lock.lock().unwrap();
        g.0 = true; // started
        cv.notify_all();
        let (g, _) = cv
            .wait_timeout_while(g, Duration::from_secs(60), |g| !g.1)
            .unwrap();
        drop(g);
        Ok::<_, String>(0)
    });
    let mut w = Worker::new(env.broker.as_str(), registry)
        .queue(q.as_str(), Priority::Normal)
        .workers(1)
        .prefetch(4);
    if env.broker != env.backend {
        w = w.backend(env.backend.as_str());
    }
    let _worker = w.start().unwrap();
    let client = weft::celery::Client::with_backend(&env.broker, &env.backend).unwrap();
    let victim = unique("victim");
    let flow = chord(
        [
            Signature::new("block").queue(&q),
            Signature::new("add")
                .args([json!(1), json!(1)])
                .queue(&q)
                .task_id(&victim),
        ],
        Signature::new("xsum").queue(&q),
    );
    let body = client.apply(&flow).unwrap();
    {
        let (lock, cv) = &GATE;
        let g = lock.lock().unwrap();
        let (g, timeout) = cv
            .wait_timeout_while(g, Duration::from_secs(30), |g| !g.0)
            .unwrap();
        assert!(!timeout.timed_out() && g.0, "the block task started");
    }
    // Both parts taken: the second waits in the pool behind the first.
    if env.broker == env.backend {
        let mut conn = redis::Client::open(env.backend.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while redis::cmd("LLEN")
            .arg(&q)
            .query::<usize>(&mut conn)
            .unwrap()
            > 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker takes both parts"
            );
            std::thread::yield_now();
        }
    }
    let revoke = Command::new(&env.python)
        .args([
            "-c",
            "import sys; from celery import Celery; \
             Celery(broker=sys.argv[1]).control.revoke(sys.argv[2])",
            &env.broker,
            &victim,
        ])
        .status()
        .unwrap();
    assert!(revoke.success());
    let revoked = client
        .result(victim.clone())
        .get(Duration::from_secs(30))
        .unwrap();
    assert_eq!(revoked.status(), "REVOKED");
    {
        let (lock, cv) = &GATE;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
    match body.get_value(Duration::from_secs(30)) {
        Err(weft::celery::Error::Task(weft::celery::TaskResult::Failure {
            exc_type,
            exc_message,
            ..
        })) => {
            assert_eq!(exc_type, "ChordError");
            assert!(
                exc_message.starts_with(&format!("Dependency {victim} raised TaskRevokedError(")),
                "{exc_message}"
            );
        }
        other => panic!("{:?}", other.map_err(|e| e.to_string())),
    }
}

/// The tasks of the chord kill test: `part(i, key)` counts its runs in the hash `key`,
/// pushes `i` on `key:ran` (the test waits on it), works 100 ms and returns `i`;
/// `collect(results, key)` pushes its run on `key:body` and returns the sum.
fn chord_registry(backend: &str) -> Registry {
    let (url, url2) = (backend.to_owned(), backend.to_owned());
    let conn = move |url: &str| {
        redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .map_err(|e| e.to_string())
    };
    Registry::new()
        .task("part", move |(i, key): (i64, String)| {
            let mut c = conn(&url)?;
            redis::pipe()
                .atomic()
                .hincr(&key, i, 1)
                .ignore()
                .rpush(format!("{key}:ran"), i)
                .ignore()
                .query::<()>(&mut c)
                .map_err(|e| e.to_string())?;
            // The work the kill interrupts.
            std::thread::sleep(Duration::from_millis(100));
            Ok::<_, String>(i)
        })
        .task("collect", move |(results, key): (Vec<i64>, String)| {
            let mut c = conn(&url2)?;
            redis::cmd("RPUSH")
                .arg(format!("{key}:body"))
                .arg(results.len())
                .query::<()>(&mut c)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(results.iter().sum::<i64>())
        })
}

/// A weft worker with late acknowledgement and a 2 s visibility timeout (Redis) on `q`.
fn late_worker(env: &Env, q: &str) -> weft::celery::RunningWorker {
    let mut w = Worker::new(env.broker.as_str(), chord_registry(&env.backend))
        .queue(q, Priority::Normal)
        .workers(2)
        .prefetch(4)
        .acks_late(true)
        .visibility_timeout(Duration::from_secs(2))
        .restore_interval(Duration::from_millis(500));
    if env.broker != env.backend {
        w = w.backend(env.backend.as_str());
    }
    w.start().unwrap()
}

/// Not a test by itself: the worker process that
/// [`a_chord_survives_a_killed_worker_and_its_body_runs_once`] kills, started by it as a
/// child of this test binary (with `WEFT_CANVAS_CHILD_QUEUE` set); returns at once
/// otherwise.
#[test]
fn chord_child_worker_process() {
    let Ok(q) = std::env::var("WEFT_CANVAS_CHILD_QUEUE") else {
        return;
    };
    let env = env().unwrap();
    let _worker = late_worker(&env, &q);
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// `kill -9` of a weft worker (late acknowledgement) while it runs a chord's header: the
/// parts it held are delivered again to another worker, each part counts once, and the
/// body runs exactly once with every result in order.
#[test]
fn a_chord_survives_a_killed_worker_and_its_body_runs_once() {
    use weft::celery::canvas::{chord, Signature};
    let Some(env) = env() else { return };
    let q = unique("canvas-kill9");
    let key = unique("chord-runs");
    let mut child = spawn_ready_child(
        "chord_child_worker_process",
        &[("WEFT_CANVAS_CHILD_QUEUE", q.as_str())],
    );
    let client = weft::celery::Client::with_backend(&env.broker, &env.backend).unwrap();
    let n = 40i64;
    let part = |i: i64| {
        Signature::new("part")
            .args([json!(i), json!(key)])
            .queue(&q)
    };
    let body = Signature::new("collect").args([json!(key)]).queue(&q);
    let r = client.apply(&chord((0..n).map(part), body)).unwrap();
    // Killed while it runs the header: once 10 parts have started.
    let mut conn = redis::Client::open(env.backend.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for _ in 0..10 {
        let got: Option<(String, i64)> = redis::cmd("BLPOP")
            .arg(format!("{key}:ran"))
            .arg(30)
            .query(&mut conn)
            .unwrap();
        assert!(got.is_some(), "the child worker runs the header");
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let rescuer = late_worker(&env, &q);
    assert_eq!(
        r.get_value(Duration::from_secs(60)).unwrap(),
        json!((0..n).sum::<i64>())
    );
    // Whatever the rescuer still held or ran is done or put back: a second body would
    // have run, or be waiting in the queue.
    assert_eq!(rescuer.shutdown(), 0, "nothing left to put back");
    if env.broker == env.backend {
        let queued: usize = redis::cmd("LLEN").arg(&q).query(&mut conn).unwrap();
        assert_eq!(queued, 0, "no second body waits");
    }
    let bodies: i64 = redis::cmd("LLEN")
        .arg(format!("{key}:body"))
        .query(&mut conn)
        .unwrap();
    let runs: Vec<i64> = redis::cmd("HVALS").arg(&key).query(&mut conn).unwrap();
    eprintln!(
        "chord kill -9: {n} parts, {} part runs ({} again after the kill), body runs: {bodies}",
        runs.iter().sum::<i64>(),
        runs.iter().sum::<i64>() - n
    );
    assert_eq!(runs.len() as i64, n, "every part ran");
    assert_eq!(bodies, 1, "the body ran once");
}

/// A 1,000-part chord whose parts alternate between a weft worker and a Python worker
/// (finishing in any order), its body on the weft worker: the body gets the 1,000 results
/// in header order.
#[test]
fn a_thousand_part_chord_split_between_weft_and_python_completes() {
    use weft::celery::canvas::{chord, Signature};
    let Some(env) = env() else { return };
    let (qw, qp) = (unique("chord1k-w"), unique("chord1k-p"));
    let _worker = env.worker(&qw);
    let _python = env.python_worker(&qp);
    let client = weft::celery::Client::with_backend(&env.broker, &env.backend).unwrap();
    let n = 1000i64;
    let parts = (0..n).map(|i| {
        Signature::new("mul")
            .args([json!(i), json!(1)])
            .queue(if i % 2 == 0 { &qw } else { &qp })
    });
    // The body (`echo`) returns what it was given: the results in header order.
    let start = std::time::Instant::now();
    let r = client
        .apply(&chord(parts, Signature::new("echo").queue(&qw)))
        .unwrap();
    assert_eq!(
        r.get_value(Duration::from_secs(120)).unwrap(),
        json!((0..n).collect::<Vec<_>>())
    );
    eprintln!(
        "1,000-part chord, parts alternating weft/Python: {:?}",
        start.elapsed()
    );
}

/// What one run of a workflow took.
fn time_workflow(
    client: &weft::celery::Client,
    flow: &weft::celery::canvas::Signature,
) -> (Duration, Value) {
    let start = std::time::Instant::now();
    let v = client
        .apply(flow)
        .unwrap()
        .get_value(Duration::from_secs(600))
        .unwrap();
    (start.elapsed(), v)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Workflow cost, a weft worker vs a Python Celery prefork worker at the same concurrency
/// (2), both running in the same run, rounds interleaved: a chain of N `add` steps (each
/// step's message carries the rest of the chain, as Celery's do) and a chord of N `add`
/// parts with an `xsum` body. Ignored by default:
/// `WEFT_CANVAS_BENCH_STEPS=1000 cargo test --release --features redis --test
/// celery_canvas workflow_cost -- --ignored --nocapture` (RabbitMQ: `--features amqp`
/// and `WEFT_CELERY_BROKER=amqp://...`).
#[test]
#[ignore]
fn workflow_cost_weft_vs_python_prefork() {
    use weft::celery::canvas::{chain, chord, Signature};
    let Some(env) = env() else { return };
    let n: i64 = std::env::var("WEFT_CANVAS_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rounds = 3;
    let (qw, qp) = (unique("bench-canvas-w"), unique("bench-canvas-p"));
    let _worker = env.worker(&qw);
    let _python = env.python_worker_with(&qp, &["--pool", "prefork", "-c", "2"]);
    let client = weft::celery::Client::with_backend(&env.broker, &env.backend).unwrap();
    let add = |q: &str, args: &[i64]| {
        Signature::new("add")
            .args(args.iter().map(|a| json!(a)))
            .queue(q)
    };
    let chain_of =
        |q: &str| chain(std::iter::once(add(q, &[0, 1])).chain((1..n).map(|_| add(q, &[1]))));
    let chord_of = |q: &str| {
        chord(
            (0..n).map(|i| add(q, &[i, i])),
            Signature::new("xsum").queue(q),
        )
    };
    // Warm-up: both consume.
    for q in [&qw, &qp] {
        time_workflow(&client, &chain([add(q, &[1, 1]), add(q, &[1])]));
    }
    let mut times: [[Vec<Duration>; 2]; 2] = Default::default();
    for _ in 0..rounds {
        for (w, q) in [&qw, &qp].into_iter().enumerate() {
            let (t, v) = time_workflow(&client, &chain_of(q));
            assert_eq!(v, json!(n));
            times[w][0].push(t);
            let (t, v) = time_workflow(&client, &chord_of(q));
            assert_eq!(v, json!(n * (n - 1)));
            times[w][1].push(t);
        }
    }
    let [[wc, wd], [pc, pd]] = times.map(|kinds| kinds.map(median));
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    eprintln!(
        "workflow cost over {}, concurrency 2, median of {rounds} interleaved rounds:\n  \
         chain of {n} steps: weft {wc:.2?} ({:.0} us/step), Python prefork {pc:.2?} \
         ({:.0} us/step), ratio {:.1}x\n  chord of {n} parts: weft {wd:.2?}, Python \
         prefork {pd:.2?}, ratio {:.1}x",
        if env.broker == env.backend {
            "Redis"
        } else {
            "RabbitMQ"
        },
        per(wc),
        per(pc),
        pc.as_secs_f64() / wc.as_secs_f64(),
        pd.as_secs_f64() / wd.as_secs_f64(),
    );
}
