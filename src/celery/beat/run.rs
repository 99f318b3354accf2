//! The beat's loop: hold or seek the lease, and send each entry's due ticks.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::schedule::{now_ms, Schedule};
use super::scripts::{Keys, Scripts, Sent};
use super::{BeatShared, Entry, LATENESS_SAMPLES, MAX_BACKOFF};
use crate::celery::error::Error;
use crate::celery::redis::queue_for_priority;
use crate::celery::source::Source;
use crate::celery::{Client, SendOptions};

/// The beat's loop and its state.
pub(super) struct Loop {
    pub(super) source: Source,
    /// The RabbitMQ client that publishes after a tick is recorded (rule 3); `None` on a
    /// Redis broker (the send script pushes).
    pub(super) publisher: Option<Client>,
    pub(super) keys: Keys,
    pub(super) scripts: Scripts,
    /// Who this process is in the lease's value.
    pub(super) holder: String,
    pub(super) ttl_ms: u64,
    pub(super) entries: Vec<Entry>,
    pub(super) shared: Arc<BeatShared>,
    pub(super) conn: Option<redis::Connection>,
    /// The lease's value while this process holds it.
    pub(super) lease: Option<String>,
    /// Redis's clock less this machine's (rule 5).
    pub(super) offset_ms: i64,
    /// Each entry's last run (ms, Redis's clock), read when the lease is taken.
    pub(super) last: HashMap<String, u64>,
    /// When this process took the lease (ms, Redis's clock).
    pub(super) leader_since: u64,
    pub(super) next_lease_check: Instant,
    /// The wait before the next try to reach the broker (zero while it answers).
    pub(super) backoff: Duration,
}

