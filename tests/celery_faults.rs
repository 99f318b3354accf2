//! Broker faults against a weft worker on Redis: a private `redis-server` (append-only log
//! written on every command, as a production Redis that must not lose data) is shut down,
//! killed, has its connections killed or stalls while a worker runs through a batch of
//! tasks; and a worker process is stopped by SIGTERM / SIGINT while it holds prefetched and
//! ETA messages.
//!
//! The bar, since the worker process itself stays alive through each fault: every task
//! runs exactly once (runs are counted in the worker's process, not in Redis), every
//! result is written, nothing is left in `unacked`, and work resumes promptly once Redis
//! answers again. Each test prints its row of the fault table (lost / stranded /
//! duplicates / recovery).
//!
//! With the feature `amqp`, the same bar for a RabbitMQ connection closed by `rabbitmqctl`
//! mid-run (the broker delivers again what the connection held, started tasks included).
//!
//! Runs when `WEFT_REDIS_URL` is set (as `.ci/run` sets it; a failure in CI when it is
//! not), with `redis-server` on the `PATH`; the RabbitMQ test with `WEFT_AMQP_URL` and
//! `WEFT_RABBITMQ_DIR` (`.ci/rabbitmq.sh`) too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Commands;

mod common;

use common::celery::{required, spawn_ready_child, unique};
use weft::celery::{Client, SendOptions, TaskResult, Worker};
use weft::registry::Registry;
use weft::Priority;

