//! Celery interop against a real Redis and the real Python Celery (no mocks).
//!
//! Redis is found through `WEFT_REDIS_URL`, Python (with `celery[redis]`) through
//! `WEFT_CELERY_PYTHON`; `.ci/run` provides both. Outside CI a missing one skips the test
//! with a loud message; in CI (`CI` set) it is a failure. Each test uses its own queue
//! names, so the tests share one Redis database.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
mod common;

use common::celery::{
    broker_and_backend, fixtures, python_sends_interop, python_worker_command, rabbitmqctl,
    required, spawn_ready_child, unique, uuid_like, Killed,
};
use common::rng::Rng;
use weft::celery::{AsyncResult, Client, SendOptions, TaskResult, Worker};
use weft::registry::Registry;
use weft::Priority;

/// Where the suite runs: the broker (`WEFT_CELERY_BROKER`, Redis or RabbitMQ; default the
/// Redis of `WEFT_REDIS_URL`) and the Redis result backend (`WEFT_REDIS_URL`).
#[derive(Clone)]
struct Env {
    broker: String,
    backend: String,
    amqp: bool,
}

fn env() -> Option<Env> {
    let (broker, backend, amqp) = broker_and_backend()?;
    Some(Env {
        broker,
        backend,
        amqp,
    })
}

impl Env {
    fn worker(&self, registry: Registry) -> Worker {
        let w = Worker::new(self.broker.as_str(), registry);
        if self.amqp {
            w.backend(self.backend.as_str())
        } else {
            w
        }
    }

    fn client(&self) -> Client {
        Client::with_backend(&self.broker, &self.backend).unwrap()
    }

    /// A connection to the result backend (where the test tasks count their runs).
    fn redis(&self) -> redis::Connection {
        redis::Client::open(self.backend.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    #[cfg(feature = "amqp")]
    fn amqp(&self) -> weft::celery::amqp::Broker {
        weft::celery::amqp::Broker::connect(&self.broker).unwrap()
    }

    /// Messages waiting in queue `q` (not held by any worker).
    fn queued(&self, q: &str) -> usize {
        if self.amqp {
            #[cfg(feature = "amqp")]
            return self.amqp().queue_len(q).unwrap() as usize;
        }
        let keys = weft::celery::redis::consume_keys(&[q]);
        let mut conn = self.redis();
        keys.iter()
            .map(|k| redis::cmd("LLEN").arg(k).query::<usize>(&mut conn).unwrap())
            .sum()
    }

    /// Sends `msgs` to their queues at once (for the throughput runs).
    fn push_all(&self, msgs: &[weft::celery::TaskMessage]) {
        if self.amqp {
            #[cfg(feature = "amqp")]
            return self.amqp().publish_tasks(msgs).unwrap();
        }
        let mut pipe = redis::pipe();
        for m in msgs {
            pipe.lpush(&m.routing_key, m.encode()).ignore();
        }
        pipe.query::<()>(&mut self.redis()).unwrap();
    }

    /// The command of a Python Celery worker (`pytasks.py`, `pool` e.g. `--pool solo`)
    /// consuming `q` under a name of its own (on RabbitMQ a worker's pidbox queue is
    /// exclusive to its name), output discarded.
    fn python_worker(&self, py: &str, q: &str, pool: &[&str]) -> Command {
        python_worker_command(py, &self.broker, &self.backend, q, pool)
    }
}

/// The number of runs the test tasks counted in the hash `runs`, in all.
fn runs_so_far(conn: &mut redis::Connection, runs: &str) -> i64 {
    let counts: Vec<i64> = redis::cmd("HVALS").arg(runs).query(conn).unwrap();
    counts.iter().sum()
}

fn python() -> Option<String> {
    required("WEFT_CELERY_PYTHON")
}

#[derive(serde::Deserialize)]
struct Xy {
    x: i64,
    y: i64,
}

/// Counts the runs of `tock`.
static TOCKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts the runs of `tick`.
static TICKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Set by `spin_until_revoked` once it runs.
static SPINNING: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

fn registry() -> Registry {
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("add_kw", |a: Xy| Ok::<_, String>(a.x + a.y))
        .task("ping", |(): ()| Ok::<_, String>("pong"))
        .task("tock", |(): ()| {
            Ok::<_, String>(TOCKS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
        })
        .task("tick", |(): ()| {
            Ok::<_, String>(TICKS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
        })
        .task("spin_until_revoked", |(): ()| {
            *SPINNING.0.lock().unwrap() = true;
            SPINNING.1.notify_all();
            while weft::checkpoint().is_ok() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok::<_, String>("stopped")
        })
        .task("fail", |_: Vec<i64>| Err::<(), _>("fail() always fails"))
        .task("boom", |_: Vec<i64>| -> Result<(), String> {
            panic!("boom!")
        })
        .task("spin", |_: Vec<i64>| {
            // Runs until told to stop by its time limit.
            while weft::checkpoint().is_ok() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok::<_, String>("stopped")
        })
}

/// Sends `n` tasks `slow_add(i, 1000, runs)` to queue `q` (each counts its runs in the
/// hash `runs`).
fn send_slow_adds(client: &Client, q: &str, runs: &str, n: usize) -> Vec<AsyncResult> {
    let opts = on(q);
    (0..n)
        .map(|i| {
            client
                .send_task(
                    "slow_add",
                    vec![json!(i), json!(1000), json!(runs)],
                    no_args(),
                    opts.clone(),
                )
                .unwrap()
        })
        .collect()
}

/// Waits (up to 30 s) until the test tasks have counted more than `above` runs in the hash
/// `runs` (the child is running tasks, with more taken behind them; each run also pushes
/// on the list `<runs>:ran`, which the wait blocks on), then a random
/// 0-`jitter_ms` ms more, so that the kill lands at a random point of the consumer's work
/// (between fetches, mid-batch, while tasks run, while results are written), then
/// `kill -9`s `child`. Returns the runs counted just before the kill.
fn kill_while_running(
    conn: &mut redis::Connection,
    runs: &str,
    child: &mut Killed,
    rng: &mut Rng,
    jitter_ms: u64,
    above: i64,
) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let ran = format!("{runs}:ran");
    while runs_so_far(conn, runs) <= above {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the worker never ran a task");
        // Wakes at the next run's push (or at once for one already there).
        let _: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(&ran)
            .arg(left.as_secs_f64())
            .query(conn)
            .unwrap();
    }
    // Random timing on purpose (where the kill lands), not a wait for anything.
    std::thread::sleep(Duration::from_millis(rng.below(jitter_ms + 1)));
    let ran = runs_so_far(conn, runs);
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    ran
}

/// Options that send to queue `q`.
fn on(q: &str) -> SendOptions {
    SendOptions {
        queue: Some(q.to_owned()),
        ..SendOptions::default()
    }
}

fn no_args() -> Map<String, Value> {
    Map::new()
}

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn weft_client_to_weft_worker() {
    let Some(env) = env() else { return };
    let q = unique("rt");
    let worker = env
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .workers(2)
        .start()
        .unwrap();
    let client = env.client();
    let opts = |priority| SendOptions { priority, ..on(&q) };
    let sums: Vec<_> = (0..100)
        .map(|i| {
            client
                .send_task(
                    "add",
                    vec![json!(i), json!(1)],
                    no_args(),
                    opts(i as u8 % 10),
                )
                .unwrap()
        })
        .collect();
    for (i, r) in sums.iter().enumerate() {
        assert_eq!(r.get_value(WAIT).unwrap(), json!(i + 1));
    }
    let mut kw = Map::new();
    kw.insert("x".into(), json!(40));
    kw.insert("y".into(), json!(2));
    let r = client.send_task("add_kw", vec![], kw, opts(0)).unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(42));
    // No arguments fit a task taking `()`.
    let r = client
        .send_task("ping", vec![], no_args(), opts(0))
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!("pong"));

    let r = client
        .send_task("fail", vec![], no_args(), opts(0))
        .unwrap();
    match r.get(WAIT).unwrap() {
        TaskResult::Failure {
            exc_type,
            exc_message,
            ..
        } => assert_eq!(
            (exc_type.as_str(), exc_message.as_str()),
            ("RuntimeError", "fail() always fails")
        ),
        other => panic!("{other:?}"),
    }
    let r = client
        .send_task("boom", vec![], no_args(), opts(0))
        .unwrap();
    assert!(
        matches!(r.get(WAIT).unwrap(), TaskResult::Failure { exc_message, .. } if exc_message.contains("boom!"))
    );
    let r = client
        .send_task("nope", vec![], no_args(), opts(0))
        .unwrap();
    assert_eq!(r.get(WAIT).unwrap(), TaskResult::not_registered("nope"));
    let r = client
        .send_task("add", vec![json!("x")], no_args(), opts(0))
        .unwrap();
    assert!(
        matches!(r.get(WAIT).unwrap(), TaskResult::Failure { exc_type, .. } if exc_type == "TypeError")
    );

    // The message's soft time limit stops a task that checks in.
    let r = client
        .send_task(
            "spin",
            vec![],
            no_args(),
            SendOptions {
                time_limit: (Some(30.0), Some(0.2)),
                ..opts(0)
            },
        )
        .unwrap();
    assert!(
        matches!(r.get(WAIT).unwrap(), TaskResult::Failure { exc_type, .. } if exc_type == "TimeLimitExceeded")
    );

    // A countdown task runs after its countdown, not before.
    let start = Instant::now();
    let r = client
        .send_task(
            "add",
            vec![json!(1), json!(2)],
            no_args(),
            SendOptions {
                countdown: Some(Duration::from_millis(1500)),
                ..opts(0)
            },
        )
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(3));
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        start.elapsed()
    );

    // An expired task is revoked, not run.
    let r = client
        .send_task(
            "add",
            vec![json!(1), json!(2)],
            no_args(),
            SendOptions {
                expires: Some(std::time::SystemTime::now() - Duration::from_secs(1)),
                ..opts(0)
            },
        )
        .unwrap();
    assert!(matches!(r.get(WAIT).unwrap(), TaskResult::Revoked(_)));
    assert_eq!(worker.shutdown(), 0);
}