impl Loop {
    pub(super) fn run(&mut self) {
        while !*self.shared.stop.lock() {
            let wait = match self.step() {
                Ok(wait) => {
                    if !self.backoff.is_zero() {
                        eprintln!("weft beat: the broker answers again");
                        self.backoff = Duration::ZERO;
                    }
                    wait
                }
                Err(e) => {
                    if self.backoff.is_zero() {
                        self.shared.stats.lock().outages += 1;
                        eprintln!(
                            "weft beat: cannot reach the broker ({e}); trying again with backoff"
                        );
                        self.backoff = Duration::from_millis(100);
                    } else {
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                    self.conn = None;
                    self.backoff
                }
            };
            let mut stop = self.shared.stop.lock();
            if !*stop {
                self.shared.wake.wait_for(&mut stop, wait);
            }
        }
        if let Some(lease) = self.lease.take() {
            let key = self.keys.lease.clone();
            let release = self.scripts.release.clone();
            if let Ok(conn) = self.connection() {
                let _ = release.key(&key).arg(lease).invoke::<i64>(conn);
            }
        }
        self.shared.leader.store(false, Ordering::Release);
    }

    pub(super) fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.conn.is_none() {
            self.conn = Some(self.source.connect()?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Now, by Redis's clock (rule 5).
    pub(super) fn now(&self) -> u64 {
        now_ms().saturating_add_signed(self.offset_ms)
    }

    /// One pass: the lease, then every entry due; returns how long to wait for the next.
    pub(super) fn step(&mut self) -> Result<Duration, Error> {
        let ttl = Duration::from_millis(self.ttl_ms);
        if Instant::now() >= self.next_lease_check {
            self.check_lease()?;
            self.next_lease_check = Instant::now()
                + if self.lease.is_some() {
                    ttl / 3
                } else {
                    ttl / 6
                };
        }
        let mut wait = self
            .next_lease_check
            .saturating_duration_since(Instant::now());
        if self.lease.is_none() {
            return Ok(wait);
        }
        for i in 0..self.entries.len() {
            let now = self.now();
            let (due, tick, gap) = self.due(i, now);
            if due > now {
                wait = wait.min(Duration::from_millis(due - now));
                continue;
            }
            match self.send(i, tick, gap)? {
                Sent::NotLeader => {
                    eprintln!("weft beat: lost the lease to another beat; not sending");
                    self.lease = None;
                    self.shared.leader.store(false, Ordering::Release);
                    return Ok(ttl / 6);
                }
                Sent::Already(last) => {
                    self.shared.stats.lock().already_sent += 1;
                    self.last.insert(self.entries[i].name.clone(), last);
                }
                Sent::Done { tick: t, now } => {
                    self.shared.sent.fetch_add(1, Ordering::Relaxed);
                    // Lateness against the tick's time; a catch-up (a time from before
                    // this process led) is not a sample.
                    if due >= self.leader_since {
                        let mut s = self.shared.stats.lock();
                        if s.lateness_ms.len() == LATENESS_SAMPLES {
                            s.lateness_ms.remove(0);
                        }
                        s.lateness_ms.push(now.saturating_sub(due));
                    }
                    self.last.insert(self.entries[i].name.clone(), t);
                }
            }
            // Look at this entry again at once: its next time is known now.
            wait = Duration::ZERO;
        }
        Ok(wait.max(Duration::from_millis(1)))
    }

    /// Entry `i`'s next run (rule 4): (when it is due, the tick to send (0: Redis's clock
    /// at the send), the least gap after the last run).
    pub(super) fn due(&self, i: usize, now: u64) -> (u64, u64, u64) {
        let e = &self.entries[i];
        let last = self.last.get(&e.name).copied();
        match &e.schedule {
            Schedule::Interval(every) => {
                let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
                let due = last.unwrap_or(self.leader_since).saturating_add(every);
                (due, 0, (every / 2).max(1))
            }
            Schedule::Crontab(c) => {
                let base = last.unwrap_or(self.leader_since);
                match c.next_after(base) {
                    // Past: the latest time at or before now, once (a catch-up).
                    Some(due) if due <= now => {
                        (due, c.last_at_or_before(now).unwrap_or(due).max(due), 1)
                    }
                    Some(due) => (due, due, 1),
                    None => (u64::MAX, 0, 1),
                }
            }
        }
    }

    /// Takes or renews the lease (rule 1), measuring Redis's clock (rule 5).
    pub(super) fn check_lease(&mut self) -> Result<(), Error> {
        let sent_at = now_ms();
        let ttl_ms = self.ttl_ms;
        let (lease_key, fence_key, last_key) = (
            self.keys.lease.clone(),
            self.keys.fence.clone(),
            self.keys.last.clone(),
        );
        let value = self.lease.clone();
        let holder = self.holder.clone();
        let (renew, acquire) = (self.scripts.renew.clone(), self.scripts.acquire.clone());
        let conn = self.connection()?;
        let (renewed, secs, micros): (i64, u64, u64) = renew
            .key(&lease_key)
            .arg(value.as_deref().unwrap_or(""))
            .arg(ttl_ms)
            .invoke(conn)?;
        let server = secs * 1000 + micros / 1000;
        let local = sent_at + now_ms().saturating_sub(sent_at) / 2;
        let offset = i64::try_from(server).unwrap_or(i64::MAX) - i64::try_from(local).unwrap_or(0);
        if value.is_some() && renewed == 0 {
            eprintln!(
                "weft beat: the lease expired (paused, or cut off from Redis); stepping down"
            );
            self.lease = None;
            self.shared.leader.store(false, Ordering::Release);
        }
        if self.lease.is_none() {
            let conn = self.connection()?;
            let taken: Option<String> = acquire
                .key(&lease_key)
                .key(&fence_key)
                .arg(&holder)
                .arg(ttl_ms)
                .invoke(conn)?;
            if let Some(v) = taken {
                let last: HashMap<String, u64> =
                    redis::cmd("HGETALL").arg(&last_key).query(conn)?;
                self.last = last;
                self.leader_since = server;
                eprintln!(
                    "weft beat: took the lease ({v}); sending {} entries",
                    self.entries.len()
                );
                self.lease = Some(v);
                self.shared.stats.lock().leases_taken += 1;
                self.shared.leader.store(true, Ordering::Release);
            }
        }
        self.offset_ms = offset;
        Ok(())
    }

    /// Sends entry `i`'s tick (rules 2 and 3).
    pub(super) fn send(&mut self, i: usize, tick: u64, gap: u64) -> Result<Sent, Error> {
        let e = &self.entries[i];
        // On a Redis broker the script pushes the message; on RabbitMQ it only records.
        let (queue, body) = if self.publisher.is_some() {
            (String::new(), String::new())
        } else {
            let msg = e.message(SystemTime::now());
            (
                queue_for_priority(&msg.routing_key, msg.priority),
                msg.encode(),
            )
        };
        let (lease_key, last_key, name) = (
            self.keys.lease.clone(),
            self.keys.last.clone(),
            e.name.clone(),
        );
        let value = self.lease.clone().unwrap_or_default();
        let send = self.scripts.send.clone();
        let conn = self.connection()?;
        let answer: Vec<u64> = match send
            .key(&lease_key)
            .key(&last_key)
            .key(&queue)
            .arg(&value)
            .arg(&name)
            .arg(tick)
            .arg(gap)
            .arg(&body)
            .invoke::<Vec<i64>>(conn)
        {
            Ok(v) if v.first() == Some(&-1) => return Ok(Sent::NotLeader),
            Ok(v) => v
                .into_iter()
                .map(|x| u64::try_from(x).unwrap_or(0))
                .collect(),
            Err(err) => return Err(err.into()),
        };
        match answer.as_slice() {
            [1, t, now] => {
                if let Some(client) = &self.publisher {
                    let e = &self.entries[i];
                    let options = SendOptions {
                        queue: Some(e.queue.clone()),
                        priority: e.priority.unwrap_or(0),
                        expires: e.expires.map(|d| SystemTime::now() + d),
                        ..SendOptions::default()
                    };
                    if let Err(err) =
                        client.send_task(&e.task, e.args.clone(), e.kwargs.clone(), options)
                    {
                        eprintln!(
                            "weft beat: entry {:?}: its tick was recorded but the publish failed ({err}); this tick is lost",
                            e.name
                        );
                    }
                }
                Ok(Sent::Done {
                    tick: *t,
                    now: *now,
                })
            }
            [0, last, ..] => Ok(Sent::Already(*last)),
            other => Err(Error::Config(format!(
                "unexpected answer from the beat's send script: {other:?}"
            ))),
        }
    }
}
