//! A weft worker for Python Celery: consumes the queue `celery` and runs `add(x, y)` and
//! `fail()`.
//!
//! The broker is `$BROKER_URL` if set (Redis, or RabbitMQ `amqp://...` with the feature
//! `amqp`), else the Redis at `$REDIS_URL` (default `redis://127.0.0.1:6379/0`), which is
//! also where results are kept.
//!
//! ```text
//! cargo run --features redis --example celery_worker
//! # in Python:
//! #   app = Celery(broker="redis://127.0.0.1:6379/0", backend="redis://127.0.0.1:6379/0")
//! #   app.send_task("add", args=[2, 3]).get()   # 5
//! #   app.send_task("fail").get()               # raises RuntimeError
//!
//! BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --features amqp --example celery_worker
//! # in Python: Celery(broker="amqp://guest:guest@127.0.0.1:5672//", backend="redis://...")
//! ```
//! Stops on Enter (putting back the messages it holds but has not run).

use weft::celery::Worker;
use weft::registry::Registry;

fn main() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let broker = std::env::var("BROKER_URL").unwrap_or_else(|_| redis.clone());
    let registry = Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("fail", |(): ()| Err::<(), _>("fail() always fails"));
    let mut worker = Worker::new(broker.as_str(), registry);
    if broker != redis {
        worker = worker.backend(redis.as_str());
    }
    let worker = worker
        .start()
        .unwrap_or_else(|e| panic!("cannot start the worker on {broker}: {e}"));
    println!(
        "weft celery worker on {broker} (results in {redis}), queue celery; press Enter to stop"
    );
    let _ = std::io::stdin().read_line(&mut String::new());
    let restored = worker.shutdown();
    println!("stopped; {restored} message(s) put back");
}
