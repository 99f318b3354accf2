//! The Redis transport, with kombu's key layout (`kombu/transport/redis.py`), so that weft
//! and Python Celery workers share queues, acks and recovery.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `<queue>` | list | messages of priority 0 (`LPUSH` by producers; kombu's workers `BRPOP`, weft's pop in a script, see [`pop_and_record`]) |
//! | `<queue>\x06\x16<p>` | list | messages of priority step `p` in 3, 6, 9 (a priority is rounded down to its step; on Redis 0 is served first) |
//! | `unacked` | hash | delivery tag → JSON `[envelope, exchange, routing_key]` of every message a worker holds |
//! | `unacked_index` | sorted set | delivery tag scored by the time it was taken (seconds since the epoch) |
//! | `unacked_mutex` | string | the lock (token, 5 min expiry) held by whoever runs the restore sweep |
//! | `celery-task-meta-<id>` | string | the result record, with an expiry (`SETEX`), and `PUBLISH`ed on a channel of the same name (written by the broker-neutral result backend, `celery/backend.rs`; [`result_key`], [`finish`] re-exported here) |
//! | `weft.dead_letter` | list | weft's own: JSON `{"reason", "queue", "message"}` of each message that could not be read |
//!
//! Acks are emulated as kombu does: a message is recorded in `unacked` as it is taken (in
//! the same script as the pop, [`pop_and_record`], so no kill can lose it between the two),
//! and removed when it is acknowledged: as its task starts, or, with late acks, once its
//! result is written. A worker that dies leaves its messages in
//! `unacked`; the restore sweep ([`restore_visible`]) pushes back every message taken longer
//! ago than the visibility timeout, whoever took it (a Python worker restores a dead weft
//! worker's messages and the other way round). Delivery is therefore at-least-once.
//!
//! Behind Redis Sentinel (`sentinel://`, [`Worker::sentinel_master`](super::Worker::sentinel_master))
//! the layout is the same on whichever Redis is the master: every connection of the
//! transport (consumer, settler, tracker, remote control) asks the sentinels for the
//! current master when it connects, so each reconnect after a failover reaches the
//! promoted replica. What the old master had not replicated is lost with it (messages,
//! `unacked` records, results); a message whose pop was lost is taken again.
//!
//! This file holds the key layout and its operations (publish, pop-and-record, heartbeat,
//! acknowledge, dead-letter, restore); `transport.rs` the worker's and the client's
//! transport over them; `wake.rs` how a consumer waits for a message ([`Wake`], [`track`]);
//! `pidbox.rs` the Redis side of remote control.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{Commands, Connection, RedisResult};
use serde_json::{json, Value};

use super::backend::{add_result, retry_meta, store};
use super::protocol::TaskMessage;
use super::result::TaskResult;

mod events;
mod pidbox;
mod transport;
mod wake;

pub(crate) use events::RedisEvents;
pub(crate) use transport::{RedisPublisher, RedisTransport};
pub use wake::{track, Wake, POLL_WITHOUT_TRACKING};

pub use super::backend::{
    connect, result_key, COMMAND_TIMEOUT, CONNECT_TIMEOUT, DEFAULT_RESULT_EXPIRES,
};

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

