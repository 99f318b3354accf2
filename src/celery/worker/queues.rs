//! Queues added and cancelled while the worker runs (Celery's `add_consumer` and
//! `cancel_consumer` remote-control commands).
//!
//! Remote control asks ([`WorkerShared::change_queues`]: the change joins
//! [`WorkerShared::queue_changes`] and wakes the consumer thread); the consumer thread applies
//! the changes, oldest first, at its next turn ([`apply_queue_changes`], within 250 ms:
//! it turns at least that often), through the transport's
//! [`Consume::add_queue`] / [`Consume::cancel_queue`]. It alone writes
//! [`WorkerShared::queues`] and its lanes, so the two always name the queues the transport
//! consumes. A change the broker refuses stays first in line (the ones after it wait, so
//! that an add and a cancel of one queue keep their order), is logged once, and is tried
//! again at each turn.
//!
//! An added queue runs in the Normal lane, and its messages are taken after those of the
//! queues consumed already. A cancelled queue's messages held (running, queued in the
//! pool, waiting for an ETA) stay held and are settled, kept alive or put back as any
//! other.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::super::transport::Consume;
use super::live::{QueueChange, WorkerShared};
use crate::Priority;

/// The consumer thread's turn: applies the changes asked since the last one (and retries
/// a refused one), updating [`WorkerShared::queues`] and the `lanes` of `take`.
pub(super) fn apply_queue_changes<C: Consume>(
    consumer: &mut C,
    lanes: &mut HashMap<String, Priority>,
    shared: &WorkerShared,
) {
    shared.queues_asked.store(false, Ordering::Relaxed);
    // Taken out, so that asking is never blocked behind a broker's answer.
    let mut pending = {
        let mut changes = shared.queue_changes.lock();
        if changes.pending.is_empty() {
            return;
        }
        std::mem::take(&mut changes.pending)
    };
    let mut applied = 0;
    let mut error = None;
    for change in &pending {
        let result = match change {
            QueueChange::Add(q) => consumer.add_queue(q),
            QueueChange::Cancel(q) => consumer.cancel_queue(q),
        };
        match result {
            Ok(changed) => {
                if changed {
                    record(change, lanes, shared);
                }
                applied += 1;
            }
            Err(e) => {
                error = Some(match change {
                    QueueChange::Add(q) => format!("could not start consuming {q:?}: {e}"),
                    QueueChange::Cancel(q) => format!("could not stop consuming {q:?}: {e}"),
                });
                break;
            }
        }
    }
    pending.drain(..applied);
    let mut changes = shared.queue_changes.lock();
    if applied > 0 {
        changes.error = None;
    }
    if let Some(e) = error {
        if changes.error.as_ref() != Some(&e) {
            eprintln!("weft celery: {e} (tried again every turn)");
            changes.error = Some(e);
        }
    }
    // The ones left first, before any asked meanwhile.
    pending.append(&mut changes.pending);
    changes.pending = pending;
}

/// A change the transport made: [`WorkerShared::queues`] (highest lane first; an added queue
/// in the Normal lane, after the Normal ones) and the lanes follow.
fn record(change: &QueueChange, lanes: &mut HashMap<String, Priority>, shared: &WorkerShared) {
    let mut queues = shared.queues.lock();
    match change {
        QueueChange::Add(q) => {
            let at = queues
                .iter()
                .position(|(_, lane)| *lane < Priority::Normal)
                .unwrap_or(queues.len());
            queues.insert(at, (q.clone(), Priority::Normal));
            lanes.insert(q.clone(), Priority::Normal);
        }
        QueueChange::Cancel(q) => {
            queues.retain(|(name, _)| name != q);
            lanes.remove(q);
        }
    }
}

#[cfg(test)]
mod tests;
