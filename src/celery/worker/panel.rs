//! The worker's remote-control panel (Celery's `celery/worker/control.py`): answers each
//! request addressed to the worker, in Celery's reply shapes. The transports deliver the
//! requests and send the replies ([`control`](crate::celery::control)).
//!
//! Inspect: `ping`, `stats`, `active`, `reserved`, `scheduled`, `registered`, `revoked`,
//! `active_queues`, `conf`, `query_task`, `report`, `clock`, `hello`. Control: `revoke`,
//! `terminate`, `enable_events`, `disable_events`, `heartbeat`, `rate_limit`,
//! `time_limit`, `add_consumer`, `cancel_consumer`, `shutdown`. What weft cannot honour
//! (`pool_grow`, `pool_shrink`, `pool_restart`, `autoscale` on a fixed pool; Python's
//! debugging commands) and unknown
//! commands get `{"error": ...}`, as Celery answers them; so do requests with missing or
//! wrong arguments, and the worker carries on.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::super::control::{nok, ok, Panel, Request};
use super::super::events::{py_repr, py_tuple_repr};
use super::live::{Done, Halt, Live, QueueChange, WorkerShared, STARTED, WAITING};
use crate::registry::RateLimit;

/// What the panel knows of its worker beyond [`WorkerShared`].
pub(super) struct WorkerPanel {
    pub(super) shared: Arc<WorkerShared>,
    /// Where revoked tasks' results go.
    pub(super) done: mpsc::Sender<Done>,
    /// Every task name the worker runs (its registry with Celery's built-ins), sorted.
    pub(super) tasks: Vec<String>,
    /// Tasks run at once (the pool's threads).
    pub(super) concurrency: usize,
    pub(super) prefetch: usize,
    /// `stats`' `broker` (Celery's `connection.info()`).
    pub(super) broker: Value,
    /// `conf`'s settings.
    pub(super) conf: Value,
    /// `report`'s text.
    pub(super) report: String,
}

impl Panel for WorkerPanel {
    fn answer(&self, req: &Request) -> Option<Value> {
        let hostname = self.shared.hostname.as_str();
        Some(match req.method.as_str() {
            "ping" => ok("pong"),
            "stats" => self.stats(),
            "active" | "dump_active" => {
                Value::Array(self.tasks_where(Held::Active, req.arg_bool("safe")))
            }
            "reserved" | "dump_reserved" => Value::Array(self.tasks_where(Held::Reserved, false)),
            "scheduled" | "dump_schedule" => self.scheduled(),
            "registered" | "dump_tasks" => self.registered(req),
            "revoked" | "dump_revoked" => json!(self.shared.revoked.list()),
            "active_queues" => self.active_queues(),
            "conf" | "dump_conf" => self.conf.clone(),
            "query_task" => self.query_task(req),
            "report" => ok(self.report.clone()),
            "clock" => json!({"clock": self.shared.monitor.clock.value()}),
            "hello" => return Some(self.hello(req)),
            "revoke" => self.revoke(req, req.arg_bool("terminate")),
            "terminate" => self.revoke(req, true),
            "enable_events" => {
                if self.shared.monitor.events.set_task_events(true) {
                    ok("task events already enabled")
                } else {
                    ok("task events enabled")
                }
            }
            "disable_events" => {
                if self.shared.monitor.events.set_task_events(false) {
                    ok("task events disabled")
                } else {
                    ok("task events already disabled")
                }
            }
            "heartbeat" => {
                self.shared.monitor.events.heartbeat_now();
                Value::Null
            }
            "time_limit" => self.time_limit(req),
            "rate_limit" => self.rate_limit(req),
            "shutdown" => {
                eprintln!("weft-celery {hostname}: shutdown asked by remote control");
                self.shared.monitor.set_halt(Halt::Asked);
                self.shared.stop.store(true, Ordering::Release);
                self.shared.room.notify_all();
                // No reply, as Celery's (it exits).
                return None;
            }
            // As Celery answers where they are not enabled.
            "pool_restart" => nok("ValueError('Pool restarts not enabled')"),
            "autoscale" => nok("ValueError('Autoscale not enabled')"),
            "pool_grow" | "pool_shrink" => nok(format!(
                "{}: weft's pool has a fixed number of threads ({}); start the worker with \
                 another `workers` count instead",
                req.method, self.concurrency
            )),
            "add_consumer" | "cancel_consumer" => self.change_queue(req),
            "memsample" | "memdump" | "objgraph" | "election" | "revoke_by_stamped_headers" => {
                nok(format!("{}: not supported by weft workers", req.method))
            }
            // Celery's reply to a command it does not know.
            other => nok(format!("KeyError({})", py_repr(&json!(other)))),
        })
    }

