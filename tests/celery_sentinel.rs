//! Celery over Redis Sentinel, against a real Sentinel set (master, replica, three
//! sentinels: `.ci/sentinel.sh start`) and the real Python Celery.
//!
//! The set is found through `WEFT_SENTINEL_URL` (its `sentinel://` URL) and
//! `WEFT_SENTINEL_MASTER` (the master's name), Python (with `celery[redis]`) through
//! `WEFT_CELERY_PYTHON`; `.ci/run` provides them. Outside CI a missing one skips the test
//! with a loud message; in CI (`CI` set) it is a failure. The tests take turns (one lock):
//! one of them kills the master.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
mod common;

use common::celery::{fixtures, python_sends_interop, required, unique, uuid_like};
use weft::celery::{AsyncResult, Client, SendOptions, TaskResult, Worker};
use weft::registry::Registry;
use weft::Priority;

/// One test at a time: the failover test kills the master under the others.
static SET: Mutex<()> = Mutex::new(());

/// Generous: only catches hangs (a failover takes a few seconds).
const WAIT: Duration = Duration::from_secs(60);

/// The pace of a loop that asks Redis or the sentinels for a state until it holds (each
/// try opens a connection): polling, never a wait for things to settle.
const PACE: Duration = Duration::from_millis(10);

struct Set {
    url: String,
    master: String,
}

fn set() -> Option<Set> {
    Some(Set {
        url: required("WEFT_SENTINEL_URL")?,
        master: required("WEFT_SENTINEL_MASTER")?,
    })
}

impl Set {
    fn worker(&self, registry: Registry) -> Worker {
        Worker::new(self.url.as_str(), registry).sentinel_master(self.master.as_str())
    }

    fn client(&self) -> Client {
        Client::builder(&self.url)
            .sentinel_master(&self.master)
            .connect()
            .unwrap()
    }

    /// The sentinels' addresses (`host:port`).
    fn sentinels(&self) -> Vec<String> {
        self.url
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("sentinel://"))
            .map(|p| p.split('/').next().unwrap().to_owned())
            .collect()
    }

    /// The master's address as the first sentinel that answers names it.
    fn master_addr(&self) -> Option<String> {
        self.sentinels().iter().find_map(|s| {
            let mut conn = redis::Client::open(format!("redis://{s}"))
                .ok()?
                .get_connection_with_timeout(Duration::from_secs(2))
                .ok()?;
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master)
                .query(&mut conn)
                .ok()?;
            addr.map(|(h, p)| format!("{h}:{p}"))
        })
    }

    /// Waits until a sentinel knows a replica that is up and in sync: one that can be
    /// promoted.
    fn wait_for_replica(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = self.sentinels().iter().any(|s| {
                let replicas: Option<Vec<HashMap<String, String>>> =
                    redis::Client::open(format!("redis://{s}"))
                        .ok()
                        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)).ok())
                        .and_then(|mut c| {
                            redis::cmd("SENTINEL")
                                .arg("REPLICAS")
                                .arg(&self.master)
                                .query(&mut c)
                                .ok()
                        });
                replicas.unwrap_or_default().iter().any(|r| {
                    r.get("flags").map(String::as_str) == Some("slave")
                        && r.get("master-link-status").map(String::as_str) == Some("ok")
                })
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no replica ready within {WAIT:?}"
            );
            std::thread::sleep(PACE);
        }
    }

    /// A connection to the master (waits for one whose `ROLE` says so), and its address.
    fn master_conn(&self) -> (redis::Connection, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(addr) = self.master_addr() {
                if let Ok(mut conn) = redis::Client::open(format!("redis://{addr}/0"))
                    .unwrap()
                    .get_connection_with_timeout(Duration::from_secs(2))
                {
                    let role: Result<Vec<Value>, _> = redis::cmd("ROLE")
                        .query::<redis::Value>(&mut conn)
                        .map(|v| match v {
                            redis::Value::Array(items) => items
                                .into_iter()
                                .take(1)
                                .map(|i| match i {
                                    redis::Value::BulkString(b) => {
                                        json!(String::from_utf8_lossy(&b))
                                    }
                                    _ => Value::Null,
                                })
                                .collect(),
                            _ => vec![],
                        });
                    if matches!(role.as_deref(), Ok([r]) if r == "master") {
                        return (conn, addr);
                    }
                }
            }
            assert!(Instant::now() < deadline, "no master within {WAIT:?}");
            std::thread::sleep(PACE);
        }
    }
}

fn python() -> Option<String> {
    required("WEFT_CELERY_PYTHON")
}

fn registry() -> Registry {
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("add_kw", |a: Xy| Ok::<_, String>(a.x + a.y))
        .task("fail", |(): ()| Err::<(), _>("fail() always fails"))
        // Slow enough that the worker holds messages (prefetched, running) at the kill.
        .task("work", |(i,): (u64,)| {
            std::thread::sleep(Duration::from_millis(40));
            Ok::<_, String>(i)
        })
}

