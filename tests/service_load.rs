//! Load test of the node-local service through `weft::service::Client` (ignored by default).
//!
//! Starts a node on a temporary Unix socket with one task, `add`, then has
//! `WEFT_LOAD_THREADS` client threads (default 8), each with its own `Client`, submit
//! `WEFT_LOAD_TASKS` tiny tasks in all (default 100 000). Every task is accounted for: every
//! id is distinct, and every task reads `SUCCESS` with the right sum. Prints the submit
//! rate and the p50/p99 submit latency.
//!
//! `WEFT_LOAD_MODES` (default `ephemeral,durable`) says which nodes run, one after the
//! other, `WEFT_LOAD_ROUNDS` times (default 1) interleaved: an ephemeral node keeps its
//! tasks in memory, a durable one in a fresh temporary data directory (every `202` after
//! its group-committed write). The last line compares the modes' best rates.
//!
//! `WEFT_LOAD_KEEP=N` keeps only N finished results (the node's `max_results`; default:
//! all): the test then waits for every task to finish (by `/metrics`) instead of reading
//! each result back, and prints what the durable store's file holds after eviction.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use weft::service::client::{State, SubmitOptions};
use weft::service::{Client, Node, Registry};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One client thread's work: (task id, expected sum) pairs, and its submit latencies.
type Submissions = (Vec<(String, u64)>, Vec<Duration>);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
#[ignore = "load test: run with --ignored --release (WEFT_LOAD_TASKS, WEFT_LOAD_THREADS, WEFT_LOAD_MODES, WEFT_LOAD_ROUNDS)"]
fn hundred_thousand_tiny_tasks() {
    let tasks = env_usize("WEFT_LOAD_TASKS", 100_000);
    let threads = env_usize("WEFT_LOAD_THREADS", 8).max(1);
    let rounds = env_usize("WEFT_LOAD_ROUNDS", 1).max(1);
    let modes = std::env::var("WEFT_LOAD_MODES").unwrap_or_else(|_| "ephemeral,durable".into());
    let modes: Vec<&str> = modes.split(',').map(str::trim).collect();
    let mut best = vec![0f64; modes.len()];
    for round in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            let durable = match *mode {
                "durable" => true,
                "ephemeral" => false,
                other => panic!("WEFT_LOAD_MODES: unknown mode {other:?} (ephemeral, durable)"),
            };
            let rate = load(tasks, threads, durable, round);
            best[i] = best[i].max(rate);
        }
    }
    if let (Some(e), Some(d)) = (
        modes.iter().position(|m| *m == "ephemeral"),
        modes.iter().position(|m| *m == "durable"),
    ) {
        println!(
            "service load: durable / ephemeral (best of {rounds}): {:.0} / {:.0} requests/s = {:.0}%",
            best[d],
            best[e],
            100.0 * best[d] / best[e]
        );
    }
}