    fn clock(&self) -> u64 {
        self.shared.monitor.clock.forward()
    }
}

/// Which of the tasks held a listing shows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Running now (`active`).
    Active,
    /// Waiting for a thread, not for an ETA (`reserved`: taken beyond the pool's
    /// concurrency, or rate limited).
    Reserved,
    /// Waiting for an ETA (`scheduled`).
    Scheduled,
}

/// Where a held task stands, if it is still held.
fn held_as(task: &Live) -> Option<Held> {
    if task.handle.is_finished() {
        return None;
    }
    match task.state.load(Ordering::SeqCst) {
        STARTED => Some(Held::Active),
        // Not counted against the prefetch limit: waiting for its ETA.
        WAITING if !task.counted => Some(Held::Scheduled),
        WAITING => Some(Held::Reserved),
        _ => None,
    }
}

impl WorkerPanel {
    /// The tasks held as `which`, as Celery's `Request.info(safe)`.
    fn tasks_where(&self, which: Held, safe: bool) -> Vec<Value> {
        let hostname = &self.shared.hostname;
        self.shared
            .live
            .lock()
            .values()
            .filter(|t| held_as(t) == Some(which))
            .map(|t| {
                let mut info = t.info.info(&t.id, hostname);
                if safe {
                    // Arguments as Python's reprs: `"(4,)"`, `"{}"`.
                    let args = py_tuple_repr(t.info.args.as_array().map_or(&[], |a| a));
                    info["args"] = json!(args);
                    info["kwargs"] = json!(py_repr(&t.info.kwargs));
                }
                info
            })
            .collect()
    }

    /// `[{"eta", "priority", "request"}]`, as Celery's `scheduled`.
    fn scheduled(&self) -> Value {
        let hostname = &self.shared.hostname;
        let live = self.shared.live.lock();
        Value::Array(
            live.values()
                .filter(|t| held_as(t) == Some(Held::Scheduled))
                .map(|t| {
                    json!({
                        "eta": t.info.eta,
                        "priority": t.info.priority,
                        "request": t.info.info(&t.id, hostname),
                    })
                })
                .collect(),
        )
    }

    /// `{id: [state, info]}` for the ids held (`active`, `reserved` or `scheduled`).
    fn query_task(&self, req: &Request) -> Value {
        let Some(ids) = req.arg_list("ids").or_else(|| req.arg_list("task_id")) else {
            return nok("query_task: the argument `ids` (a task id or a list of them) is missing");
        };
        let hostname = &self.shared.hostname;
        let live = self.shared.live.lock();
        let mut out = Map::new();
        for t in live.values().filter(|t| ids.contains(&t.id)) {
            let state = match held_as(t) {
                Some(Held::Active) => "active",
                Some(Held::Reserved) => "reserved",
                Some(Held::Scheduled) => "scheduled",
                None => continue,
            };
            out.insert(t.id.clone(), json!([state, t.info.info(&t.id, hostname)]));
        }
        Value::Object(out)
    }

