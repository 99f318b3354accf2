//! Celery's monitoring tools against weft workers: Flower 2.2 (its HTTP API) watching a
//! mixed fleet — a weft worker process and a Python Celery prefork worker on the same
//! broker — and Celery's own command line (`celery inspect`, `celery status`,
//! `celery events --dump`).
//!
//! Flower is started with `-A monapp` (`tests/fixtures/celery_monitoring/monapp.py`), so
//! that its own app knows the task names its rate-limit and time-limit actions check. The
//! weft worker starts with task events off: the tasks only show in Flower once Flower's
//! periodic `enable_events` broadcast has turned them on, which the test waits for.
//!
//! Runs when `WEFT_REDIS_URL` and `WEFT_CELERY_PYTHON` (a Python with Celery and Flower,
//! as `.ci/run` installs them) are set (a failure in CI when they are not); on RabbitMQ
//! when `WEFT_CELERY_BROKER` is an `amqp://` URL (with `--features amqp`; results stay in
//! the Redis of `WEFT_REDIS_URL`), as `tests/celery.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

mod common;

use common::celery::{brokers, spawn_ready_child, uuid_like, Brokers, Killed};
use weft::celery::{Client, SendOptions, TaskResult, Worker};
use weft::registry::Registry;
use weft::Priority;

/// Generous: only catches hangs (Flower enables task events every 5 s; each of its
/// inspect refreshes waits 1 s for replies).
const LIMIT: Duration = Duration::from_secs(60);

/// Where the suite runs ([`Brokers`]), with Flower in its Python.
type Env = Brokers;

fn env() -> Option<Env> {
    let env = brokers()?;
    let python = &env.python;
    let has_flower = Command::new(python)
        .args(["-c", "import flower"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_flower {
        assert!(
            std::env::var_os("CI").is_none(),
            "{python} has no Flower, and CI is set (.ci/run installs it)"
        );
        eprintln!("\n!!!!!!!! SKIPPED: {python} has no Flower (pip install \"flower>=2.2,<2.3\") !!!!!!!!\n");
        return None;
    }
    Some(env)
}

impl Env {
    /// A weft worker of [`registry`] consuming `q` as `hostname`.
    fn worker(&self, q: &str, hostname: &str) -> Worker {
        let w = Worker::new(self.broker.as_str(), registry())
            .queue(q, Priority::Normal)
            .hostname(hostname)
            .workers(2);
        if self.broker != self.backend {
            w.backend(self.backend.as_str())
        } else {
            w
        }
    }

    /// `python -m celery ARGS` in the fixtures' folder, on this broker (`monapp` reads
    /// `GOLD_BROKER` and `GOLD_BACKEND`).
    fn celery(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "celery"])
            .args(args)
            .current_dir(monitoring_fixtures())
            .env("GOLD_BROKER", &self.broker)
            .env("GOLD_BACKEND", &self.backend);
        cmd
    }

    /// `celery -b BROKER ARGS` (Celery's default app), its stdout; fails the test if the
    /// command fails.
    fn celery_cli(&self, args: &[&str]) -> String {
        let out = self
            .celery(&["-b", &self.broker])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "celery {args:?}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// `tests/fixtures/celery_monitoring` (`monapp.py`: the task names Flower's app knows).
fn monitoring_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery_monitoring")
}

/// The weft workers' tasks, named as `monapp.py`'s: `add(x, y)`, `boom()` (always fails),
/// `sleepy(s)` (sleeps `s` seconds), `limited(x)`.
fn registry() -> Registry {
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("boom", |(): ()| Err::<(), _>("boom"))
        .task("sleepy", |(s,): (f64,)| {
            std::thread::sleep(Duration::from_secs_f64(s));
            Ok::<_, String>(s)
        })
        .task("limited", |(x,): (i64,)| Ok::<_, String>(x))
}

/// Waits until `cond()` gives a value, at most [`LIMIT`] (then panics naming `what` and
/// the last thing seen). For state only other processes hold (nothing here can be woken by
/// it): it is read again every 50 ms.
fn wait_until<T>(what: &str, mut cond: impl FnMut(&mut String) -> Option<T>) -> T {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(v) = cond(&mut last) {
            return v;
        }
        assert!(
            start.elapsed() < LIMIT,
            "timed out ({LIMIT:?}) waiting until {what}; last seen: {last}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port (the kernel picks one for a socket closed at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `s` percent-encoded for a URL's query or a form.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A Flower process on a loopback port, ended (with its log) when dropped.
struct Flower {
    port: u16,
    log: PathBuf,
    _child: Killed,
}

impl Drop for Flower {
    /// Its log stays (named in the failure) if the test fails.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl Flower {
    /// `celery -A monapp flower` on `env`'s broker; returns once it answers `/healthcheck`.
    fn start(env: &Env) -> Flower {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("weft-flower-{}.log", uuid_like()));
        let child = env
            .celery(&["-A", "monapp", "flower"])
            .arg(format!("--port={port}"))
            .args(["--address=127.0.0.1", "--persistent=False"])
            // Flower 2 serves its API without authentication only when told so.
            .env("FLOWER_UNAUTHENTICATED_API", "true")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        eprintln!("Flower on port {port}, its log in {}", log.display());
        let flower = Flower {
            port,
            log,
            _child: Killed(child),
        };
        wait_until("Flower answers /healthcheck", |last| {
            let (status, body) = flower.try_request("GET", "/healthcheck", "")?;
            *last = format!("{status} {body}");
            (status == 200).then_some(())
        });
        flower
    }

    /// One HTTP/1.0 request (the connection closes after it): its status and body, `None`
    /// if Flower cannot be reached.
    fn try_request(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(LIMIT)).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    }

    /// A request that must get an answer.
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.try_request(method, path, body).unwrap_or_else(|| {
            panic!(
                "no answer from Flower to {method} {path}; its log: {}",
                self.log.display()
            )
        })
    }

    /// `GET path`, which must answer 200 with JSON.
    fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, "");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

