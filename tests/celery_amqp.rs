//! Celery over AMQP against a real RabbitMQ and the real Python Celery (no mocks).
//!
//! RabbitMQ is found through `WEFT_AMQP_URL` (`.ci/rabbitmq.sh start` prints one), Python
//! (with celery, which brings kombu and py-amqp) through `WEFT_CELERY_PYTHON`. Outside CI a
//! missing one skips the test with a loud message; in CI (`CI` set) it is a failure. Each
//! test uses its own queue names, so the tests share one broker.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Map, Value};
use weft::celery::amqp::{amqp_to_json, Broker, DEAD_LETTER_QUEUE, REASON_HEADER};
use weft::celery::{ProtocolError, TaskMessage};

/// How long anything may take before the test calls it a failure.
const PATIENCE: Duration = Duration::from_secs(30);

fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => panic!("{var} is not set, and CI is"),
        _ => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: {var} is not set (.ci/rabbitmq.sh start prints \
                 WEFT_AMQP_URL) !!!!!!!!\n"
            );
            None
        }
    }
}

/// The broker URL and the Python interpreter, or `None` (skip).
fn setup() -> Option<(String, String)> {
    Some((required("WEFT_AMQP_URL")?, required("WEFT_CELERY_PYTHON")?))
}

fn unique(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{prefix}-{}-{}", std::process::id(), t.as_nanos())
}