#[test]
fn shutdown_puts_back_the_messages_whose_tasks_did_not_run() {
    let Some(env) = env() else { return };
    let q = unique("requeue");
    let worker = env
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .workers(1)
        .start()
        .unwrap();
    let client = env.client();
    let opts = on(&q);
    let later = client
        .send_task(
            "add",
            vec![json!(20), json!(22)],
            no_args(),
            SendOptions {
                countdown: Some(Duration::from_secs(3)),
                ..opts.clone()
            },
        )
        .unwrap();
    let now = client
        .send_task("add", vec![json!(1), json!(1)], no_args(), opts)
        .unwrap();
    assert_eq!(now.get_value(WAIT).unwrap(), json!(2));
    // The countdown task is held (unacknowledged, in the timing wheel): put back.
    assert_eq!(worker.shutdown(), 1);
    assert_eq!(later.try_get().unwrap(), None);
    assert_eq!(env.queued(&q), 1);
    // Another worker runs it at its ETA.
    let worker = env
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .workers(1)
        .start()
        .unwrap();
    assert_eq!(later.get_value(WAIT).unwrap(), json!(42));
    assert_eq!(worker.shutdown(), 0);
}

/// Pushes seven unreadable messages of kombu's Redis envelope onto `q` (one a pickle
/// message with the id `pickle_id`; one that Redis's Lua JSON reads but serde does not
/// (`Infinity`), with the delivery tag `inf_tag`); returns a piece of each one's expected
/// reason.
fn push_bad_redis(env: &Env, q: &str, pickle_id: &str, inf_tag: &str) -> Vec<&'static str> {
    let good = std::fs::read_to_string(fixtures().join("send_add.json")).unwrap();
    let mut pickle: Value = serde_json::from_str(&good).unwrap();
    pickle["content-type"] = json!("application/x-python-serialize");
    pickle["headers"]["id"] = json!(pickle_id);
    let mut bad_b64: Value = serde_json::from_str(&good).unwrap();
    bad_b64["body"] = json!("%%% not base64");
    bad_b64["headers"]["id"] = json!(format!("b64-{}", uuid_like()));
    let mut no_task: Value = serde_json::from_str(&good).unwrap();
    no_task["headers"].as_object_mut().unwrap().remove("task");
    no_task["headers"]["id"] = json!(format!("notask-{}", uuid_like()));
    let mut unknown: Value = serde_json::from_str(&good).unwrap();
    unknown["surprise"] = json!(1);
    unknown["headers"]["id"] = json!(format!("unknown-{}", uuid_like()));
    // Python's json.dumps writes float("inf") so.
    let mut inf: Value = serde_json::from_str(&good).unwrap();
    inf["headers"]["id"] = json!(format!("inf-{}", uuid_like()));
    inf["headers"]["retries"] = json!("INF");
    inf["properties"]["delivery_tag"] = json!(inf_tag);
    let inf = inf.to_string().replace("\"INF\"", "Infinity");
    // An ETA nobody can read: refused, not run at once.
    let mut eta: Value = serde_json::from_str(&good).unwrap();
    eta["headers"]["id"] = json!(format!("eta-{}", uuid_like()));
    eta["headers"]["eta"] = json!("next tuesday");
    let mut conn = env.redis();
    for raw in [
        format!("{{\"truncated\": \"{}", uuid_like()),
        pickle.to_string(),
        bad_b64.to_string(),
        no_task.to_string(),
        unknown.to_string(),
        inf,
        eta.to_string(),
    ] {
        redis::cmd("LPUSH")
            .arg(q)
            .arg(raw)
            .query::<()>(&mut conn)
            .unwrap();
    }
    vec![
        "invalid JSON",
        "never pickle",
        "base64",
        "\"task\"",
        "\"surprise\"",
        "invalid JSON",
        "unreadable eta \"next tuesday\"",
    ]
}

/// Publishes five unreadable AMQP messages to `q` (one a pickle message with the id
/// `pickle_id`); returns a piece of each one's expected reason.
#[cfg(feature = "amqp")]
fn push_bad_amqp(env: &Env, q: &str, pickle_id: &str) -> Vec<&'static str> {
    use weft::celery::amqp::{encode_task, json_to_table};
    let broker = env.amqp();
    let (body, props) = encode_task(&weft::celery::TaskMessage::new(
        "add",
        vec![json!(1), json!(2)],
        no_args(),
    ));
    let with_id = |id: &str| {
        let mut h = serde_json::Map::new();
        h.insert("id".into(), json!(id));
        h.insert("task".into(), json!("add"));
        props.clone().with_headers(json_to_table(&h))
    };
    let no_task = {
        let mut h = serde_json::Map::new();
        h.insert("id".into(), json!(format!("notask-{}", uuid_like())));
        props.clone().with_headers(json_to_table(&h))
    };
    let bad: Vec<(Vec<u8>, lapin::BasicProperties)> = vec![
        (
            b"[[2, 3], {".to_vec(),
            with_id(&format!("trunc-{}", uuid_like())),
        ),
        (
            b"\x80\x04pickle".to_vec(),
            with_id(pickle_id).with_content_type("application/x-python-serialize".into()),
        ),
        (
            body.clone(),
            with_id(&format!("latin-{}", uuid_like())).with_content_encoding("latin-1".into()),
        ),
        (body.clone(), no_task),
        (
            body.clone(),
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        ),
    ];
    for (body, props) in bad {
        broker.publish("", q, &body, props).unwrap();
    }
    vec![
        "invalid JSON",
        "never pickle",
        "content-encoding",
        "\"task\"",
        "\"headers\"",
    ]
}

#[cfg(not(feature = "amqp"))]
fn push_bad_amqp(_: &Env, _: &str, _: &str) -> Vec<&'static str> {
    unreachable!("env() refuses an AMQP broker without the feature")
}

