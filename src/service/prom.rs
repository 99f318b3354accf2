//! `GET /metrics`: the pool's counters and the service's own, in the Prometheus text format
//! (version 0.0.4).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::app::App;

/// Renders every metric with its `HELP` and `TYPE` lines.
pub(crate) fn render(app: &App) -> String {
    let m = app.pool.metrics();
    let c = &app.counters;
    let (stored, in_flight) = app.store.counts();
    let mut out = String::new();
    let mut one = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let counters: [(&str, &str, u64); 9] = [
        (
            "weft_tasks_spawned_total",
            "Tasks accepted by the pool.",
            m.spawned,
        ),
        (
            "weft_tasks_completed_total",
            "Tasks whose closure returned.",
            m.completed,
        ),
        (
            "weft_tasks_panicked_total",
            "Tasks whose closure panicked.",
            m.panicked,
        ),
        (
            "weft_tasks_cancelled_total",
            "Tasks that never ran: cancelled, or resolved by shutdown.",
            m.cancelled,
        ),
        (
            "weft_tasks_timed_out_total",
            "Task runs that passed their time limit.",
            m.timed_out,
        ),
        (
            "weft_tasks_retried_total",
            "Failed attempts sent back to the timer for another try.",
            m.retries_scheduled,
        ),
        (
            "weft_tasks_stolen_total",
            "Jobs taken from another worker's deque.",
            m.stolen,
        ),
        (
            "weft_timers_fired_total",
            "Timers that came due.",
            m.timers_fired,
        ),
        (
            "weft_service_submitted_total",
            "Submissions the node accepted.",
            load(&c.submitted),
        ),
    ];
    for (name, help, v) in counters {
        one(name, "counter", help, &[("", v)]);
    }
    one(
        "weft_queued",
        "gauge",
        "Jobs waiting in each lane now.",
        &[
            ("{lane=\"high\"}", m.queued_high),
            ("{lane=\"normal\"}", m.queued_normal),
            ("{lane=\"low\"}", m.queued_low),
        ],
    );
    one(
        "weft_workers",
        "gauge",
        "Worker threads in the pool.",
        &[("", m.workers)],
    );
    one(
        "weft_timers_pending",
        "gauge",
        "Tasks waiting in the timer for their deadline now.",
        &[("", m.timers_pending)],
    );
    one(
        "weft_submissions_rejected_total",
        "counter",
        "Submissions the node refused, by reason.",
        &[
            ("{reason=\"full\"}", load(&c.rejected_full)),
            ("{reason=\"in_flight\"}", load(&c.rejected_in_flight)),
            ("{reason=\"bad_request\"}", load(&c.rejected_bad_request)),
            ("{reason=\"unknown_task\"}", load(&c.rejected_unknown_task)),
            ("{reason=\"store\"}", load(&c.rejected_store)),
        ],
    );
    one(
        "weft_service_store_errors_total",
        "counter",
        "Writes the durable store refused (a full disk, an I/O error): submissions answered 507, final states tried again.",
        &[("", load(&c.store_errors))],
    );
    one(
        "weft_service_in_flight",
        "gauge",
        "Accepted tasks not finished yet.",
        &[("", in_flight as u64)],
    );
    one(
        "weft_service_waiters",
        "gauge",
        "Long-polls (GET ?wait=) in progress.",
        &[("", load(&app.waiters))],
    );
    one(
        "weft_service_results_stored",
        "gauge",
        "Task records held in the result store (in flight and finished).",
        &[("", stored as u64)],
    );
    one(
        "weft_service_results_bytes",
        "gauge",
        "What the finished records weigh (results and errors as JSON, plus about 256 bytes each), held under max_result_bytes.",
        &[("", app.store.finished_bytes() as u64)],
    );
    let k = &app.connections;
    one(
        "weft_service_connections",
        "gauge",
        "HTTP connections the node holds open now (at most max_connections).",
        &[("", load(&k.open))],
    );
    one(
        "weft_service_connections_closed_total",
        "counter",
        "HTTP connections the node closed or refused, by reason: the request's head or an idle spell took too long, evicted or refused at the connection cap.",
        &[
            ("{reason=\"header_timeout\"}", load(&k.header_timeouts)),
            ("{reason=\"idle_timeout\"}", load(&k.idle_timeouts)),
            ("{reason=\"evicted\"}", load(&k.evicted)),
            ("{reason=\"refused\"}", load(&k.refused)),
        ],
    );
    out
}