#[derive(serde::Deserialize)]
struct Xy {
    x: i64,
    y: i64,
}

fn on(q: &str) -> SendOptions {
    SendOptions {
        queue: Some(q.to_owned()),
        ..SendOptions::default()
    }
}

/// A weft worker and a weft client over `sentinel://`, then Python Celery's client (with
/// `broker_transport_options={'master_name': ...}`) sending to the weft worker.
#[test]
fn weft_and_python_over_sentinel() {
    let (Some(set), Some(py)) = (set(), python()) else {
        return;
    };
    let _turn = SET.lock().unwrap_or_else(|e| e.into_inner());
    let q = unique("sentinel");
    let worker = set
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .workers(2)
        .start()
        .unwrap();
    let client = set.client();
    let rs: Vec<AsyncResult> = (0..50)
        .map(|i| {
            client
                .send_task("add", vec![json!(i), json!(i)], Map::new(), on(&q))
                .unwrap()
        })
        .collect();
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.get_value(WAIT).unwrap(), json!(2 * i));
    }
    python_sends_interop(
        &py,
        &set.url,
        &set.url,
        &q,
        &[("WEFT_SENTINEL_MASTER", &set.master)],
    );
    assert_eq!(worker.shutdown(), 0);
}

/// A `sentinel://` URL without the master's name is a configuration error, for the
/// worker and the client alike.
#[test]
fn a_sentinel_url_needs_the_master_name() {
    let url = "sentinel://127.0.0.1:1;sentinel://127.0.0.1:2/0";
    let e = Worker::new(url, registry()).start().err().unwrap();
    assert!(matches!(e, weft::celery::Error::Config(_)), "{e}");
    let e = Client::new(url).err().unwrap();
    assert!(matches!(e, weft::celery::Error::Config(_)), "{e}");
}