/// The reasons of the dead letters from queue `q`, once there are `n` (waits up to 20 s).
fn dead_letters(env: &Env, q: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut reasons = Vec::new();
    if env.amqp {
        #[cfg(feature = "amqp")]
        {
            use weft::celery::amqp::{
                table_to_json, DEAD_LETTER_QUEUE, ORIGINAL_ROUTING_KEY_HEADER, REASON_HEADER,
            };
            let broker = env.amqp();
            let mut consumer = broker.consume(DEAD_LETTER_QUEUE, 0).unwrap();
            while reasons.len() < n && Instant::now() < deadline {
                let Some(d) = consumer.next(Duration::from_millis(200)).unwrap() else {
                    continue;
                };
                let h = table_to_json(d.properties().headers().as_ref().unwrap());
                if h[ORIGINAL_ROUTING_KEY_HEADER] == json!(q) {
                    reasons.push(h[REASON_HEADER].as_str().unwrap().to_owned());
                    d.ack().unwrap();
                } else {
                    d.reject(true).unwrap();
                }
            }
        }
        return reasons;
    }
    // Woken by weft's own wake-up on changes to the dead-letter list (Redis's client
    // tracking), rather than by polling it.
    use weft::celery::redis::{track, Wake, DEAD_LETTER};
    let client = redis::Client::open(env.backend.as_str()).unwrap();
    let wake = Arc::new(Wake::new());
    let stop = Arc::new(AtomicBool::new(false));
    let tracker = {
        let (client, wake, stop) = (client.clone(), wake.clone(), stop.clone());
        std::thread::spawn(move || {
            track(&client, &[DEAD_LETTER.to_owned()], &wake, || {
                stop.load(Ordering::Acquire)
            })
        })
    };
    let mut conn = env.redis();
    while reasons.len() < n && Instant::now() < deadline {
        let seen = wake.generation();
        let dead: Vec<String> = redis::cmd("LRANGE")
            .arg(weft::celery::redis::DEAD_LETTER)
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .unwrap();
        reasons = dead
            .iter()
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .filter(|d| d["queue"] == json!(q))
            .map(|d| d["reason"].as_str().unwrap().to_owned())
            .collect();
        if reasons.len() < n {
            wake.wait(seen, deadline.saturating_duration_since(Instant::now()));
        }
    }
    stop.store(true, Ordering::Release);
    tracker.join().unwrap();
    reasons
}

/// Tasks waiting for their ETA hold messages but never stop the worker from taking more
/// (on RabbitMQ the channel's `basic.qos` grows with them, as Celery's does).
#[test]
fn eta_tasks_never_stop_delivery() {
    let Some(env) = env() else { return };
    let q = unique("eta-prefetch");
    let worker = env
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .workers(1)
        .prefetch(2)
        .start()
        .unwrap();
    let client = env.client();
    let opts = on(&q);
    for i in 0..6 {
        client
            .send_task(
                "add",
                vec![json!(i), json!(0)],
                no_args(),
                SendOptions {
                    countdown: Some(Duration::from_secs(120)),
                    ..opts.clone()
                },
            )
            .unwrap();
    }
    // Behind six ETA tasks, three times the prefetch: still taken and run.
    let r = client
        .send_task("add", vec![json!(1), json!(2)], no_args(), opts)
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(3));
    // The six were held, not run: put back at shutdown.
    assert_eq!(worker.shutdown(), 6);
    assert_eq!(env.queued(&q), 6);
}

/// RabbitMQ: a task still waiting for its ETA after the hold limit is sent again and its
/// old delivery acknowledged (so that the broker's consumer_timeout never closes the
/// channel); it still runs once, at its ETA.
#[test]
fn an_eta_task_held_past_the_hold_limit_is_sent_again_and_runs_once() {
    let Some(env) = env() else { return };
    if !env.amqp {
        return; // Redis has no hold limit: its held messages have a heartbeat.
    }
    let q = unique("hold-limit");
    let worker = env
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .workers(1)
        .amqp_hold_limit(Duration::from_millis(300))
        .start()
        .unwrap();
    let before = TICKS.load(std::sync::atomic::Ordering::SeqCst);
    let start = Instant::now();
    let r = env
        .client()
        .send_task(
            "tick",
            vec![],
            no_args(),
            SendOptions {
                countdown: Some(Duration::from_secs(2)),
                ..on(&q)
            },
        )
        .unwrap();
    r.get_value(WAIT).unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    // Sent around about six times, run once.
    assert_eq!(TICKS.load(std::sync::atomic::Ordering::SeqCst) - before, 1);
    assert_eq!(worker.shutdown(), 0);
    assert_eq!(env.queued(&q), 0);
}

/// RabbitMQ: when a worker's connection drops, the broker delivers again every message it
/// held; the worker drops its own copies of those that had not started, so a task waiting
/// for its ETA runs once, not twice.
#[test]
fn a_dropped_broker_connection_does_not_run_held_tasks_twice() {
    let Some(env) = env() else { return };
    if !env.amqp {
        return; // Redis's held messages outlive a connection.
    }
    let Some(dir) = required("WEFT_RABBITMQ_DIR") else {
        return;
    };
    let q = unique("reconnect");
    let name = format!("weft-test-{}@here", uuid_like());
    let worker = env
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .hostname(name.as_str())
        // Two threads: were both copies to run, they would run at once, at the ETA.
        .workers(2)
        .start()
        .unwrap();
    let before = TOCKS.load(std::sync::atomic::Ordering::SeqCst);
    let r = env
        .client()
        .send_task(
            "tock",
            vec![],
            no_args(),
            SendOptions {
                countdown: Some(Duration::from_secs(3)),
                ..on(&q)
            },
        )
        .unwrap();
    // Delivered (held, waiting for its ETA): a task sent after it has run, and the queue
    // is FIFO.
    let behind = env
        .client()
        .send_task("ping", vec![], no_args(), on(&q))
        .unwrap();
    assert_eq!(behind.get_value(WAIT).unwrap(), json!("pong"));
    assert_eq!(env.queued(&q), 0, "never delivered");
    let wanted = format!("weft consumer {name}");
    // One line per connection: `<pid>\t[..., {"connection_name","<name>"}, ...]`.
    let conns = rabbitmqctl(&dir, &["list_connections", "pid", "client_properties"]);
    let pid = conns
        .lines()
        .find(|l| l.contains(&format!("{{\"connection_name\",\"{wanted}\"}}")))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no connection {wanted:?} in {conns}"));
    rabbitmqctl(&dir, &["close_connection", pid, "weft test: dropped"]);
    assert_eq!(r.get_value(WAIT).unwrap(), json!(before + 1));
    // Waits for whatever runs; a copy not started is put back, not run.
    worker.shutdown();
    assert_eq!(TOCKS.load(std::sync::atomic::Ordering::SeqCst) - before, 1);
}

/// Settings that cannot work are refused with a clear error before anything connects.
#[test]
fn bad_settings_are_clear_errors() {
    let err = |r: Result<weft::celery::RunningWorker, weft::celery::Error>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started"),
    };
    let e = err(Worker::new("ftp://localhost", Registry::new()).start());
    assert!(e.contains("unknown broker URL scheme \"ftp\""), "{e}");
    let e = err(Worker::new("amqp://localhost", Registry::new()).start());
    assert!(
        e.contains("Redis result backend") || e.contains("without the feature `amqp`"),
        "{e}"
    );
    let e = err(Worker::new("redis://127.0.0.1:1/0", Registry::new())
        .backend("redis://127.0.0.1:2/0")
        .start());
    assert!(e.contains("its own result backend"), "{e}");
    match Client::with_backend("ftp://localhost", "redis://127.0.0.1:1/0") {
        Err(e) => assert!(e.to_string().contains("unknown broker URL scheme"), "{e}"),
        Ok(_) => panic!("connected"),
    }
}

#[test]
fn bad_messages_are_dead_lettered_and_never_stop_the_worker() {
    let Some(env) = env() else { return };
    let q = unique("bad");
    let worker = env
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .workers(1)
        .start()
        .unwrap();
    let pickle_id = format!("pickle-{}", uuid_like());
    let inf_tag = format!("inf-tag-{}", uuid_like());
    let expected = if env.amqp {
        push_bad_amqp(&env, &q, &pickle_id)
    } else {
        push_bad_redis(&env, &q, &pickle_id, &inf_tag)
    };
    let client = env.client();
    let r = client
        .send_task("add", vec![json!(2), json!(2)], no_args(), on(&q))
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(4));
    match client.result(pickle_id).get(WAIT).unwrap() {
        TaskResult::Failure { exc_type, .. } => assert_eq!(exc_type, "ContentDisallowed"),
        other => panic!("{other:?}"),
    }
    let reasons = dead_letters(&env, &q, expected.len());
    assert_eq!(reasons.len(), expected.len(), "{reasons:#?}");
    for e in expected {
        assert!(reasons.iter().any(|r| r.contains(e)), "{e}: {reasons:#?}");
    }
    if !env.amqp {
        // Recorded unacknowledged by the pop (Lua read it), then acknowledged with its
        // dead letter: it does not come back at every visibility timeout.
        let held: bool = redis::cmd("HEXISTS")
            .arg("unacked")
            .arg(&inf_tag)
            .query(&mut env.redis())
            .unwrap();
        assert!(!held, "the Infinity message is still held");
    }
    worker.shutdown();
}

