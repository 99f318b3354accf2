//! [`Wake`]: how a Redis consumer waits for a message without `BRPOP`: a generation
//! moved on by a tracking thread ([`track`]) that has Redis report every change to the
//! consumer's lists (`CLIENT TRACKING ... REDIRECT`), or a poll every
//! [`POLL_WITHOUT_TRACKING`] where tracking is refused.

use std::time::Duration;

use redis::{Connection, RedisResult};

use super::super::source::Source;

/// How often a consumer looks at its lists when the server cannot wake it (Redis before
/// 6.0, or a connection refused `CLIENT TRACKING`).
pub const POLL_WITHOUT_TRACKING: Duration = Duration::from_millis(20);

/// Tells a consumer that one of its lists may have a new message, without taking it.
///
/// A pop is atomic with its unacked record only inside a script
/// ([`pop_and_record`](super::pop_and_record)), and a script cannot block; so a consumer
/// that finds its lists empty waits here instead of in `BRPOP`. A tracking thread
/// ([`track`]) has Redis watch the lists (client-side caching invalidations,
/// `CLIENT TRACKING ... REDIRECT`: Redis ≥ 6.0) and moves the generation on at every
/// change. Where tracking is refused the consumer polls every [`POLL_WITHOUT_TRACKING`].
///
/// No wake-up is lost: the consumer reads the generation *before* it pops, and the tracker
/// re-arms the watch on every list *before* it moves the generation on, so a message pushed
/// after the consumer's pop either changes the generation the consumer waits on or is
/// already on its list when the consumer reads the moved generation and pops again.
pub struct Wake {
    gen: parking_lot::Mutex<u64>,
    cv: parking_lot::Condvar,
    tracking: std::sync::atomic::AtomicBool,
}

impl Default for Wake {
    fn default() -> Self {
        Wake::new()
    }
}

impl Wake {
    /// A wake with no tracking yet (its waits poll until a tracker has armed the watch).
    pub fn new() -> Wake {
        Wake {
            gen: parking_lot::Mutex::new(0),
            cv: parking_lot::Condvar::new(),
            tracking: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The current generation: read it before popping, then [`wait`](Self::wait) on it.
    pub fn generation(&self) -> u64 {
        *self.gen.lock()
    }

    /// Waits until the generation moves past `seen`, at most `timeout` (at most
    /// [`POLL_WITHOUT_TRACKING`] while no tracker is armed).
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let timeout = if self.is_tracking() {
            timeout
        } else {
            timeout.min(POLL_WITHOUT_TRACKING)
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.gen.lock();
        while *g == seen {
            if self.cv.wait_until(&mut g, deadline).timed_out() {
                return;
            }
        }
    }

    /// True while a tracker is armed.
    pub fn is_tracking(&self) -> bool {
        self.tracking.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Moves the generation on and wakes every waiter.
    pub fn bump(&self) {
        *self.gen.lock() += 1;
        self.cv.notify_all();
    }

    fn set_tracking(&self, on: bool) {
        self.tracking
            .store(on, std::sync::atomic::Ordering::Release);
        self.bump();
    }
}

/// The tracking thread's body: until `stop()`, has Redis report every change to `keys`
/// and moves `wake`'s generation on at each. Reconnects after a connection error (the
/// consumer polls meanwhile); returns for good if the server refuses `CLIENT TRACKING`.
pub fn track(client: &redis::Client, keys: &[String], wake: &Wake, stop: impl Fn() -> bool) {
    track_on(&Source::from(client.clone()), keys, wake, stop)
}

/// [`track`] with connections from `source`.
pub(crate) fn track_on(source: &Source, keys: &[String], wake: &Wake, stop: impl Fn() -> bool) {
    let mut backoff = Duration::from_millis(100);
    while !stop() {
        match track_session(source, keys, wake, &stop) {
            Ok(()) => return,
            Err(e) => {
                wake.set_tracking(false);
                if !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) {
                    // Refused (Redis before 6.0, or an ACL): the consumer polls.
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn track_session(
    source: &Source,
    keys: &[String],
    wake: &Wake,
    stop: &impl Fn() -> bool,
) -> RedisResult<()> {
    const CHANNEL: &str = "__redis__:invalidate";
    let mut sub = source.connect()?;
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut sub)?;
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe(CHANNEL)?;
    pubsub.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut cmd = source.connect()?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("REDIRECT")
        .arg(id)
        .query::<()>(&mut cmd)?;
    // Reading a key is what arms its watch (default tracking mode: exactly these keys,
    // one report per change, then read again).
    let arm = |cmd: &mut Connection| -> RedisResult<()> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.llen(k).ignore();
        }
        pipe.query(cmd)
    };
    arm(&mut cmd)?;
    wake.set_tracking(true);
    while !stop() {
        match pubsub.get_message() {
            Ok(_) => {
                // Re-armed first, then the generation: see `Wake`.
                arm(&mut cmd)?;
                wake.bump();
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
