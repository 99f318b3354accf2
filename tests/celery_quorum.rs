//! RabbitMQ quorum queues, as Celery 5.5+ uses them with its documented settings
//! (`task_default_queue_type="quorum"`, `task_default_exchange_type="topic"`,
//! `confirm_publish`), against a real RabbitMQ and the real Python Celery, both ways: a
//! Python client sends (with a countdown: native delayed delivery) and a weft worker runs;
//! a weft client sends and a Python worker runs; Python and weft workers declare the same
//! queues and delayed-delivery topology in either order without a declare error; a
//! countdown task waits in the broker, not in the worker; QoS is per consumer.
//!
//! Needs `WEFT_CELERY_BROKER` (or `WEFT_AMQP_URL`: the RabbitMQ that `.ci/rabbitmq.sh
//! start DIR` prints), `WEFT_RABBITMQ_DIR` (that DIR, for `rabbitmqctl`), `WEFT_REDIS_URL`
//! (the result backend) and `WEFT_CELERY_PYTHON`. Outside CI a missing one skips the test
//! with a loud message; in CI it is a failure. Each test has queues of its own; the
//! delayed-delivery levels are shared, as in production.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

mod common;

use common::celery::{
    fixtures, python_worker_command, rabbit_queues, rabbitmqctl, required, unique, Killed,
};
use weft::celery::amqp::QueueType;
use weft::celery::{Client, SendOptions, Worker};
use weft::registry::Registry;
use weft::Priority;

/// How long a result may take before the test calls it a failure.
const WAIT: Duration = Duration::from_secs(60);

struct Env {
    broker: String,
    backend: String,
    python: String,
    rabbit: String,
}

fn env() -> Option<Env> {
    let broker = match std::env::var("WEFT_CELERY_BROKER") {
        Ok(b) if b.starts_with("amqp") => b,
        _ => required("WEFT_AMQP_URL")?,
    };
    Some(Env {
        broker,
        backend: required("WEFT_REDIS_URL")?,
        python: required("WEFT_CELERY_PYTHON")?,
        rabbit: required("WEFT_RABBITMQ_DIR")?,
    })
}

fn registry() -> Registry {
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("mul", |(x, y): (i64, i64)| Ok::<_, String>(x * y))
}

impl Env {
    /// A weft worker of quorum queue `q`.
    fn worker(&self, q: &str) -> Worker {
        Worker::new(self.broker.as_str(), registry())
            .backend(self.backend.as_str())
            .queue_type(QueueType::Quorum)
            .queue(q, Priority::Normal)
    }

    /// A weft client of quorum queues.
    fn client(&self) -> Client {
        Client::with_backend(&self.broker, &self.backend)
            .unwrap()
            .queue_type(QueueType::Quorum)
    }

    /// A Python Celery worker (`pytasks.py`, solo pool) with Celery's quorum settings and
    /// `q` as its default queue; its log (warnings and errors) goes to `log`.
    fn python_worker(&self, q: &str, log: &PathBuf) -> Killed {
        let mut cmd = python_worker_command(
            &self.python,
            &self.broker,
            &self.backend,
            q,
            &["--pool", "solo"],
        );
        cmd.env("WEFT_QUEUE_TYPE", "quorum")
            .env("WEFT_QUEUE", q)
            .stderr(File::create(log).unwrap());
        Killed(cmd.spawn().unwrap())
    }

    /// Runs `interop_quorum.py q countdown` (a Python client with Celery's quorum
    /// settings sends `add(2, 3)` and `add(20, 22)` with the countdown); its JSON line.
    fn python_client(&self, q: &str, countdown: u64) -> Value {
        let out = Command::new(&self.python)
            .arg(fixtures().join("interop_quorum.py"))
            .args([q, &countdown.to_string()])
            .env("WEFT_REDIS_URL", &self.backend)
            .env("WEFT_CELERY_BROKER", &self.broker)
            .env("WEFT_QUEUE_TYPE", "quorum")
            .env("WEFT_QUEUE", q)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "interop_quorum.py failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// The prefetch count of every consumer of queue `q` (per-consumer QoS shows here;
    /// a channel-wide one would show 0).
    fn consumer_prefetch(&self, q: &str) -> Vec<u64> {
        rabbitmqctl(
            &self.rabbit,
            &[
                "list_consumers",
                "--no-table-headers",
                "queue_name",
                "prefetch_count",
            ],
        )
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == q).then_some(())?;
            f.next()?.parse().ok()
        })
        .collect()
    }

    /// The messages ready and unacknowledged in `q`, and the messages (ready) in every
    /// delayed-delivery level.
    fn where_messages_are(&self, q: &str) -> ((u64, u64), u64) {
        let queues = rabbit_queues(&self.rabbit);
        let mine = queues
            .iter()
            .find(|(name, ..)| name == q)
            .map_or((0, 0), |(_, ready, unacked)| (*ready, *unacked));
        let delayed = queues
            .iter()
            .filter(|(name, ..)| name.starts_with("celery_delayed_"))
            .map(|(_, ready, _)| ready)
            .sum();
        (mine, delayed)
    }
}