/// A private `redis-server` on a free loopback port, its data in a directory of its own,
/// with the append-only log fsynced on every write.
struct Server {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("weft-faults-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Server {
            port,
            dir,
            child: None,
        };
        s.restart();
        s
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again on the same port and data (after a shutdown or a kill).
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        self.child = Some(child);
        wait_for("the private Redis answers", Duration::from_secs(20), || {
            self.conn()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    fn conn(&self) -> redis::RedisResult<redis::Connection> {
        let c =
            redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(c)
    }

    /// `SHUTDOWN` (the log is flushed) and waits for the process to end.
    fn shutdown(&mut self) {
        let mut c = self.conn().unwrap();
        let _ = redis::cmd("SHUTDOWN").query::<()>(&mut c);
        let _ = self.child.take().unwrap().wait();
    }

    /// `kill -9`.
    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `cond()` holds, at most `limit` (then panics naming `what`).
/// For state only Redis or another process holds (nothing here can be woken by it): it is
/// read again every 5 ms.
fn wait_for(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(poll_until(limit, cond), "timed out waiting until {what}");
}

/// Whether `cond()` came to hold within `limit` (read again every 5 ms).
fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Each task's runs (by its argument) and when each run started.
#[derive(Default)]
struct Runs {
    count: HashMap<u64, u32>,
    started: Vec<Instant>,
}

/// `count(i)` tasks whose runs are counted here: those from `n / 5` on wait until
/// [`open`](Self::open) (so that a fault always strikes mid-run, with messages held and
/// results to write, however the machine schedules the test).
struct Counting {
    n: u64,
    runs: Arc<Mutex<Runs>>,
    /// Signalled at each run.
    ran: Arc<parking_lot::Condvar>,
    gate: Arc<(Mutex<bool>, parking_lot::Condvar)>,
}

impl Counting {
    fn new(n: u64) -> Counting {
        Counting {
            n,
            runs: Arc::default(),
            ran: Arc::default(),
            gate: Arc::new((Mutex::new(false), parking_lot::Condvar::new())),
        }
    }

    /// The registry with `count`.
    fn registry(&self) -> Registry {
        let (runs, ran, gate, n) = (
            self.runs.clone(),
            self.ran.clone(),
            self.gate.clone(),
            self.n,
        );
        Registry::new().task("count", move |(i,): (u64,)| {
            if i >= n / 5 {
                let mut open = gate.0.lock();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !*open && !gate.1.wait_until(&mut open, deadline).timed_out() {}
            }
            {
                let mut r = runs.lock();
                *r.count.entry(i).or_default() += 1;
                r.started.push(Instant::now());
            }
            ran.notify_all();
            std::thread::sleep(Duration::from_millis(4));
            Ok::<_, String>(i)
        })
    }

    /// Sends `count(0)` .. `count(n - 1)` to `q`, every one before any fault (a send
    /// retried after a lost answer could be a second message of the same task, which is
    /// the client's doing, not the worker's).
    fn send(&self, client: &Client, q: &str) -> Vec<weft::celery::AsyncResult> {
        (0..self.n)
            .map(|i| {
                client
                    .send_task(
                        "count",
                        vec![i.into()],
                        Default::default(),
                        SendOptions {
                            queue: Some(q.to_owned()),
                            ..Default::default()
                        },
                    )
                    .unwrap()
            })
            .collect()
    }

    /// How many tasks ran.
    fn ran(&self) -> u64 {
        self.runs.lock().count.len() as u64
    }

    /// Waits until `k` tasks ran (woken at each run).
    fn wait_ran(&self, k: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut r = self.runs.lock();
        while (r.count.len() as u64) < k {
            assert!(
                !self.ran.wait_until(&mut r, deadline).timed_out(),
                "timed out waiting until {what}"
            );
        }
    }

    /// Waits until the tasks before the gate ran (they are taken in order, FIFO).
    fn wait_for_the_gate(&self) {
        self.wait_ran(self.n / 5, "a fifth of the tasks ran");
    }

    /// Lets the tasks after the gate run.
    fn open(&self) {
        *self.gate.0.lock() = true;
        self.gate.1.notify_all();
    }

    /// How many tasks ran more than once.
    fn duplicates(&self) -> usize {
        self.runs.lock().count.values().filter(|c| **c > 1).count()
    }
}

/// What goes wrong, mid-run.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `SHUTDOWN`, down for 2 s, started again.
    Shutdown,
    /// `kill -9`, started again at once.
    Kill,
    /// `CLIENT KILL` of every connection but the test's own.
    ClientKill,
    /// `DEBUG SLEEP 3`: longer than the worker's 1 s command timeout.
    Stall,
}

/// Runs `n` tasks through a worker, `fault` striking once a fifth of them ran; checks that
/// none was lost, stranded or run twice, and prints the row of the fault table.
fn survive(fault: Fault) {
    let Some(_) = required("WEFT_REDIS_URL") else {
        return;
    };
    let mut server = Server::start();
    let url = server.url();
    let q = unique("faults");
    let n = 600u64;
    let counting = Counting::new(n);
    let registry = counting.registry();
    let worker = Worker::new(url.as_str(), registry)
        .queue(q.as_str(), Priority::Normal)
        .workers(2)
        .command_timeout(Duration::from_secs(1))
        .start()
        .unwrap();
    let client = Client::new(&url).unwrap();
    let results = counting.send(&client, &q);
    drop(client);
    counting.wait_for_the_gate();
    counting.open();
    let back = match fault {
        Fault::Shutdown => {
            server.shutdown();
            std::thread::sleep(Duration::from_secs(2)); // the outage itself
            server.restart();
            Instant::now()
        }
        Fault::Kill => {
            server.kill();
            server.restart();
            Instant::now()
        }
        Fault::ClientKill => {
            let mut c = server.conn().unwrap();
            for kind in ["normal", "pubsub"] {
                let _: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg(kind)
                    .arg("SKIPME")
                    .arg("yes")
                    .query(&mut c)
                    .unwrap();
            }
            Instant::now()
        }
        Fault::Stall => {
            let mut c = server.conn().unwrap();
            let _: () = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(3)
                .query(&mut c)
                .unwrap();
            Instant::now()
        }
    };
    let at_fault = counting.ran();
    counting.wait_ran(n, "every task ran");
    // Recovery: from Redis answering again to the first task started after it.
    let recovery = counting
        .runs
        .lock()
        .started
        .iter()
        .find(|t| **t >= back)
        .map(|t| t.duration_since(back));
    // Results are written in batches after the runs: waited for (by SUBSCRIBE), not
    // assumed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost = results
        .iter()
        .filter(|r| {
            let left = deadline.saturating_duration_since(Instant::now());
            !matches!(r.get(left), Ok(TaskResult::Success(_)))
        })
        .count();
    let mut conn = server.conn().unwrap();
    let mut stranded = 0;
    poll_until(Duration::from_secs(10), || {
        stranded = conn.hlen("unacked").unwrap();
        stranded == 0
    });
    let duplicates = counting.duplicates();
    let queued: usize = conn.llen(&q).unwrap();
    worker.shutdown();
    eprintln!(
        "fault {fault:?} after {at_fault} of {n} tasks ran: lost {lost}, stranded {stranded}, \
         duplicates {duplicates}, recovery {}",
        recovery.map_or("-".into(), |d| format!("{} ms", d.as_millis()))
    );
    assert_eq!(lost, 0, "results lost");
    assert_eq!(stranded, 0, "messages left in unacked");
    assert_eq!(duplicates, 0, "tasks run twice");
    assert_eq!(queued, 0, "messages left on the queue");
    if let Some(r) = recovery {
        assert!(
            r < Duration::from_secs(5),
            "work resumed {r:?} after Redis answered again"
        );
    }
}

#[test]
fn redis_shut_down_and_restarted() {
    survive(Fault::Shutdown);
}

#[test]
fn redis_killed_and_restarted() {
    survive(Fault::Kill);
}

#[test]
fn worker_connections_killed() {
    survive(Fault::ClientKill);
}

#[test]
fn redis_stalls_longer_than_the_command_timeout() {
    survive(Fault::Stall);
}

/// The worker process of the signal tests: runs `slow(i)` (counts its runs in the hash
/// `<queue>:runs`, then sleeps 300 ms) from the queue `WEFT_FAULTS_CHILD_QUEUE` of the
/// Redis at `WEFT_FAULTS_CHILD_URL` until SIGINT or SIGTERM, as `Worker::run` does.
#[test]
fn signal_child_worker() {
    let (Ok(url), Ok(q)) = (
        std::env::var("WEFT_FAULTS_CHILD_URL"),
        std::env::var("WEFT_FAULTS_CHILD_QUEUE"),
    ) else {
        return;
    };
    let worker = Worker::new(url.as_str(), slow_registry(&url, &q))
        .queue(q.as_str(), Priority::Normal)
        .workers(2)
        .start()
        .unwrap();
    println!("ready");
    let stopped = worker.wait_for_signal().unwrap();
    // stderr: the parent stopped reading stdout after `ready`.
    eprintln!("{stopped}");
}

/// `slow(i)`: counts its run in the hash `<q>:runs` of the Redis at `url`, sleeps 300 ms.
fn slow_registry(url: &str, q: &str) -> Registry {
    let client = redis::Client::open(url).unwrap();
    let runs = format!("{q}:runs");
    Registry::new().task("slow", move |(i,): (u64,)| {
        let mut c = client.get_connection().map_err(|e| e.to_string())?;
        let _: i64 = c.hincr(&runs, i, 1).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(300));
        Ok::<_, String>(i)
    })
}

/// A worker process holding running, prefetched and ETA messages is stopped by `signal`:
/// it finishes what runs and puts back everything else, ETA messages included, so that a
/// new worker runs every task exactly once, the ETA ones at their ETA.
fn stopped_by(signal: &str) {
    let Some(_) = required("WEFT_REDIS_URL") else {
        return;
    };
    let server = Server::start();
    let url = server.url();
    let q = unique("signal");
    let child = spawn_ready_child(
        "signal_child_worker",
        &[
            ("WEFT_FAULTS_CHILD_URL", &url),
            ("WEFT_FAULTS_CHILD_QUEUE", &q),
        ],
    );
    let client = Client::new(&url).unwrap();
    let send = |i: u64, countdown: Option<Duration>| {
        client
            .send_task(
                "slow",
                vec![i.into()],
                Default::default(),
                SendOptions {
                    queue: Some(q.clone()),
                    countdown,
                    ..Default::default()
                },
            )
            .unwrap()
    };
    let eta = Duration::from_secs(6);
    let sent_at = Instant::now();
    let mut results: Vec<_> = (0..10).map(|i| send(i, Some(eta))).collect();
    results.extend((10..30).map(|i| send(i, None)));
    let mut conn = server.conn().unwrap();
    let runs = format!("{q}:runs");
    // The prefetch limit (8) taken: two running (acknowledged as they started), six
    // waiting; and the 10 ETA tasks held.
    wait_for(
        "the worker holds 16 messages",
        Duration::from_secs(30),
        || {
            conn.hlen::<_, usize>("unacked").unwrap() >= 16
                && conn.hlen::<_, usize>(&runs).unwrap() >= 1
        },
    );
    let pid = child.0.id().to_string();
    let stop_at = Instant::now();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
    let mut child = child;
    // Waited for on a thread (woken by the exit itself), at most 30 s.
    let status = std::thread::scope(|s| {
        let (exited, exit) = std::sync::mpsc::channel();
        let proc = &mut child.0;
        s.spawn(move || {
            let _ = exited.send(proc.wait().unwrap());
        });
        let status = exit.recv_timeout(Duration::from_secs(30));
        if status.is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        status.expect("the worker did not exit")
    });
    let stop_took = stop_at.elapsed();
    assert!(status.success(), "the worker exited with {status}");
    let held: usize = conn.hlen("unacked").unwrap();
    let ran_before: usize = conn.hlen(&runs).unwrap();
    let queued: usize = conn.llen(&q).unwrap();
    eprintln!(
        "{signal}: stopped in {} ms; {ran_before} ran, {queued} put back, {held} left unacknowledged",
        stop_took.as_millis()
    );
    assert_eq!(
        held, 0,
        "messages left unacknowledged by the stopped worker"
    );
    assert_eq!(ran_before + queued, 30, "every task either ran or is back");
    // A new worker runs the rest, the ETA tasks at their ETA.
    let worker = Worker::new(url.as_str(), slow_registry(&url, &q))
        .queue(q.as_str(), Priority::Normal)
        .workers(2)
        .start()
        .unwrap();
    for r in &results {
        assert!(matches!(
            r.get(Duration::from_secs(60)).unwrap(),
            TaskResult::Success(_)
        ));
    }
    let all_done = sent_at.elapsed();
    worker.shutdown();
    let counts: HashMap<u64, u32> = conn.hgetall(&runs).unwrap();
    assert_eq!(counts.len(), 30);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    assert!(
        all_done < eta + Duration::from_secs(20),
        "the ETA tasks ran {all_done:?} after they were sent (ETA {eta:?})"
    );
}

#[test]
fn sigterm_puts_back_prefetched_and_eta_messages() {
    stopped_by("-TERM");
}

#[test]
fn sigint_puts_back_prefetched_and_eta_messages() {
    stopped_by("-INT");
}

/// `shutdown_timeout` bounds a warm shutdown: a task still running when it passes is not
/// waited for, and its late-acknowledged message is put back (as Celery's cold shutdown
/// does), so that another worker runs it.
#[test]
fn shutdown_timeout_bounds_a_shutdown() {
    let Some(_) = required("WEFT_REDIS_URL") else {
        return;
    };
    let server = Server::start();
    let url = server.url();
    let q = unique("shutdown-timeout");
    let started = Arc::new(Mutex::new(false));
    let registry = {
        let started = started.clone();
        Registry::new().task("long", move |(): ()| {
            *started.lock() = true;
            std::thread::sleep(Duration::from_secs(20));
            Ok::<_, String>(())
        })
    };
    let worker = Worker::new(url.as_str(), registry)
        .queue(q.as_str(), Priority::Normal)
        .workers(1)
        .acks_late(true)
        .shutdown_timeout(Duration::from_secs(1))
        .start()
        .unwrap();
    Client::new(&url)
        .unwrap()
        .send_task(
            "long",
            vec![],
            Default::default(),
            SendOptions {
                queue: Some(q.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    wait_for("the task started", Duration::from_secs(20), || {
        *started.lock()
    });
    let start = Instant::now();
    let put_back = worker.shutdown();
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(1), "returned after {took:?}");
    assert!(took < Duration::from_secs(5), "returned after {took:?}");
    assert_eq!(put_back, 1);
    let mut conn = server.conn().unwrap();
    assert_eq!(conn.llen::<_, usize>(&q).unwrap(), 1, "the message is back");
    assert_eq!(conn.hlen::<_, usize>("unacked").unwrap(), 0);
}

/// A RabbitMQ connection of the worker closed by `rabbitmqctl` mid-run: the broker
/// delivers again every message the connection held, tasks that had started (their
/// acknowledgement was lost with the connection) included; the worker runs none twice.
#[cfg(feature = "amqp")]
#[test]
fn amqp_connection_closed() {
    amqp_survives(false);
}

/// On RabbitMQ, the Redis result backend shut down for 2 s mid-run: the results are kept
/// and written once it is back, none lost and no task run again.
#[cfg(feature = "amqp")]
#[test]
fn amqp_result_backend_shut_down_and_restarted() {
    amqp_survives(true);
}

/// The RabbitMQ fault tests: the worker's connection closed (`backend_down` false), or
/// its private Redis result backend shut down for 2 s and restarted.
#[cfg(feature = "amqp")]
fn amqp_survives(backend_down: bool) {
    let (Some(_), Some(amqp), Some(dir)) = (
        required("WEFT_REDIS_URL"),
        required("WEFT_AMQP_URL"),
        required("WEFT_RABBITMQ_DIR"),
    ) else {
        return;
    };
    let mut server = Server::start();
    let backend = server.url();
    let q = unique("faults-amqp");
    let name = format!("{q}@here");
    let n = 400u64;
    let counting = Counting::new(n);
    let registry = counting.registry();
    let worker = Worker::new(amqp.as_str(), registry)
        .backend(backend.as_str())
        .hostname(name.as_str())
        .queue(q.as_str(), Priority::Normal)
        .workers(2)
        .start()
        .unwrap();
    let client = Client::with_backend(&amqp, &backend).unwrap();
    let results = counting.send(&client, &q);
    counting.wait_for_the_gate();
    // The worker's consumer connection (its deliveries and their acknowledgements).
    let wanted = format!("{{\"connection_name\",\"weft consumer {name}\"}}");
    let conns =
        common::celery::rabbitmqctl(&dir, &["list_connections", "pid", "client_properties"]);
    let pid = conns
        .lines()
        .find(|l| l.contains(&wanted))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no connection {wanted} in {conns}"))
        .to_owned();
    counting.open();
    if backend_down {
        server.shutdown();
        std::thread::sleep(Duration::from_secs(2)); // the outage itself
        server.restart();
    } else {
        common::celery::rabbitmqctl(&dir, &["close_connection", &pid, "weft test: dropped"]);
    }
    let at_fault = counting.ran();
    let lost = results
        .iter()
        .filter(|r| !matches!(r.get(Duration::from_secs(60)), Ok(TaskResult::Success(_))))
        .count();
    worker.shutdown();
    let duplicates = counting.duplicates();
    let left = common::celery::rabbit_queues(&dir)
        .into_iter()
        .find(|(qn, _, _)| *qn == q)
        .map_or(0, |(_, ready, unacked)| ready + unacked);
    eprintln!(
        "fault {} after {at_fault} of {n} tasks ran: lost {lost}, \
         left on the queue {left}, duplicates {duplicates}",
        if backend_down {
            "AmqpResultBackendShutdown"
        } else {
            "AmqpConnectionClosed"
        }
    );
    assert_eq!(lost, 0, "results lost");
    assert_eq!(duplicates, 0, "tasks run twice");
    assert_eq!(left, 0, "messages left on the queue");
}

/// Celery beat (`weft::celery::beat`) through a Redis killed (`kill -9`) and restarted on
/// its append-only log: it keeps trying with backoff, resumes, and sends no tick twice
/// (each message's `expires`, stamped at its send, tells when it was sent).
#[test]
fn beat_sends_no_tick_twice_through_a_redis_restart() {
    use weft::celery::beat::{Beat, Entry, Schedule};
    if required("WEFT_REDIS_URL").is_none() {
        return;
    }
    let mut server = Server::start();
    let queue = unique("beat-faults");
    let every = Duration::from_millis(300);
    let beat = Beat::new(&server.url())
        .entry(
            Entry::new("e", "add", Schedule::every(every).unwrap())
                .queue(&queue)
                .expires(Duration::from_secs(3600)),
        )
        .start()
        .unwrap();
    let len = |s: &Server| -> usize {
        s.conn()
            .and_then(|mut c| c.llen::<_, usize>(&queue))
            .unwrap_or(0)
    };
    wait_for("three ticks", Duration::from_secs(30), || len(&server) >= 3);
    server.kill();
    // Down for a while: the beat's sends fail meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let before = len(&server);
    wait_for(
        "three ticks after the restart",
        Duration::from_secs(30),
        || len(&server) >= before + 3,
    );
    let stats = beat.stats();
    beat.stop();
    assert!(stats.outages >= 1, "the outage was seen: {stats:?}");
    let raw: Vec<Vec<u8>> = server.conn().unwrap().lrange(&queue, 0, -1).unwrap();
    let mut sent: Vec<String> = raw
        .iter()
        .map(|m| {
            weft::celery::TaskMessage::decode(m)
                .unwrap()
                .expires
                .unwrap()
        })
        .collect();
    sent.sort();
    let at: Vec<chrono::DateTime<chrono::FixedOffset>> = sent
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e).unwrap())
        .collect();
    let gaps: Vec<i64> = at
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    println!(
        "beat through a Redis restart: {} ticks, gaps (ms) {gaps:?}",
        at.len()
    );
    assert!(
        gaps.iter().all(|g| *g >= 150),
        "a tick sent twice (two sends within half the interval): {gaps:?}"
    );
}
