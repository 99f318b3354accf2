//! The node's dashboard (`GET /`) in a real headless Chromium, driven through WebDriver by
//! `tests/fixtures/dashboard/drive.py` (Selenium, from `WEFT_BROWSER_PYTHON`; Debian's
//! `chromium` and `chromium-driver`): once on a node without a token, once on one with a
//! token the page asks for. Screenshots go to `target/dashboard/`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use weft::service::{Endpoint, Node, Registry};

/// The Python with Selenium; `None` (skipped, loudly) when unset, a panic when unset in CI.
fn browser_python() -> Option<String> {
    match std::env::var("WEFT_BROWSER_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var_os("CI").is_some() => {
            panic!("WEFT_BROWSER_PYTHON is not set, and CI is")
        }
        _ => {
            eprintln!("\n!!!!!!!! SKIPPED: WEFT_BROWSER_PYTHON is not set (run .ci/run, or set it) !!!!!!!!\n");
            None
        }
    }
}

fn registry() -> Registry {
    Registry::new()
        .task("add", |(x, y): (i64, i64)| Ok::<_, String>(x + y))
        .task("fail", |(message,): (String,)| Err::<(), _>(message))
        .task("sleep_ms", |(ms,): (u64,)| {
            // Cooperative: stops when asked (a cancel), checking every 10 ms.
            let end = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < end {
                weft::checkpoint().map_err(|why| why.to_string())?;
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok::<_, String>(ms)
        })
        .task("<b>bold</b>", |(s,): (String,)| Ok::<_, String>(s))
}

fn drive(token: Option<&str>) {
    let Some(python) = browser_python() else {
        return;
    };
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/dashboard")
        .join(if token.is_some() { "token" } else { "open" });
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut node = Node::new(registry())
        .ephemeral()
        .workers(2)
        .tcp("127.0.0.1:0".parse().unwrap());
    if let Some(t) = token {
        node = node.token(t);
    }
    let node = rt.block_on(node.start()).unwrap();
    let Endpoint::Tcp(addr) = node.endpoint().clone() else {
        unreachable!()
    };
    let out = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dashboard/drive.py"))
        .arg(format!("http://{addr}"))
        .arg(token.unwrap_or(""))
        .arg(&shots)
        .output()
        .unwrap();
    rt.block_on(node.shutdown());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "the browser run failed:\n{stdout}\n{stderr}"
    );
    assert!(shots.join("dashboard.png").exists());
}

#[test]
fn the_dashboard_works_in_a_browser() {
    drive(None);
}

#[test]
fn the_dashboard_asks_for_the_token_and_sends_it() {
    drive(Some("s3cret-token"));
}