/// Whether Flower's worker entry `w` (from `/api/workers?refresh=1`) has what its pages
/// read: `stats` with `total`, `broker` and `pool`, the `registered` tasks and the
/// `active_queues`.
fn fully_inspected(w: &Value) -> bool {
    let stats = &w["stats"];
    stats["total"].is_object()
        && stats["broker"].is_object()
        && stats["pool"].is_object()
        && w["registered"].as_array().is_some_and(|r| !r.is_empty())
        && w["active_queues"].as_array().is_some_and(|q| !q.is_empty())
}

/// Sent by Python (`monapp`'s app) to the queue `argv[1]`: probes `add(0, i)` until Flower
/// (`argv[2]`) shows one of them (task events are on, by Flower's `enable_events`), then
/// `add(2, 3)` and `boom()`; prints their ids and outcomes as JSON.
const PYTHON_SENDS: &str = r#"
import json, sys, time, urllib.request
from monapp import app
q, flower = sys.argv[1], sys.argv[2]

def in_flower(task_id):
    try:
        with urllib.request.urlopen(f"{flower}/api/task/info/{task_id}", timeout=30) as r:
            return r.status == 200
    except Exception:
        return False

probes = []
deadline = time.monotonic() + 60
# The last few only: a task's events reach Flower within moments of its result.
while not any(in_flower(p) for p in probes[-3:]):
    assert time.monotonic() < deadline, "no probe task ever showed in Flower"
    r = app.send_task("add", args=[0, len(probes)], queue=q)
    assert r.get(timeout=30) == len(probes)
    probes.append(r.id)
    time.sleep(0.2)  # the poll's pace: a few probes a second until Flower's next broadcast

add = app.send_task("add", args=[2, 3], queue=q)
boom = app.send_task("boom", queue=q)
print(json.dumps({
    "probes": len(probes),
    "add": add.id,
    "add_result": add.get(timeout=30),
    "boom": boom.id,
    "boom_state": (boom.get(timeout=30, propagate=False), boom.state)[1],
}))
"#;

