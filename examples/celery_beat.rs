//! A Celery beat: sends `add(2, 3)` every second to the queue `celery`, as Python's
//! `celery beat` with `beat_schedule = {"add": {"task": "add", "schedule": 1.0,
//! "args": (2, 3)}}` would; any Celery worker consuming `celery` (a weft one such as
//! `examples/celery_worker.rs`, or Python's) runs them. Start as many as you like: one
//! sends each tick, and if it dies another takes over within about 3.5 s.
//!
//! The broker is `$BROKER_URL` if set (Redis, or RabbitMQ `amqp://...` with the feature
//! `amqp`, then with its lease in the Redis at `$REDIS_URL`), else the Redis at `$REDIS_URL`
//! (default `redis://127.0.0.1:6379/0`); `WEFT_SENTINEL_MASTER` names the master behind a
//! `sentinel://` URL. Runs until SIGINT or SIGTERM.
//!
//! ```sh
//! cargo run --features redis --example celery_beat
//! ```

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use weft::celery::beat::{Beat, Entry, Schedule};

fn main() -> ExitCode {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let broker = std::env::var("BROKER_URL").unwrap_or_else(|_| redis.clone());
    let every_second = match Schedule::every(Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("celery_beat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut beat = Beat::new(&broker)
        .entry(Entry::new("add-every-second", "add", every_second).args([json!(2), json!(3)]));
    if broker.starts_with("amqp") {
        beat = beat.backend(&redis);
    }
    if let Ok(master) = std::env::var("WEFT_SENTINEL_MASTER") {
        beat = beat.sentinel_master(&master);
    }
    println!("weft beat: sending add(2, 3) every second to the queue celery; Ctrl-C stops it");
    match beat.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("celery_beat: {e}");
            ExitCode::FAILURE
        }
    }
}
