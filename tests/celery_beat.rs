//! `weft::celery::beat` against a real Redis (`WEFT_REDIS_URL`) and Python Celery
//! (`WEFT_CELERY_PYTHON`): three beat processes, the sender killed (`kill -9`) twice and
//! another paused past its lease, send each tick once with no long gap; a restarted beat
//! sends one catch-up; crontab ticks arrive on time; a Python worker runs what beat sends;
//! bad schedules are refused.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::celery::{python_worker_command, required, spawn_ready_child, unique, Killed};
use serde_json::json;
use weft::celery::beat::{Beat, Entry, Schedule};
use weft::celery::TaskMessage;

/// The longest any wait here may take before the test fails.
const HANG: Duration = Duration::from_secs(60);

fn redis_url() -> Option<String> {
    required("WEFT_REDIS_URL")
}

fn conn(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// Every message pushed on `queue`, with when it arrived, popped as it comes.
struct Collector {
    seen: Arc<Mutex<Vec<(Instant, TaskMessage)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn start(url: &str, queue: &str) -> Collector {
        let seen: Arc<Mutex<Vec<(Instant, TaskMessage)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = conn(url);
        let (s, st, q) = (seen.clone(), stop.clone(), queue.to_owned());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let got: Option<(String, Vec<u8>)> =
                    redis::cmd("BRPOP").arg(&q).arg(0.2).query(&mut c).unwrap();
                if let Some((_, raw)) = got {
                    let msg = TaskMessage::decode(&raw).expect("a Celery message");
                    s.lock().unwrap().push((Instant::now(), msg));
                }
            }
        });
        Collector {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits (up to `HANG`) until `n` messages arrived in all.
    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + HANG;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages in {HANG:?}",
                self.count()
            );
            std::thread::yield_now();
        }
    }

    fn finish(mut self) -> Vec<(Instant, TaskMessage)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// The gaps between consecutive arrivals.
fn gaps(seen: &[(Instant, TaskMessage)]) -> Vec<Duration> {
    seen.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

/// Not a test by itself: a beat process of
/// [`three_beats_send_each_tick_once_through_kill_9_and_a_pause`], started by it as a child
/// of this same test binary (with `WEFT_BEAT_PREFIX` set); returns at once otherwise.
#[test]
fn child_beat() {
    let Ok(prefix) = std::env::var("WEFT_BEAT_PREFIX") else {
        return;
    };
    let url = std::env::var("WEFT_REDIS_URL").unwrap();
    let queue = std::env::var("WEFT_BEAT_QUEUE").unwrap();
    let beat = Beat::new(&url)
        .key_prefix(prefix)
        .entry(
            Entry::new(
                "tick",
                "py.mul",
                Schedule::every(Duration::from_secs(1)).unwrap(),
            )
            .args([json!(6), json!(7)])
            .queue(queue),
        )
        .start()
        .unwrap();
    println!("ready");
    // Until killed (SIGKILL) or ended by the harness's SIGTERM.
    loop {
        std::thread::park();
        let _ = &beat;
    }
}

/// The pid in the lease's value (`<pid>@<host>-<id>:<fence>`), or `None` while free.
fn leader_pid(c: &mut redis::Connection, prefix: &str) -> Option<u32> {
    let v: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}lease"))
        .query(c)
        .unwrap();
    v.and_then(|v| v.split('@').next()?.parse().ok())
}

fn wait_leader(c: &mut redis::Connection, prefix: &str, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(pid) = leader_pid(c, prefix).filter(|p| Some(*p) != not) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no new leader in {HANG:?}");
        std::thread::yield_now();
    }
}

fn signal(sig: &str, pid: u32) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success());
}