/// The weft worker process of [`flower_watches_a_mixed_fleet`]: [`registry`] on the queue
/// `WEFT_FLOWER_CHILD_QUEUE` as `WEFT_FLOWER_CHILD_HOSTNAME`, task events off, until a
/// signal or remote control's `shutdown`; a warm stop passes (exit status 0).
#[test]
fn flower_child_worker() {
    let (Ok(q), Ok(hostname)) = (
        std::env::var("WEFT_FLOWER_CHILD_QUEUE"),
        std::env::var("WEFT_FLOWER_CHILD_HOSTNAME"),
    ) else {
        return;
    };
    let env = env().unwrap();
    let worker = env.worker(&q, &hostname).start().unwrap();
    println!("ready");
    let stopped = worker.wait_for_signal().unwrap();
    // stderr: the parent stopped reading stdout after `ready`.
    eprintln!("{stopped}");
    assert!(
        matches!(stopped, weft::celery::Stopped::Warm(_)),
        "{stopped}"
    );
}

/// Flower sees a weft worker process next to a Python prefork worker: both are inspected
/// (stats, registered tasks, queues); tasks Python sends to the weft worker show with their
/// outcome; Flower's rate-limit, time-limit and revoke actions work on it, its pool and
/// queue actions show weft's error, its pages render, and its shutdown action stops it
/// warm, after which Flower shows it offline while the Python worker stays online.
#[test]
fn flower_watches_a_mixed_fleet() {
    let Some(env) = env() else {
        return;
    };
    let id = uuid_like();
    let q = format!("flower-{id}");
    let weft_name = format!("weft-{id}@flowertest");
    let py_name = format!("py-{id}@flowertest");
    let flower = Flower::start(&env);
    let mut weft_worker = spawn_ready_child(
        "flower_child_worker",
        &[
            ("WEFT_FLOWER_CHILD_QUEUE", &q),
            ("WEFT_FLOWER_CHILD_HOSTNAME", &weft_name),
        ],
    );
    let _py_worker = Killed(
        env.celery(&["-A", "monapp", "worker", "-P", "prefork", "-c", "2"])
            .args(["-n", &py_name, "-Q", &format!("py-{q}")])
            .args([
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "WARNING",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Both workers answer Flower's inspect with what its pages read.
    let workers = wait_until("Flower lists both workers, inspected", |last| {
        let (status, body) = flower.request("GET", "/api/workers?refresh=1", "");
        *last = format!("{status} {body}");
        let w: Value = serde_json::from_str(&body).ok()?;
        (fully_inspected(&w[&weft_name]) && fully_inspected(&w[&py_name])).then_some(w)
    });
    let weft = &workers[&weft_name];
    assert_eq!(weft["stats"]["pool"]["max-concurrency"], 2, "{weft}");
    let registered = weft["registered"].as_array().unwrap();
    for name in ["add", "boom", "limited", "sleepy"] {
        assert!(registered.iter().any(|r| r == name), "{registered:?}");
    }
    assert!(
        weft["active_queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|aq| aq["name"] == q.as_str()),
        "{weft}"
    );

    // Tasks Python sends to the weft worker, once Flower has turned task events on.
    let out = Command::new(&env.python)
        .args([
            "-c",
            PYTHON_SENDS,
            &q,
            &format!("http://127.0.0.1:{}", flower.port),
        ])
        .current_dir(monitoring_fixtures())
        .env("GOLD_BROKER", &env.broker)
        .env("GOLD_BACKEND", &env.backend)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(sent["add_result"], 5);
    assert_eq!(sent["boom_state"], "FAILURE");
    eprintln!(
        "task events on after {} probe task(s) (Flower's enable_events)",
        sent["probes"]
    );
    let add_id = sent["add"].as_str().unwrap();
    let boom_id = sent["boom"].as_str().unwrap();
    let info = |task_id: &str, state: &str| {
        wait_until(&format!("Flower shows {task_id} {state}"), |last| {
            let (status, body) = flower.request("GET", &format!("/api/task/info/{task_id}"), "");
            *last = format!("{status} {body}");
            let t: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && t["state"] == state).then_some(t)
        })
    };
    let add = info(add_id, "SUCCESS");
    assert_eq!(add["name"], "add", "{add}");
    // The `argsrepr` Python sent (of a list), as a Python worker reports it.
    assert_eq!(add["args"], "[2, 3]", "{add}");
    assert_eq!(add["kwargs"], "{}", "{add}");
    assert_eq!(add["result"], "5", "{add}");
    assert_eq!(add["worker"], weft_name.as_str(), "{add}");
    assert!(add["runtime"].as_f64().is_some_and(|r| r >= 0.0), "{add}");
    assert!(
        add["received"].is_number() && add["started"].is_number(),
        "{add}"
    );
    let boom = info(boom_id, "FAILURE");
    assert_eq!(boom["worker"], weft_name.as_str(), "{boom}");
    assert!(
        boom["exception"]
            .as_str()
            .is_some_and(|e| e.contains("boom")),
        "{boom}"
    );
    let tasks = flower.get_json(&format!("/api/tasks?workername={}", enc(&weft_name)));
    for task_id in [add_id, boom_id] {
        assert_eq!(tasks[task_id]["worker"], weft_name.as_str(), "{tasks}");
    }

    // Rate and time limits through Flower (which checks the names in its own app).
    let (status, body) = flower.request(
        "POST",
        "/api/task/rate-limit/limited",
        &form(&[("workername", &weft_name), ("ratelimit", "5/s")]),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("new rate limit set successfully"), "{body}");
    let (status, body) = flower.request(
        "POST",
        "/api/task/timeout/sleepy",
        &form(&[("workername", &weft_name), ("soft", "10"), ("hard", "20")]),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("time limits set successfully"), "{body}");
    // Revoke (broadcast to all, no reply).
    let revoked = format!("never-sent-{id}");
    let (status, body) = flower.request("POST", &format!("/api/task/revoke/{revoked}"), "");
    assert_eq!(status, 200, "{body}");
    // What a fixed pool cannot do: Flower shows weft's error.
    for (action, args, error) in [
        ("pool/grow", "n=1", "fixed number of threads"),
        ("pool/shrink", "n=1", "fixed number of threads"),
        ("pool/autoscale", "min=1&max=2", "Autoscale not enabled"),
        ("pool/restart", "", "Pool restarts not enabled"),
    ] {
        let (status, body) =
            flower.request("POST", &format!("/api/worker/{action}/{weft_name}"), args);
        assert_eq!(status, 403, "{action}: {body}");
        assert!(body.contains(error), "{action}: {body}");
    }
    // A queue added through Flower is consumed (a task sent to it runs), then cancelled.
    let extra_q = format!("extra-{q}");
    let extra = form(&[("queue", &extra_q)]);
    let consumes = |want: bool| {
        wait_until(&format!("active_queues has {extra_q}: {want}"), |last| {
            let one = flower.get_json(&format!(
                "/api/workers?refresh=1&workername={}",
                enc(&weft_name)
            ));
            *last = one.to_string();
            let queues = one[&weft_name]["active_queues"].as_array()?.clone();
            (queues.iter().any(|aq| aq["name"] == extra_q.as_str()) == want).then_some(())
        })
    };
    let (status, body) = flower.request(
        "POST",
        &format!("/api/worker/queue/add-consumer/{weft_name}"),
        &extra,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("add consumer {extra_q}")), "{body}");
    consumes(true);
    let out = Command::new(&env.python)
        .args([
            "-c",
            "import os, sys\n\
             from celery import Celery\n\
             app = Celery(broker=os.environ['GOLD_BROKER'], backend=os.environ['GOLD_BACKEND'])\n\
             print(app.send_task('add', args=[20, 22], queue=sys.argv[1]).get(timeout=60))",
            &extra_q,
        ])
        .env("GOLD_BROKER", &env.broker)
        .env("GOLD_BACKEND", &env.backend)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = flower.request(
        "POST",
        &format!("/api/worker/queue/cancel-consumer/{weft_name}"),
        &extra,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("no longer consuming from {extra_q}")),
        "{body}"
    );
    consumes(false);
    // Flower's worker page: every inspect method, the rate limit in `registered`.
    let one = flower.get_json(&format!(
        "/api/workers?refresh=1&workername={}",
        enc(&weft_name)
    ));
    let w = &one[&weft_name];
    assert!(
        w["registered"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "limited [rate_limit=5/s]"),
        "{w}"
    );
    for listing in ["active", "reserved", "scheduled", "revoked"] {
        assert!(w[listing].is_array(), "{listing}: {w}");
    }
    assert!(w["conf"].is_object(), "{w}");
    assert!(
        w["revoked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == revoked.as_str()),
        "{w}"
    );
    // The pages render from those replies (the worker page indexes `stats` directly).
    for page in [
        format!("/worker/{weft_name}"),
        "/workers".into(),
        "/tasks".into(),
    ] {
        let (status, body) = flower.request("GET", &page, "");
        assert_eq!(status, 200, "GET {page}: {body}");
    }
    let (_, page) = flower.request("GET", &format!("/worker/{weft_name}"), "");
    assert!(page.contains("limited [rate_limit=5/s]"), "{page}");

    // Flower's shutdown: a warm stop (exit status 0), then worker-offline.
    let (status, body) = flower.request("POST", &format!("/api/worker/shutdown/{weft_name}"), "");
    assert_eq!(status, 200, "{body}");
    let exit = wait_until("the weft worker exits", |_| {
        weft_worker.0.try_wait().unwrap()
    });
    assert!(exit.success(), "the weft worker exited with {exit}");
    wait_until("Flower shows the weft worker offline", |last| {
        let s = flower.get_json("/api/workers?status=1");
        *last = s.to_string();
        (s[&weft_name] == false && s[&py_name] == true).then_some(())
    });
}

/// A child's stdout, gathered line by line on a thread of its own.
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn of(child: &mut std::process::Child) -> Lines {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                l.lock().push(line);
            }
        });
        Lines(lines)
    }

    /// The first line with every one of `parts`.
    fn find(&self, parts: &[&str]) -> Option<String> {
        self.0
            .lock()
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
    }

    fn tail(&self) -> String {
        let l = self.0.lock();
        l[l.len().saturating_sub(20)..].join("\n")
    }
}