/// One node, `tasks` submissions from `threads` clients, every result checked; returns
/// the submission rate.
fn load(tasks: usize, threads: usize, durable: bool, round: usize) -> f64 {
    let mode = if durable { "durable" } else { "ephemeral" };
    let dir = std::env::temp_dir().join(format!("weft-load-{}-{mode}-{round}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("weft.sock");
    let keep = env_usize("WEFT_LOAD_KEEP", tasks).max(1);

    let registry = Registry::new().task("add", |(a, b): (u64, u64)| Ok::<_, String>(a + b));
    let node = Node::new(registry);
    let node = if durable {
        node.data_dir(dir.join("data"))
    } else {
        node.ephemeral()
    };
    // The node serves from this runtime's threads while the test drives it from its own.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = rt
        .block_on(
            node.unix(&socket)
                .max_in_flight(tasks.max(1))
                // Every result must still be there when the test reads it back, unless
                // WEFT_LOAD_KEEP says otherwise.
                .max_results(keep)
                .start(),
        )
        .expect("node starts");

    // Submit: each thread its share, timing every request.
    let started = Instant::now();
    let per_thread: Vec<Submissions> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let socket = &socket;
                s.spawn(move || {
                    // Refusals under load (429) are retried after the node's Retry-After.
                    let client = Client::unix(socket).with_busy_retries(1_000);
                    let mut ids = Vec::new();
                    let mut latencies = Vec::new();
                    let mut i = t;
                    while i < tasks {
                        let (a, b) = (i as u64, 1u64);
                        let sent = Instant::now();
                        let sub = client
                            .submit("add", json!([a, b]), SubmitOptions::new())
                            .unwrap_or_else(|e| panic!("submit {i}: {e}"));
                        latencies.push(sent.elapsed());
                        assert!(matches!(sub.state, State::Pending | State::Scheduled));
                        ids.push((sub.id, a + b));
                        i += threads;
                    }
                    (ids, latencies)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let submit_time = started.elapsed();

    // Account for every task: distinct ids, all SUCCESS with the right sum.
    let mut seen = HashSet::new();
    for (ids, _) in &per_thread {
        for (id, _) in ids {
            assert!(seen.insert(id.clone()), "duplicate id {id}");
        }
    }
    assert_eq!(seen.len(), tasks);
    if keep < tasks {
        // Most results are evicted: wait, on the node's event stream, until every task
        // finished, and count them.
        let client = Client::unix(&socket);
        let deadline = Instant::now() + Duration::from_secs(600);
        for event in client.events().unwrap() {
            let event = event.unwrap();
            // A stats event comes every second: the deadline is checked at least that often.
            assert!(
                Instant::now() < deadline,
                "tasks still in flight after 600 s"
            );
            if event.kind != "stats" || event.data["in_flight"] != 0 {
                continue;
            }
            let done = ["succeeded", "failed", "revoked"]
                .iter()
                .map(|k| event.data[*k].as_u64().unwrap())
                .sum::<u64>();
            assert_eq!(done as usize, tasks);
            assert!(event.data["stored"].as_u64().unwrap() as usize <= keep);
            break;
        }
    }
    std::thread::scope(|s| {
        for (ids, _) in &per_thread {
            let socket = &socket;
            s.spawn(move || {
                let client = Client::unix(socket);
                for (id, want) in ids.iter().filter(|_| keep >= tasks) {
                    let info = client
                        .wait(id, Duration::from_secs(120))
                        .unwrap_or_else(|e| panic!("wait {id}: {e}"));
                    assert_eq!(info.state, State::Success, "{info:?}");
                    assert_eq!(info.result, Some(json!(want)), "{info:?}");
                }
            });
        }
    });
    let all_done = started.elapsed();

    let metrics = Client::unix(&socket).metrics().unwrap();
    let submitted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_service_submitted_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("weft_service_submitted_total in /metrics");
    assert!(submitted >= tasks as f64, "{submitted} < {tasks}");

    let mut latencies: Vec<Duration> = per_thread.into_iter().flat_map(|(_, l)| l).collect();
    latencies.sort();
    let rate = tasks as f64 / submit_time.as_secs_f64();
    println!(
        "service load ({mode}): {tasks} tasks, {threads} client threads: submitted in {:.2?} \
         ({:.0} requests/s), all finished after {:.2?}; submit latency p50 {:.0?}, p99 {:.0?}, \
         max {:.0?}",
        submit_time,
        rate,
        all_done,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
    );

    rt.block_on(node.shutdown());
    if durable {
        let size = |f: &str| std::fs::metadata(dir.join("data").join(f)).map_or(0, |m| m.len());
        println!(
            "service load ({mode}): store after {tasks} tasks, {keep} results kept: \
             tasks.sqlite3 {} bytes (WAL {} bytes)",
            size("tasks.sqlite3"),
            size("tasks.sqlite3-wal")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    rate
}