#[test]
fn python_sends_weft_runs_python_reads() {
    let (Some(env), Some(py)) = (env(), python()) else {
        return;
    };
    let q = unique("py2rs");
    let worker = env
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .workers(2)
        .start()
        .unwrap();
    let seen = python_sends_interop(&py, &env.broker, &env.backend, &q, &[]);
    assert_eq!(seen["unknown"][0], json!("NotRegistered"));
    assert!(seen["unknown"][1]
        .as_str()
        .unwrap()
        .contains("no.such.task"));
    assert_eq!(worker.shutdown(), 0);
}

#[test]
fn weft_sends_python_worker_runs_weft_reads() {
    let (Some(env), Some(py)) = (env(), python()) else {
        return;
    };
    let q = unique("rs2py");
    let mut child = env
        .python_worker(&py, &q, &["--pool", "solo"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take();
    let child = Killed(child);
    let client = env.client();
    let opts = on(&q);
    let r = client
        .send_task("py.mul", vec![json!(6), json!(7)], no_args(), opts.clone())
        .unwrap();
    let got = r.get(Duration::from_secs(60));
    let r2 = client
        .send_task("py.fail", vec![json!("from python")], no_args(), opts)
        .unwrap();
    let got2 = r2.get(Duration::from_secs(60));
    drop(child);
    let mut err = String::new();
    if let Some(mut s) = stderr {
        let _ = s.read_to_string(&mut err);
    }
    assert_eq!(
        got.unwrap_or_else(|e| panic!("{e}\n{err}")),
        TaskResult::Success(json!(42))
    );
    match got2.unwrap_or_else(|e| panic!("{e}\n{err}")) {
        TaskResult::Failure {
            exc_type,
            exc_module,
            exc_message,
            ..
        } => assert_eq!(
            (exc_type.as_str(), exc_module.as_str(), exc_message.as_str()),
            ("ValueError", "builtins", "from python")
        ),
        other => panic!("{other:?}"),
    }
}

/// Not a test by itself: the worker process of
/// [`a_killed_worker_loses_no_task`], started by it as a child of this same test binary
/// (with `WEFT_CELERY_CHILD_QUEUE` set); returns at once otherwise.
#[test]
fn child_worker_process() {
    let Ok(q) = std::env::var("WEFT_CELERY_CHILD_QUEUE") else {
        return;
    };
    let env = env().unwrap();
    let counter_url = env.backend.clone();
    let registry = Registry::new().task("slow_add", move |(x, y, key): (i64, i64, String)| {
        // Counts runs, to report duplicates (delivery is at-least-once).
        let mut c = redis::Client::open(counter_url.as_str())
            .and_then(|c| c.get_connection())
            .map_err(|e| e.to_string())?;
        redis::pipe()
            .atomic()
            .hincr(&key, x, 1)
            .ignore()
            .rpush(format!("{key}:ran"), x)
            .ignore()
            .query::<()>(&mut c)
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(100));
        Ok::<_, String>(x + y)
    });
    let _worker = env
        .worker(registry)
        .queue(q.as_str(), Priority::Normal)
        .workers(2)
        .prefetch(4)
        // Acknowledged once finished: a killed worker's tasks come back.
        .acks_late(true)
        .visibility_timeout(Duration::from_secs(2))
        .restore_interval(Duration::from_millis(500))
        .start()
        .unwrap();
    println!("ready");
    // Serve until killed.
    loop {
        std::thread::park();
    }
}

fn spawn_child_worker(env: &Env, q: &str) -> Killed {
    spawn_ready_child(
        "child_worker_process",
        &[
            ("WEFT_CELERY_CHILD_QUEUE", q),
            ("WEFT_REDIS_URL", &env.backend),
            ("WEFT_CELERY_BROKER", &env.broker),
        ],
    )
}

#[test]
fn a_killed_worker_loses_no_task() {
    let Some(env) = env() else { return };
    let q = unique("kill9");
    let runs = unique("runs");
    let mut a = spawn_child_worker(&env, &q);
    let _b = spawn_child_worker(&env, &q);
    let client = env.client();
    let n = 40;
    let mut rng = Rng::from_clock("a_killed_worker_loses_no_task");
    let mut conn = env.redis();
    let results = send_slow_adds(&client, &q, &runs, n);
    // kill -9: no shutdown, its unacked messages stay behind.
    let ran = kill_while_running(&mut conn, &runs, &mut a, &mut rng, 300, 0);
    let start = Instant::now();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            r.get_value(Duration::from_secs(30)).unwrap(),
            json!(i + 1000),
            "task {i}"
        );
    }
    let counts: Vec<i64> = redis::cmd("HVALS").arg(&runs).query(&mut conn).unwrap();
    let total: i64 = counts.iter().sum();
    eprintln!(
        "kill -9 test: {n} tasks, {ran} runs started when one worker was killed, \
         every result in {:?} after the kill, {} duplicate run(s)",
        start.elapsed(),
        total - n as i64
    );
    assert_eq!(counts.len(), n, "every task ran");
    assert!(total >= n as i64);
}

/// Kills one weft worker after another at random moments while it takes messages (its
/// batched pop-and-record, the window kombu's BRPOP-then-record leaves open), then lets a
/// last one finish: every task has its result.
#[test]
fn repeated_kills_at_random_moments_lose_no_task() {
    let Some(env) = env() else { return };
    let q = unique("kill-rounds");
    let runs = unique("runs");
    let client = env.client();
    let mut conn = env.redis();
    let mut rng = Rng::from_clock("repeated_kills_at_random_moments_lose_no_task");
    let n = 60;
    let results = send_slow_adds(&client, &q, &runs, n);
    let mut ran = Vec::new();
    for round in 0..8 {
        let before = runs_so_far(&mut conn, &runs);
        let mut w = spawn_child_worker(&env, &q);
        // Every other kill comes as soon as a task of this worker is seen running, while
        // it may still be taking its first batch (where kombu's BRPOP-then-record loses
        // one); the others at a random later moment (tasks running, results written).
        let jitter = if round % 2 == 0 { 0 } else { 150 };
        ran.push(kill_while_running(
            &mut conn, &runs, &mut w, &mut rng, jitter, before,
        ));
    }
    let _survivor = spawn_child_worker(&env, &q);
    let start = Instant::now();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            r.get_value(Duration::from_secs(60)).unwrap(),
            json!(i + 1000),
            "task {i}"
        );
    }
    let counts: Vec<i64> = redis::cmd("HVALS").arg(&runs).query(&mut conn).unwrap();
    let total: i64 = counts.iter().sum();
    eprintln!(
        "8 kills at random moments: {n} tasks, runs started at each kill {ran:?}, every result \
         {:?} after the last kill, {} duplicate run(s)",
        start.elapsed(),
        total - n as i64
    );
    assert_eq!(counts.len(), n, "every task ran");
}

