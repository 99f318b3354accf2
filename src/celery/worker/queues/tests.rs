//! Queues added and cancelled at run time, on real brokers: a worker started as usual,
//! its changes asked through [`WorkerShared::change_queues`] (as remote control asks them).
//!
//! Redis is found through `WEFT_REDIS_URL`, RabbitMQ (feature `amqp`) through
//! `WEFT_AMQP_URL` and `WEFT_RABBITMQ_DIR` (`.ci/rabbitmq.sh start DIR` prints the URL).
//! Outside CI a missing one skips the test with a loud message; in CI (`CI` set) it is a
//! failure. Each test uses queue names of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::{json, Map};

use super::super::live::{QueueChange, WorkerShared};
use crate::celery::{Client, RunningWorker, SendOptions, Worker};
use crate::registry::Registry;
use crate::Priority;

/// How long anything may take before the test calls it a failure.
const PATIENCE: Duration = Duration::from_secs(30);

/// The value of `var`; `None` (with a loud SKIPPED line) when it is not set, a panic when
/// it is not set and `CI` is.
fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => panic!("{var} is not set, and CI is"),
        _ => {
            eprintln!("\n!!!!!!!! SKIPPED: {var} is not set (run .ci/run, or set it) !!!!!!!!\n");
            None
        }
    }
}

/// A queue name no other run uses.
fn unique(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("weft-{prefix}-{}-{}", std::process::id(), t.as_nanos())
}

/// Waits (yielding, never sleeping a fixed time) until `cond` holds, at most
/// [`PATIENCE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

fn shared(worker: &RunningWorker) -> &WorkerShared {
    &worker.shared
}

/// Asks for `change` and waits until the worker consumes `queue` (or no longer does).
fn change(worker: &RunningWorker, change: QueueChange) {
    let (queue, consumed) = match &change {
        QueueChange::Add(q) => (q.clone(), true),
        QueueChange::Cancel(q) => (q.clone(), false),
    };
    shared(worker).change_queues(change);
    wait_until(&format!("{queue} is consumed: {consumed}"), || {
        shared(worker)
            .queues
            .lock()
            .iter()
            .any(|(q, _)| *q == queue)
            == consumed
    });
}

fn on(queue: &str) -> SendOptions {
    SendOptions {
        queue: Some(queue.to_owned()),
        ..SendOptions::default()
    }
}

fn add(client: &Client, queue: &str, x: i64) -> crate::celery::AsyncResult {
    client
        .send_task("add", vec![json!(x), json!(1)], Map::new(), on(queue))
        .unwrap()
}

/// A gate a task waits at: [`Gate::wait_started`] returns once the task is in, and the
/// task returns once [`Gate::open`] is called.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<(bool, bool)>, Condvar)>);

impl Gate {
    /// The task's side.
    fn pass(&self) {
        let (m, cv) = &*self.0;
        let mut g = m.lock();
        g.0 = true;
        cv.notify_all();
        while !g.1 {
            cv.wait(&mut g);
        }
    }

    fn wait_started(&self) {
        let (m, cv) = &*self.0;
        let mut g = m.lock();
        let until = Instant::now() + PATIENCE;
        while !g.0 {
            assert!(!cv.wait_until(&mut g, until).timed_out(), "never started");
        }
    }

    fn open(&self) {
        let (m, cv) = &*self.0;
        m.lock().1 = true;
        cv.notify_all();
    }

    /// Opens the gate when dropped: declared after the worker, so that a failed test's
    /// worker is not left waiting for the task (its drop shuts it down).
    fn opener(&self) -> Opener {
        Opener(self.clone())
    }
}

struct Opener(Gate);

