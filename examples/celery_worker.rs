//! A weft worker for Python Celery: consumes the queue `celery` on the Redis at
//! `$REDIS_URL` (default `redis://127.0.0.1:6379/0`) and runs `add(x, y)` and `fail()`.
//!
//! ```text
//! cargo run --features redis --example celery_worker
//! # in Python:
//! #   app = Celery(broker="redis://127.0.0.1:6379/0", backend="redis://127.0.0.1:6379/0")
//! #   app.send_task("add", args=[2, 3]).get()   # 5
//! #   app.send_task("fail").get()               # raises RuntimeError
//! ```
//! Stops on Enter (putting back the messages it holds but has not run).

use weft::celery::Worker;
use weft::registry::Registry;

fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let registry = Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("fail", |_: Vec<i64>| Err::<(), _>("fail() always fails"));
    let worker = Worker::new(url.as_str(), registry)
        .start()
        .unwrap_or_else(|e| panic!("cannot start the worker on {url}: {e}"));
    println!("weft celery worker on {url}, queue celery; press Enter to stop");
    let _ = std::io::stdin().read_line(&mut String::new());
    let restored = worker.shutdown();
    println!("stopped; {restored} message(s) put back");
}