/// The tracker moves the wake's generation on for every push to any consumed list, so a
/// consumer that found its lists empty never sleeps through a message.
#[test]
fn the_tracker_wakes_the_consumer_for_every_push() {
    use weft::celery::redis::{consume_keys, track, Wake};
    let Some(env) = env() else { return };
    if env.amqp {
        return; // Redis's own wake-up; RabbitMQ pushes deliveries.
    }
    let client = redis::Client::open(env.backend.as_str()).unwrap();
    let (q1, q2) = (unique("wake-a"), unique("wake-b"));
    let keys = consume_keys(&[q1.as_str(), q2.as_str()]);
    let wake = Arc::new(Wake::new());
    let stop = Arc::new(AtomicBool::new(false));
    let tracker = {
        let (client, keys, wake, stop) = (client.clone(), keys.clone(), wake.clone(), stop.clone());
        std::thread::spawn(move || track(&client, &keys, &wake, || stop.load(Ordering::Acquire)))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wake.is_tracking() {
        assert!(Instant::now() < deadline, "tracking never armed");
        wake.wait(wake.generation(), Duration::from_millis(100));
    }
    let mut conn = client.get_connection().unwrap();
    for i in 0..40 {
        let seen = wake.generation();
        let key = &keys[i % keys.len()];
        redis::cmd("LPUSH")
            .arg(key)
            .arg("x")
            .query::<()>(&mut conn)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while wake.generation() == seen {
            assert!(
                Instant::now() < deadline,
                "push {i} to {key:?} never woke the consumer"
            );
            wake.wait(seen, Duration::from_secs(1));
        }
        assert!(wake.is_tracking());
    }
    stop.store(true, Ordering::Release);
    tracker.join().unwrap();
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
}

#[test]
fn python_remote_control_reaches_weft_workers() {
    let (Some(env), Some(py)) = (env(), python()) else {
        return;
    };
    let q = unique("control");
    let name = format!("weft-test-{}@here", uuid_like());
    let worker = env
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .hostname(name.as_str())
        .workers(2)
        .start()
        .unwrap();
    assert_eq!(worker.hostname(), name);
    // A task that runs until it is revoked with terminate=True.
    let spinning = env
        .client()
        .send_task("spin_until_revoked", vec![], no_args(), on(&q))
        .unwrap();
    let (started, _) = SPINNING
        .1
        .wait_timeout_while(SPINNING.0.lock().unwrap(), WAIT, |s| !*s)
        .unwrap();
    assert!(*started, "spin_until_revoked never started");
    drop(started);
    let out = Command::new(&py)
        .arg(fixtures().join("interop_control.py"))
        .arg(&env.broker)
        .arg(&env.backend)
        .arg(&q)
        .arg(spinning.id())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    let pings = seen["ping"].as_array().unwrap();
    assert!(
        pings.iter().any(|p| p[&name] == json!({"ok": "pong"})),
        "{seen:#}"
    );
    assert_eq!(
        seen["inspect_ping"][&name],
        json!({"ok": "pong"}),
        "{seen:#}"
    );
    assert!(
        seen["revoke_reply"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r[&name]["ok"]
                .as_str()
                .is_some_and(|s| s.contains("revoked"))),
        "{seen:#}"
    );
    assert_eq!(seen["revoked"][0], json!("TaskRevokedError"), "{seen:#}");
    assert_eq!(seen["state"], json!("REVOKED"));
    // Revoked at once, not at its ETA (120 s away; Python waited at most 30 s).
    assert!(seen["revoked_after_s"].as_f64().unwrap() < 30.0, "{seen:#}");
    assert_eq!(seen["terminated"][0], json!("TaskRevokedError"), "{seen:#}");
    assert_eq!(seen["terminated_state"], json!("REVOKED"), "{seen:#}");
    // The command line: `celery inspect ping` lists the weft worker.
    let out = Command::new(&py)
        .args(["-m", "celery", "-b", env.broker.as_str(), "inspect", "ping"])
        .args(["-d", name.as_str(), "--timeout", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&name) && text.contains("pong"), "{text}");
    assert_eq!(worker.shutdown(), 0);
}

#[test]
fn a_failing_task_with_a_retry_policy_is_retried_as_celery_does() {
    use std::sync::atomic::AtomicU32;
    use weft::registry::TaskOptions;
    use weft::RetryPolicy;

    let Some(env) = env() else { return };
    let q = unique("retry");
    let runs = Arc::new(AtomicU32::new(0));
    let seen = runs.clone();
    let policy = RetryPolicy::fixed(Duration::from_millis(200)).max_attempts(3);
    let registry = Registry::new()
        .task_with(
            "flaky",
            TaskOptions::new().retry(policy),
            move |_: Vec<i64>| {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 {
                    Err(format!("run {n} failed"))
                } else {
                    Ok(n)
                }
            },
        )
        .task_with(
            "hopeless",
            TaskOptions::new().retry(policy),
            |_: Vec<i64>| Err::<(), _>("never works"),
        );
    let worker = env
        .worker(registry)
        .queue(q.as_str(), Priority::Normal)
        .workers(1)
        .start()
        .unwrap();
    let client = env.client();
    let opts = on(&q);
    let start = Instant::now();
    let r = client
        .send_task("flaky", vec![], no_args(), opts.clone())
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(3));
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let r = client
        .send_task("hopeless", vec![], no_args(), opts)
        .unwrap();
    match r.get(WAIT).unwrap() {
        TaskResult::Failure { exc_message, .. } => assert_eq!(exc_message, "never works"),
        other => panic!("{other:?}"),
    }
    assert_eq!(worker.shutdown(), 0);
}

/// CPU seconds used so far by this process's worker threads (named `weft-celery-*`: the
/// pool's, the consumer, the finisher, remote control, events).
fn worker_threads_cpu() -> f64 {
    let mut total = 0.0;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.contains("(weft-celery") {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (ticks(11) + ticks(12)) / 100.0;
    }
    total
}

