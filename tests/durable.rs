//! The node's durable store, through the public API: a restart keeps results and runs
//! what did not finish; kill -9 at random moments (while clients submit, and while the
//! node drains) loses no accepted task; one node per data directory; a corrupt or
//! truncated store is refused at start; a full store refuses submissions and loses
//! nothing it accepted; eviction shrinks the file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use weft::service::client::{State, SubmitOptions, TaskInfo};
use weft::service::{Client, Node, Registry, RunningNode};

mod common;
use common::rng::Rng;

/// The longest any wait here may take before the test fails.
const HANG: Duration = Duration::from_secs(60);

/// A fresh directory for one test's socket and data.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    d
}

/// A gate tasks block on until the test opens it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<(bool, usize)>, Condvar)>);

impl Gate {
    fn open(&self) {
        self.0 .0.lock().unwrap().0 = true;
        self.0 .1.notify_all();
    }

    fn pass(&self) {
        let mut g = self.0 .0.lock().unwrap();
        g.1 += 1;
        self.0 .1.notify_all();
        while !g.0 {
            g = self.0 .1.wait(g).unwrap();
        }
    }

    fn arrived(&self, n: usize) {
        let g = self.0 .0.lock().unwrap();
        let (g, _) = self.0 .1.wait_timeout_while(g, HANG, |g| g.1 < n).unwrap();
        assert!(g.1 >= n, "{} of {n} tasks reached the gate", g.1);
    }
}

fn registry(gate: &Gate) -> Registry {
    let gate = gate.clone();
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("gated", move |(x,): (i64,)| {
            gate.pass();
            Ok::<_, String>(x)
        })
        .task("echo", |(s,): (String,)| Ok::<_, String>(s))
}

fn start(dir: &Path, registry: Registry, f: impl FnOnce(Node) -> Node) -> (RunningNode, Client) {
    let rt = runtime();
    let node = rt
        .block_on(
            f(Node::new(registry)
                .workers(2)
                .unix(dir.join("node.sock"))
                .data_dir(dir.join("data")))
            .start(),
        )
        .expect("node starts");
    (node, Client::unix(dir.join("node.sock")))
}

/// One runtime for the whole test binary: nodes are started on it and outlive the call.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

/// Why a node on `dir`'s data directory (listening on `socket` there) cannot start.
fn refused(dir: &Path, socket: &str) -> weft::service::ServiceError {
    runtime()
        .block_on(
            Node::new(Registry::new())
                .unix(dir.join(socket))
                .data_dir(dir.join("data"))
                .start(),
        )
        .unwrap_err()
}

fn stop(node: RunningNode) {
    runtime().block_on(node.shutdown());
}

fn wait_final(client: &Client, id: &str) -> TaskInfo {
    let deadline = Instant::now() + HANG;
    loop {
        let info = client
            .wait(id, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("task {id}: {e}"));
        if info.state.is_finished() {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not finished: {info:?}"
        );
    }
}