impl Drop for Opener {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// `add`, and `gate` (waits at `gate`).
fn registry(gate: &Gate) -> Registry {
    let gate = gate.clone();
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("gate", move |(): ()| {
            gate.pass();
            Ok::<_, String>("passed")
        })
}

/// What a test needs to know of its broker.
trait Broker {
    /// Messages of `queue` waiting, not taken.
    fn waiting(&self, queue: &str) -> u64;
}

/// A worker consuming `a` takes a queue added, leaves one cancelled (while `a` still
/// runs), and takes it again once it is added again.
fn added_queue_runs_and_cancelled_one_is_left(
    worker: impl FnOnce(Registry) -> Worker,
    client: &Client,
    broker: &dyn Broker,
    a: &str,
) {
    let b = format!("{a}-added");
    let worker = worker(registry(&Gate::default()))
        .queue(a, Priority::High)
        .workers(2)
        .start()
        .unwrap();
    assert_eq!(
        *shared(&worker).queues.lock(),
        vec![(a.to_owned(), Priority::High)]
    );
    // Sent before the queue is added: it waits for it.
    let early = add(client, &b, 1);
    change(&worker, QueueChange::Add(b.clone()));
    assert_eq!(early.get_value(PATIENCE).unwrap(), json!(2));
    assert_eq!(add(client, &b, 2).get_value(PATIENCE).unwrap(), json!(3));
    assert_eq!(
        *shared(&worker).queues.lock(),
        vec![
            (a.to_owned(), Priority::High),
            (b.clone(), Priority::Normal)
        ]
    );
    // Added twice: nothing changes.
    change(&worker, QueueChange::Add(b.clone()));
    assert_eq!(shared(&worker).queues.lock().len(), 2);

    change(&worker, QueueChange::Cancel(b.clone()));
    let left = add(client, &b, 10);
    // `a` still runs, and the queue it sent to first was not taken from.
    assert_eq!(add(client, a, 20).get_value(PATIENCE).unwrap(), json!(21));
    assert_eq!(broker.waiting(&b), 1, "a cancelled queue is not taken from");
    assert!(left.try_get().unwrap().is_none());
    // Cancelled twice, or never consumed: nothing changes.
    change(&worker, QueueChange::Cancel(b.clone()));
    change(&worker, QueueChange::Cancel(format!("{a}-never")));
    assert_eq!(
        *shared(&worker).queues.lock(),
        vec![(a.to_owned(), Priority::High)]
    );

    // Every queue cancelled: nothing is taken until one is added.
    change(&worker, QueueChange::Cancel(a.to_owned()));
    assert!(shared(&worker).queues.lock().is_empty());
    let later = add(client, a, 30);
    change(&worker, QueueChange::Add(b.clone()));
    assert_eq!(left.get_value(PATIENCE).unwrap(), json!(11));
    assert_eq!(broker.waiting(a), 1, "a cancelled queue is not taken from");
    assert!(later.try_get().unwrap().is_none());
    change(&worker, QueueChange::Add(a.to_owned()));
    assert_eq!(later.get_value(PATIENCE).unwrap(), json!(31));
    // Added again: the Normal lane.
    assert_eq!(
        *shared(&worker).queues.lock(),
        vec![
            (b.clone(), Priority::Normal),
            (a.to_owned(), Priority::Normal)
        ]
    );
    assert_eq!(worker.shutdown(), 0);
}

/// A late-acknowledged task of a queue cancelled while it runs is acknowledged when it
/// ends; `held` checks the broker while it runs (after the cancel), `settled` after.
fn held_message_of_cancelled_queue_is_acknowledged(
    worker: impl FnOnce(Registry) -> Worker,
    client: &Client,
    a: &str,
    held: impl FnOnce(&str),
    settled: impl FnOnce(&str, &str),
) {
    let b = format!("{a}-held");
    let gate = Gate::default();
    let worker = worker(registry(&gate))
        .queue(a, Priority::Normal)
        .acks_late(true)
        .workers(2)
        .start()
        .unwrap();
    let _open = gate.opener();
    change(&worker, QueueChange::Add(b.clone()));
    let r = client
        .send_task("gate", vec![], Map::new(), on(&b))
        .unwrap();
    gate.wait_started();
    change(&worker, QueueChange::Cancel(b.clone()));
    held(&b);
    gate.open();
    assert_eq!(r.get_value(PATIENCE).unwrap(), json!("passed"));
    settled(&b, r.id());
    assert_eq!(worker.shutdown(), 0);
}

/// A message of a queue cancelled while its task waits in the pool (not started) is put
/// back on its queue at shutdown.
fn not_started_message_of_cancelled_queue_is_put_back(
    worker: impl FnOnce(Registry) -> Worker,
    client: &Client,
    broker: &dyn Broker,
    a: &str,
) {
    use super::super::live::WITHDRAWN;
    let b = format!("{a}-back");
    let gate = Gate::default();
    let worker = worker(registry(&gate))
        .queue(a, Priority::Normal)
        .workers(1)
        .start()
        .unwrap();
    let _open = gate.opener();
    change(&worker, QueueChange::Add(b.clone()));
    let running = client
        .send_task("gate", vec![], Map::new(), on(&b))
        .unwrap();
    gate.wait_started();
    // Taken, and waiting in the pool behind the gate (one thread).
    let queued = add(client, &b, 1);
    wait_until("both are taken", || shared(&worker).live.lock().len() == 2);
    change(&worker, QueueChange::Cancel(b.clone()));
    // The shutdown takes back the queued task, then waits for the running one.
    let opener = {
        let (shared, gate) = (worker.shared.clone(), gate.clone());
        std::thread::spawn(move || {
            // Opened when this ends, even by a failure: the shutdown waits for it.
            let _open = gate.opener();
            wait_until("the queued task is taken back", || {
                shared
                    .live
                    .lock()
                    .values()
                    .any(|t| t.state.load(std::sync::atomic::Ordering::SeqCst) == WITHDRAWN)
            });
        })
    };
    assert_eq!(worker.shutdown(), 1, "put back");
    opener.join().unwrap();
    assert_eq!(running.get_value(PATIENCE).unwrap(), json!("passed"));
    assert!(queued.try_get().unwrap().is_none());
    assert_eq!(broker.waiting(&b), 1, "back on its queue");
}

mod on_redis {
    use std::time::Duration;

