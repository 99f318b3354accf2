//! A weft worker for Python Celery: consumes the queue `celery` and runs `add(x, y)`,
//! `mul(x, y)`, `xsum(numbers)`, `fail()` (always fails), `sleep_ms(ms)` and
//! `throttled(x)` (returns `x`; at most 20 starts a second across every weft worker on the
//! same Redis: a shared rate limit), so Celery workflows (chain, group, chord, link,
//! chunks, map) run on it as on a Python worker.
//!
//! The broker is `$BROKER_URL` if set (Redis, or RabbitMQ `amqp://...` with the feature
//! `amqp`), else the Redis at `$REDIS_URL` (default `redis://127.0.0.1:6379/0`), which is
//! also where results are kept. On RabbitMQ, `$WEFT_QUEUE_TYPE` (`classic`, the default,
//! or `quorum`) says how the queue is declared: `quorum` as Celery 5.5+ with
//! `task_default_queue_type="quorum"` and `task_default_exchange_type="topic"` (a quorum
//! queue, native delayed delivery for countdown and ETA tasks). With `$WEFT_SENTINEL_MASTER` set, the Redis URLs may be
//! Redis Sentinel ones (`sentinel://host:26379;sentinel://host:26380/0`) and that is the
//! master's name (Celery's `broker_transport_options={'master_name': ...}`): the worker
//! follows a failover without a restart. `$WEFT_TASK_EVENTS=1` sends task events from the
//! start (Celery's `celery worker -E`); without it they start when Flower (or `celery
//! control enable_events`) turns them on. Remote control (`celery inspect`, `celery
//! control`, Flower's actions) reaches it; a `shutdown` broadcast ends it as SIGTERM does.
//!
//! ```text
//! cargo run --features redis --example celery_worker
//! # in Python:
//! #   app = Celery(broker="redis://127.0.0.1:6379/0", backend="redis://127.0.0.1:6379/0")
//! #   app.send_task("add", args=[2, 3]).get()                            # 5
//! #   chain(app.signature("add", (1, 2)), app.signature("mul", (10,)))().get()   # 30
//! #   app.send_task("fail").get()                                        # raises RuntimeError
//!
//! BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --features amqp --example celery_worker
//! # in Python: Celery(broker="amqp://guest:guest@127.0.0.1:5672//", backend="redis://...")
//!
//! WEFT_QUEUE_TYPE=quorum BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --features amqp --example celery_worker
//! # in Python, as above, and: app.conf.task_default_queue_type = "quorum"
//! #                           app.conf.task_default_exchange_type = "topic"
//! #                           app.conf.broker_transport_options = {"confirm_publish": True}
//!
//! REDIS_URL="sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380/0" WEFT_SENTINEL_MASTER=mymaster \
//!   cargo run --features redis --example celery_worker
//! # in Python: app = Celery(broker=url, backend=url)
//! #   app.conf.broker_transport_options = {"master_name": "mymaster"}
//! #   app.conf.result_backend_transport_options = {"master_name": "mymaster"}
//! ```
//! Prints one line starting `weft celery worker on <broker>` once it consumes, then runs
//! until SIGINT or SIGTERM: the first is a warm shutdown (stops taking messages, finishes
//! the running tasks, puts back the messages of those that did not start), a second one
//! during it a cold one (returns without waiting for the running tasks).

use std::time::Duration;

use weft::celery::Worker;
use weft::registry::{RateLimit, Registry, TaskOptions};

fn main() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let broker = std::env::var("BROKER_URL").unwrap_or_else(|_| redis.clone());
    let registry = Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("mul", |(x, y): (i64, i64)| Ok::<_, String>(x * y))
        .task("xsum", |(numbers,): (Vec<i64>,)| {
            Ok::<_, String>(numbers.iter().sum::<i64>())
        })
        .task("fail", |(): ()| Err::<(), _>("fail() always fails"))
        .task("sleep_ms", |(ms,): (u64,)| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok::<_, String>(ms)
        })
        // At most 20 starts a second across every weft worker on this Redis.
        .task_with(
            "throttled",
            TaskOptions::new().shared_rate_limit(RateLimit::per_second(20)),
            |(x,): (serde_json::Value,)| Ok::<_, String>(x),
        );
    let mut worker = Worker::new(broker.as_str(), registry);
    if let Ok(master) = std::env::var("WEFT_SENTINEL_MASTER") {
        worker = worker.sentinel_master(master);
    }
    if broker != redis {
        worker = worker.backend(redis.as_str());
    }
    worker = queue_type(worker);
    // Celery's `-E`: task events from the start (Flower's `enable_events` turns them on
    // anyway); worker events (heartbeats) are always sent.
    if std::env::var("WEFT_TASK_EVENTS").is_ok_and(|v| v == "1") {
        worker = worker.task_events(true);
    }
    let worker = worker
        .start()
        .unwrap_or_else(|e| panic!("cannot start the worker on {broker}: {e}"));
    println!("weft celery worker on {broker} (results in {redis}), queue celery; SIGINT or SIGTERM stops it");
    match worker.wait_for_signal() {
        Ok(stopped) => eprintln!("{stopped}"),
        Err(e) => panic!("cannot wait for signals: {e}"),
    }
}

/// `$WEFT_QUEUE_TYPE` (`classic` or `quorum`; RabbitMQ only).
#[cfg(feature = "amqp")]
fn queue_type(worker: Worker) -> Worker {
    match std::env::var("WEFT_QUEUE_TYPE") {
        Ok(t) => worker.queue_type(t.parse().unwrap_or_else(|e| panic!("WEFT_QUEUE_TYPE: {e}"))),
        Err(_) => worker,
    }
}

/// Without the feature `amqp` there are no queue types (Redis).
#[cfg(not(feature = "amqp"))]
fn queue_type(worker: Worker) -> Worker {
    worker
}