#[test]
fn three_beats_send_each_tick_once_through_kill_9_and_a_pause() {
    let Some((url, prefix, queue, collector)) = setup() else {
        return;
    };
    let envs = [
        ("WEFT_REDIS_URL", url.as_str()),
        ("WEFT_BEAT_PREFIX", prefix.as_str()),
        ("WEFT_BEAT_QUEUE", queue.as_str()),
    ];
    let mut children: Vec<Killed> = (0..3)
        .map(|_| spawn_ready_child("child_beat", &envs))
        .collect();
    let mut c = conn(&url);
    collector.wait_for(3);
    // kill -9 the sender, twice.
    let mut leader = wait_leader(&mut c, &prefix, None);
    for round in 0..2 {
        let before = collector.count();
        signal("-KILL", leader);
        // Three keep running: one more joins.
        children.push(spawn_ready_child("child_beat", &envs));
        let next = wait_leader(&mut c, &prefix, Some(leader));
        println!("round {round}: killed {leader}, {next} took over");
        leader = next;
        collector.wait_for(before + 3);
    }
    // Pause the sender past its lease: another takes over; the paused one, woken, must not
    // send.
    let before = collector.count();
    signal("-STOP", leader);
    let next = wait_leader(&mut c, &prefix, Some(leader));
    signal("-CONT", leader);
    println!("paused {leader}, {next} took over");
    collector.wait_for(before + 4);
    let seen = collector.finish();
    let pids: Vec<u32> = children.iter().map(|k| k.0.id()).collect();
    for k in &mut children {
        let _ = k.0.kill();
    }
    drop(children);

    let g = gaps(&seen);
    println!(
        "{} ticks; gaps {:?}",
        seen.len(),
        g.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    // Never twice: two sends of one entry are at least half its interval apart (less the
    // collector's own jitter).
    let min = g.iter().min().unwrap();
    assert!(
        *min >= Duration::from_millis(450),
        "a tick sent twice: gap {min:?}"
    );
    let max = g.iter().max().unwrap();
    assert!(*max <= Duration::from_secs(6), "a gap of {max:?}");
    for (_, m) in &seen {
        assert_eq!(m.task, "py.mul");
        assert_eq!(m.registry_args(), json!([6, 7]));
        let origin = m.origin.clone().expect("an origin header");
        let pid: u32 = origin.split('@').next().unwrap().parse().unwrap();
        assert!(pids.contains(&pid), "origin {origin} is one of the beats");
    }
}

/// The Redis URL, a key prefix and a queue of the test's own, and a collector on that
/// queue; `None` (skipped) without `WEFT_REDIS_URL`.
fn setup() -> Option<(String, String, String, Collector)> {
    let url = redis_url()?;
    let prefix = format!("{}:", unique("weft:beat:test"));
    let queue = unique("beat");
    let collector = Collector::start(&url, &queue);
    Some((url, prefix, queue, collector))
}

fn beat(url: &str, prefix: &str, entry: Entry) -> weft::celery::beat::RunningBeat {
    Beat::new(url)
        .key_prefix(prefix)
        .entry(entry)
        .start()
        .unwrap()
}

#[test]
fn a_restarted_beat_sends_one_catch_up_not_every_missed_tick() {
    let Some((url, prefix, queue, collector)) = setup() else {
        return;
    };
    let every = Duration::from_millis(400);
    let entry = || Entry::new("e", "py.mul", Schedule::every(every).unwrap()).queue(&queue);
    let first = beat(&url, &prefix, entry());
    collector.wait_for(2);
    first.stop(); // gives the lease back
    let stopped = (Instant::now(), collector.count());
    // Down for five intervals: five ticks missed.
    std::thread::sleep(every * 5);
    let second = beat(&url, &prefix, entry());
    collector.wait_for(stopped.1 + 3);
    let seen = collector.finish();
    second.stop();
    let after: Vec<_> = seen.iter().filter(|(t, _)| *t > stopped.0).collect();
    let catch_up = after[0].0;
    let next = after[1].0;
    assert!(
        next - catch_up >= every / 2,
        "one catch-up, then the schedule: the next came {:?} after it",
        next - catch_up
    );
    assert!(catch_up - stopped.0 >= every * 5, "nothing sent while down");
}

#[test]
fn crontab_ticks_come_on_time() {
    let Some((url, prefix, queue, collector)) = setup() else {
        return;
    };
    // Every second, by a crontab with seconds.
    let cron = Schedule::crontab_in("* * * * * *", "Europe/Paris").unwrap();
    let b = beat(
        &url,
        &prefix,
        Entry::new("cron", "py.mul", cron).queue(&queue).priority(0),
    );
    collector.wait_for(4);
    let stats = b.stats();
    b.stop();
    let seen = collector.finish();
    for g in gaps(&seen) {
        assert!(
            g >= Duration::from_millis(500) && g <= Duration::from_millis(1500),
            "gap {g:?}"
        );
    }
    let mut late = stats.lateness_ms.clone();
    late.sort();
    assert!(!late.is_empty());
    println!("crontab lateness (ms): {late:?}");
    assert!(
        *late.last().unwrap() < 1000,
        "a tick over a second late: {late:?}"
    );
}

#[test]
fn python_celery_runs_what_beat_sends() {
    let Some(url) = redis_url() else { return };
    let Some(python) = required("WEFT_CELERY_PYTHON") else {
        return;
    };
    python_runs_beats_tasks(&python, &url, &url);
}

/// The same with RabbitMQ as the broker (its lease and last runs in the Redis backend):
/// the tick is recorded in Redis, then published to RabbitMQ.
#[cfg(feature = "amqp")]
#[test]
fn python_celery_runs_what_beat_sends_over_rabbitmq() {
    let Some(amqp) = required("WEFT_AMQP_URL") else {
        return;
    };
    let Some(url) = redis_url() else { return };
    let Some(python) = required("WEFT_CELERY_PYTHON") else {
        return;
    };
    python_runs_beats_tasks(&python, &amqp, &url);
}

fn python_runs_beats_tasks(python: &str, broker: &str, url: &str) {
    let prefix = format!("{}:", unique("weft:beat:test"));
    let queue = unique("beat-py");
    let _worker = Killed(
        python_worker_command(python, broker, url, &queue, &["--pool", "solo"])
            .spawn()
            .unwrap(),
    );
    // A value no other test's results hold.
    let n = (std::process::id() as i64) * 1000 + 7 + i64::from(broker != url);
    let mut b = Beat::new(broker).key_prefix(&prefix).entry(
        Entry::new(
            "mul",
            "py.mul",
            Schedule::every(Duration::from_millis(300)).unwrap(),
        )
        .args([json!(n), json!(1)])
        .queue(&queue)
        .expires(Duration::from_secs(60)),
    );
    if broker != url {
        b = b.backend(url);
    }
    let b = b.start().unwrap();
    let mut c = conn(url);
    let deadline = Instant::now() + HANG;
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("celery-task-meta-*")
            .query(&mut c)
            .unwrap();
        let mut done = 0;
        for k in keys {
            let v: Option<String> = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
            if let Some(v) = v {
                let meta: serde_json::Value = serde_json::from_str(&v).unwrap();
                if meta["result"] == json!(n) {
                    assert_eq!(meta["status"], "SUCCESS", "{meta}");
                    done += 1;
                }
            }
        }
        if done >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Python ran {done} of 3 beat tasks in {HANG:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.stats().sent >= 3);
    b.stop();
}

#[test]
fn bad_schedules_are_refused_with_the_reason() {
    let url = "redis://127.0.0.1:1/0";
    let every = || Schedule::every(Duration::from_secs(1)).unwrap();
    let err = |b: Beat| b.start().unwrap_err().to_string();
    assert!(err(Beat::new(url)).contains("at least one entry"));
    let e = err(Beat::new(url)
        .entry(Entry::new("a", "t", every()))
        .entry(Entry::new("a", "u", every())));
    assert!(e.contains("two beat entries are named \"a\""), "{e}");
    let e = err(Beat::new(url).entry(Entry::new("a", "t", every()).priority(10)));
    assert!(e.contains("priority 10"), "{e}");
    let e = err(Beat::new(url)
        .lease_ttl(Duration::from_millis(10))
        .entry(Entry::new("a", "t", every())));
    assert!(e.contains("at least 300 ms"), "{e}");
    let e = Schedule::crontab("*/0 * * * *").unwrap_err().to_string();
    assert!(e.contains("invalid crontab"), "{e}");
    // A broker that does not answer is not an error: the beat keeps trying.
    let b = Beat::new(url)
        .entry(Entry::new("a", "t", every()))
        .start()
        .unwrap();
    assert!(!b.is_leader());
    b.stop();
}

#[test]
fn a_beat_whose_lease_was_taken_sends_nothing_until_it_holds_it_again() {
    let Some((url, prefix, queue, collector)) = setup() else {
        return;
    };
    let every = Duration::from_millis(100);
    let b = beat(
        &url,
        &prefix,
        Entry::new("e", "py.mul", Schedule::every(every).unwrap()).queue(&queue),
    );
    collector.wait_for(3);
    // Another holder takes the lease, as a beat would after this one paused past its TTL;
    // this one has not renewed yet (it renews every second): the fence in each send stops
    // it.
    let mut c = conn(&url);
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}lease"))
        .arg("someone-else:999999")
        .arg("PX")
        .arg(1500)
        .query(&mut c)
        .unwrap();
    let taken = Instant::now();
    let before = collector.count();
    // Back once the foreign lease expires.
    collector.wait_for(before + 3);
    let seen = collector.finish();
    let stats = b.stats();
    b.stop();
    // At most one send was on its way when the lease changed hands.
    let during: Vec<_> = seen[before..]
        .iter()
        .filter(|(t, _)| {
            *t > taken + Duration::from_millis(50) && *t < taken + Duration::from_millis(1400)
        })
        .collect();
    assert!(
        during.is_empty(),
        "{} sends under another's lease",
        during.len()
    );
    assert_eq!(stats.leases_taken, 2, "{stats:?}");
}

