use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// Lists handed over while the tracker runs are watched: once it has armed them, a push
/// to one of them alone ends a consumer's wait (a Redis at `WEFT_REDIS_URL`; skipped
/// without one, a failure in CI).
#[test]
fn lists_handed_over_are_watched() {
    let url = match std::env::var("WEFT_REDIS_URL") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var_os("CI").is_some() => panic!("WEFT_REDIS_URL is not set, and CI is"),
        _ => {
            eprintln!("\n!!!!!!!! SKIPPED: WEFT_REDIS_URL is not set !!!!!!!!\n");
            return;
        }
    };
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (old, new) = (format!("weft-watch-old-{t}"), format!("weft-watch-new-{t}"));
    let client = redis::Client::open(url.as_str()).unwrap();
    let wake = Arc::new(Wake::new());
    let stop = Arc::new(AtomicBool::new(false));
    let tracker = {
        let (source, wake, stop) = (Source::from(client.clone()), wake.clone(), stop.clone());
        let keys = vec![old.clone()];
        std::thread::spawn(move || track_on(&source, &keys, &wake, || stop.load(Ordering::Acquire)))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let armed_on_new = || wake.keys.lock().is_none() && wake.state.lock().armed;
    wake.watch(vec![new.clone()]);
    // Waits as a consumer does (each asks for an arm) until the new list is armed.
    while !(wake.is_tracking() && armed_on_new()) {
        assert!(Instant::now() < deadline, "the new list was never armed");
        wake.wait(wake.generation(), Duration::from_millis(100));
    }
    let seen = wake.generation();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("LPUSH")
        .arg(&new)
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    // Armed, so no arm ends this wait: only the report of the push.
    wake.wait(seen, Duration::from_secs(20));
    assert_ne!(wake.generation(), seen, "the push was not reported");
    stop.store(true, Ordering::Release);
    tracker.join().unwrap();
    let _: () = redis::cmd("DEL").arg(&new).query(&mut conn).unwrap();
}