/// CPU seconds used so far by the Redis server (`INFO cpu`, user + system).
fn redis_cpu(env: &Env) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query(&mut env.redis())
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// The benches' task count: `WEFT_CELERY_BENCH_TASKS`, else 5,000.
fn bench_tasks() -> usize {
    std::env::var("WEFT_CELERY_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

/// `n` no-op task messages (protocol v2 JSON) for queue `q`.
fn noop_messages(q: &str, n: usize) -> Vec<weft::celery::TaskMessage> {
    (0..n)
        .map(|_| {
            let mut m = weft::celery::TaskMessage::new("noop", vec![], no_args());
            m.routing_key = q.to_owned();
            m
        })
        .collect()
}

/// Sends `n` no-op tasks at once (one Redis pipeline; on RabbitMQ every publish, then every
/// confirm), then waits until every result is written: tasks per second from the first send
/// to the last result.
fn noop_throughput(env: &Env, q: &str, n: usize) -> f64 {
    noop_throughput_cpu(env, q, n).0
}

/// [`noop_throughput`], and the CPU time per task (µs) over the timed window of this
/// process's worker threads and of Redis.
fn noop_throughput_cpu(env: &Env, q: &str, n: usize) -> (f64, f64, f64) {
    let client = env.client();
    let opts = on(q);
    // Warm-up: the worker consumes.
    client
        .send_task("noop", vec![], no_args(), opts.clone())
        .unwrap()
        .get(Duration::from_secs(60))
        .unwrap();
    let msgs = noop_messages(q, n);
    let (worker0, redis0) = (worker_threads_cpu(), redis_cpu(env));
    let start = Instant::now();
    env.push_all(&msgs);
    // FIFO: once the last few are done, all are (checked after the clock stops).
    for m in msgs.iter().rev().take(4) {
        client
            .result(m.id.clone())
            .get(Duration::from_secs(300))
            .unwrap();
    }
    let elapsed = start.elapsed();
    let per_task = |s: f64| s * 1e6 / n as f64;
    let (worker_us, redis_us) = (
        per_task(worker_threads_cpu() - worker0),
        per_task(redis_cpu(env) - redis0),
    );
    for m in &msgs {
        client
            .result(m.id.clone())
            .get(Duration::from_secs(300))
            .unwrap();
    }
    (n as f64 / elapsed.as_secs_f64(), worker_us, redis_us)
}

/// Throughput, weft worker vs a Python Celery worker (prefork), same concurrency, same
/// broker (ignored by default: `WEFT_CELERY_BENCH_TASKS=N cargo test --release
/// --features redis --test celery throughput -- --ignored --nocapture`; set
/// `WEFT_CELERY_BROKER` to an `amqp://` URL and use `--features amqp` for RabbitMQ).
#[test]
#[ignore]
fn throughput_weft_vs_python_celery() {
    let (Some(env), Some(py)) = (env(), python()) else {
        return;
    };
    let n = bench_tasks();
    let concurrency = 2;
    let q = unique("bench-weft");
    let worker = env
        .worker(Registry::new().task("noop", |(): ()| Ok::<_, String>(())))
        .queue(q.as_str(), Priority::Normal)
        .workers(concurrency)
        .start()
        .unwrap();
    let weft = noop_throughput(&env, &q, n);
    worker.shutdown();

    let q = unique("bench-py");
    let child = env
        .python_worker(
            &py,
            &q,
            &["--pool", "prefork", "-c", &concurrency.to_string()],
        )
        .spawn()
        .unwrap();
    let child = Killed(child);
    let python = noop_throughput(&env, &q, n);
    drop(child);
    eprintln!(
        "no-op throughput over {}, {n} tasks, concurrency {concurrency}: \
         weft worker {weft:.0} tasks/s, Python Celery prefork worker {python:.0} tasks/s \
         (ratio {:.1}x)",
        if env.amqp { "RabbitMQ" } else { "Redis" },
        weft / python
    );
}

/// The cost of task events: no-op throughput of one weft worker with task events off and
/// on (`Worker::task_events`), in pairs run one after the other, the order alternating,
/// on the same broker (ignored by default: `WEFT_CELERY_BENCH_TASKS=N
/// WEFT_CELERY_BENCH_ROUNDS=R cargo test --release --features redis --test celery
/// events_cost -- --ignored --nocapture`; `WEFT_CELERY_BROKER=amqp://...` and `--features
/// amqp` for RabbitMQ). Nobody listens to the events: each still costs its build and its
/// share of a `PUBLISH` (a `task.multi` batch).
#[test]
#[ignore]
fn events_cost_on_vs_off() {
    let Some(env) = env() else {
        return;
    };
    let var = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (n, rounds) = (
        var("WEFT_CELERY_BENCH_TASKS", 5000),
        var("WEFT_CELERY_BENCH_ROUNDS", 3),
    );
    let worker_cpu = worker_threads_cpu;
    let run = |events: bool| {
        let q = unique(if events {
            "bench-ev-on"
        } else {
            "bench-ev-off"
        });
        let worker = env
            .worker(Registry::new().task("noop", |(): ()| Ok::<_, String>(())))
            .queue(q.as_str(), Priority::Normal)
            .workers(2)
            .task_events(events)
            .start()
            .unwrap();
        let rate = noop_throughput(&env, &q, n);
        // The worker's threads started with it: their CPU time is all this run's.
        let used = worker_cpu();
        worker.shutdown();
        (rate, used * 1e6 / n as f64)
    };
    let (mut off, mut on, mut ratios, mut cpu_ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let ((a, ca), (b, cb)) = if round % 2 == 0 {
            let a = run(false);
            (a, run(true))
        } else {
            let b = run(true);
            (run(false), b)
        };
        eprintln!(
            "round {round}: events off {a:.0} tasks/s ({ca:.1} µs CPU/task), on {b:.0} tasks/s \
             ({cb:.1} µs CPU/task); on/off {:.3} throughput, {:.3} CPU",
            b / a,
            cb / ca
        );
        off.push(a);
        on.push(b);
        ratios.push(b / a);
        cpu_ratios.push(cb / ca);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    eprintln!(
        "task events over {}, {n} no-op tasks, 2 threads, {rounds} rounds: median off {:.0} \
         tasks/s, on {:.0} tasks/s; median on/off ratio {:.3} (throughput), {:.3} (the \
         worker's CPU per task)",
        if env.amqp { "RabbitMQ" } else { "Redis" },
        median(&mut off),
        median(&mut on),
        median(&mut ratios),
        median(&mut cpu_ratios)
    );
}

/// The pop script reads each envelope's delivery tag, exchange and routing key without
/// decoding it when it can (the fields occur once, after `"properties"`, as plain
/// strings), and decodes it otherwise: both readings record the same `unacked` entries,
/// whatever the spacing (kombu's `", "` or serde's compact form).
#[test]
fn the_pop_script_reads_the_fields_of_every_kind_of_envelope() {
    let Some(env) = env() else {
        return;
    };
    let q = unique("pop-fields");
    let mut conn = env.redis();
    let envelope = |tag: Value, info: Value, extra_header: Option<(&str, Value)>| {
        let mut headers = json!({"id": uuid_like(), "task": "noop", "lang": "py"});
        if let Some((k, v)) = extra_header {
            headers[k] = v;
        }
        json!({
            "body": "W1tdLCB7fSwge31d",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {"delivery_info": info, "delivery_tag": tag, "priority": 0},
        })
    };
    let tag = uuid_like;
    let info = |ex: &str, rk: &str| json!({"exchange": ex, "routing_key": rk});
    // (raw, the tag it must be recorded under, the exchange and routing key recorded)
    let mut cases: Vec<(String, Option<String>, String, String)> = Vec::new();
    let t = tag();
    let e = envelope(json!(t), info("", &q), None);
    // kombu's spacing, and serde's compact form.
    let spaced = serde_json::to_string_pretty(&e).unwrap().replace('\n', " ");
    cases.push((spaced, Some(t.clone()), String::new(), q.clone()));
    let t = tag();
    let e = envelope(json!(t), info("ex", "rk"), None);
    cases.push((e.to_string(), Some(t), "ex".into(), "rk".into()));
    // An escaped character in the tag: decoded.
    let t = format!("{}/\"x", tag());
    let e = envelope(json!(t), info("", &q), None);
    cases.push((e.to_string(), Some(t), String::new(), q.clone()));
    // A header of the same name (twice in the text): decoded, the properties' one wins.
    let t = tag();
    let e = envelope(
        json!(t),
        info("", &q),
        Some(("delivery_tag", json!("not-it"))),
    );
    cases.push((e.to_string(), Some(t), String::new(), q.clone()));
    // No delivery_info: the queue's name as routing key, exchange "".
    let t = tag();
    let e = envelope(
        json!(t),
        Value::Null,
        Some(("routing_key", json!("not-it"))),
    );
    cases.push((e.to_string(), Some(t), String::new(), q.clone()));
    // A tag that is not a string: not recorded.
    let e = envelope(json!(7), info("", &q), None);
    cases.push((e.to_string(), None, String::new(), q.clone()));
    let mut pipe = redis::pipe();
    for (raw, ..) in &cases {
        pipe.lpush(&q, raw).ignore();
    }
    pipe.query::<()>(&mut conn).unwrap();
    let keys = weft::celery::redis::consume_keys(&[q.as_str()]);
    let queues: Vec<String> = keys.iter().map(|_| q.clone()).collect();
    let popped = weft::celery::redis::pop_and_record(
        &mut conn,
        &keys,
        &queues,
        100,
        &weft::celery::redis::Fetch::new(),
    )
    .unwrap();
    assert_eq!(popped.len(), cases.len());
    for ((_, raw, recorded), (sent, want, exchange, routing_key)) in popped.iter().zip(&cases) {
        assert_eq!(std::str::from_utf8(raw).unwrap(), sent);
        assert_eq!(recorded, want, "{sent}");
        let Some(t) = want else { continue };
        let entry: String = redis::cmd("HGET")
            .arg("unacked")
            .arg(t)
            .query(&mut conn)
            .unwrap();
        let entry: Value = serde_json::from_str(&entry).unwrap();
        let want_entry = json!([
            serde_json::from_str::<Value>(sent).unwrap(),
            exchange,
            routing_key
        ]);
        assert_eq!(entry, want_entry, "{sent}");
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg("unacked_index")
            .arg(t)
            .query(&mut conn)
            .unwrap();
        assert!(score.is_some());
        redis::pipe()
            .hdel("unacked", t)
            .zrem("unacked_index", t)
            .query::<()>(&mut conn)
            .unwrap();
    }
}

/// A take larger than one `ZADD`/`HSET` of the pop script (it records 1,000 messages per
/// call) records every message, in the order of its lists (priority 0 first), and a
/// take stops at its bound.
#[test]
fn a_large_take_records_every_message_it_pops() {
    let Some(env) = env() else {
        return;
    };
    let q = unique("pop-large");
    let mut conn = env.redis();
    let mut msgs = noop_messages(&q, 2600);
    for m in &mut msgs[..300] {
        m.priority = 9;
    }
    let mut pipe = redis::pipe();
    for m in &msgs {
        pipe.lpush(
            weft::celery::redis::queue_for_priority(&q, m.priority),
            m.encode(),
        )
        .ignore();
    }
    pipe.query::<()>(&mut conn).unwrap();
    let keys = weft::celery::redis::consume_keys(&[q.as_str()]);
    let queues: Vec<String> = keys.iter().map(|_| q.clone()).collect();
    let fetch = weft::celery::redis::Fetch::new();
    let popped =
        weft::celery::redis::pop_and_record(&mut conn, &keys, &queues, 2500, &fetch).unwrap();
    assert_eq!(popped.len(), 2500);
    // Priority 0 first (oldest first), then the step-9 list.
    let want: Vec<&str> = msgs[300..]
        .iter()
        .chain(&msgs[..200])
        .map(|m| m.delivery_tag.as_str())
        .collect();
    let got: Vec<&str> = popped
        .iter()
        .map(|(_, _, tag)| tag.as_deref().expect("recorded"))
        .collect();
    assert_eq!(got, want);
    let tags: Vec<&str> = got.clone();
    let recorded: Vec<Option<String>> = redis::cmd("HMGET")
        .arg("unacked")
        .arg(&tags)
        .query(&mut conn)
        .unwrap();
    assert!(recorded.iter().all(Option::is_some));
    let scored: Vec<Option<f64>> = redis::cmd("ZMSCORE")
        .arg("unacked_index")
        .arg(&tags)
        .query(&mut conn)
        .unwrap();
    assert!(scored.iter().all(Option::is_some));
    // The rest stay on their list.
    let left: usize = redis::cmd("LLEN")
        .arg(weft::celery::redis::queue_for_priority(&q, 9))
        .query(&mut conn)
        .unwrap();
    assert_eq!(left, 100);
    let mut pipe = redis::pipe();
    weft::celery::redis::add_acks(&mut pipe, &tags);
    pipe.query::<()>(&mut conn).unwrap();
    let recorded: Vec<Option<String>> = redis::cmd("HMGET")
        .arg("unacked")
        .arg(&tags)
        .query(&mut conn)
        .unwrap();
    assert!(
        recorded.iter().all(Option::is_none),
        "add_acks forgets them all"
    );
    let _: () = redis::cmd("DEL")
        .arg(weft::celery::redis::queue_for_priority(&q, 9))
        .query(&mut conn)
        .unwrap();
}

/// A consumed key that is not a list (a stray `SET`) is skipped: the take goes on with the
/// next list (through the script's one-at-a-time path, the one Redis before 6.2 takes).
#[test]
fn a_key_that_is_not_a_list_is_skipped_by_the_take() {
    let Some(env) = env() else {
        return;
    };
    let (stray, q) = (unique("pop-stray"), unique("pop-after-stray"));
    let mut conn = env.redis();
    let _: () = redis::cmd("SET")
        .arg(&stray)
        .arg("not a list")
        .query(&mut conn)
        .unwrap();
    let msgs = noop_messages(&q, 3);
    // Straight to Redis (on the RabbitMQ suite too: the take script is Redis's).
    let mut pipe = redis::pipe();
    for m in &msgs {
        pipe.lpush(&q, m.encode()).ignore();
    }
    pipe.query::<()>(&mut conn).unwrap();
    let keys = weft::celery::redis::consume_keys(&[stray.as_str(), q.as_str()]);
    let queues: Vec<String> = keys
        .iter()
        .map(|k| weft::celery::redis::queue_of_list(k).to_owned())
        .collect();
    let fetch = weft::celery::redis::Fetch::new();
    let popped = weft::celery::redis::pop_and_record(&mut conn, &keys, &queues, 8, &fetch).unwrap();
    let got: Vec<Option<&str>> = popped.iter().map(|(_, _, t)| t.as_deref()).collect();
    let want: Vec<Option<&str>> = msgs.iter().map(|m| Some(m.delivery_tag.as_str())).collect();
    assert_eq!(got, want);
    let tags: Vec<&str> = msgs.iter().map(|m| m.delivery_tag.as_str()).collect();
    let mut pipe = redis::pipe();
    weft::celery::redis::add_acks(&mut pipe, &tags);
    pipe.del(&stray).ignore();
    pipe.query::<()>(&mut conn).unwrap();
}

/// The weft half of [`throughput_weft_vs_python_celery`] alone (named so that the filter
/// `throughput` does not run it beside that test), for profiling and for
/// other shapes (ignored by default): `WEFT_CELERY_BENCH_TASKS` tasks (default 5000),
/// `WEFT_CELERY_BENCH_RUNS` runs (default 3) on one worker, `WEFT_CELERY_BENCH_PREFETCH`
/// (default Celery's, 4 per pool thread), concurrency 2.
#[test]
#[ignore]
fn weft_alone_noop_rate() {
    let Some(env) = env() else {
        return;
    };
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = bench_tasks();
    let runs = var("WEFT_CELERY_BENCH_RUNS", 3);
    let prefetch = var("WEFT_CELERY_BENCH_PREFETCH", 0);
    let q = unique("bench-weft-only");
    let worker = env
        .worker(Registry::new().task("noop", |(): ()| Ok::<_, String>(())))
        .queue(q.as_str(), Priority::Normal)
        .workers(2)
        .prefetch(prefetch)
        .start()
        .unwrap();
    for _ in 0..runs {
        let (rate, worker_us, redis_us) = noop_throughput_cpu(&env, &q, n);
        eprintln!(
            "no-op throughput over {}, {n} tasks, concurrency 2, prefetch {}: \
             weft worker {rate:.0} tasks/s (CPU per task: worker threads {worker_us:.1} µs, \
             Redis {redis_us:.1} µs)",
            if env.amqp { "RabbitMQ" } else { "Redis" },
            if prefetch == 0 { 8 } else { prefetch },
        );
    }
    worker.shutdown();
}

#[test]
fn a_python_worker_recovers_a_killed_weft_workers_tasks() {
    let (Some(env), Some(py)) = (env(), python()) else {
        return;
    };
    let q = unique("kill9-py");
    let runs = unique("runs");
    let mut a = spawn_child_worker(&env, &q);
    let client = env.client();
    let n = 20;
    let mut rng = Rng::from_clock("a_python_worker_recovers_a_killed_weft_workers_tasks");
    let mut conn = env.redis();
    let results = send_slow_adds(&client, &q, &runs, n);
    let ran = kill_while_running(&mut conn, &runs, &mut a, &mut rng, 300, 0);
    // Only a Python worker is left on the queue; it restores what the weft worker held.
    let python = env
        .python_worker(&py, &q, &["--pool", "solo"])
        .env("WEFT_VISIBILITY_TIMEOUT", "2")
        .spawn()
        .unwrap();
    let _python = Killed(python);
    let start = Instant::now();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            r.get_value(Duration::from_secs(60)).unwrap(),
            json!(i + 1000),
            "task {i}"
        );
    }
    let counts: Vec<i64> = redis::cmd("HVALS").arg(&runs).query(&mut conn).unwrap();
    let total: i64 = counts.iter().sum();
    eprintln!(
        "weft killed, Python recovers: {n} tasks, {ran} runs started before the kill, \
         every result {:?} after the kill, {} duplicate run(s)",
        start.elapsed(),
        total - n as i64
    );
    assert_eq!(counts.len(), n, "every task ran");
}

#[test]
fn a_weft_worker_recovers_a_killed_python_workers_tasks() {
    let (Some(env), Some(py)) = (env(), python()) else {
        return;
    };
    let q = unique("kill9-rs");
    let runs = unique("runs");
    let python = env
        .python_worker(&py, &q, &["--pool", "solo"])
        .spawn()
        .unwrap();
    let mut python = Killed(python);
    let client = env.client();
    let opts = on(&q);
    // The Python worker is consuming once this is done.
    let warm = client
        .send_task("noop", vec![], no_args(), opts.clone())
        .unwrap();
    warm.get(Duration::from_secs(60)).unwrap();
    let n = 20;
    let mut rng = Rng::from_clock("a_weft_worker_recovers_a_killed_python_workers_tasks");
    let mut conn = env.redis();
    let results = send_slow_adds(&client, &q, &runs, n);
    let ran = kill_while_running(&mut conn, &runs, &mut python, &mut rng, 300, 0);
    // Only a weft worker is left (visibility timeout 2 s, sweep every 0.5 s).
    let _weft = spawn_child_worker(&env, &q);
    let start = Instant::now();
    let mut lost = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r.get_value(Duration::from_secs(30)) {
            Ok(v) => assert_eq!(v, json!(i + 1000), "task {i}"),
            Err(e) => lost.push((i, e.to_string())),
        }
    }
    let counts: Vec<i64> = redis::cmd("HVALS").arg(&runs).query(&mut conn).unwrap();
    let total: i64 = counts.iter().sum();
    eprintln!(
        "Python killed, weft recovers: {n} tasks, {ran} runs started by the killed Python \
         worker, results {:?} after the kill, {} run(s) in all, lost: {lost:?}",
        start.elapsed(),
        total
    );
    // Python acks early by default (acks_late off): the task running when it was killed
    // was already acknowledged and is lost, as Celery documents. kombu's consumer may also
    // lose the one message it had popped and not yet recorded (its BRPOP-then-record
    // window, which weft's own consumer closes). Every other comes back.
    assert!(lost.len() <= 2, "{lost:?}");
}