    /// Celery's `registered`: the task names, sorted, without Celery's built-ins unless
    /// `builtins`; each with `[field=value ...]` for the fields asked for
    /// (`taskinfoitems`, default `exchange`, `routing_key`, `rate_limit`) that are set:
    /// `add [rate_limit=10/s]`.
    fn registered(&self, req: &Request) -> Value {
        let builtins = req.arg_bool("builtins");
        // Celery's `taskinfoitems or DEFAULT_TASK_INFO_ITEMS`: an empty list is the default.
        let items = req
            .arg_list("taskinfoitems")
            .filter(|items| !items.is_empty())
            .unwrap_or_else(|| vec!["exchange".into(), "routing_key".into(), "rate_limit".into()]);
        let names = self
            .tasks
            .iter()
            .filter(|n| builtins || !n.starts_with("celery."));
        let out: Vec<Value> = names
            .map(|name| {
                let fields: Vec<String> = items
                    .iter()
                    .filter_map(|item| {
                        let value = match item.as_str() {
                            "rate_limit" => self.rate_limit_of(name)?,
                            _ => return None,
                        };
                        Some(format!("{item}={value}"))
                    })
                    .collect();
                if fields.is_empty() {
                    json!(name)
                } else {
                    json!(format!("{name} [{}]", fields.join(" ")))
                }
            })
            .collect();
        Value::Array(out)
    }

    /// The rate limit in force for `name`, as Celery shows it.
    fn rate_limit_of(&self, name: &str) -> Option<String> {
        self.shared.limits.get(name).map(|l| l.to_string())
    }

    /// Celery's `rate_limit`: the rate string is checked first (Celery's words for a bad
    /// one), then the task's name; the task's token bucket takes the new limit (`""`,
    /// `"0"`: none) and every bucket is refilled, as Celery's `reset_rate_limits`.
    fn rate_limit(&self, req: &Request) -> Value {
        let (Some(name), Some(rate)) = (
            req.arg("task_name").and_then(Value::as_str),
            req.arg("rate_limit"),
        ) else {
            return nok(
                "rate_limit: the arguments `task_name` and `rate_limit` (e.g. \"5/s\") are \
                 required",
            );
        };
        let rate = match rate {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return nok(format!("Invalid rate limit string: {other}")),
        };
        if let Err(e) = RateLimit::parse(&rate) {
            let number = rate.split('/').next().unwrap_or("");
            return nok(if e.is_bad_unit() {
                // Celery's lookup of the unit fails with a KeyError, replied as is.
                let unit = rate.split_once('/').map_or("", |(_, u)| u);
                format!("KeyError({})", py_repr(&json!(unit)))
            } else if e.is_not_a_number() {
                format!(
                    "Invalid rate limit string: ValueError(\"could not convert string to \
                     float: {}\")",
                    py_repr(&json!(number))
                )
            } else {
                format!("Invalid rate limit string: {e}")
            });
        }
        if !self.tasks.iter().any(|t| t == name) {
            return nok("unknown task");
        }
        match self.shared.limits.set(name, &rate) {
            Err(e) => nok(format!("Invalid rate limit string: {e}")),
            Ok(_) if rate.is_empty() => ok("rate limit disabled successfully"),
            Ok(_) => ok("new rate limit set successfully"),
        }
    }

    /// Celery's `add_consumer` / `cancel_consumer`: the consumer thread adds or cancels the
    /// queue at its next turn (within a quarter second), as Celery's `call_soon`; the
    /// reply comes first, in Celery's words. An added queue is declared as the worker's
    /// own queues are (its `exchange`, `exchange_type` and `routing_key` arguments are not
    /// used) and runs in the Normal lane.
    fn change_queue(&self, req: &Request) -> Value {
        let Some(queue) = req
            .arg("queue")
            .and_then(Value::as_str)
            .filter(|q| !q.is_empty())
        else {
            return nok(format!(
                "TypeError(\"{}() missing 1 required positional argument: 'queue'\")",
                req.method
            ));
        };
        if req.method == "add_consumer" {
            self.shared
                .change_queues(QueueChange::Add(queue.to_owned()));
            ok(format!("add consumer {queue}"))
        } else {
            self.shared
                .change_queues(QueueChange::Cancel(queue.to_owned()));
            ok(format!("no longer consuming from {queue}"))
        }
    }