/// The warnings and errors a Python worker logged about declarations; empty when it
/// declared everything (its queue, native delayed delivery) without a refusal. Removes
/// the log.
fn declare_errors(log: &PathBuf) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    text.lines()
        .filter(|l| {
            [
                "PRECONDITION_FAILED",
                "inequivalent",
                "NOT_IMPLEMENTED",
                "Failed to",
            ]
            .iter()
            .any(|bad| l.contains(bad))
        })
        .map(str::to_owned)
        .collect()
}

fn on(q: &str) -> SendOptions {
    SendOptions {
        queue: Some(q.to_owned()),
        ..SendOptions::default()
    }
}

fn args(a: i64, b: i64) -> Vec<Value> {
    vec![json!(a), json!(b)]
}

/// A Python client with Celery's quorum settings sends a task and a countdown task
/// (through native delayed delivery); a weft worker of the quorum queue runs both, the
/// countdown one not before its countdown.
#[test]
fn python_client_sends_weft_quorum_worker_runs() {
    let Some(env) = env() else { return };
    let q = unique("quorum-py-to-weft");
    let worker = env.worker(&q).start().unwrap();
    let out = env.python_client(&q, 3);
    assert_eq!(out["add"], json!(5));
    assert_eq!(out["countdown"], json!(42));
    let waited = out["waited"].as_f64().unwrap();
    assert!(waited >= 2.9, "ran after {waited} s, before its countdown");
    assert_eq!(worker.shutdown(), 0);
}

/// A weft client of quorum queues sends to a Python worker with Celery's quorum settings
/// (started first: it declared the queue and native delayed delivery): a task, and a
/// countdown task, which the Python worker runs after the countdown. Neither side's
/// declarations were refused.
#[test]
fn weft_quorum_client_sends_python_worker_runs() {
    let Some(env) = env() else { return };
    let q = unique("quorum-weft-to-py");
    let log = std::env::temp_dir().join(format!("{q}.log"));
    let python = env.python_worker(&q, &log);
    let client = env.client();
    let r = client
        .send_task("py.mul", args(6, 7), Map::new(), on(&q))
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(42));
    let sent = Instant::now();
    let r = client
        .send_task(
            "add",
            args(1, 2),
            Map::new(),
            SendOptions {
                countdown: Some(Duration::from_secs(3)),
                ..on(&q)
            },
        )
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(3));
    assert!(
        sent.elapsed() >= Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    drop(python);
    assert_eq!(declare_errors(&log), Vec::<String>::new());
}

/// A countdown task sent by a weft client of quorum queues waits in the broker (in a
/// delayed-delivery level), not unacknowledged in the weft worker; the worker's consumer
/// has a per-consumer prefetch (no global QoS on quorum queues) that ETA tasks do not
/// raise; the task runs after its countdown.
#[test]
fn a_countdown_task_waits_in_the_broker() {
    let Some(env) = env() else { return };
    let q = unique("quorum-countdown");
    let worker = env.worker(&q).workers(1).prefetch(3).start().unwrap();
    assert_eq!(env.consumer_prefetch(&q), vec![3]);
    let client = env.client();
    let countdown = Duration::from_secs(10);
    let sent = Instant::now();
    let r = client
        .send_task(
            "add",
            args(4, 5),
            Map::new(),
            SendOptions {
                countdown: Some(countdown),
                ..on(&q)
            },
        )
        .unwrap();
    // Until the broker's counts show it in a level (quorum queues report their counts a
    // little late), asked well before the countdown is over (each ask takes about a
    // second): never in its queue or held by the worker.
    loop {
        let ((ready, unacked), delayed) = env.where_messages_are(&q);
        assert!(
            sent.elapsed() < Duration::from_secs(8),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!(
            (ready, unacked),
            (0, 0),
            "the task is in its queue or the worker"
        );
        if delayed >= 1 {
            break;
        }
    }
    assert_eq!(r.get_value(WAIT).unwrap(), json!(9));
    assert!(sent.elapsed() >= countdown, "{:?}", sent.elapsed());
    assert_eq!(env.consumer_prefetch(&q), vec![3]);
    assert_eq!(worker.shutdown(), 0);
}

/// A Python worker with Celery's quorum settings starts first (declares the queue and
/// native delayed delivery), then a weft worker of the same queue starts without a
/// declare error (before, it died on `inequivalent arg 'type' for exchange`), and runs
/// tasks, a countdown one too, once the Python worker is gone.
#[test]
fn python_worker_first_then_weft_worker() {
    let Some(env) = env() else { return };
    let q = unique("quorum-py-first");
    let log = std::env::temp_dir().join(format!("{q}.log"));
    let python = env.python_worker(&q, &log);
    let client = env.client();
    let r = client
        .send_task("py.mul", args(2, 21), Map::new(), on(&q))
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(42));
    let worker = env.worker(&q).start().unwrap();
    drop(python);
    assert_eq!(declare_errors(&log), Vec::<String>::new());
    let r = client
        .send_task("mul", args(3, 4), Map::new(), on(&q))
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(12));
    let r = client
        .send_task(
            "add",
            args(1, 1),
            Map::new(),
            SendOptions {
                countdown: Some(Duration::from_secs(2)),
                ..on(&q)
            },
        )
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(2));
    assert_eq!(worker.shutdown(), 0);
}