/// The lists a worker takes from, in the order kombu's `BRPOP` names them: every queue's
/// priority-0 list, then every queue's step-3 list, and so on (the first non-empty one is
/// served first).
pub fn consume_keys<S: AsRef<str>>(queues: &[S]) -> Vec<String> {
    PRIORITY_STEPS
        .iter()
        .flat_map(|p| {
            queues
                .iter()
                .map(move |q| queue_for_priority(q.as_ref(), *p))
        })
        .collect()
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

/// Takes up to `max` messages from `keys` (see [`consume_keys`]; `queues[i]` is the queue of
/// `keys[i]`), in order, and records each as unacknowledged, all in one server-side script,
/// so that no message is ever out of both its list and `unacked`: a worker killed at any
/// moment leaves each message it took either on its list or in `unacked`, where the restore
/// sweep finds it.
///
/// kombu's own consumer pops with `BRPOP` and records with a second command, so a Python
/// worker killed between the two loses the message it had just popped; weft's does not.
/// The entry written is kombu's (`[envelope, exchange, routing_key]`, the envelope
/// verbatim), so either kind of worker can restore it. An entry that is not a kombu
/// envelope with a delivery tag is returned without a record (it is dead-lettered).
/// The script reads `properties.delivery_tag` and `delivery_info`'s `exchange` and
/// `routing_key` without decoding the envelope when `"properties"` occurs once and each
/// occurs once after it, as a string without escapes (kombu's and weft's envelopes: a
/// third of the script's time per message was `cjson.decode`), and decodes it otherwise.
/// It pops with one `RPOP` with a count per list (one at a time before Redis 6.2) and
/// records the whole take in one `ZADD` and one `HSET`.
///
/// The same script also writes the tags it recorded under `fetch`'s key (see
/// [`Fetch`]), so that a consumer that did not get the answer (the connection dropped, the
/// command timed out while Redis was stalled) can find and put back what it took
/// ([`recover_fetch`]) instead of leaving it in `unacked` until the visibility timeout.
///
/// Returns `(list, bytes, tag)` of each message taken, oldest first within a list: `tag`
/// is the delivery tag it was recorded under, `None` if it was not recorded. A key that is
/// not a list is skipped.
pub fn pop_and_record(
    conn: &mut Connection,
    keys: &[String],
    queues: &[String],
    max: usize,
    fetch: &Fetch,
) -> RedisResult<Vec<Popped>> {
    if max == 0 || keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut inv = POP_AND_RECORD.prepare_invoke();
    inv.key(UNACKED_INDEX).key(UNACKED).key(&fetch.key);
    for k in keys {
        inv.key(k);
    }
    inv.arg(max).arg(now_secs()).arg(fetch.seq);
    for q in queues {
        inv.arg(q);
    }
    let flat: Vec<Vec<u8>> = inv.invoke(conn)?;
    let mut out = Vec::with_capacity(flat.len() / 3);
    let mut it = flat.into_iter();
    while let (Some(list), Some(raw), Some(tag)) = (it.next(), it.next(), it.next()) {
        let tag = (!tag.is_empty()).then(|| String::from_utf8_lossy(&tag).into_owned());
        out.push((String::from_utf8_lossy(&list).into_owned(), raw, tag));
    }
    Ok(out)
}

/// One message taken by [`pop_and_record`]: the list it came from, its bytes, and the
/// delivery tag it was recorded under (`None`: not recorded).
pub type Popped = (String, Vec<u8>, Option<String>);

/// Which take a [`pop_and_record`] is: a consumer's own record key (`weft.fetch.<uuid>`,
/// one per consumer, overwritten by each take that records something, expiring after a
/// day) and the take's number, which moves on at each take.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The record key.
    pub key: String,
    /// The take's number.
    pub seq: u64,
}

impl Fetch {
    /// A new consumer's record, before its first take.
    pub fn new() -> Fetch {
        Fetch {
            key: format!("weft.fetch.{}", uuid::Uuid::new_v4()),
            seq: 0,
        }
    }
}

impl Default for Fetch {
    fn default() -> Self {
        Fetch::new()
    }
}

/// After a [`pop_and_record`] whose answer was lost: puts back on their queues
/// ([`restore_by_tag`]) the messages that take recorded, if it ran. Call it on a new
/// connection, after [`fence`] has closed the one the take was sent on (a take still
/// queued behind a stalled Redis could otherwise run after this looked). Returns how many
/// were put back.
pub fn recover_fetch(conn: &mut Connection, fetch: &Fetch) -> RedisResult<usize> {
    let record: Option<String> = conn.get(&fetch.key)?;
    let Some(Value::Array(parts)) = record.and_then(|r| serde_json::from_str(&r).ok()) else {
        return Ok(0);
    };
    if parts.first().and_then(Value::as_str) != Some(fetch.seq.to_string().as_str()) {
        return Ok(0); // the record of an earlier take: this one took nothing
    }
    let mut n = 0;
    for tag in parts
        .get(1)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if restore_by_tag(conn, tag)? {
            n += 1;
        }
    }
    Ok(n)
}

/// The id Redis gives `conn` (`CLIENT ID`), for [`fence`]; `None` where refused.
pub fn client_id(conn: &mut Connection) -> Option<i64> {
    redis::cmd("CLIENT").arg("ID").query(conn).ok()
}