/// BENCHMARKS.md: how late beat's sends are against their due times (by Redis's clock),
/// for an interval entry (every 100 ms) and a crontab one (every second), over
/// `WEFT_BEAT_BENCH_SECS` seconds (default 20).
#[test]
#[ignore = "benchmark: run with --ignored --nocapture (WEFT_BEAT_BENCH_SECS)"]
fn beat_lateness() {
    let Some(url) = redis_url() else { return };
    let secs: u64 = std::env::var("WEFT_BEAT_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for (what, schedule) in [
        (
            "every 100 ms",
            Schedule::every(Duration::from_millis(100)).unwrap(),
        ),
        (
            "crontab * * * * * * (every second)",
            Schedule::crontab("* * * * * *").unwrap(),
        ),
    ] {
        let prefix = format!("{}:", unique("weft:beat:bench"));
        let queue = unique("beat-bench");
        let b = beat(
            &url,
            &prefix,
            Entry::new("e", "py.mul", schedule).queue(&queue),
        );
        std::thread::sleep(Duration::from_secs(secs));
        let stats = b.stats();
        b.stop();
        let _: () = redis::cmd("DEL")
            .arg(&queue)
            .query(&mut conn(&url))
            .unwrap();
        let mut late = stats.lateness_ms;
        late.sort();
        let pct = |p: f64| late[((late.len() - 1) as f64 * p).round() as usize];
        println!(
            "beat lateness, {what}: {} sends in {secs} s; p50 {} ms, p99 {} ms, max {} ms",
            late.len(),
            pct(0.5),
            pct(0.99),
            late.last().unwrap()
        );
    }
}