/// The broker's own ceiling at Celery's default prefetch (ignored by default; RabbitMQ
/// only: `WEFT_CELERY_BROKER=amqp://... WEFT_CELERY_BENCH_TASKS=N cargo test --release
/// --features amqp --test celery consume_ack_ceiling -- --ignored --nocapture`): the same N
/// no-op messages as the throughput test, taken by a bare consumer (per-consumer
/// `basic.qos` 8, as a worker of concurrency 2) that acknowledges what has arrived, all
/// at once, and does nothing else: no task, no result. Once started after the push, once
/// consuming while it runs. No worker can drain the queue faster at that
/// prefetch through this client library and broker.
#[cfg(feature = "amqp")]
#[test]
#[ignore]
fn consume_ack_ceiling() {
    let Some(env) = env() else {
        return;
    };
    if !env.amqp {
        eprintln!("consume_ack_ceiling: RabbitMQ only (set WEFT_CELERY_BROKER=amqp://...)");
        return;
    }
    let n = bench_tasks();
    for prefetch in [8u16, 64] {
        let q = unique("bench-ceiling");
        let broker = env.amqp();
        broker.declare_queue(&q, None).unwrap();
        let msgs = noop_messages(&q, n);
        // Consumes and acknowledges `n` messages of `q`, every one there already
        // acknowledged together (`ack_all`).
        let drain = |consumer: &mut weft::celery::amqp::Consumer| {
            let mut got = 0;
            while got < n {
                let mut batch = vec![consumer
                    .next(Duration::from_secs(60))
                    .unwrap()
                    .expect("a message within 60 s")];
                while let Ok(Some(d)) = consumer.next(Duration::ZERO) {
                    batch.push(d);
                }
                got += batch.len();
                assert!(weft::celery::amqp::ack_all(&batch));
            }
        };
        // After the push, as a worker started late would.
        let start = Instant::now();
        env.push_all(&msgs);
        let pushed = start.elapsed();
        let mut consumer = broker.consume(&q, prefetch).unwrap();
        drain(&mut consumer);
        let elapsed = start.elapsed();
        consumer.close().unwrap();
        // During the push, as the throughput test's worker does.
        let mut consumer = broker.consume(&q, prefetch).unwrap();
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| drain(&mut consumer));
            env.push_all(&msgs);
        });
        let during = start.elapsed();
        consumer.close().unwrap();
        let per_s = |d: Duration| n as f64 / d.as_secs_f64();
        eprintln!(
            "consume-and-ack ceiling over RabbitMQ, {n} messages, prefetch {prefetch}: \
             consuming after the push {:.0} messages/s from the push on (the throughput \
             test's clock), {:.0} after it; consuming during the push {:.0} from the push on",
            per_s(elapsed),
            per_s(elapsed - pushed),
            per_s(during),
        );
    }
}