    /// Celery's `hello` (mingle): from another node, its revoked ids are merged into ours
    /// and ours go back with our clock; from ourselves, no data.
    fn hello(&self, req: &Request) -> Value {
        let Some(from) = req.arg("from_node").and_then(Value::as_str) else {
            return nok("hello: the argument `from_node` is missing");
        };
        if from == self.shared.hostname {
            return Value::Null;
        }
        // Celery iterates `revoked` (a str is its characters there; here one id).
        let ids = match req.arg("revoked") {
            None | Some(Value::Null) => Vec::new(),
            Some(v @ (Value::Bool(_) | Value::Number(_))) => {
                let ty = if v.is_boolean() {
                    "bool"
                } else if v.is_f64() {
                    "float"
                } else {
                    "int"
                };
                return nok(format!("TypeError(\"'{ty}' object is not iterable\")"));
            }
            Some(_) => match req.arg_list("revoked") {
                Some(ids) => ids,
                None => return nok("hello: `revoked` must be a list of task ids"),
            },
        };
        for id in &ids {
            self.shared.revoked.add(id);
        }
        json!({
            "revoked": self.shared.revoked.list(),
            "clock": self.shared.monitor.clock.forward(),
        })
    }

    /// `revoke` / `terminate`, as Celery's replies word them.
    fn revoke(&self, req: &Request, terminate: bool) -> Value {
        let Some(ids) = req.arg_list("task_id") else {
            // Celery's words for the call without it.
            return nok(format!(
                "TypeError(\"{}() missing 1 required positional argument: 'task_id'\")",
                req.method
            ));
        };
        let running: Vec<String> = if terminate {
            let live = self.shared.live.lock();
            live.values()
                .filter(|t| ids.contains(&t.id) && held_as(t) == Some(Held::Active))
                .map(|t| t.id.clone())
                .collect()
        } else {
            Vec::new()
        };
        self.shared.revoke(&ids, terminate, &self.done);
        if terminate {
            if running.is_empty() {
                return ok("terminate: tasks unknown");
            }
            return ok(format!("terminate: {}", running.join(", ")));
        }
        let set: Vec<String> = ids.iter().map(|i| py_repr(&json!(i))).collect();
        ok(format!("tasks {{{}}} flagged as revoked", set.join(", ")))
    }

    /// Celery's `time_limit`: the task's limit becomes the shorter of `soft` and `hard`
    /// (weft has one, [`checkpoint`](crate::checkpoint)-checked); neither given removes it.
    fn time_limit(&self, req: &Request) -> Value {
        let Some(name) = req.arg("task_name").and_then(Value::as_str) else {
            return nok("time_limit: the argument `task_name` is missing");
        };
        if !self.tasks.iter().any(|t| t == name) {
            return nok("unknown task");
        }
        let mut limit = None;
        for key in ["soft", "hard"] {
            let secs = match req.arg(key) {
                None => continue,
                Some(v) => v
                    .as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok())),
            };
            let Some(d) = secs
                .filter(|s| *s >= 0.0)
                .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
            else {
                return nok(format!("time_limit: `{key}` must be a number of seconds"));
            };
            if !d.is_zero() {
                limit = Some(limit.map_or(d, |l: std::time::Duration| l.min(d)));
            }
        }
        self.shared.monitor.set_time_limit(name, limit);
        ok("time limits set successfully")
    }

    /// Celery's `stats`.
    fn stats(&self) -> Value {
        let m = &self.shared.monitor;
        let total: Map<String, Value> = m.totals().map(|(k, v)| (k.to_owned(), json!(v))).collect();
        json!({
            "total": total,
            "pid": std::process::id(),
            "clock": m.clock.value().to_string(),
            "uptime": m.started_at.elapsed().as_secs(),
            "pool": {
                "implementation": "weft:Pool",
                "max-concurrency": self.concurrency,
                "threads": self.concurrency,
                "processes": [std::process::id()],
                "max-tasks-per-child": "N/A",
                "put-guarded-by-semaphore": false,
                "timeouts": [0, 0],
            },
            "broker": self.broker,
            "prefetch_count": self.prefetch,
            "rusage": rusage(),
        })
    }

    /// Celery's `active_queues`: each queue as kombu's `Queue.as_dict(recurse=True)`.
    fn active_queues(&self) -> Value {
        let queues = self.shared.queues.lock();
        Value::Array(queues.iter().map(|(q, _)| queue_dict(q)).collect())
    }
}

