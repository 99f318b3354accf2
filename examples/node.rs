//! A weft node with a few demo tasks, for trying the service and the `weft` CLI.
//!
//! ```sh
//! cargo run --release --features service --example node                     # default socket
//! cargo run --release --features service --example node -- --tcp 127.0.0.1:8080 [--token T]
//! ```
//!
//! Where the tasks are kept: `--data-dir DIR` (default `$WEFT_DATA_DIR`, else
//! `$XDG_STATE_HOME/weft`, else `~/.local/state/weft`; `--data-dir` wins over the
//! environment): a durable store, so accepted tasks survive a crash or a restart (those not
//! finished run again); or `--ephemeral`: in memory only. `--max-store-bytes N` caps the
//! store's file (then submissions are answered 507 until results expire).
//!
//! HTTP limits (durations: `10s`, `500ms`, `1m`, or plain seconds):
//! `--header-timeout D` (default 10s: a request's head must arrive within it),
//! `--body-timeout D` (default 30s: its body within it, else 408),
//! `--idle-timeout D` (default 60s: a kept-alive connection idle this long is closed),
//! `--max-connections N` (default 1024: past it the oldest idle connection is closed, or
//! the new one answered 503 if none is idle), `--max-body-bytes N` (default 1048576: a
//! larger body is answered 413).
//!
//! Memory for results: `--max-result-bytes N` (default 67108864: what finished records
//! may hold together, oldest evicted first; the newest stays readable whatever its size),
//! `--max-list-bytes N` (default 8388608: the most one `GET /v1/tasks` lists, then
//! `"truncated": true`).
//!
//! SIGINT or SIGTERM shuts it down within `--drain-timeout D` (default 30s); a second
//! signal ends it at once.
//!
//! With `--tcp ADDR`, open `http://ADDR/` in a browser for the dashboard (queues, workers,
//! throughput, recent tasks, a submit form, Cancel buttons); `weft watch` shows the same
//! figures in a terminal.
//!
//! Tasks: `add` (`[x, y]` → their sum), `sleep_ms` (`[ms]` → sleeps, returns `ms`),
//! `fail` (`[message]` → always fails with it), `flaky` (`[n]` → fails its first `n - 1`
//! attempts, retried up to 5 times with a 100 ms backoff), `panic` (panics).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Number, Value};
use weft::service::client::parse_duration;
use weft::service::{Node, Registry, TaskOptions};
use weft::RetryPolicy;

/// `x + y`, as an integer when both are integers (and the sum fits), else as a float.
fn add((x, y): (Number, Number)) -> Result<Value, String> {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        if let Some(s) = a.checked_add(b) {
            return Ok(json!(s));
        }
    }
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => Ok(json!(a + b)),
        _ => Err(format!("cannot add {x} and {y}")),
    }
}

fn registry() -> Registry {
    Registry::new()
        .task("add", add)
        .task("sleep_ms", |(ms,): (u64,)| {
            // Sleep in slices so a cancel or a time limit is noticed.
            let end = std::time::Instant::now() + Duration::from_millis(ms);
            while std::time::Instant::now() < end {
                if let Err(why) = weft::checkpoint() {
                    return Err(why.to_string());
                }
                std::thread::sleep(Duration::from_millis(10).min(end - std::time::Instant::now()));
            }
            Ok(ms)
        })
        .task("fail", |(message,): (String,)| Err::<(), _>(message))
        .task_with(
            "flaky",
            TaskOptions::new()
                .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(5)),
            {
                let calls = std::sync::Mutex::new(std::collections::HashMap::<u64, u32>::new());
                move |(n,): (u32,)| {
                    // Counts attempts per `n` (concurrent submissions with the same `n` share it).
                    let key = n as u64;
                    let mut calls = calls.lock().unwrap_or_else(|e| e.into_inner());
                    let c = calls.entry(key).or_insert(0);
                    *c += 1;
                    if *c < n {
                        Err(format!("attempt {c} of {n} failed"))
                    } else {
                        *c = 0;
                        Ok(format!("succeeded on attempt {n}"))
                    }
                }
            },
        )
        .task("panic", |(): ()| -> Result<(), String> {
            panic!("the panic task panicked")
        })
}

const USAGE: &str = "usage: node [--socket PATH | --tcp ADDR [--token TOKEN]] \
    [--data-dir DIR | --ephemeral] [--max-store-bytes N] \
    [--header-timeout D] [--body-timeout D] [--idle-timeout D] [--max-connections N] \
    [--max-body-bytes N] [--max-result-bytes N] [--max-list-bytes N] [--drain-timeout D]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut node = Node::new(registry());
    while let Some(a) = args.next() {
        if a == "--ephemeral" {
            node = node.ephemeral();
            continue;
        }
        match (a.as_str(), args.next()) {
            ("--data-dir", Some(d)) => node = node.data_dir(d),
            ("--max-store-bytes", Some(n)) => match n.parse() {
                Ok(n) => node = node.max_store_bytes(n),
                Err(e) => {
                    eprintln!("bad --max-store-bytes {n:?}: {e}");
                    return ExitCode::from(2);
                }
            },
            ("--tcp", Some(addr)) => match addr.parse() {
                Ok(addr) => node = node.tcp(addr),
                Err(e) => {
                    eprintln!("bad --tcp address {addr:?}: {e}");
                    return ExitCode::from(2);
                }
            },
            ("--token", Some(t)) => node = node.token(t),
            ("--socket", Some(p)) => node = node.unix(p),
            (
                flag @ ("--header-timeout" | "--body-timeout" | "--idle-timeout"
                | "--drain-timeout"),
                Some(d),
            ) => match parse_duration(&d) {
                Ok(d) => {
                    node = match flag {
                        "--header-timeout" => node.header_timeout(d),
                        "--body-timeout" => node.body_timeout(d),
                        "--idle-timeout" => node.idle_timeout(d),
                        _ => node.drain_timeout(d),
                    }
                }
                Err(e) => {
                    eprintln!("bad {flag} {d:?}: {e}");
                    return ExitCode::from(2);
                }
            },
            (
                flag @ ("--max-connections" | "--max-body-bytes" | "--max-result-bytes"
                | "--max-list-bytes"),
                Some(n),
            ) => match n.parse() {
                Ok(n) => {
                    node = match flag {
                        "--max-connections" => node.max_connections(n),
                        "--max-body-bytes" => node.max_body_bytes(n),
                        "--max-result-bytes" => node.max_result_bytes(n),
                        _ => node.max_list_bytes(n),
                    }
                }
                Err(e) => {
                    eprintln!("bad {flag} {n:?}: {e}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let ready = |at: &weft::service::Endpoint| {
        println!("weft node listening on {at} (tasks: add, sleep_ms, fail, flaky, panic); Ctrl-C stops it");
    };
    match node.run_with(ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft node: {e}");
            ExitCode::FAILURE
        }
    }
}
