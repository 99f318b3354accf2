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
/// The watch is armed only for a consumer about to wait. A report disarms it (Redis
/// reports a key once, then it must be read again); re-arming it at once would cost a
/// read of every list after nearly every pop of a busy consumer (its own pops change the
/// lists). So a report only marks the watch unarmed and moves the generation on, and the
/// tracker re-arms it when a consumer asks, in [`wait`](Self::wait).
///
/// No wake-up is lost. Under the one lock of its state:
/// 1. the consumer reads the generation *before* it pops;
/// 2. the tracker marks the watch armed only *after* it has re-armed it (read every list),
///    and moves the generation on with it;
/// 3. at a report the tracker marks the watch unarmed and moves the generation on;
/// 4. the consumer waits on a generation only while the watch is marked armed; else it
///    asks for an arm and waits for the generation the arm moves on (2), then pops again.
///
/// So while a consumer waits on the generation it read before its pop, the watch was
/// armed after that pop (4, 2: an arm after the read moves the generation on, ending the
/// wait), and a message pushed after the pop is reported (3) and ends the wait; one
/// pushed before the arm is found by the pop after it.
///
/// The lists watched can change while the tracker runs (a queue added or cancelled at run
/// time): the consumer hands the new lists over (`watch`), and the tracker takes them at its
/// next arm, or, while armed, within its read timeout, treating the change as a report
/// (rule 3: the consumer pops again and asks for an arm of the new lists). Until then the
/// consumer's waits end by their timeout, so a message of an added queue waits at most one
/// wait of the consumer, never for good.
pub struct Wake {
    state: parking_lot::Mutex<WakeState>,
    /// Consumers waiting for the generation to move on.
    cv: parking_lot::Condvar,
    /// The tracker waiting for a consumer to ask for an arm.
    asked: parking_lot::Condvar,
    tracking: std::sync::atomic::AtomicBool,
    /// Lists to watch from the next arm on, handed over by `watch` and not yet taken by the
    /// tracker.
    keys: parking_lot::Mutex<Option<Vec<String>>>,
}

/// What [`Wake`]'s lock guards.
struct WakeState {
    gen: u64,
    /// The watch is armed: every change to the lists is still to be reported.
    armed: bool,
    /// A consumer is about to wait and asks the tracker to arm the watch.
    arm_asked: bool,
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
            state: parking_lot::Mutex::new(WakeState {
                gen: 0,
                armed: false,
                arm_asked: false,
            }),
            cv: parking_lot::Condvar::new(),
            asked: parking_lot::Condvar::new(),
            tracking: std::sync::atomic::AtomicBool::new(false),
            keys: parking_lot::Mutex::new(None),
        }
    }

    /// Hands the tracker the lists to watch from now on (they replace those it was started
    /// with): taken at its next arm, or within its read timeout while it is armed.
    pub(crate) fn watch(&self, keys: Vec<String>) {
        *self.keys.lock() = Some(keys);
    }

    /// The tracker: the lists handed over by [`watch`](Self::watch) since it last looked.
    fn take_keys(&self) -> Option<Vec<String>> {
        self.keys.lock().take()
    }

    /// The tracker: whether [`watch`](Self::watch) handed over lists not yet taken.
    fn has_new_keys(&self) -> bool {
        self.keys.lock().is_some()
    }

    /// The current generation: read it before popping, then [`wait`](Self::wait) on it.
    pub fn generation(&self) -> u64 {
        self.state.lock().gen
    }

    /// Waits until the generation moves past `seen`, at most `timeout` (at most
    /// [`POLL_WITHOUT_TRACKING`] while no tracker is armed). With the watch unarmed it
    /// asks the tracker for an arm first, which moves the generation on: pop again then.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let timeout = if self.is_tracking() {
            timeout
        } else {
            timeout.min(POLL_WITHOUT_TRACKING)
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.state.lock();
        if g.gen == seen && !g.armed && !g.arm_asked {
            g.arm_asked = true;
            self.asked.notify_one();
        }
        while g.gen == seen {
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
        self.state.lock().gen += 1;
        self.cv.notify_all();
    }

    /// The tracker: a report came (rule 3).
    fn reported(&self) {
        let mut g = self.state.lock();
        g.armed = false;
        g.gen += 1;
        drop(g);
        self.cv.notify_all();
    }

    /// The tracker: waits at most `timeout` for a consumer to ask for an arm.
    fn is_arm_asked(&self, timeout: Duration) -> bool {
        let mut g = self.state.lock();
        if !g.arm_asked {
            let _ = self.asked.wait_for(&mut g, timeout);
        }
        g.arm_asked
    }

    /// The tracker: the watch is armed (`true`, rule 2) or lost (`false`).
    fn set_armed(&self, armed: bool) {
        let mut g = self.state.lock();
        g.armed = armed;
        g.arm_asked = false;
        g.gen += 1;
        drop(g);
        self.cv.notify_all();
    }

    fn set_tracking(&self, on: bool) {
        self.tracking
            .store(on, std::sync::atomic::Ordering::Release);
        self.set_armed(on);
    }
}

/// The tracking thread's body: until `stop()`, has Redis report every change to `keys`
/// and moves `wake`'s generation on at each. Reconnects after a connection error (the
/// consumer polls meanwhile); returns for good if the server refuses `CLIENT TRACKING`.
pub fn track(client: &redis::Client, keys: &[String], wake: &Wake, stop: impl Fn() -> bool) {
    track_on(&Source::from(client.clone()), keys, wake, stop)
}

/// [`track`] with connections from `source`; the lists watched are `keys` until
/// [`Wake::watch`] hands over others.
pub(crate) fn track_on(source: &Source, keys: &[String], wake: &Wake, stop: impl Fn() -> bool) {
    let mut keys = keys.to_vec();
    let mut backoff = Duration::from_millis(100);
    while !stop() {
        match track_session(source, &mut keys, wake, &stop) {
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

/// One tracking connection, until `stop()` or an error; `keys` are the lists watched,
/// replaced by those [`Wake::watch`] hands over.
fn track_session(
    source: &Source,
    keys: &mut Vec<String>,
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
    let arm = |cmd: &mut Connection, keys: &mut Vec<String>| -> RedisResult<()> {
        if let Some(k) = wake.take_keys() {
            *keys = k;
        }
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for k in keys.iter() {
            pipe.llen(k).ignore();
        }
        pipe.query(cmd)
    };
    arm(&mut cmd, keys)?;
    wake.set_tracking(true);
    let mut armed = true;
    while !stop() {
        if !armed {
            // Re-armed (rule 2 in `Wake`) only for a consumer about to wait; reports of
            // other lists meanwhile wait in the subscription (each moves the generation
            // on when read: harmless).
            if wake.is_arm_asked(Duration::from_millis(500)) {
                arm(&mut cmd, keys)?;
                armed = true;
                wake.set_armed(true);
            }
            continue;
        }
        match pubsub.get_message() {
            Ok(_) => {
                wake.reported();
                armed = false;
            }
            Err(e) if e.is_timeout() => {
                // Other lists to watch: as a report, so the consumer asks for an arm
                // (which takes them).
                if wake.has_new_keys() {
                    wake.reported();
                    armed = false;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