#[test]
fn a_restart_keeps_results_and_runs_what_did_not_finish() {
    let dir = temp_dir("restart");
    let gate = Gate::default();
    let (node, client) = start(&dir, registry(&gate), |n| {
        n.drain_timeout(Duration::from_millis(400))
    });
    let done = client
        .submit("add", json!([2, 3]), SubmitOptions::new())
        .unwrap();
    let done = wait_final(&client, &done.id);
    assert_eq!(done.result, Some(json!(5)));
    let running = client
        .submit("gated", json!([7]), SubmitOptions::new())
        .unwrap();
    gate.arrived(1);
    let queued: Vec<_> = (0..3)
        .map(|i| {
            client
                .submit("add", json!([i, 100]), SubmitOptions::new())
                .unwrap()
        })
        .collect();
    let due = Duration::from_millis(1500);
    // Taken before the submission: the node counts the delay from when it accepted it.
    let delayed_at = Instant::now();
    let delayed = client
        .submit("add", json!([1, 1]), SubmitOptions::new().delay(due))
        .unwrap();
    stop(node);
    // The first node's worker is still held by the gate; the next node runs the task again.
    let gate2 = Gate::default();
    gate2.open();
    let (node, client) = start(&dir, registry(&gate2), |n| n);
    // Read back before the node answers: the finished result, as it was.
    let again = client.status(&done.id, None).unwrap();
    assert_eq!(
        again, done,
        "a result from before the restart reads the same"
    );
    let info = wait_final(&client, &running.id);
    assert_eq!(info.state, State::Success, "{info:?}");
    assert_eq!(info.result, Some(json!(7)));
    assert_eq!((info.attempts, info.interrupted), (2, 1), "{info:?}");
    for (i, q) in queued.iter().enumerate() {
        let info = wait_final(&client, &q.id);
        assert_eq!(info.result, Some(json!(i as i64 + 100)), "{info:?}");
    }
    let info = client.status(&delayed.id, None).unwrap();
    if delayed_at.elapsed() < due - Duration::from_millis(100) {
        assert_eq!(
            info.state,
            State::Scheduled,
            "it keeps its due time: {info:?}"
        );
    }
    let info = wait_final(&client, &delayed.id);
    // The store keeps the due time in wall-clock milliseconds, truncated: at most 1 ms
    // early (2 ms of slack, for the two clocks).
    assert!(
        delayed_at.elapsed() + Duration::from_millis(2) >= due,
        "ran before its due time"
    );
    assert_eq!(info.result, Some(json!(2)));
    stop(node);
    gate.open();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn results_keep_their_ttl_across_a_restart() {
    let dir = temp_dir("ttl");
    let ttl = Duration::from_millis(300);
    let (node, client) = start(&dir, registry(&Gate::default()), |n| n.result_ttl(ttl));
    let t = client
        .submit("add", json!([1, 2]), SubmitOptions::new())
        .unwrap();
    let info = wait_final(&client, &t.id);
    stop(node);
    // Past its TTL by the wall clock it was stamped with: the restart does not start the
    // TTL over (it would be readable for another 300 ms).
    let finished = UNIX_EPOCH + Duration::from_millis(info.finished_at_ms.unwrap());
    while SystemTime::now() < finished + ttl {
        std::thread::yield_now();
    }
    let (node, client) = start(&dir, registry(&Gate::default()), |n| n.result_ttl(ttl));
    let gone = client.status(&t.id, None).unwrap_err();
    assert_eq!(
        gone.status(),
        Some(404),
        "expired while the node was down: {gone}"
    );
    stop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_task_no_longer_registered_fails_with_the_reason_after_a_restart() {
    let dir = temp_dir("unregistered");
    let (node, client) = start(
        &dir,
        Registry::new().task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y)),
        |n| n,
    );
    let later = client
        .submit(
            "add",
            json!([1, 2]),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .unwrap();
    stop(node);
    let (node, client) = start(
        &dir,
        Registry::new().task("other", |(): ()| Ok::<_, String>(())),
        |n| n,
    );
    let info = wait_final(&client, &later.id);
    assert_eq!(info.state, State::Failure);
    let error = info.error.unwrap();
    assert!(error.contains("\"add\" is no longer registered"), "{error}");
    stop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_data_directory_in_use_is_refused() {
    let dir = temp_dir("in-use");
    let (node, _) = start(&dir, Registry::new(), |n| n);
    let err = refused(&dir, "other.sock");
    assert!(err.is_in_use(), "{err}");
    assert!(err.to_string().contains("in use by another node"), "{err}");
    stop(node);
    // Free again once the first node stopped.
    let (node, _) = start(&dir, Registry::new(), |n| n);
    stop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_or_truncated_store_is_refused_at_start() {
    let dir = temp_dir("corrupt");
    let (node, client) = start(&dir, registry(&Gate::default()), |n| n);
    let big = "x".repeat(4000);
    for _ in 0..100 {
        let t = client
            .submit("echo", json!([big]), SubmitOptions::new())
            .unwrap();
        wait_final(&client, &t.id);
    }
    stop(node);
    let db = dir.join("data/tasks.sqlite3");
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 100_000, "the store holds the results ({len} bytes)");
    let bytes = std::fs::read(&db).unwrap();

    // Truncated: the file ends half way.
    std::fs::write(&db, &bytes[..bytes.len() / 2]).unwrap();
    let err = refused(&dir, "node.sock");
    assert!(err.is_store(), "{err}");
    assert!(err.to_string().contains("refusing to start"), "{err}");
    assert!(!dir.join("node.sock").exists(), "nothing is served");

    // Overwritten in the middle.
    let mut garbled = bytes.clone();
    for b in &mut garbled[8192..40960] {
        *b = 0xA5;
    }
    std::fs::write(&db, &garbled).unwrap();
    let err = refused(&dir, "node.sock");
    assert!(err.is_store(), "{err}");

    // Not a database at all.
    std::fs::write(&db, b"hello, this is not SQLite").unwrap();
    let err = refused(&dir, "node.sock");
    assert!(err.is_store(), "{err}");
    // Nothing was overwritten by the refusals.
    assert_eq!(std::fs::read(&db).unwrap(), b"hello, this is not SQLite");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_store_refuses_submissions_and_loses_nothing_it_accepted() {
    let dir = temp_dir("full");
    let (node, client) = start(&dir, registry(&Gate::default()), |n| {
        n.max_store_bytes(256 << 10)
            .max_results(1000)
            .drain_timeout(Duration::from_secs(1))
    });
    let big = "y".repeat(20_000);
    let mut accepted = Vec::new();
    let mut refused = None;
    for _ in 0..200 {
        match client.submit("echo", json!([big]), SubmitOptions::new()) {
            Ok(t) => accepted.push(t.id),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a 256 KiB store fills up");
    let message = refused.to_string();
    assert_eq!(refused.status(), Some(507), "{refused:?}");
    assert!(message.contains("nothing was accepted"), "{message}");
    assert!(!accepted.is_empty());
    let listed = client.tasks(Some(1000)).unwrap();
    assert_eq!(listed.len(), accepted.len(), "only accepted tasks exist");
    // The last accepted task ran, but its result does not fit either: a final state is
    // shown only once written, so it stays unfinished, its write tried again meanwhile.
    let last = accepted.last().unwrap();
    let deadline = Instant::now() + HANG;
    loop {
        let metrics = client.metrics().unwrap();
        let errors: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weft_service_store_errors_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        if errors >= 2 && client.status(last, None).unwrap().attempts == 1 {
            assert!(
                metrics.contains("weft_submissions_rejected_total{reason=\"store\"} 1"),
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no failed final write seen");
        std::thread::yield_now();
    }
    let info = client.status(last, None).unwrap();
    assert_eq!(
        info.state,
        State::Started,
        "not shown finished before it is written: {info:?}"
    );
    stop(node);
    // With room again, everything accepted is there and finishes.
    let (node, client) = start(&dir, registry(&Gate::default()), |n| n.max_results(1000));
    for id in &accepted {
        let info = wait_final(&client, id);
        assert_eq!(info.state, State::Success, "{info:?}");
    }
    stop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eviction_shrinks_the_store() {
    let dir = temp_dir("evict");
    let (node, client) = start(&dir, registry(&Gate::default()), |n| n.max_results(10));
    let big = "z".repeat(20_000);
    for _ in 0..300 {
        let t = client
            .submit("echo", json!([big]), SubmitOptions::new())
            .unwrap();
        wait_final(&client, &t.id);
    }
    stop(node);
    let len = std::fs::metadata(dir.join("data/tasks.sqlite3"))
        .unwrap()
        .len();
    // 300 results of 20 kB went through; about 10 are kept.
    assert!(len < 2 << 20, "the store holds {len} bytes");
    let (node, client) = start(&dir, registry(&Gate::default()), |n| n.max_results(10));
    assert_eq!(client.tasks(Some(1000)).unwrap().len(), 10);
    stop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ kill -9

/// Rounds of the kill -9 test (more with `WEFT_CRASH_ROUNDS`).
fn crash_rounds() -> usize {
    std::env::var("WEFT_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// A child process running a durable node (this test binary, re-run as
/// `child_durable_node`), ready once it printed its line.
fn spawn_child(dir: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_durable_node", "--nocapture"])
        .env("WEFT_TEST_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let ready = out
        .lines()
        .any(|line| line.is_ok_and(|l| l.contains("durable node ready")));
    if !ready {
        let _ = child.kill();
        child.wait().unwrap();
        panic!("the child node did not start");
    }
    child
}

#[test]
#[ignore = "run by kill_9_at_random_moments_loses_no_accepted_task"]
fn child_durable_node() {
    let dir = PathBuf::from(std::env::var_os("WEFT_TEST_DIR").unwrap());
    let registry = Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("slow_add", |(x, y, ms): (i64, i64, u64)| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok::<_, String>(x + y)
        });
    Node::new(registry)
        .workers(2)
        .unix(dir.join("node.sock"))
        .data_dir(dir.join("data"))
        .max_results(100_000)
        .max_in_flight(100_000)
        .run_with(|_| println!("durable node ready"))
        .unwrap();
}

#[test]
fn kill_9_at_random_moments_loses_no_accepted_task() {
    let mut rng = Rng::from_clock("kill -9 test");
    let dir = temp_dir("kill9");
    // (id, expected sum) of every task answered 202, and the results seen before a crash.
    let accepted: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut seen: Vec<TaskInfo> = Vec::new();
    let client = Client::unix(dir.join("node.sock")).with_request_timeout(Duration::from_secs(10));
    for round in 0..crash_rounds() {
        let mut child = spawn_child(&dir);
        // Everything accepted before, and every result seen before, survived.
        for info in &seen {
            let again = client.status(&info.id, None).unwrap();
            assert_eq!(
                &again, info,
                "round {round}: a result seen before the crash changed"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let submitters: Vec<_> = (0..4u64)
            .map(|t| {
                let (stop, count, accepted) = (stop.clone(), count.clone(), accepted.clone());
                let client = Client::unix(dir.join("node.sock")).with_busy_retries(100);
                let mut rng = rng.split();
                std::thread::spawn(move || {
                    let mut i = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let (x, y) = (round as i64 * 1_000_000 + t as i64 * 100_000, i);
                        let kind = rng.below(4);
                        let sub = match kind {
                            0 => client.submit(
                                "slow_add",
                                json!([x, y, rng.below(30)]),
                                SubmitOptions::new(),
                            ),
                            1 => client.submit(
                                "add",
                                json!([x, y]),
                                SubmitOptions::new().delay(Duration::from_millis(rng.below(300))),
                            ),
                            _ => client.submit("add", json!([x, y]), SubmitOptions::new()),
                        };
                        match sub {
                            Ok(s) => {
                                accepted.lock().unwrap().push((s.id, x + y));
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            // The node is gone (killed) or draining: this submission may or
                            // may not have been accepted; it was not answered 202.
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        // Kill at a random moment: after a random number of acceptances.
        let target = 20 + rng.below(400) as usize;
        let deadline = Instant::now() + HANG;
        while count.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "round {round}: submissions stalled"
            );
            std::thread::yield_now();
        }
        let drain = round % 2 == 1;
        if drain {
            // Kill it while it drains: SIGTERM, then kill -9 once it answers 503.
            let pid = child.id().to_string();
            assert!(Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success());
            let deadline = Instant::now() + HANG;
            // 503 while draining, or already gone (drained in time) ends the wait.
            while client.health().is_ok() {
                assert!(Instant::now() < deadline, "round {round}: no drain seen");
                std::thread::yield_now();
            }
        }
        // Some finished results, seen just before the crash, must read the same after it.
        let sample: Vec<(String, i64)> = {
            let a = accepted.lock().unwrap();
            a.iter().rev().take(20).cloned().collect()
        };
        for (id, _) in sample {
            if let Ok(info) = client.status(&id, None) {
                if info.state.is_finished() {
                    seen.push(info);
                }
            }
        }
        // SIGKILL (a child that drained and exited already is only reaped).
        let _ = child.kill();
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for s in submitters {
            s.join().unwrap();
        }
        println!(
            "round {round}: killed{} after {} acceptances ({} in all)",
            if drain { " while draining" } else { "" },
            count.load(Ordering::Relaxed),
            accepted.lock().unwrap().len()
        );
    }
    // The last start: every task answered 202 reaches its final state, with its sum.
    let mut child = spawn_child(&dir);
    let accepted = accepted.lock().unwrap().clone();
    for (id, want) in &accepted {
        let info = wait_final(&client, id);
        assert_eq!(info.state, State::Success, "{info:?}");
        assert_eq!(info.result, Some(json!(want)), "{info:?}");
    }
    for info in &seen {
        let again = client.status(&info.id, None).unwrap();
        assert_eq!(&again, info);
    }
    let listed: Vec<Value> = client
        .tasks(Some(1000))
        .unwrap()
        .into_iter()
        .map(|t| json!(t.id))
        .collect();
    assert!(!listed.is_empty());
    println!(
        "kill -9 test: {} accepted tasks, all SUCCESS after the last restart",
        accepted.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_of_the_first_schema_is_read_and_upgraded() {
    let dir = temp_dir("schema1");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    // What the first durable node (schema 1, no start times) wrote: one finished task.
    let conn = rusqlite::Connection::open(dir.join("data/tasks.sqlite3")).unwrap();
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL;
         CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id BLOB NOT NULL, name TEXT NOT NULL,
             request TEXT, state TEXT NOT NULL, attempts INTEGER NOT NULL,
             interrupted INTEGER NOT NULL, submitted_at_ms INTEGER NOT NULL, due_at_ms INTEGER,
             result TEXT, error TEXT, finished_at_ms INTEGER);
         PRAGMA user_version = 1;",
    )
    .unwrap();
    let id = uuid::Uuid::new_v4();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    conn.execute(
        "INSERT INTO tasks VALUES (7, ?1, 'add', NULL, 'SUCCESS', 1, 0, ?2, NULL, '5', NULL, ?2)",
        rusqlite::params![&id.as_bytes()[..], now],
    )
    .unwrap();
    drop(conn);
    let (node, client) = start(&dir, registry(&Gate::default()), |n| n);
    let info = client.status(&id.to_string(), None).unwrap();
    assert_eq!((info.state, info.result), (State::Success, Some(json!(5))));
    // Upgraded: new tasks record their start.
    let t = client
        .submit("add", json!([1, 1]), SubmitOptions::new())
        .unwrap();
    assert!(wait_final(&client, &t.id).started_at_ms.is_some());
    stop(node);
    let (node, client) = start(&dir, registry(&Gate::default()), |n| n);
    assert!(client.status(&t.id, None).unwrap().started_at_ms.is_some());
    stop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