/// Closes, from `conn`, the connection whose [`client_id`] was `old` (`CLIENT KILL ID`),
/// so that nothing it sent is still to run: Redis runs one command at a time, so once the
/// kill is answered, a command of the old connection has either run or never will (a
/// `MULTI` not yet executed is discarded). An old connection already gone (or a Redis that
/// restarted) is fine.
pub fn fence(conn: &mut Connection, old: Option<i64>) -> RedisResult<()> {
    if let Some(id) = old {
        let r: RedisResult<i64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query(conn);
        if let Err(e) = r {
            // "No such client" is the answer for a connection already closed.
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// KEYS: unacked_index, unacked, the fetch record, then the lists; ARGV: max, now, the
/// fetch's number, then each list's queue (`ARGV[i]` is the queue of `KEYS[i]`).
static POP_AND_RECORD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
-- The plain string value of the first `key` after `from` (just after "properties"),
-- read without decoding the envelope; `sure` is false unless `key` occurs exactly once
-- after `from`, as a key with a string value without escapes (then the decode below
-- reads it). Keys before `from` belong to other members of the envelope.
local function plain(raw, key, from)
  local pat = key .. '"'
  local s, e = string.find(raw, pat, from, true)
  if not s then return nil, true end
  if string.byte(raw, s - 1) ~= 34 then return nil, false end
  if string.find(raw, pat, e + 1, true) then return nil, false end
  local v = string.match(raw, '^%s*:%s*"([^"\\]*)"', e + 1)
  return v, v ~= nil
end
-- properties.delivery_tag, .delivery_info.exchange and .routing_key of an envelope, and
-- whether they were read verbatim (JSON-safe as they are: no quote, no escape).
local function fields(raw)
  local s, e = string.find(raw, 'properties"', 1, true)
  if s and string.byte(raw, s - 1) == 34
      and not string.find(raw, 'properties"', e + 1, true) then
    local tag, ok1 = plain(raw, 'delivery_tag', e + 1)
    local exchange, ok2 = plain(raw, 'exchange', e + 1)
    local rk, ok3 = plain(raw, 'routing_key', e + 1)
    if ok1 and ok2 and ok3 then return tag, exchange, rk, true end
  end
  local ok, m = pcall(cjson.decode, raw)
  if ok and type(m) == 'table' and type(m.properties) == 'table' then
    local info = m.properties.delivery_info
    if type(info) == 'table' then
      return m.properties.delivery_tag, info.exchange, info.routing_key, false
    end
    return m.properties.delivery_tag, nil, nil, false
  end
end
local max = tonumber(ARGV[1])
local out = {}
local zadd = {}
local hset = {}
local tags = {}
local n = 0
-- One message popped from KEYS[i]: its record queued, its reply entry added.
local function take(i, raw)
  local tag, exchange, rk, verbatim = fields(raw)
  local recorded = ''
  if type(tag) == 'string' and tag ~= '' then
    if type(exchange) ~= 'string' then exchange = '' end
    if type(rk) ~= 'string' or rk == '' then rk = ARGV[i]; verbatim = false end
    local tail
    if verbatim then
      tail = ',"' .. exchange .. '","' .. rk .. '"]'
    else
      tail = ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(rk) .. ']'
    end
    zadd[#zadd + 1] = ARGV[2]
    zadd[#zadd + 1] = tag
    hset[#hset + 1] = tag
    hset[#hset + 1] = '[' .. raw .. tail
    recorded = tag
    tags[#tags + 1] = tag
  end
  out[#out + 1] = KEYS[i]
  out[#out + 1] = raw
  out[#out + 1] = recorded
  n = n + 1
end
for i = 4, #KEYS do
  if n >= max then break end
  local got = redis.pcall('RPOP', KEYS[i], max - n)
  if type(got) == 'table' and got.err then
    -- A Redis before 6.2 (no count): one at a time; a key that is not a list: skipped.
    while n < max do
      local raw = redis.pcall('RPOP', KEYS[i])
      if type(raw) ~= 'string' then break end
      take(i, raw)
    end
  elseif type(got) == 'table' then
    for _, raw in ipairs(got) do take(i, raw) end
  end
end
-- The records, in one ZADD and one HSET per 1000 messages (Lua's unpack is bounded).
for c = 1, #zadd, 2000 do
  local last = math.min(c + 1999, #zadd)
  redis.call('ZADD', KEYS[1], unpack(zadd, c, last))
  redis.call('HSET', KEYS[2], unpack(hset, c, last))
end
if #tags > 0 then
  redis.call('SET', KEYS[3], cjson.encode({ARGV[3], tags}), 'EX', 86400)
end
return out
"#,
    )
});

/// Refreshes the `unacked_index` score of each of `tags` still there (`ZADD XX`): the
/// heartbeat of a live worker's held messages.
pub fn heartbeat<S: AsRef<str>>(conn: &mut Connection, tags: &[S]) -> RedisResult<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let now = now_secs();
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(UNACKED_INDEX).arg("XX");
    for tag in tags {
        cmd.arg(now).arg(tag.as_ref());
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
    let mut pipe = redis::pipe();
    pipe.atomic();
    add_finish(&mut pipe, id, result, expires, tag);
    pipe.query(conn)
}

/// Adds [`finish`]'s commands to `pipe`.
pub fn add_finish(
    pipe: &mut redis::Pipeline,
    id: &str,
    result: &TaskResult,
    expires: Duration,
    tag: Option<&str>,
) {
    add_result(pipe, id, result, expires);
    if let Some(tag) = tag {
        add_ack(pipe, tag);
    }
}

/// Adds Celery's retry to `pipe`: sends `next` (the same task id, `retries + 1`, a new ETA
/// and delivery tag), records `RETRY` for it and acknowledges `tag`.
pub fn add_retry(
    pipe: &mut redis::Pipeline,
    next: &TaskMessage,
    reason: &str,
    expires: Duration,
    tag: Option<&str>,
) {
    let meta = retry_meta(&next.id, reason);
    pipe.lpush(
        queue_for_priority(&next.routing_key, next.priority),
        next.encode(),
    )
    .ignore();
    store_and_ack(pipe, &result_key(&next.id), &meta, expires, tag);
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
    store(pipe, key, meta, expires);
    if let Some(tag) = tag {
        add_ack(pipe, tag);
    }
}

/// Moves an unreadable message to the dead-letter list with the reason, and acknowledges
/// `tag` (if the message was recorded as unacknowledged), in one transaction.
pub fn dead_letter(
    conn: &mut Connection,
    queue: &str,
    raw: &[u8],
    reason: &str,
    tag: Option<&str>,
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    add_dead_letter(&mut pipe, queue, raw, reason);
    if let Some(tag) = tag {
        add_ack(&mut pipe, tag);
    }
    pipe.query(conn)
}

/// Adds to `pipe` the dead-letter record (`LPUSH weft.dead_letter` of JSON `{"reason",
/// "queue", "message"}`).
pub fn add_dead_letter(pipe: &mut redis::Pipeline, queue: &str, raw: &[u8], reason: &str) {
    let entry = json!({
        "reason": reason,
        "queue": queue,
        "message": String::from_utf8_lossy(raw),
    });
    pipe.lpush(DEAD_LETTER, entry.to_string()).ignore();
}

/// Adds to `pipe` the acknowledgement of `tag` (`ZREM unacked_index; HDEL unacked`).
pub fn add_ack(pipe: &mut redis::Pipeline, tag: &str) {
    add_acks(pipe, &[tag]);
}

/// Adds to `pipe` the acknowledgement of every one of `tags`, in one `ZREM unacked_index`
/// and one `HDEL unacked` (nothing if `tags` is empty).
pub fn add_acks<S: AsRef<str>>(pipe: &mut redis::Pipeline, tags: &[S]) {
    if tags.is_empty() {
        return;
    }
    let tags: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
    pipe.zrem(UNACKED_INDEX, &tags)
        .ignore()
        .hdel(UNACKED, &tags)
        .ignore();
}

/// Puts the message of `tag` back on its queue (`RPUSH`, so it is taken next) and forgets
/// it as unacknowledged, atomically (`WATCH unacked`), marking it `redelivered` as kombu
/// does. Returns false if `tag` was not unacknowledged any more, or if `unacked` kept
/// changing under it (other workers taking messages) for 16 tries in a row: the next
/// sweep tries again.
pub fn restore_by_tag(conn: &mut Connection, tag: &str) -> RedisResult<bool> {
    for _ in 0..16 {
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
    redis::cmd("UNWATCH").query::<()>(conn)?;
    Ok(false)
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