/// Celery's command line on a weft worker: `inspect ping|stats|registered|active_queues
/// --json` parse and show it, `control rate_limit` sets a limit, `status` lists it,
/// `events --dump` shows its heartbeats and its task events.
#[test]
fn celery_cli_on_a_weft_worker() {
    let Some(env) = env() else {
        return;
    };
    let id = uuid_like();
    let q = format!("cli-{id}");
    let name = format!("weft-cli-{id}@flowertest");
    let worker = env.worker(&q, &name).task_events(true).start().unwrap();

    for method in ["ping", "stats", "registered", "active_queues"] {
        let out = env.celery_cli(&["inspect", method, "-d", &name, "--json"]);
        let replies: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("inspect {method} --json: {e}: {out}"));
        let reply = &replies[&name];
        match method {
            "ping" => assert_eq!(reply["ok"], "pong", "{out}"),
            "stats" => assert!(
                reply["pool"].is_object() && reply["total"].is_object(),
                "{out}"
            ),
            "registered" => assert!(
                reply.as_array().unwrap().iter().any(|t| t == "add"),
                "{out}"
            ),
            _ => assert_eq!(reply[0]["name"], q.as_str(), "{out}"),
        }
    }
    let out = env.celery_cli(&["control", "rate_limit", "limited", "5/s", "-d", &name]);
    assert!(out.contains("new rate limit set successfully"), "{out}");
    let status = env.celery_cli(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains(&name) && l.contains("OK")),
        "{status}"
    );

    let mut dump = env
        .celery(&["-b", &env.broker, "events", "--dump"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Lines::of(&mut dump);
    let mut dump = Killed(dump);
    // A heartbeat (every 2 s) shows the dump receives.
    let heartbeat = wait_until("events --dump shows a weft heartbeat", |last| {
        *last = lines.tail();
        lines.find(&[&name, "heartbeat"])
    });
    assert!(heartbeat.contains("sw_ident=weft"), "{heartbeat}");
    let client = Client::builder(&env.broker)
        .backend(&env.backend)
        .connect()
        .unwrap();
    let task = client
        .send_task(
            "sleepy",
            vec![0.2.into()],
            Default::default(),
            SendOptions {
                queue: Some(q.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(task.get(LIMIT).unwrap(), TaskResult::Success(_)));
    for event in ["task received", "task started", "task succeeded"] {
        wait_until(&format!("events --dump shows {event}"), |last| {
            *last = lines.tail();
            lines.find(&[&name, event, task.id()])
        });
    }
    // SIGINT ends the dump as ^C does.
    let pid = dump.0.id().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    wait_until("events --dump ends", |_| dump.0.try_wait().unwrap());
    worker.shutdown();
}