/// A weft worker of the quorum queue starts first (declares the queue and native delayed
/// delivery) and stops; a Python worker with Celery's quorum settings then declares the
/// same without an error and runs what a Python client sends, a countdown task too.
#[test]
fn weft_worker_first_then_python_worker() {
    let Some(env) = env() else { return };
    let q = unique("quorum-weft-first");
    env.worker(&q).start().unwrap().shutdown();
    let log = std::env::temp_dir().join(format!("{q}.log"));
    let python = env.python_worker(&q, &log);
    let out = env.python_client(&q, 2);
    assert_eq!(out["add"], json!(5));
    assert_eq!(out["countdown"], json!(42));
    drop(python);
    assert_eq!(declare_errors(&log), Vec::<String>::new());
}

/// Classic queues use per-consumer QoS too (never global), raised by one per task
/// waiting for its ETA in the worker, as Celery raises it: six ETA tasks behind a prefetch
/// of two do not stop a plain task, and the consumer's prefetch shows the raise.
#[test]
fn classic_queues_raise_the_per_consumer_prefetch_for_eta_tasks() {
    let Some(env) = env() else { return };
    let q = unique("classic-qos");
    let worker = Worker::new(env.broker.as_str(), registry())
        .backend(env.backend.as_str())
        .queue(q.as_str(), Priority::Normal)
        .workers(1)
        .prefetch(2)
        .start()
        .unwrap();
    assert_eq!(env.consumer_prefetch(&q), vec![2]);
    let client = Client::with_backend(&env.broker, &env.backend).unwrap();
    for i in 0..6 {
        client
            .send_task(
                "add",
                args(i, 0),
                Map::new(),
                SendOptions {
                    countdown: Some(Duration::from_secs(600)),
                    ..on(&q)
                },
            )
            .unwrap();
    }
    let r = client
        .send_task("add", args(1, 2), Map::new(), on(&q))
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(3));
    let deadline = Instant::now() + WAIT;
    while env.consumer_prefetch(&q) != vec![8] {
        assert!(
            Instant::now() < deadline,
            "prefetch {:?}",
            env.consumer_prefetch(&q)
        );
    }
    assert_eq!(worker.shutdown(), 6);
}

/// A task that arrived through native delayed delivery (its routing key carries the delay
/// prefix) and fails is retried through it again, to its own queue (the prefix stripped,
/// as kombu strips it), and runs once more after the retry's delay.
#[test]
fn a_retry_of_a_delayed_task_goes_through_delayed_delivery_again() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use weft::registry::TaskOptions;
    use weft::RetryPolicy;

    let Some(env) = env() else { return };
    let q = unique("quorum-retry");
    let runs = Arc::new(AtomicU32::new(0));
    let seen = runs.clone();
    let registry = Registry::new().task_with(
        "flaky",
        TaskOptions::new().retry(RetryPolicy::fixed(Duration::from_secs(2)).max_attempts(2)),
        move |_: Vec<i64>| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 2 {
                Err(format!("run {n} failed"))
            } else {
                Ok(n)
            }
        },
    );
    let worker = Worker::new(env.broker.as_str(), registry)
        .backend(env.backend.as_str())
        .queue_type(QueueType::Quorum)
        .queue(q.as_str(), Priority::Normal)
        .start()
        .unwrap();
    let sent = Instant::now();
    let r = env
        .client()
        .send_task(
            "flaky",
            vec![],
            Map::new(),
            SendOptions {
                countdown: Some(Duration::from_secs(1)),
                ..on(&q)
            },
        )
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(2));
    assert!(
        sent.elapsed() >= Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(worker.shutdown(), 0);
}