/// The pid of the Redis at the other end of `conn`.
fn pid_of(conn: &mut redis::Connection) -> u32 {
    let info: String = redis::cmd("INFO").arg("server").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `CONFIG GET name` of the Redis at the other end of `conn`.
fn config(conn: &mut redis::Connection, name: &str) -> String {
    let kv: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(conn)
        .unwrap();
    kv[name].clone()
}

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The failover: tasks are sent continuously; the master is killed (`kill -9`) while the
/// worker holds unacknowledged messages; the sentinels promote the replica; the worker
/// follows without a restart (remote control answers, its consumer is woken by the new
/// master's tracking), every task sent after the failover runs, and nothing is left in
/// `unacked`. What asynchronous replication lost of the tasks sent before the kill is
/// reported. The killed Redis is started again at the end and waits to be demoted, so
/// the set can fail over again.
#[test]
fn the_worker_follows_a_failover() {
    let (Some(set), Some(py)) = (set(), python()) else {
        return;
    };
    let _turn = SET.lock().unwrap_or_else(|e| e.into_inner());
    set.wait_for_replica();
    let q = unique("failover");
    let hostname = format!("weft-sentinel-{}@here", uuid_like());
    let worker = set
        .worker(registry())
        .queue(q.as_str(), Priority::Normal)
        .hostname(hostname.as_str())
        .workers(4)
        .acks_late(true)
        .start()
        .unwrap();
    let (mut old, old_addr) = set.master_conn();
    let old_pid = pid_of(&mut old);
    let restart = (config(&mut old, "dir"), {
        let info: String = redis::cmd("INFO").arg("server").query(&mut old).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("config_file:"))
            .unwrap()
            .trim()
            .to_owned()
    });
    let client = set.client();
    const N: u64 = 300;
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut killed_at = None;
    let mut failed_sends = 0;
    for i in 0..N {
        // The kill, once a third is sent and the worker holds unacknowledged messages.
        if i == N / 3 {
            let deadline = Instant::now() + WAIT;
            while redis::cmd("HLEN")
                .arg("unacked")
                .query::<usize>(&mut old)
                .unwrap()
                == 0
            {
                assert!(Instant::now() < deadline, "the worker never held a message");
                std::thread::yield_now();
            }
            let held: usize = redis::cmd("HLEN").arg("unacked").query(&mut old).unwrap();
            assert!(Command::new("kill")
                .args(["-KILL", &old_pid.to_string()])
                .status()
                .unwrap()
                .success());
            let deadline = Instant::now() + WAIT;
            while alive(old_pid) {
                assert!(Instant::now() < deadline, "the master outlived kill -9");
                std::thread::yield_now();
            }
            eprintln!("killed the master {old_addr} (pid {old_pid}) holding {held} unacked");
            killed_at = Some(Instant::now());
        }
        // Sent again until the broker takes it (a new connection each try, asking the
        // sentinels): during the failover there is no master.
        let r = loop {
            match client.send_task("work", vec![json!(i)], Map::new(), on(&q)) {
                Ok(r) => break r,
                Err(e) => {
                    failed_sends += 1;
                    assert!(
                        killed_at.is_some_and(|k| k.elapsed() < WAIT),
                        "send {i}: {e}"
                    );
                    // The pace of the retries, not a wait for a state.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        if killed_at.is_some() {
            after.push((i, r));
        } else {
            before.push((i, r));
        }
        std::thread::sleep(Duration::from_millis(10)); // the sending pace: 100 a second
    }
    let (mut new, new_addr) = set.master_conn();
    assert_ne!(new_addr, old_addr);
    eprintln!(
        "new master {new_addr}; {failed_sends} sends refused during the failover, the first \
         send taken {:?} after the kill",
        killed_at.unwrap().elapsed()
    );
    // Every task sent after the failover runs.
    for (i, r) in &after {
        assert_eq!(r.get_value(WAIT).unwrap(), json!(i), "task {i} sent after");
    }
    eprintln!(
        "all {} tasks sent after the kill ran, the last result {:?} after the kill",
        after.len(),
        killed_at.unwrap().elapsed()
    );
    // Nothing stranded: the queue and `unacked` drain (the worker holds nothing once every
    // task it can see has run). Checked at the end, after the set is mended.
    let deadline = Instant::now() + WAIT;
    let (queued, stranded) = loop {
        let queued: usize = redis::cmd("LLEN").arg(&q).query(&mut new).unwrap();
        let unacked: HashMap<String, String> = redis::cmd("HGETALL")
            .arg("unacked")
            .query(&mut new)
            .unwrap();
        let ours: Vec<String> = unacked
            .values()
            .filter(|m| m.contains(&q))
            .map(|m| {
                let m: Value = serde_json::from_str(m).unwrap();
                let id = m[0]["headers"]["id"].as_str().unwrap_or("?").to_owned();
                let stored: bool = redis::cmd("EXISTS")
                    .arg(format!("celery-task-meta-{id}"))
                    .query(&mut new)
                    .unwrap();
                format!(
                    "{} ({}, result {})",
                    m[0]["headers"]["argsrepr"],
                    id,
                    if stored { "stored" } else { "not stored" }
                )
            })
            .collect();
        if (queued == 0 && ours.is_empty()) || Instant::now() > deadline {
            break (queued, ours);
        }
        std::thread::sleep(PACE);
    };
    if !stranded.is_empty() {
        eprintln!(
            "stranded in unacked on the new master: {stranded:?} (a result not stored: the \
             worker's write of its result and acknowledgement was given up while there was \
             no master)"
        );
    }
    // The tasks sent before the kill: each ran, or async replication lost it (its message,
    // or its result, never reached the replica).
    let lost: Vec<u64> = before
        .iter()
        .filter(|(_, r)| !matches!(r.try_get(), Ok(Some(TaskResult::Success(_)))))
        .filter(|(_, r)| !stranded.iter().any(|s| s.contains(r.id())))
        .map(|(i, _)| *i)
        .collect();
    eprintln!(
        "of {} tasks sent before the kill, {} lost by async replication: {lost:?}",
        before.len(),
        lost.len()
    );
    // The wake-ups follow: a client on the new master tracks keys for the consumer.
    let deadline = Instant::now() + WAIT;
    loop {
        let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut new).unwrap();
        let tracking = clients.lines().any(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
        });
        if tracking {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no tracking on the new master:\n{clients}"
        );
        std::thread::sleep(PACE);
    }
    // Remote control follows: Python's ping reaches the worker through the new master.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new(&py)
            .arg(fixtures().join("sentinel_ping.py"))
            .args([&set.url, &set.master, &hostname])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let replies: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
        if replies
            .as_array()
            .is_some_and(|r| r.iter().any(|p| p[&hostname] == json!({"ok": "pong"})))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no pong after the failover: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The old master comes back (a master by its own config) and is demoted by the
    // sentinels; meanwhile and after, tasks still go to the new master and run.
    let (dir, conf) = restart;
    assert!(Command::new("redis-server")
        .arg(&conf)
        .current_dir(&dir)
        .status()
        .unwrap()
        .success());
    let r = client
        .send_task("add", vec![json!(20), json!(22)], Map::new(), on(&q))
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(42));
    let deadline = Instant::now() + WAIT;
    loop {
        let role: Option<String> = redis::Client::open(format!("redis://{old_addr}"))
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()
            .and_then(|mut c| {
                let v: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).ok()?;
                match v.first()? {
                    redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                }
            });
        if role.as_deref() == Some("slave") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{old_addr} not demoted: {role:?}"
        );
        std::thread::sleep(PACE);
    }
    let r = client
        .send_task("add", vec![json!(1), json!(2)], Map::new(), on(&q))
        .unwrap();
    assert_eq!(r.get_value(WAIT).unwrap(), json!(3));
    assert_eq!(worker.shutdown(), 0);
    assert_eq!(queued, 0, "left on the queue of the new master");
    assert!(stranded.is_empty(), "stranded in unacked: {stranded:?}");
}