    use ::redis::Commands;

    use super::*;

    struct Redis(String);

    impl Broker for Redis {
        fn waiting(&self, queue: &str) -> u64 {
            let mut conn = ::redis::Client::open(self.0.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            conn.llen(queue).unwrap()
        }
    }

    /// The `unacked` entry (tag, entry) of the message of task `id`.
    fn unacked_of(conn: &mut ::redis::Connection, id: &str) -> Option<(String, String)> {
        let all: Vec<(String, String)> = conn.hgetall(crate::celery::redis::UNACKED).unwrap();
        all.into_iter().find(|(_, entry)| entry.contains(id))
    }

    #[test]
    fn added_queue_runs_and_cancelled_one_is_left() {
        let Some(url) = required("WEFT_REDIS_URL") else {
            return;
        };
        let client = Client::new(&url).unwrap();
        super::added_queue_runs_and_cancelled_one_is_left(
            |registry| Worker::new(url.as_str(), registry),
            &client,
            &Redis(url.clone()),
            &unique("queues"),
        );
    }

    #[test]
    fn not_started_message_of_cancelled_queue_is_put_back() {
        let Some(url) = required("WEFT_REDIS_URL") else {
            return;
        };
        let client = Client::new(&url).unwrap();
        super::not_started_message_of_cancelled_queue_is_put_back(
            |registry| Worker::new(url.as_str(), registry),
            &client,
            &Redis(url.clone()),
            &unique("back"),
        );
    }

    /// The held message of a cancelled queue keeps its heartbeat past the visibility
    /// timeout (the restore sweep leaves it), and is acknowledged when its task ends.
    #[test]
    fn held_message_of_cancelled_queue_is_kept_alive_and_acknowledged() {
        let Some(url) = required("WEFT_REDIS_URL") else {
            return;
        };
        let client = Client::new(&url).unwrap();
        let visibility = Duration::from_secs(2);
        let worker = |registry| {
            Worker::new(url.as_str(), registry)
                .visibility_timeout(visibility)
                .restore_interval(Duration::from_millis(100))
        };
        let mut conn = ::redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut conn2 = ::redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        super::held_message_of_cancelled_queue_is_acknowledged(
            worker,
            &client,
            &unique("held"),
            |b| {
                let cancelled = now();
                let (tag, _) = {
                    let mut found = None;
                    wait_until("the message is held", || {
                        found = unacked_of(&mut conn, b);
                        found.is_some()
                    });
                    found.unwrap()
                };
                // Its heartbeat goes on past a visibility timeout after the cancel, and
                // the sweeps (every 100 ms) never put it back.
                wait_until("the heartbeat outlives a visibility timeout", || {
                    let score: Option<f64> = conn
                        .zscore(crate::celery::redis::UNACKED_INDEX, &tag)
                        .unwrap();
                    let score = score.expect("still held");
                    score > cancelled + visibility.as_secs_f64() * 1.5
                });
                let waiting: u64 = conn.llen(b).unwrap();
                assert_eq!(waiting, 0, "never put back");
            },
            |_, id| {
                assert_eq!(unacked_of(&mut conn2, id), None, "acknowledged");
            },
        );
    }

