//! The node's event stream (`GET /v1/events`) through the public API: a task's changes
//! come in order, `stats` at once and every second; a reader that falls behind is dropped
//! with a `dropped` event instead of growing the node's memory; the stream needs the token.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use weft::service::client::{State, SubmitOptions};
use weft::service::{Client, Endpoint, Node, Registry, RunningNode};

fn start(rt: &tokio::runtime::Runtime, f: impl FnOnce(Node) -> Node) -> (RunningNode, Endpoint) {
    let registry = Registry::new().task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y));
    let node = rt
        .block_on(f(Node::new(registry).ephemeral().workers(2)).start())
        .unwrap();
    let at = node.endpoint().clone();
    (node, at)
}

fn tcp_url(at: &Endpoint) -> String {
    match at {
        Endpoint::Tcp(a) => format!("http://{a}"),
        other => panic!("not TCP: {other}"),
    }
}

#[test]
fn a_task_s_changes_come_in_order_with_stats_every_second() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (node, at) = start(&rt, |n| n.tcp("127.0.0.1:0".parse().unwrap()));
    let client = Client::tcp(&tcp_url(&at)).unwrap();
    let mut events = client.events().unwrap();
    let first = events.next().unwrap().unwrap();
    assert_eq!(first.kind, "stats", "a stats event comes first: {first:?}");
    assert_eq!(first.data["workers"], 2);
    let submitter = Client::tcp(&tcp_url(&at)).unwrap();
    let task = submitter
        .submit("add", json!([2, 3]), SubmitOptions::new())
        .unwrap();
    let mut states = Vec::new();
    let mut stats = 0;
    let started = Instant::now();
    for e in events.by_ref() {
        let e = e.unwrap();
        match e.kind.as_str() {
            "task" if e.data["id"] == json!(task.id) => {
                let state: State = serde_json::from_value(e.data["state"].clone()).unwrap();
                assert!(e.data.get("result").is_none(), "no result in events: {e:?}");
                states.push(state);
            }
            "stats" => stats += 1,
            _ => {}
        }
        if stats >= 2 && states.last() == Some(&State::Success) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{states:?}, {stats} stats"
        );
    }
    // In order, each once; the acceptance's PENDING is left out when a worker started the
    // task before the node announced it.
    let expected = [State::Pending, State::Started, State::Success];
    assert!(states == expected || states == expected[1..], "{states:?}");
    let done = submitter.status(&task.id, None).unwrap();
    assert_eq!(done.result, Some(json!(5)));
    assert!(
        done.started_at_ms.is_some() && done.args == Some(json!([2, 3])),
        "{done:?}"
    );
    drop(events);
    rt.block_on(node.shutdown());
}

#[test]
fn the_stream_needs_the_token() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (node, at) = start(&rt, |n| n.tcp("127.0.0.1:0".parse().unwrap()).token("t0k"));
    let err = Client::tcp(&tcp_url(&at)).unwrap().events().err().unwrap();
    assert_eq!(err.status(), Some(401), "{err}");
    let ok = Client::tcp(&tcp_url(&at)).unwrap().with_token("t0k");
    assert_eq!(ok.events().unwrap().next().unwrap().unwrap().kind, "stats");
    // The dashboard's page and assets need no token; unknown paths are still 404 JSON.
    let Endpoint::Tcp(addr) = at else {
        unreachable!()
    };
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let page = get("/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("content-type: text/html") && page.contains("<select id=\"task-name\">"));
    assert!(
        page.contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    assert!(get("/dashboard.js").starts_with("HTTP/1.1 200"));
    assert!(get("/dashboard.css").starts_with("HTTP/1.1 200"));
    let missing = get("/nope.html");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(
        missing.contains("{\"error\":\"no such endpoint: GET /nope.html\"}"),
        "{missing}"
    );
    let health = get("/healthz");
    assert!(health.contains("\"token_required\":true"), "{health}");
    rt.block_on(node.shutdown());
}

#[test]
fn a_reader_that_falls_behind_is_dropped() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("weft-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (node, _) = start(&rt, |n| n.unix(dir.join("node.sock")).max_results(100));
    // A reader that asks and then reads nothing: its socket fills.
    let mut slow = std::os::unix::net::UnixStream::connect(dir.join("node.sock")).unwrap();
    slow.write_all(b"GET /v1/events HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let client = Client::unix(dir.join("node.sock")).with_busy_retries(1000);
    // Each task is three events of about 200 bytes: far more than the channel's 1,024
    // frames and the socket's buffers.
    for i in 0..5000 {
        client
            .submit("add", json!([i, 1]), SubmitOptions::new())
            .unwrap();
    }
    let mut all = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("event: dropped"),
        "the slow reader was not dropped"
    );
    assert!(text.contains("\"reason\":\"slow reader\""));
    // Dropped, it was sent far less than everything.
    assert!(all.len() < 2_000_000, "{} bytes", all.len());
    // Others still get events.
    let mut events = client.events().unwrap();
    assert_eq!(events.next().unwrap().unwrap().kind, "stats");
    drop(events);
    rt.block_on(node.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}
