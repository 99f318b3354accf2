//! The Redis transport, with kombu's key layout (`kombu/transport/redis.py`), so that weft
//! and Python Celery workers share queues, acks and recovery.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `<queue>` | list | messages of priority 0 (`LPUSH` by producers, `BRPOP` by workers) |
//! | `<queue>\x06\x16<p>` | list | messages of priority step `p` in 3, 6, 9 (a priority is rounded down to its step; on Redis 0 is served first) |
//! | `unacked` | hash | delivery tag → JSON `[envelope, exchange, routing_key]` of every message a worker holds |
//! | `unacked_index` | sorted set | delivery tag scored by the time it was taken (seconds since the epoch) |
//! | `unacked_mutex` | string | the lock (token, 5 min expiry) held by whoever runs the restore sweep |
//! | `celery-task-meta-<id>` | string | the result record, with an expiry (`SETEX`), and `PUBLISH`ed on a channel of the same name |
//! | `weft.dead_letter` | list | weft's own: JSON `{"reason", "queue", "message"}` of each message that could not be read |
//!
//! Acks are late (kombu's ack emulation): a message is recorded in `unacked` as it is
//! taken, and removed once its result is written. A worker that dies leaves its messages in
//! `unacked`; the restore sweep ([`restore_visible`]) pushes back every message taken longer
//! ago than the visibility timeout, whoever took it (a Python worker restores a dead weft
//! worker's messages and the other way round). Delivery is therefore at-least-once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{Commands, Connection, RedisResult};
use serde_json::{json, Value};

use super::protocol::{TaskMessage, TaskResult};

/// kombu's separator between a queue's name and its priority step.
pub const PRIORITY_SEP: &str = "\x06\x16";
/// kombu's priority steps: a message priority is rounded down to one of them.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
/// The hash of messages taken but not acknowledged.
pub const UNACKED: &str = "unacked";
/// The sorted set of unacknowledged delivery tags, scored by the time they were taken.
pub const UNACKED_INDEX: &str = "unacked_index";
/// The restore sweep's lock.
pub const UNACKED_MUTEX: &str = "unacked_mutex";
/// How long the restore lock lives if its holder dies (kombu: 300 s).
pub const UNACKED_MUTEX_EXPIRE: Duration = Duration::from_secs(300);
/// kombu's default visibility timeout: a message unacknowledged for longer is restored.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Celery's default result expiry (`result_expires`): one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);
/// weft's dead-letter list.
pub const DEAD_LETTER: &str = "weft.dead_letter";

/// The list a message of `priority` on `queue` goes to.
///
/// ```
/// use weft::celery::redis::queue_for_priority;
/// assert_eq!(queue_for_priority("celery", 0), "celery");
/// assert_eq!(queue_for_priority("celery", 2), "celery");
/// assert_eq!(queue_for_priority("celery", 4), "celery\x06\x163");
/// assert_eq!(queue_for_priority("celery", 200), "celery\x06\x169");
/// ```
pub fn queue_for_priority(queue: &str, priority: u8) -> String {
    let step = PRIORITY_STEPS
        .iter()
        .rev()
        .find(|s| **s <= priority)
        .copied()
        .unwrap_or(0);
    if step == 0 {
        queue.to_owned()
    } else {
        format!("{queue}{PRIORITY_SEP}{step}")
    }
}

/// The queue a list belongs to (the list's name without its priority suffix).
pub fn queue_of_list(list: &str) -> &str {
    list.rsplit_once(PRIORITY_SEP).map_or(list, |(q, _)| q)
}

/// The lists to `BRPOP`, in kombu's order: every queue's priority-0 list, then every
/// queue's step-3 list, and so on (Redis pops from the first non-empty one).
pub fn brpop_keys<S: AsRef<str>>(queues: &[S]) -> Vec<String> {
    PRIORITY_STEPS
        .iter()
        .flat_map(|p| {
            queues
                .iter()
                .map(move |q| queue_for_priority(q.as_ref(), *p))
        })
        .collect()
}

/// The result key of task `id`.
pub fn result_key(id: &str) -> String {
    format!("celery-task-meta-{id}")
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Publishes `msg` on its queue (`LPUSH` to the list of its priority), as `send_task` does.
pub fn publish(conn: &mut Connection, msg: &TaskMessage) -> RedisResult<()> {
    conn.lpush(
        queue_for_priority(&msg.routing_key, msg.priority),
        msg.encode(),
    )
}

/// Takes the next message from `keys` (see [`brpop_keys`]), waiting at most `timeout`
/// (whole seconds, at least 1): the list it came from and its bytes.
pub fn brpop(
    conn: &mut Connection,
    keys: &[String],
    timeout: Duration,
) -> RedisResult<Option<(String, Vec<u8>)>> {
    redis::cmd("BRPOP")
        .arg(keys)
        .arg(timeout.as_secs_f64().max(0.01))
        .query(conn)
}

/// Records a taken message as unacknowledged (`MULTI; ZADD unacked_index; HSET unacked`).
pub fn append_unacked(
    conn: &mut Connection,
    tag: &str,
    envelope: &Value,
    exchange: &str,
    routing_key: &str,
) -> RedisResult<()> {
    let entry = json!([envelope, exchange, routing_key]).to_string();
    redis::pipe()
        .atomic()
        .zadd(UNACKED_INDEX, tag, now_secs())
        .ignore()
        .hset(UNACKED, tag, entry)
        .ignore()
        .query(conn)
}

/// Refreshes the `unacked_index` score of each of `tags` still there (`ZADD XX`): the
/// heartbeat of a live worker's held messages.
pub fn heartbeat(conn: &mut Connection, tags: &[String]) -> RedisResult<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let now = now_secs();
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(UNACKED_INDEX).arg("XX");
    for tag in tags {
        cmd.arg(now).arg(tag);
    }
    cmd.query(conn)
}

