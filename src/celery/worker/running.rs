//! [`RunningWorker`]: a started worker's warm shutdown (with its deadline,
//! [`Worker::shutdown_timeout`](super::Worker::shutdown_timeout)) and its run until a
//! signal ([`Stopped`]).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::super::error::Error;
use super::live::{Halt, WorkerShared};
use crate::Pool;

/// A started [`Worker`](super::Worker).
pub struct RunningWorker {
    /// `None` once stopped.
    pub(super) pool: Option<Pool>,
    pub(super) shared: Arc<WorkerShared>,
    pub(super) shutdown_timeout: Option<Duration>,
    pub(super) hostname: String,
    pub(super) consumer: Option<thread::JoinHandle<()>>,
    pub(super) finisher: Option<thread::JoinHandle<usize>>,
    pub(super) control: Option<thread::JoinHandle<()>>,
    /// The events' send loop (ends after `worker-offline`).
    pub(super) events: Option<thread::JoinHandle<()>>,
}

impl RunningWorker {
    /// The node name remote control sees.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// How many times this worker has asked Redis for starts of tasks with a
    /// [shared rate limit](crate::registry::TaskOptions::shared_rate_limit): one script
    /// call, one round trip, each for a batch of starts.
    pub fn shared_limit_calls(&self) -> u64 {
        self.shared.shared_limits.calls()
    }

    /// A warm shutdown, as Celery's: stops taking messages, waits for the tasks that are
    /// running to finish (their results written and acknowledged; this blocks as long as
    /// they run), and puts back on their queues the messages of every task that had not
    /// started (queued in the pool, or waiting for an ETA). Returns how many were put back.
    pub fn shutdown(mut self) -> usize {
        self.stop()
    }

    fn stop(&mut self) -> usize {
        let deadline = self
            .shutdown_timeout
            .and_then(|t| std::time::Instant::now().checked_add(t));
        *self.shared.deadline.lock() = deadline;
        self.shared.stop.store(true, Ordering::Release);
        self.shared.room.notify_all();
        if let Some(c) = self.consumer.take() {
            let _ = c.join();
        }
        // Tasks not started are taken back at once (no new one comes now that the
        // consumer has ended): their messages stay held, to be put back.
        for task in self.shared.live.lock().values() {
            task.withdraw();
        }
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        // Waits for the running tasks (until the deadline, if any); the withdrawn ones
        // return at once if run.
        if let Some(pool) = self.pool.take() {
            match deadline {
                None => pool.shutdown(),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if pool.shutdown_timeout(left).threads_still_running > 0 {
                        // Left to finish on their own: the last handle (whose drop joins
                        // the threads) is dropped elsewhere.
                        let _ = thread::Builder::new()
                            .name("weft-celery-drain".into())
                            .spawn(move || drop(pool));
                    }
                }
            }
        }
        // Every sender of `Done` is gone: the finisher drains, puts back what is still
        // held, and ends.
        let put_back = self.finisher.take().map_or(0, |f| f.join().unwrap_or(0));
        // The last events, then `worker-offline`.
        self.shared.monitor.events.close();
        if let Some(e) = self.events.take() {
            let _ = e.join();
        }
        self.shared.monitor.set_halt(Halt::Over);
        put_back
    }

    /// Whether remote control asked this worker to shut down (Celery's `shutdown`
    /// broadcast): it has stopped taking messages, and
    /// [`wait_for_signal`](Self::wait_for_signal) returns as after a signal. A worker
    /// started with [`start`](super::Worker::start) and never waited for finishes the
    /// tasks it took and keeps their results' writes going until it is shut down.
    pub fn shutdown_requested(&self) -> bool {
        *self.shared.monitor.halt.lock() == Halt::Asked
    }
}

/// How a worker stopped on a signal ([`RunningWorker::wait_for_signal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Warm: the running tasks finished; this many messages of tasks that had not
    /// started were put back on their queues.
    Warm(usize),
    /// Cold: a second signal came during the warm shutdown; the running tasks were not
    /// waited for (as in Celery, their messages come back if they were acknowledged late:
    /// on Redis after the visibility timeout, on RabbitMQ when the connection closes).
    Cold,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Warm(n) => write!(f, "stopped (warm); {n} message(s) put back"),
            Stopped::Cold => f.write_str("stopped (cold)"),
        }
    }
}

impl RunningWorker {
    /// Runs until SIGINT or SIGTERM, as a Celery worker does: the first signal starts a
    /// warm [`shutdown`](Self::shutdown) (stop taking messages, finish the running tasks,
    /// put back the messages of those that did not start); a second one during it
    /// returns at once ([`Stopped::Cold`]). An error if the handlers cannot be installed.
    pub fn wait_for_signal(self) -> Result<Stopped, Error> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let (tx, rx) = mpsc::channel::<Option<usize>>();
        let watcher = {
            let tx = tx.clone();
            thread::Builder::new()
                .name("weft-celery-signals".into())
                .spawn(move || {
                    for _ in signals.forever() {
                        if tx.send(None).is_err() {
                            return;
                        }
                    }
                })?
        };
        // Remote control's `shutdown` counts as the first signal.
        let shared = self.shared.clone();
        let halt_watcher = {
            let tx = tx.clone();
            let shared = shared.clone();
            thread::Builder::new()
                .name("weft-celery-halt".into())
                .spawn(move || {
                    let m = &shared.monitor;
                    let mut h = m.halt.lock();
                    while *h == Halt::Running {
                        m.halted.wait(&mut h);
                    }
                    if *h == Halt::Asked {
                        let _ = tx.send(None);
                    }
                })?
        };
        // The first signal.
        let _ = rx.recv();
        let mut worker = self;
        thread::Builder::new()
            .name("weft-celery-shutdown".into())
            .spawn(move || {
                let _ = tx.send(Some(worker.stop()));
            })?;
        let stopped = match rx.recv() {
            Ok(Some(n)) => Stopped::Warm(n),
            _ => Stopped::Cold,
        };
        handle.close();
        let _ = watcher.join();
        // Ends the halt watcher if it still waits.
        shared.monitor.set_halt(Halt::Over);
        let _ = halt_watcher.join();
        Ok(stopped)
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        if self.consumer.is_some() {
            self.stop();
        }
    }
}
