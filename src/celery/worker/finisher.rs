//! The finisher thread ([`finisher`]): settles in batches what the consumer and the tasks
//! send it (results, acknowledgements, retries, dead letters, republished copies), frees
//! their prefetch room, keeps the stopped consumer's upkeep going during shutdown, and at
//! the end puts back every message still held.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::transport::{Consume, Settle, Settlement};
use super::live::{Done, Held, Shared};

pub(super) fn finisher<C: Consume>(
    mut settler: impl Settle<Tag = C::Tag>,
    done: mpsc::Receiver<Done>,
    held: Held<C::Tag>,
    shared: Arc<Shared>,
    parked: mpsc::Receiver<C>,
) -> usize {
    // Whatever finished meanwhile is settled in one batch (one round trip on Redis).
    const MAX_BATCH: usize = 256;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Once the consumer has stopped (shutdown), its upkeep goes on here until the end.
    let mut stopped: Option<C> = None;
    let mut last_upkeep = Instant::now();
    loop {
        let interval = stopped
            .as_ref()
            .map_or(Duration::from_secs(1), C::upkeep_interval);
        match done.recv_timeout(interval) {
            Ok(first) => batch.push(first),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
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
        let settlements: Vec<Settlement<C::Tag>> = {
            let mut held = held.lock();
            batch
                .drain(..)
                .filter_map(|d| d.settle.with_tag(|key| held.remove(&key)))
                .collect()
        };
        settler.settle(settlements);
        if counted > 0 {
            let mut n = shared.in_flight.lock();
            *n = n.saturating_sub(counted);
            shared.room.notify_one();
        }
    }
    // Shutdown: what is still held never ran.
    let left: Vec<C::Tag> = held.lock().drain().map(|(_, t)| t).collect();
    let restored = settler.requeue(left);
    drop(stopped.or_else(|| parked.try_recv().ok()));
    restored
}
