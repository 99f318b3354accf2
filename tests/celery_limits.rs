//! Rate limits shared by weft Celery workers (`TaskOptions::shared_rate_limit`) against a
//! real Redis (`WEFT_REDIS_URL`): three worker processes sharing 20 starts a second keep
//! it in every one-second window (by the results' `date_done`), and when one is killed
//! (`kill -9`) mid-run the others keep the limit and take over its share.

mod common;

use std::time::{Duration, Instant};

use chrono::DateTime;
use common::celery::{required, spawn_ready_child, unique};
use serde_json::{json, Value};
use weft::celery::{AsyncResult, Client, SendOptions, Worker};
use weft::registry::{RateLimit, Registry, TaskOptions};
use weft::Priority;

const HANG: Duration = Duration::from_secs(120);

/// Not a test by itself: a worker process of [`three_workers_share_one_limit`], started
/// by it as a child of this same test binary (with `WEFT_LIMIT_QUEUE` set); returns at
/// once otherwise.
#[test]
fn child_limited_worker() {
    let Ok(queue) = std::env::var("WEFT_LIMIT_QUEUE") else {
        return;
    };
    let url = std::env::var("WEFT_REDIS_URL").unwrap();
    let task = std::env::var("WEFT_LIMIT_TASK").unwrap();
    let registry = Registry::new().task_with(
        task,
        TaskOptions::new().shared_rate_limit(RateLimit::per_second(20)),
        |(x,): (i64,)| Ok::<_, String>(x),
    );
    let worker = Worker::new(url.as_str(), registry)
        .queue(queue, Priority::Normal)
        .workers(2)
        // A killed worker's messages come back to the others within seconds.
        .acks_late(true)
        .visibility_timeout(Duration::from_secs(3))
        .restore_interval(Duration::from_secs(1))
        .start()
        .unwrap();
    println!("ready");
    loop {
        std::thread::park();
        let _ = &worker;
    }
}

/// Sends `n` tasks `task(i)` to `queue`.
fn send_all(client: &Client, task: &str, queue: &str, n: usize) -> Vec<AsyncResult> {
    (0..n)
        .map(|i| {
            let options = SendOptions {
                queue: Some(queue.to_owned()),
                ..SendOptions::default()
            };
            client
                .send_task(task, vec![json!(i)], Default::default(), options)
                .unwrap()
        })
        .collect()
}

/// The most completions in any one-second window (`times` sorted, in ms).
fn busiest_second(times: &[i64]) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= 1000 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[test]
fn three_workers_share_one_limit() {
    let Some(url) = required("WEFT_REDIS_URL") else {
        return;
    };
    let queue = unique("limited");
    // A task name of its own: the schedule in Redis is kept by name.
    let task = unique("throttled");
    let envs = [
        ("WEFT_REDIS_URL", url.as_str()),
        ("WEFT_LIMIT_QUEUE", queue.as_str()),
        ("WEFT_LIMIT_TASK", task.as_str()),
    ];
    let mut workers: Vec<_> = (0..3)
        .map(|_| spawn_ready_child("child_limited_worker", &envs))
        .collect();
    let client = Client::new(&url).unwrap();
    let n = 200;
    let sent = Instant::now();
    let results = send_all(&client, &task, &queue, n);
    // Kill one worker mid-run.
    let mut done = 0;
    while done < 60 {
        assert!(sent.elapsed() < HANG, "{done} of 60 results in {HANG:?}");
        done = results
            .iter()
            .filter(|r| matches!(r.try_get(), Ok(Some(_))))
            .count();
    }
    let mut killed = workers.remove(0);
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let killed_at = sent.elapsed();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.get_value(HANG).unwrap(), json!(i), "task {i}");
    }
    let all = sent.elapsed();
    // Completion times from the results' date_done.
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut times: Vec<i64> = results
        .iter()
        .map(|r| {
            let raw: String = redis::cmd("GET")
                .arg(format!("celery-task-meta-{}", r.id()))
                .query(&mut c)
                .unwrap();
            let meta: Value = serde_json::from_str(&raw).unwrap();
            let done = meta["date_done"].as_str().unwrap().to_owned();
            let done = if done.ends_with('Z') || done.contains('+') {
                done
            } else {
                format!("{done}+00:00")
            };
            DateTime::parse_from_rfc3339(&done)
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    times.sort();
    let busiest = busiest_second(&times);
    let span = (times[n - 1] - times[0]) as f64 / 1000.0;
    println!(
        "shared limit 20/s, 3 workers (one killed after {killed_at:.1?}): {n} tasks done in {all:.1?}, \
         completions span {span:.1} s, busiest one-second window {busiest}"
    );
    assert!(
        busiest <= 24,
        "{busiest} completions in one second (limit 20/s)"
    );
    // The survivors took over the killed worker's share: 200 starts at 20 a second take
    // 10 s; its messages came back after the 3 s visibility timeout at most.
    assert!(span >= 9.0, "faster than the limit: {span} s");
    assert!(
        span <= 10.0 + 3.0 + 4.0,
        "the others did not keep the pace: {span} s"
    );
}

/// BENCHMARKS.md: Redis round trips per task of the shared limiter (script calls over
/// tasks run), one in-process worker, at 20/s and at 200/s, with a backlog.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn shared_limit_round_trips() {
    let Some(url) = required("WEFT_REDIS_URL") else {
        return;
    };
    for (rate, n) in [(20u32, 100usize), (200, 1000)] {
        let queue = unique("limited-bench");
        let task = unique("throttled-bench");
        let registry = Registry::new().task_with(
            task.as_str(),
            TaskOptions::new().shared_rate_limit(RateLimit::per_second(rate)),
            |(x,): (i64,)| Ok::<_, String>(x),
        );
        let worker = Worker::new(url.as_str(), registry)
            .queue(queue.as_str(), Priority::Normal)
            .workers(2)
            .start()
            .unwrap();
        let client = Client::new(&url).unwrap();
        let started = Instant::now();
        let results = send_all(&client, &task, &queue, n);
        for r in &results {
            r.get_value(HANG).unwrap();
        }
        let took = started.elapsed();
        let calls = worker.shared_limit_calls();
        worker.shutdown();
        println!(
            "shared limit {rate}/s: {n} tasks in {took:.2?} ({:.1}/s), {calls} script calls: {:.3} round trips per task",
            n as f64 / took.as_secs_f64(),
            calls as f64 / n as f64
        );
    }
}