/// What a perfect worker would reach over Redis at Celery's default prefetch (ignored by
/// default: `WEFT_CELERY_BENCH_TASKS=N cargo test --release --features redis --test celery
/// take_settle_ceiling -- --ignored --nocapture`): the same N no-op messages and clock as
/// the throughput test, drained by one thread with nothing but the worker's Redis
/// commands: takes of at most 8 (the worker's take script, read from
/// `src/celery/redis/mod.rs`), each take's results and acknowledgements in one `MULTI`
/// (`add_finish`). No task runs, no thread hand-off, no message parsed. Two shapes: a take,
/// then its write (two round trips per take); and each take sent in one pipeline with the
/// previous take's write (one round trip per take: at prefetch 8 a worker can have at most
/// 8 messages taken and not started, so no shape takes more per round trip).
#[test]
#[ignore]
fn take_settle_ceiling() {
    let Some(env) = env() else {
        return;
    };
    if env.amqp {
        eprintln!("take_settle_ceiling: Redis only");
        return;
    }
    let n = bench_tasks();
    let src = include_str!("../src/celery/redis/mod.rs");
    let body = &src[src.find("static POP_AND_RECORD").expect("the take script")..];
    let body = &body[body.find("r#\"").unwrap() + 3..];
    let script = &body[..body.find("\"#").unwrap()];
    for pipelined in [false, true] {
        let q = unique("bench-ceiling");
        let msgs = noop_messages(&q, n);
        let mut conn = env.redis();
        let keys = weft::celery::redis::consume_keys(&[q.as_str()]);
        let fetch = format!("weft.fetch.{q}");
        let ok = TaskResult::Success(Value::Null);
        // The write of `tags` (results keyed by the tag, deleted below, and the acks).
        let settle = |pipe: &mut redis::Pipeline, tags: &[String]| {
            pipe.cmd("MULTI").ignore();
            for tag in tags {
                let id = format!("ceiling-{tag}");
                let expires = Duration::from_secs(600);
                weft::celery::redis::add_finish(pipe, &id, &ok, expires, Some(tag));
            }
            pipe.cmd("EXEC").ignore();
        };
        let redis0 = redis_cpu(&env);
        let start = Instant::now();
        env.push_all(&msgs);
        let (mut done, mut seq, mut trips) = (0, 0u64, 0);
        let mut unwritten: Vec<String> = Vec::new();
        while done < n || !unwritten.is_empty() {
            seq += 1;
            let mut pipe = redis::pipe();
            if pipelined && !unwritten.is_empty() {
                settle(&mut pipe, &std::mem::take(&mut unwritten));
            }
            let mut take = redis::cmd("EVAL");
            take.arg(script).arg(3 + keys.len());
            take.arg("unacked_index").arg("unacked").arg(&fetch);
            take.arg(&keys)
                .arg(if done < n { 8 } else { 0 })
                .arg(1.0)
                .arg(seq);
            take.arg(keys.iter().map(|_| q.as_str()).collect::<Vec<_>>());
            pipe.add_command(take);
            let (flat,): (Vec<Vec<u8>>,) = pipe.query(&mut conn).unwrap();
            trips += 1;
            let tags: Vec<String> = flat
                .chunks(3)
                .map(|c| String::from_utf8_lossy(&c[2]).into_owned())
                .collect();
            done += tags.len();
            if pipelined {
                unwritten = tags;
            } else {
                let mut pipe = redis::pipe();
                settle(&mut pipe, &tags);
                pipe.query::<()>(&mut conn).unwrap();
                trips += 1;
            }
        }
        let elapsed = start.elapsed();
        let redis_us = (redis_cpu(&env) - redis0) * 1e6 / n as f64;
        let _: () = redis::cmd("EVAL")
            .arg("for _, k in ipairs(redis.call('KEYS', 'celery-task-meta-ceiling-*')) do redis.call('DEL', k) end")
            .arg(0)
            .query(&mut conn)
            .unwrap();
        eprintln!(
            "take-and-settle ceiling over Redis, {n} messages, takes of 8, one thread, {}: {:.0} tasks/s \
             ({trips} round trips, Redis CPU {redis_us:.1} µs per task)",
            if pipelined { "each take pipelined with the last one's write" } else { "a take, then its write" },
            n as f64 / elapsed.as_secs_f64()
        );
    }
}
