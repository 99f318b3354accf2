//! `GET /v1/events`: one stream of server-sent events, for the dashboard and `weft watch`:
//! `task` events (a task's state changed) and `stats` events (the pool and the service,
//! every second).
//!
//! # Protocol
//!
//! Actors: whoever changes a task's state (the submit path, the attempt wrapper on a pool
//! worker, the resolver), the stats loop (a tokio task), and one stream per client.
//!
//! 1. Every event is formatted once, as a whole SSE frame, and sent on one broadcast
//!    channel of [`EVENT_BUFFER`] frames; nothing is formatted while no client listens.
//!    A task's events are sent under its record's lock (`Record::announce`), so they go
//!    out in the order its state changed; the event of its acceptance is left out when a
//!    worker started it first (its first event is then `STARTED`).
//! 2. Each client's stream reads the channel at its own pace. One that falls more than
//!    [`EVENT_BUFFER`] frames behind (a slow reader: its socket full) is sent an
//!    `event: dropped` frame and ended: the node's memory never grows with a slow reader
//!    (the channel holds the frames once, for every client).
//! 3. A stream ends when the node stops; a comment line every [`KEEP_ALIVE`] keeps idle
//!    connections open through proxies.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::broadcast;

use super::app::App;
use super::store::now_ms;
use super::wire::TaskInfo;
use crate::Priority;

/// Frames the channel holds: how far a client may fall behind before it is dropped.
pub(crate) const EVENT_BUFFER: usize = 1024;
/// A comment line this often on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a `stats` event is sent.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// The longest error text an event carries (the task's record has all of it).
const MAX_EVENT_ERROR: usize = 512;

/// The event channel and the figures only the service knows.
pub(crate) struct Live {
    tx: broadcast::Sender<Arc<str>>,
    /// Attempts running now.
    pub running: AtomicU64,
    /// Tasks finished `SUCCESS`, `FAILURE`, `REVOKED` since the node started.
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub revoked: AtomicU64,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            tx: broadcast::channel(EVENT_BUFFER).0,
            running: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
        }
    }
}

impl Live {
    /// A `task` event: the task's record as `GET /v1/tasks/{id}` shows it, without its
    /// result and args (read them by id) and with its error cut to 512 bytes.
    pub fn task(&self, info: impl FnOnce() -> TaskInfo) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let mut info = info();
        info.result = None;
        info.args = None;
        if let Some(e) = &mut info.error {
            if e.len() > MAX_EVENT_ERROR {
                let mut cut = MAX_EVENT_ERROR;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
                e.push('…');
            }
        }
        self.send("task", &serde_json::to_string(&info).unwrap_or_default());
    }

    fn send(&self, kind: &str, data: &str) {
        // No receiver: nothing to do (rule 1).
        let _ = self
            .tx
            .send(Arc::from(format!("event: {kind}\ndata: {data}\n\n")));
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }
}

/// The `stats` event's figures.
pub(crate) fn stats(app: &App) -> serde_json::Value {
    let m = app.pool.metrics();
    let (stored, in_flight) = app.store.counts();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let live = &app.live;
    let c = &app.counters;
    let rejected: u64 = [
        &c.rejected_full,
        &c.rejected_in_flight,
        &c.rejected_bad_request,
        &c.rejected_unknown_task,
        &c.rejected_store,
    ]
    .into_iter()
    .map(load)
    .sum();
    json!({
        "at_ms": now_ms(),
        "queued": {
            Priority::High.as_str(): m.queued_high,
            Priority::Normal.as_str(): m.queued_normal,
            Priority::Low.as_str(): m.queued_low,
        },
        "scheduled": m.timers_pending,
        "workers": m.workers,
        "busy": load(&live.running).min(m.workers),
        "in_flight": in_flight,
        "stored": stored,
        "submitted": load(&app.counters.submitted),
        "rejected": rejected,
        "succeeded": load(&live.succeeded),
        "failed": load(&live.failed),
        "revoked": load(&live.revoked),
    })
}

/// Sends a `stats` event every second while a client listens, until the node stops.
pub(crate) async fn stats_loop(app: Arc<App>) {
    let mut stopping = app.stopping.subscribe();
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        if app.live.tx.receiver_count() > 0 {
            app.live.send("stats", &stats(&app).to_string());
        }
    }
}

/// `GET /v1/events`: the stream (rules 2 and 3). It starts with a `stats` event, so a
/// client has figures at once.
pub(crate) async fn events(AxState(app): AxState<Arc<App>>) -> Response {
    let rx = app.live.subscribe();
    let first = Bytes::from(format!("event: stats\ndata: {}\n\n", stats(&app)));
    let stopping = app.stopping.subscribe();
    let state = (Some(first), rx, stopping, false);
    let stream = futures_util::stream::unfold(
        state,
        |(first, mut rx, mut stopping, done)| async move {
            if done {
                return None;
            }
            if let Some(frame) = first {
                return Some((Ok::<_, Infallible>(frame), (None, rx, stopping, false)));
            }
            if *stopping.borrow() {
                return None;
            }
            enum Next {
                Frame(Bytes),
                Lagged(u64),
                End,
            }
            let next = tokio::select! {
                got = rx.recv() => match got {
                    Ok(frame) => Next::Frame(Bytes::copy_from_slice(frame.as_bytes())),
                    Err(broadcast::error::RecvError::Lagged(n)) => Next::Lagged(n),
                    Err(broadcast::error::RecvError::Closed) => Next::End,
                },
                _ = stopping.wait_for(|s| *s) => Next::End,
                _ = tokio::time::sleep(KEEP_ALIVE) => Next::Frame(Bytes::from_static(b": keep-alive\n\n")),
            };
            let frame = match next {
                Next::Frame(f) => f,
                Next::Lagged(n) => {
                    let data = json!({"reason": "slow reader", "missed": n});
                    let frame = Bytes::from(format!("event: dropped\ndata: {data}\n\n"));
                    return Some((Ok(frame), (None, rx, stopping, true)));
                }
                Next::End => return None,
            };
            Some((Ok(frame), (None, rx, stopping, false)))
        },
    );
    let mut res = Body::from_stream(stream).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The connection is the stream's: it closes when the stream ends.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}
