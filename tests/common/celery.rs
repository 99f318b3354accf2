//! Helpers of the Celery interop suites (`tests/celery.rs`, `tests/celery_canvas.rs`).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The value of `var`; `None` (with a loud SKIPPED line) when it is not set, a panic when
/// it is not set and `CI` is: CI must run these suites.
pub fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => panic!("{var} is not set, and CI is"),
        _ => {
            eprintln!("\n!!!!!!!! SKIPPED: {var} is not set (run .ci/run, or set it) !!!!!!!!\n");
            None
        }
    }
}

/// Where a Celery suite runs: the broker (`WEFT_CELERY_BROKER`, Redis or RabbitMQ; default
/// the Redis of `WEFT_REDIS_URL`), the Redis result backend (`WEFT_REDIS_URL`) and the
/// Python with Celery (`WEFT_CELERY_PYTHON`).
pub struct Brokers {
    pub broker: String,
    pub backend: String,
    /// The broker is RabbitMQ.
    pub amqp: bool,
    pub python: String,
}

/// The broker URL (`WEFT_CELERY_BROKER`, else the backend's), the Redis backend URL
/// (`WEFT_REDIS_URL`) and whether the broker is RabbitMQ; `None` (skipped) without a
/// backend, a panic for a RabbitMQ broker in a build without the feature `amqp`.
pub fn broker_and_backend() -> Option<(String, String, bool)> {
    let backend = required("WEFT_REDIS_URL")?;
    let broker = std::env::var("WEFT_CELERY_BROKER")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| backend.clone());
    let amqp = broker.starts_with("amqp");
    if amqp && !cfg!(feature = "amqp") {
        panic!("WEFT_CELERY_BROKER is {broker}: run with --features amqp");
    }
    Some((broker, backend, amqp))
}

/// The [`Brokers`] the environment names; `None` (skipped) where it names none, a panic
/// for a RabbitMQ broker in a build without the feature `amqp`.
pub fn brokers() -> Option<Brokers> {
    let (broker, backend, amqp) = broker_and_backend()?;
    let python = required("WEFT_CELERY_PYTHON")?;
    Some(Brokers {
        broker,
        backend,
        amqp,
        python,
    })
}

/// `tests/fixtures/celery`: the Python side of the suites and the golden messages.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery")
}

/// A name no other run uses: `prefix-<pid>-<nanoseconds>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

/// `<pid>-<nanoseconds>`.
pub fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

/// A child process (a worker) ended when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    /// A warm shutdown (SIGTERM: Celery finishes and acknowledges what it holds), then
    /// SIGKILL if it is still there after 10 s.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return; // already ended (killed by the test)
        }
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let child = &mut self.0;
        std::thread::scope(|s| {
            let (exited, exit) = std::sync::mpsc::channel();
            s.spawn(move || {
                let _ = child.wait();
                let _ = exited.send(());
            });
            if exit.recv_timeout(Duration::from_secs(10)).is_err() {
                // The waiting thread reaps it once it is gone.
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
    }
}

/// The command of a Python Celery worker (`pytasks.py`, `pool` e.g. `--pool solo`) of
/// `python`, consuming `q` under a name of its own (on RabbitMQ a worker's pidbox queue is
/// exclusive to its name), on `broker` with results in `backend`, output discarded.
pub fn python_worker_command(
    python: &str,
    broker: &str,
    backend: &str,
    q: &str,
    pool: &[&str],
) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "celery", "-A", "pytasks", "worker"])
        .args(pool)
        .args(["-Q", q, "-n", &format!("{}@%h", unique("py"))])
        .args([
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ])
        .args(["--loglevel", "WARNING"])
        .current_dir(fixtures())
        .env("WEFT_REDIS_URL", backend)
        .env("WEFT_CELERY_BROKER", broker)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Starts the test `name` of this same test binary as a child process with `envs` (a
/// worker that prints `ready` once it consumes, then serves until killed), and waits for
/// that line; the rest of its output is read and dropped.
pub fn spawn_ready_child(name: &str, envs: &[(&str, &str)]) -> Killed {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        match out.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => panic!("the child worker ended: {}", String::from_utf8_lossy(&seen)),
        }
    }
    // The rest is drained, so that the child never writes to a closed pipe (its test
    // harness would fail it).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Killed(child)
}

/// `rabbitmqctl ARGS` against the test broker (`.ci/rabbitmq.sh ctl DIR`, its state in
/// `WEFT_RABBITMQ_DIR`); its stdout.
pub fn rabbitmqctl(dir: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/rabbitmq.sh"))
        .args(["ctl", dir])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every queue of the test broker: its name, its messages ready and unacknowledged.
pub fn rabbit_queues(dir: &str) -> Vec<(String, u64, u64)> {
    rabbitmqctl(
        dir,
        &[
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
    )
    .lines()
    .filter_map(|l| {
        let mut f = l.split_whitespace();
        let name = f.next()?.to_owned();
        Some((name, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
    .collect()
}

/// Runs `interop_send.py` (Python Celery's client: `add`, `add` with kwargs, 1,000 tasks,
/// `fail`, an unknown name) against a worker consuming `q` on `broker`, with `envs`;
/// checks what every suite expects of it and returns everything it saw.
#[cfg(feature = "redis")]
pub fn python_sends_interop(
    python: &str,
    broker: &str,
    backend: &str,
    q: &str,
    envs: &[(&str, &str)],
) -> serde_json::Value {
    use serde_json::json;
    let out = Command::new(python)
        .arg(fixtures().join("interop_send.py"))
        .args([broker, backend, q])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["add"], json!(5));
    assert_eq!(seen["add_kwargs"], json!(9));
    assert_eq!(
        seen["many"],
        json!((0..1000).map(|i| i * 2).collect::<Vec<_>>())
    );
    assert_eq!(seen["fail"], json!(["RuntimeError", "fail() always fails"]));
    seen
}
