//! Load test of the node-local service through `weft::service::Client` (ignored by default).
//!
//! Starts a node on a temporary Unix socket with one task, `add`, then has
//! `WEFT_LOAD_THREADS` client threads (default 8), each with its own `Client`, submit
//! `WEFT_LOAD_TASKS` tiny tasks in all (default 100 000). Every task is accounted for: every
//! id is distinct, and every task reads `SUCCESS` with the right sum. Prints the submit
//! rate and the p50/p99 submit latency.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use weft::service::client::{State, SubmitOptions};
use weft::service::{Client, Node, Registry};

/// A node that keeps its tasks in memory (tests never touch the user's state directory).
fn ephemeral_node(registry: Registry) -> Node {
    Node::new(registry).ephemeral()
}

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
#[ignore = "load test: run with --ignored --release (WEFT_LOAD_TASKS, WEFT_LOAD_THREADS)"]
fn hundred_thousand_tiny_tasks() {
    let tasks = env_usize("WEFT_LOAD_TASKS", 100_000);
    let threads = env_usize("WEFT_LOAD_THREADS", 8).max(1);

    let dir = std::env::temp_dir().join(format!("weft-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("weft.sock");

    let registry = Registry::new().task("add", |(a, b): (u64, u64)| Ok::<_, String>(a + b));
    // The node serves from this runtime's threads while the test drives it from its own.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = rt
        .block_on(
            ephemeral_node(registry)
                .unix(&socket)
                .max_in_flight(tasks.max(1))
                // Every result must still be there when the test reads it back.
                .max_results(tasks.max(1))
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
    std::thread::scope(|s| {
        for (ids, _) in &per_thread {
            let socket = &socket;
            s.spawn(move || {
                let client = Client::unix(socket);
                for (id, want) in ids {
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
    println!(
        "service load: {tasks} tasks, {threads} client threads: submitted in {:.2?} \
         ({:.0} requests/s), all SUCCESS after {:.2?}; submit latency p50 {:.0?}, p99 {:.0?}, \
         max {:.0?}",
        submit_time,
        tasks as f64 / submit_time.as_secs_f64(),
        all_done,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
    );

    rt.block_on(node.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}