    fn now() -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }
}

#[cfg(feature = "amqp")]
mod on_amqp {
    use std::process::Command;

    use super::*;
    use crate::celery::amqp::Broker as Amqp;

    struct Rabbit {
        url: String,
        dir: String,
    }

    impl Rabbit {
        fn find() -> Option<(Rabbit, String)> {
            let url = required("WEFT_AMQP_URL")?;
            let dir = required("WEFT_RABBITMQ_DIR")?;
            let backend = required("WEFT_REDIS_URL")?;
            Some((Rabbit { url, dir }, backend))
        }

        fn ctl(&self, args: &[&str]) -> String {
            let out = Command::new("bash")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/rabbitmq.sh"))
                .args(["ctl", &self.dir])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// Messages ready and unacknowledged in `queue`.
        fn counts(&self, queue: &str) -> (u64, u64) {
            let out = self.ctl(&[
                "list_queues",
                "--no-table-headers",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ]);
            out.lines()
                .find_map(|l| {
                    let mut f = l.split_whitespace();
                    (f.next()? == queue)
                        .then(|| Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?)))?
                })
                .unwrap_or_else(|| panic!("no queue {queue} in {out}"))
        }

        /// The prefetch of each consumer of `queue`.
        fn prefetches(&self, queue: &str) -> Vec<u64> {
            self.ctl(&[
                "list_consumers",
                "--no-table-headers",
                "queue_name",
                "prefetch_count",
            ])
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == queue).then(|| f.next()?.parse().ok())?
            })
            .collect()
        }
    }

    impl Broker for Rabbit {
        fn waiting(&self, queue: &str) -> u64 {
            let broker = Amqp::connect(&self.url).unwrap();
            let n = broker.queue_len(queue).unwrap();
            let _ = broker.close();
            u64::from(n)
        }
    }

    #[test]
    fn added_queue_runs_and_cancelled_one_is_left() {
        let Some((rabbit, backend)) = Rabbit::find() else {
            return;
        };
        let client = Client::with_backend(&rabbit.url, &backend).unwrap();
        super::added_queue_runs_and_cancelled_one_is_left(
            |registry| Worker::new(rabbit.url.as_str(), registry).backend(backend.as_str()),
            &client,
            &rabbit,
            &unique("queues"),
        );
    }

    #[test]
    fn not_started_message_of_cancelled_queue_is_put_back() {
        let Some((rabbit, backend)) = Rabbit::find() else {
            return;
        };
        let client = Client::with_backend(&rabbit.url, &backend).unwrap();
        super::not_started_message_of_cancelled_queue_is_put_back(
            |registry| Worker::new(rabbit.url.as_str(), registry).backend(backend.as_str()),
            &client,
            &rabbit,
            &unique("back"),
        );
    }

    /// Cancelled with `basic.cancel` on the channel that holds its delivery: the delivery
    /// stays held (not handed back to the queue) and is acknowledged when its task ends.
    #[test]
    fn held_message_of_cancelled_queue_is_acknowledged() {
        let Some((rabbit, backend)) = Rabbit::find() else {
            return;
        };
        let client = Client::with_backend(&rabbit.url, &backend).unwrap();
        super::held_message_of_cancelled_queue_is_acknowledged(
            |registry| Worker::new(rabbit.url.as_str(), registry).backend(backend.as_str()),
            &client,
            &unique("held"),
            |b| {
                assert!(rabbit.prefetches(b).is_empty(), "no consumer left");
                assert_eq!(rabbit.counts(b), (0, 1), "held");
            },
            |b, _| wait_until("acknowledged", || rabbit.counts(b) == (0, 0)),
        );
    }

    /// What the broker had sent for a queue and the worker had not taken (no prefetch room)
    /// goes back to the queue when it is cancelled, and is not taken after.
    #[test]
    fn received_not_taken_deliveries_of_a_cancelled_queue_go_back() {
        let Some((rabbit, backend)) = Rabbit::find() else {
            return;
        };
        let client = Client::with_backend(&rabbit.url, &backend).unwrap();
        let a = unique("received");
        let b = format!("{a}-added");
        let gate = Gate::default();
        let worker = Worker::new(rabbit.url.as_str(), registry(&gate))
            .backend(backend.as_str())
            .queue(a.as_str(), Priority::Normal)
            .prefetch(1)
            .acks_late(true)
            .workers(2)
            .start()
            .unwrap();
        let _open = gate.opener();
        change(&worker, QueueChange::Add(b.clone()));
        let running = client
            .send_task("gate", vec![], Map::new(), on(&a))
            .unwrap();
        gate.wait_started();
        // No prefetch room in the worker; b's consumer has its own.
        let received = add(&client, &b, 1);
        wait_until("b's message is delivered", || rabbit.counts(&b) == (0, 1));
        change(&worker, QueueChange::Cancel(b.clone()));
        wait_until("b's message is back", || rabbit.counts(&b) == (1, 0));
        gate.open();
        assert_eq!(running.get_value(PATIENCE).unwrap(), json!("passed"));
        assert_eq!(add(&client, &a, 2).get_value(PATIENCE).unwrap(), json!(3));
        assert_eq!(rabbit.counts(&b), (1, 0), "not taken");
        assert!(received.try_get().unwrap().is_none());
        assert_eq!(worker.shutdown(), 0);
    }

    /// The type and arguments RabbitMQ lists for `queue`, and the type of its exchange.
    fn declared(rabbit: &Rabbit, queue: &str) -> (String, String, String) {
        let field = |out: String| -> Vec<String> {
            out.lines()
                .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>())
                .find(|f| f[0] == queue)
                .unwrap_or_else(|| panic!("no {queue} in {out}"))
        };
        let q = field(rabbit.ctl(&[
            "list_queues",
            "--no-table-headers",
            "name",
            "type",
            "arguments",
        ]));
        let x = field(rabbit.ctl(&["list_exchanges", "--no-table-headers", "name", "type"]));
        (q[1].clone(), q[2].clone(), x[1].clone())
    }

    /// A classic worker's added queue gets its `x-max-priority`, on a direct exchange of
    /// its name; message priorities order it.
    #[test]
    fn added_queue_is_declared_as_the_workers_own_classic() {
        let Some((rabbit, backend)) = Rabbit::find() else {
            return;
        };
        let client = Client::with_backend(&rabbit.url, &backend)
            .unwrap()
            .max_priority(9);
        let a = unique("classic");
        let b = format!("{a}-added");
        let worker = Worker::new(rabbit.url.as_str(), registry(&Gate::default()))
            .backend(backend.as_str())
            .queue(a.as_str(), Priority::Normal)
            .max_priority(9)
            .start()
            .unwrap();
        change(&worker, QueueChange::Add(b.clone()));
        let (kind, args, exchange) = declared(&rabbit, &b);
        assert_eq!(kind, "classic");
        assert!(
            args.contains("x-max-priority") && args.contains('9'),
            "{args}"
        );
        assert_eq!(exchange, "direct");
        // The client declares it with the same arguments: no PRECONDITION_FAILED.
        assert_eq!(add(&client, &b, 1).get_value(PATIENCE).unwrap(), json!(2));
        assert_eq!(worker.shutdown(), 0);
    }

    /// A quorum worker's added queue is a quorum queue on a topic exchange, bound to
    /// native delayed delivery: a countdown task sent to it waits in the broker and runs.
    #[test]
    fn added_queue_is_declared_as_the_workers_own_quorum() {
        use crate::celery::amqp::QueueType;
        let Some((rabbit, backend)) = Rabbit::find() else {
            return;
        };
        let client = Client::with_backend(&rabbit.url, &backend)
            .unwrap()
            .queue_type(QueueType::Quorum);
        let a = unique("quorum");
        let b = format!("{a}-added");
        let worker = Worker::new(rabbit.url.as_str(), registry(&Gate::default()))
            .backend(backend.as_str())
            .queue(a.as_str(), Priority::Normal)
            .queue_type(QueueType::Quorum)
            .start()
            .unwrap();
        change(&worker, QueueChange::Add(b.clone()));
        let (kind, args, exchange) = declared(&rabbit, &b);
        assert_eq!(kind, "quorum");
        assert!(!args.contains("x-max-priority"), "{args}");
        assert_eq!(exchange, "topic");
        // Bound by the worker (the client would bind it too when it first sends).
        let bindings = rabbit.ctl(&[
            "list_bindings",
            "--no-table-headers",
            "source_name",
            "destination_name",
            "routing_key",
        ]);
        let wanted = format!(
            "{}\t{b}\t#.{b}",
            crate::celery::amqp::DELAYED_DELIVERY_EXCHANGE
        );
        assert!(
            bindings.lines().any(|l| l == wanted),
            "no {wanted:?} in {bindings}"
        );
        let r = client
            .send_task(
                "add",
                vec![json!(1), json!(2)],
                Map::new(),
                SendOptions {
                    // Whole seconds of delayed delivery: at least one.
                    countdown: Some(Duration::from_secs(2)),
                    ..on(&b)
                },
            )
            .unwrap();
        assert_eq!(r.get_value(PATIENCE).unwrap(), json!(3));
        assert_eq!(worker.shutdown(), 0);
    }

    /// An add the broker refuses (the queue exists with other arguments) leaves the worker
    /// as it was, running its queues, and is tried again until it succeeds.
    #[test]
    fn a_refused_add_is_tried_again_until_it_succeeds() {
        let Some((rabbit, backend)) = Rabbit::find() else {
            return;
        };
        let client = Client::with_backend(&rabbit.url, &backend).unwrap();
        let a = unique("refused");
        let b = format!("{a}-added");
        let other = Amqp::connect(&rabbit.url).unwrap();
        other.declare_queue(&b, Some(5)).unwrap();
        let _ = other.close();
        let worker = Worker::new(rabbit.url.as_str(), registry(&Gate::default()))
            .backend(backend.as_str())
            .queue(a.as_str(), Priority::Normal)
            .start()
            .unwrap();
        shared(&worker).change_queues(QueueChange::Add(b.clone()));
        wait_until("the refusal is logged", || {
            shared(&worker).queue_changes.lock().error.is_some()
        });
        assert_eq!(add(&client, &a, 1).get_value(PATIENCE).unwrap(), json!(2));
        assert_eq!(
            *shared(&worker).queues.lock(),
            vec![(a.clone(), Priority::Normal)]
        );
        rabbit.ctl(&["delete_queue", &b]);
        wait_until("b is consumed", || {
            shared(&worker).queues.lock().iter().any(|(q, _)| *q == b)
        });
        assert!(shared(&worker).queue_changes.lock().pending.is_empty());
        assert_eq!(add(&client, &b, 2).get_value(PATIENCE).unwrap(), json!(3));
        assert_eq!(add(&client, &a, 3).get_value(PATIENCE).unwrap(), json!(4));
        assert_eq!(worker.shutdown(), 0);
    }

    /// An added queue's consumer has the worker's prefetch; after the connection drops,
    /// the worker consumes again the queues of now (the added one, not the cancelled one).
    #[test]
    fn added_queues_have_the_prefetch_and_outlive_a_reconnect() {
        let Some((rabbit, backend)) = Rabbit::find() else {
            return;
        };
        let client = Client::with_backend(&rabbit.url, &backend).unwrap();
        let a = unique("reconnect");
        let b = format!("{a}-added");
        let name = format!("weft-test-{}@here", unique("host"));
        let worker = Worker::new(rabbit.url.as_str(), registry(&Gate::default()))
            .backend(backend.as_str())
            .hostname(name.as_str())
            .queue(a.as_str(), Priority::Normal)
            .prefetch(3)
            .start()
            .unwrap();
        change(&worker, QueueChange::Add(b.clone()));
        assert_eq!(rabbit.prefetches(&a), vec![3]);
        assert_eq!(rabbit.prefetches(&b), vec![3]);
        change(&worker, QueueChange::Cancel(a.clone()));
        assert!(rabbit.prefetches(&a).is_empty());

        let wanted = format!("weft consumer {name}");
        let conns = rabbit.ctl(&["list_connections", "pid", "client_properties"]);
        let pid = conns
            .lines()
            .find(|l| l.contains(&format!("{{\"connection_name\",\"{wanted}\"}}")))
            .and_then(|l| l.split('\t').next())
            .unwrap_or_else(|| panic!("no connection {wanted:?} in {conns}"));
        rabbit.ctl(&["close_connection", pid, "weft test: dropped"]);

        assert_eq!(add(&client, &b, 1).get_value(PATIENCE).unwrap(), json!(2));
        wait_until("b is consumed again", || rabbit.prefetches(&b) == vec![3]);
        assert!(rabbit.prefetches(&a).is_empty(), "a stays cancelled");
        let left = add(&client, &a, 5);
        assert_eq!(add(&client, &b, 2).get_value(PATIENCE).unwrap(), json!(3));
        assert_eq!(rabbit.waiting(&a), 1);
        assert!(left.try_get().unwrap().is_none());
        assert_eq!(worker.shutdown(), 0);
    }
}