/// Writes `result` for task `id` (`SETEX` with `expires`, then `PUBLISH` on the same name)
/// and acknowledges `tag` (`ZREM unacked_index; HDEL unacked`), in one transaction.
pub fn finish(
    conn: &mut Connection,
    id: &str,
    result: &TaskResult,
    expires: Duration,
    tag: Option<&str>,
) -> RedisResult<()> {
    let key = result_key(id);
    let meta = result.to_meta(id, SystemTime::now()).to_string();
    let mut pipe = redis::pipe();
    pipe.atomic();
    store_and_ack(&mut pipe, &key, &meta, expires, tag);
    pipe.query(conn)
}

/// Celery's retry: sends `next` (the same task id, `retries + 1`, a new ETA and delivery
/// tag), records `RETRY` for it and acknowledges `tag`, in one transaction.
pub fn retry(
    conn: &mut Connection,
    next: &TaskMessage,
    reason: &str,
    expires: Duration,
    tag: Option<&str>,
) -> RedisResult<()> {
    let key = result_key(&next.id);
    let meta = TaskResult::Retry(reason.to_owned())
        .to_meta(&next.id, SystemTime::now())
        .to_string();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .lpush(
            queue_for_priority(&next.routing_key, next.priority),
            next.encode(),
        )
        .ignore();
    store_and_ack(&mut pipe, &key, &meta, expires, tag);
    pipe.query(conn)
}

/// Adds to `pipe`: the result record (`SETEX` + `PUBLISH` on its key), and the ack of
/// `tag` if the message was held unacknowledged.
fn store_and_ack(
    pipe: &mut redis::Pipeline,
    key: &str,
    meta: &str,
    expires: Duration,
    tag: Option<&str>,
) {
    pipe.set_ex(key, meta, expires.as_secs().max(1))
        .ignore()
        .publish(key, meta)
        .ignore();
    if let Some(tag) = tag {
        pipe.zrem(UNACKED_INDEX, tag)
            .ignore()
            .hdel(UNACKED, tag)
            .ignore();
    }
}

/// Moves an unreadable message to the dead-letter list with the reason.
pub fn dead_letter(
    conn: &mut Connection,
    queue: &str,
    raw: &[u8],
    reason: &str,
) -> RedisResult<()> {
    let entry = json!({
        "reason": reason,
        "queue": queue,
        "message": String::from_utf8_lossy(raw),
    });
    conn.lpush(DEAD_LETTER, entry.to_string())
}

/// Puts the message of `tag` back on its queue (`RPUSH`, so it is taken next) and forgets
/// it as unacknowledged, atomically (`WATCH unacked`), marking it `redelivered` as kombu
/// does. Returns false if `tag` was not unacknowledged any more.
pub fn restore_by_tag(conn: &mut Connection, tag: &str) -> RedisResult<bool> {
    loop {
        redis::cmd("WATCH").arg(UNACKED).query::<()>(conn)?;
        let entry: Option<String> = conn.hget(UNACKED, tag)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zrem(UNACKED_INDEX, tag)
            .ignore()
            .hdel(UNACKED, tag)
            .ignore();
        let found = entry.is_some();
        if let Some(entry) = entry {
            if let Ok(Value::Array(mut parts)) = serde_json::from_str::<Value>(&entry) {
                let routing_key = parts
                    .get(2)
                    .and_then(Value::as_str)
                    .unwrap_or("celery")
                    .to_owned();
                let mut payload = parts.swap_remove(0);
                if let Some(h) = payload.get_mut("headers").and_then(Value::as_object_mut) {
                    h.insert("redelivered".into(), json!(true));
                }
                if let Some(i) = payload
                    .get_mut("properties")
                    .and_then(|p| p.get_mut("delivery_info"))
                    .and_then(Value::as_object_mut)
                {
                    i.insert("redelivered".into(), json!(true));
                }
                let priority = payload
                    .pointer("/properties/priority")
                    .and_then(Value::as_u64)
                    .map_or(0, |p| p.min(255) as u8);
                pipe.rpush(
                    queue_for_priority(&routing_key, priority),
                    payload.to_string(),
                )
                .ignore();
            }
        }
        // EXEC answers nil if `unacked` changed since WATCH: try again.
        let done: Option<()> = pipe.query(conn)?;
        if done.is_some() {
            return Ok(found);
        }
    }
}

/// kombu's restore sweep: under the `unacked_mutex` lock (skipped if someone else holds
/// it), restores every message taken longer than `visibility_timeout` ago. Returns how
/// many were restored.
pub fn restore_visible(conn: &mut Connection, visibility_timeout: Duration) -> RedisResult<usize> {
    let token = uuid::Uuid::new_v4().to_string();
    let locked: Option<String> = redis::cmd("SET")
        .arg(UNACKED_MUTEX)
        .arg(&token)
        .arg("NX")
        .arg("EX")
        .arg(UNACKED_MUTEX_EXPIRE.as_secs())
        .query(conn)?;
    if locked.is_none() {
        return Ok(0);
    }
    let ceil = now_secs() - visibility_timeout.as_secs_f64();
    let swept = (|| -> RedisResult<usize> {
        let tags: Vec<String> = conn.zrangebyscore(UNACKED_INDEX, "-inf", ceil)?;
        let mut n = 0;
        for tag in tags {
            if restore_by_tag(conn, &tag)? {
                n += 1;
            }
        }
        Ok(n)
    })();
    // Release only our own lock (it may have expired and been taken by another).
    let release = redis::Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
    );
    let _: i64 = release.key(UNACKED_MUTEX).arg(&token).invoke(conn)?;
    swept
}
