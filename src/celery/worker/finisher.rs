//! The finisher thread ([`finisher`]): settles in batches what the consumer and the tasks
//! send it (results, acknowledgements, retries, dead letters, republished copies), frees
//! their prefetch room, keeps the stopped consumer's upkeep going during shutdown, and at
//! the end puts back every message still held.
//!
//! A batch the transport cannot write (broker or result backend unreachable) is kept and
//! handed again, oldest first, until it is written: no result or acknowledgement is ever
//! dropped. Memory stays bounded meanwhile: a batch's messages count as taken until it is
//! written, so the consumer takes no more than
//! [`TAKEN_PER_PREFETCH`](super::live::TAKEN_PER_PREFETCH) × the prefetch limit while
//! results wait (see [`InFlight`](super::live::InFlight)).

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::transport::{Consume, Settle, Settlement, Unsettled};
use super::live::{Done, Held, WorkerShared};

/// The longest wait between two tries of a batch that could not be written (so that work
/// resumes within about this long of the broker answering again).
const MAX_RETRY_WAIT: Duration = Duration::from_millis(250);

/// The wait before try `tries` + 1: 20 ms, doubling up to [`MAX_RETRY_WAIT`].
fn retry_wait(tries: u32) -> Duration {
    (Duration::from_millis(10) * (1 << tries.min(5))).min(MAX_RETRY_WAIT)
}

/// A batch waiting to be written again.
struct Pending<T> {
    batch: Vec<Settlement<T>>,
    /// Prefetch slots it frees once written.
    counted: usize,
    /// Of those, the ones freed at their task's start ([`InFlight`](super::live::InFlight)).
    started: usize,
    /// When its first try failed.
    since: Instant,
    tries: u32,
}

pub(super) fn finisher<C: Consume>(
    mut settler: impl Settle<Tag = C::Tag>,
    done: mpsc::Receiver<Done>,
    held: Held<C::Tag>,
    shared: Arc<WorkerShared>,
    parked: mpsc::Receiver<C>,
) -> usize {
    // Whatever finished meanwhile is settled in one batch (one round trip on Redis).
    const MAX_BATCH: usize = 256;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Once the consumer has stopped (shutdown), its upkeep goes on here until the end.
    let mut stopped: Option<C> = None;
    let mut last_upkeep = Instant::now();
    let mut pending: Option<Pending<C::Tag>> = None;
    let mut closed = false;
    loop {
        if stopped.is_none() {
            stopped = parked.try_recv().ok();
        }
        if let Some(c) = stopped.as_mut() {
            if last_upkeep.elapsed() >= c.upkeep_interval() {
                last_upkeep = Instant::now();
                let held = held.lock();
                let tags: Vec<&C::Tag> = held.values().collect();
                c.upkeep(&tags);
            }
        }
        // A batch that could not be written goes first, again and again.
        if let Some(p) = pending.take() {
            if shared.past_deadline() {
                eprintln!(
                    "weft celery: shutdown timeout: {} settlement(s) not written; their messages stay unacknowledged and are delivered again",
                    p.batch.len()
                );
            } else {
                match settle(&mut settler, &shared, p.batch, p.counted, p.started) {
                    Ok(()) => eprintln!(
                        "weft celery: the broker answers again: results and acknowledgements kept for {:.1} s written",
                        p.since.elapsed().as_secs_f64()
                    ),
                    Err(u) => {
                        let tries = p.tries + 1;
                        pending = Some(Pending {
                            batch: u.batch,
                            tries,
                            ..p
                        });
                        std::thread::sleep(
                            retry_wait(tries),
                        );
                        continue;
                    }
                }
            }
        }
        if closed {
            break;
        }
        let interval = stopped
            .as_ref()
            .map_or(Duration::from_secs(1), C::upkeep_interval);
        let interval = if shared.deadline.lock().is_some() {
            interval.min(Duration::from_millis(100))
        } else {
            interval
        };
        match done.recv_timeout(interval) {
            Ok(first) => batch.push(first),
            // Past a shutdown's deadline, tasks still running are not waited for.
            Err(mpsc::RecvTimeoutError::Timeout) => closed = shared.past_deadline(),
            Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
        }
        if batch.is_empty() {
            continue;
        }
        while batch.len() < MAX_BATCH {
            match done.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let counted = batch.iter().filter(|d| d.counted).count();
        let started = batch.iter().filter(|d| d.counted && d.started).count();
        let settlements: Vec<Settlement<C::Tag>> = {
            let mut held = held.lock();
            batch
                .drain(..)
                .filter_map(|d| d.settle.with_tag(|key| held.remove(&key)))
                .collect()
        };
        if let Err(u) = settle(&mut settler, &shared, settlements, counted, started) {
            eprintln!(
                "weft celery: cannot write {} result(s)/acknowledgement(s): {}; kept and written again (oldest first) until the broker answers",
                u.batch.len(),
                u.error
            );
            pending = Some(Pending {
                batch: u.batch,
                counted,
                started,
                since: Instant::now(),
                tries: 0,
            });
        }
    }
    // Shutdown: what is still held never ran (or, past the deadline, may still be
    // running: put back as Celery's cold shutdown puts back late-acknowledged messages).
    // Tried until the broker takes it or the deadline passes.
    let mut left: Vec<C::Tag> = held.lock().drain().map(|(_, t)| t).collect();
    let mut restored = 0;
    let mut tries = 0u32;
    loop {
        let (n, unreached) = settler.requeue(left);
        restored += n;
        left = unreached;
        if left.is_empty() {
            break;
        }
        if shared.past_deadline() {
            eprintln!(
                "weft celery: shutdown timeout: {} message(s) could not be put back; they stay unacknowledged and are delivered again after the visibility timeout",
                left.len()
            );
            break;
        }
        tries += 1;
        if tries == 1 {
            eprintln!(
                "weft celery: cannot put back {} message(s): the broker does not answer; trying until it does",
                left.len()
            );
        }
        std::thread::sleep(retry_wait(tries));
    }
    drop(stopped.or_else(|| parked.try_recv().ok()));
    restored
}

/// Settles `batch`; once written, frees its `counted` prefetch slots (`started` of them
/// freed already at their task's start).
fn settle<S: Settle>(
    settler: &mut S,
    shared: &WorkerShared,
    batch: Vec<Settlement<S::Tag>>,
    counted: usize,
    started: usize,
) -> Result<(), Unsettled<S::Tag>> {
    settler.settle(batch)?;
    if counted > 0 {
        shared.in_flight.lock().written(counted, started);
        shared.room.notify_one();
    }
    Ok(())
}