/// kombu's `Queue(name).as_dict(recurse=True)` for a queue declared as Celery declares
/// its task queues: a durable direct exchange of the same name, routing key the name.
pub(super) fn queue_dict(name: &str) -> Value {
    json!({
        "name": name,
        "exchange": {
            "name": name,
            "type": "direct",
            "arguments": null,
            "durable": true,
            "passive": false,
            "auto_delete": false,
            "delivery_mode": null,
            "no_declare": false,
        },
        "routing_key": name,
        "queue_arguments": null,
        "binding_arguments": null,
        "consumer_arguments": null,
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "no_ack": false,
        "alias": null,
        "bindings": [],
        "no_declare": null,
        "expires": null,
        "message_ttl": null,
        "max_length": null,
        "max_length_bytes": null,
        "max_priority": null,
    })
}

/// Python's `resource.getrusage(RUSAGE_SELF)` as Celery's `stats` shows it, read from
/// `/proc/self` (times in seconds, `maxrss` in kilobytes); `"N/A"` where there is no
/// `/proc`, as Celery says where `resource` is missing.
fn rusage() -> Value {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return json!("N/A");
    };
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Field n of stat(5) is f[n - 3]; clock ticks are 1/100 s on Linux (USER_HZ).
    let ticks = |i: usize| num(i) as f64 / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    json!({
        "utime": ticks(11),
        "stime": ticks(12),
        "maxrss": field("VmHWM:"),
        "ixrss": 0,
        "idrss": 0,
        "isrss": 0,
        "minflt": num(7),
        "majflt": num(9),
        "nswap": 0,
        "inblock": 0,
        "oublock": 0,
        "msgsnd": 0,
        "msgrcv": 0,
        "nsignals": 0,
        "nvcsw": field("voluntary_ctxt_switches:"),
        "nivcsw": field("nonvoluntary_ctxt_switches:"),
    })
}

/// Celery's `connection.info()` for the broker at `url` (the password left out).
pub(super) fn broker_info(url: &str) -> Value {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let (auth, hostpart) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (hostport, vhost) = hostpart.split_once('/').unwrap_or((hostpart, ""));
    let hostport = hostport.split(';').next().unwrap_or(hostport);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()),
        None => (hostport, None),
    };
    let userid = auth
        .map(|a| a.split_once(':').map_or(a, |(u, _)| u))
        .filter(|u| !u.is_empty());
    let (transport, default_port, vhost) = match scheme {
        "amqp" | "amqps" => (
            "amqp",
            5672,
            match vhost {
                "" | "%2f" | "%2F" => "/".to_owned(),
                v => v.replace("%2f", "/").replace("%2F", "/"),
            },
        ),
        "sentinel" => ("sentinel", 26379, vhost.to_owned()),
        _ => ("redis", 6379, vhost.to_owned()),
    };
    json!({
        "hostname": host,
        "userid": userid,
        "virtual_host": if vhost.is_empty() { "0".to_owned() } else { vhost },
        "port": port.unwrap_or(default_port),
        "insist": false,
        "ssl": matches!(scheme, "amqps" | "rediss"),
        "transport": transport,
        "connect_timeout": 4,
        "transport_options": {},
        "login_method": null,
        "uri_prefix": null,
        "heartbeat": 120.0,
        "failover_strategy": "round-robin",
        "alternates": [],
        "credential_provider": null,
    })
}

/// `url` with its password masked, as Celery's `maybe_sanitize_url`.
pub(super) fn sanitize_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:********@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