/// Runs `script` with `args` under Python; its stdout, parsed as JSON.
fn python(py: &str, script: &str, args: &[&str]) -> Value {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Reads one message of a queue with py-amqp (kombu's transport) and prints it as JSON.
const PY_GET: &str = r#"
import json, sys
from kombu import Connection
url, queue = sys.argv[1], sys.argv[2]
with Connection(url) as conn:
    m = conn.default_channel.basic_get(queue, no_ack=True)
    assert m is not None, "queue empty"
    props = dict(m.properties)
    headers = props.pop("application_headers")
    print(json.dumps({"body": json.loads(m.body), "headers": headers, "properties": props,
                      "delivery_info": {k: m.delivery_info[k] for k in ("exchange", "routing_key")}}))
"#;

#[test]
fn weft_publishes_python_reads() {
    let Some((url, py)) = setup() else { return };
    let broker = Broker::connect(&url).unwrap();
    let queue = unique("amqp-w2p");
    broker.declare_queue(&queue, None).unwrap();
    let mut kwargs = Map::new();
    kwargs.insert("name".into(), json!("é"));
    let mut msg = TaskMessage::new("tasks.mixed", vec![json!(1), json!([2.5, null])], kwargs);
    msg.routing_key = queue.clone();
    msg.priority = 3;
    msg.timelimit = (Some(60.0), Some(1.5));
    msg.retries = 4;
    msg.reply_to = Some("reply-here".into());
    msg.extra_headers.insert("big".into(), json!(1i64 << 40));
    broker.publish_task(&msg).unwrap();

    let got = python(&py, PY_GET, &[&url, &queue]);
    assert_eq!(
        got["body"],
        json!([[1, [2.5, null]], {"name": "é"},
               {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
    );
    let h = &got["headers"];
    assert_eq!(h["id"], json!(msg.id));
    assert_eq!(h["task"], json!("tasks.mixed"));
    assert_eq!(h["lang"], json!("rs"));
    assert_eq!(h["retries"], json!(4));
    assert_eq!(h["timelimit"], json!([60, 1.5]));
    assert_eq!(h["eta"], Value::Null);
    assert_eq!(h["stamps"], json!({}));
    assert_eq!(h["big"], json!(1i64 << 40));
    let p = &got["properties"];
    assert_eq!(p["content_type"], json!("application/json"));
    assert_eq!(p["content_encoding"], json!("utf-8"));
    assert_eq!(p["delivery_mode"], json!(2));
    assert_eq!(p["priority"], json!(3));
    assert_eq!(p["correlation_id"], json!(msg.id));
    assert_eq!(p["reply_to"], json!("reply-here"));
    assert_eq!(
        got["delivery_info"],
        json!({"exchange": "", "routing_key": queue})
    );
    broker.close().unwrap();
}

/// Python's `send_task` over AMQP, read by weft's consumer; a pickle message next to it is
/// dead-lettered with its reason; an unacked delivery comes back, marked redelivered.
#[test]
fn python_sends_weft_decodes_dead_letters_and_redelivers() {
    let Some((url, py)) = setup() else { return };
    let broker = Broker::connect(&url).unwrap();
    let queue = unique("amqp-p2w");
    broker.declare_queue(&queue, None).unwrap();
    let sent = python(
        &py,
        r#"
import json, sys
from celery import Celery
from kombu import Connection
url, queue = sys.argv[1], sys.argv[2]
app = Celery("t", broker=url)
r = app.send_task("add", args=[2, 3], kwargs={"z": None}, queue=queue, priority=5,
                  countdown=30, time_limit=9, soft_time_limit=8)
with Connection(url) as conn:
    conn.Producer().publish({"x": 1}, routing_key=queue, serializer="pickle")
print(json.dumps({"id": r.id}))
"#,
        &[&url, &queue],
    );
    let mut consumer = broker.consume(&queue, 1).unwrap();
    let d = consumer.next(PATIENCE).unwrap().expect("Celery's message");
    assert!(!d.redelivered());
    let m = d.task().unwrap();
    assert_eq!(m.id, sent["id"].as_str().unwrap());
    assert_eq!((m.task.as_str(), m.lang.as_str()), ("add", "py"));
    assert_eq!(m.registry_args(), json!([2, 3, {"z": null}]));
    assert_eq!((m.priority, m.timelimit), (5, (Some(9.0), Some(8.0))));
    assert!(m.eta.is_some());
    assert_eq!(m.routing_key, queue);
    d.ack().unwrap();

    // The pickle message: refused unread, dead-lettered with the reason.
    let d = consumer
        .next(PATIENCE)
        .unwrap()
        .expect("the pickle message");
    let e = d.task().unwrap_err();
    assert_eq!(
        e,
        ProtocolError::ContentType("application/x-python-serialize".into())
    );
    broker.dead_letter(&d, &e.to_string()).unwrap();
    let mut dead = broker.consume(DEAD_LETTER_QUEUE, 0).unwrap();
    let found = loop {
        let d = dead.next(PATIENCE).unwrap().expect("the dead letter");
        d.ack().unwrap();
        let headers = d.properties().headers().clone().unwrap_or_default();
        let rk = headers
            .inner()
            .get("x-weft-original-routing-key")
            .map(amqp_to_json);
        if rk == Some(json!(queue)) {
            break headers;
        }
    };
    let reason = amqp_to_json(&found.inner()[REASON_HEADER]);
    assert!(
        reason.as_str().unwrap().contains("never pickle"),
        "{reason}"
    );

    // Unacked, then the channel closes: the broker delivers it again, redelivered.
    let mut msg = TaskMessage::new("add", vec![json!(1), json!(2)], Map::new());
    msg.routing_key = queue.clone();
    broker.publish_task(&msg).unwrap();
    let d = consumer.next(PATIENCE).unwrap().expect("weft's message");
    assert!(!d.redelivered());
    drop(d);
    consumer.close().unwrap();
    let mut again = broker.consume(&queue, 1).unwrap();
    let d = again.next(PATIENCE).unwrap().expect("the redelivery");
    assert!(d.redelivered());
    assert_eq!(d.task().unwrap().id, msg.id);
    d.ack().unwrap();
    broker.close().unwrap();
}

/// `app.control.ping()` and `revoke` from Python, answered by weft's pidbox.
#[test]
fn python_remote_control_reaches_weft_pidbox() {
    let Some((url, py)) = setup() else { return };
    let broker = Broker::connect(&url).unwrap();
    let hostname = unique("weft@amqp");
    let mut pidbox = broker.pidbox(&hostname).unwrap();
    let child = Command::new(&py)
        .arg("-c")
        .arg(
            r#"
import json, sys
from celery import Celery
url, host = sys.argv[1], sys.argv[2]
app = Celery("t", broker=url)
ping = app.control.ping(destination=[host], timeout=30)
revoke = app.control.revoke("some-task-id", destination=[host], reply=True, timeout=30)
print(json.dumps({"ping": ping, "revoke": revoke}))
"#,
        )
        .args([&url, &hostname])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Serve the two requests as a worker would.
    for expected in ["ping", "revoke"] {
        let req = pidbox.recv(PATIENCE).unwrap().expect("a request");
        assert_eq!(req.method(), expected);
        let answer = match req.method() {
            "ping" => json!({"ok": "pong"}),
            _ => {
                assert_eq!(req.arguments()["task_id"], json!("some-task-id"));
                json!({"ok": "tasks some-task-id flagged as revoked"})
            }
        };
        assert!(req.ticket().is_some());
        assert_eq!(req.reply_to().unwrap().0, "reply.celery.pidbox");
        pidbox.reply(&broker, &req, answer).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(got["ping"], json!([{ hostname.as_str(): {"ok": "pong"} }]));
    assert_eq!(
        got["revoke"],
        json!([{ hostname.as_str(): {"ok": "tasks some-task-id flagged as revoked"} }])
    );
    pidbox.close().unwrap();
    broker.close().unwrap();
}

/// A broker that takes the TCP connection and never answers (a listener that never
/// accepts) makes `Broker::connect` fail after `CONNECT_TIMEOUT`, not hang; the error says
/// so and does not show the password. Needs no RabbitMQ.
#[test]
fn connect_to_a_silent_broker_times_out() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("amqp://guest:secret@{}/%2f", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let err = Broker::connect(&url).unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= weft::celery::amqp::CONNECT_TIMEOUT && took < PATIENCE,
        "took {took:?}"
    );
    match &err {
        weft::celery::Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("not a timeout: {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("did not open a connection"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    drop(silent);
}
