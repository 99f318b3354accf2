//! Celery's Redis result backend: result keys, store + publish, and the chord counters.
//!
//! Broker-neutral: both transports write results here (the Redis transport in the same
//! `MULTI` as its acknowledgements, the AMQP transport in a transaction of its own), and the
//! [`Client`](super::Client) reads them. As `celery/backends/redis.py` does, a result is a
//! JSON record (see [`TaskResult::to_meta`]) stored under `celery-task-meta-<id>`
//! ([`result_key`]) with an expiry (`SETEX`, [`DEFAULT_RESULT_EXPIRES`] by default), and
//! `PUBLISH`ed on a channel of the same name for whoever waits. [`connect`] is the Redis
//! connection with timeouts that the transports use too.

use std::time::{Duration, SystemTime};

use redis::{Commands, Connection, RedisResult};
use serde_json::{json, Value};

use super::canvas::after::{chord_error, finish_chord, ChordPart, Flow, Next};
use super::result::TaskResult;
use super::source::Source;

/// Celery's default result expiry (`result_expires`): one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);

/// How long connecting to Redis may take before it is an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may wait for Redis's answer before it is an error (a worker's
/// commands are short; this only catches a Redis that stopped answering).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection with [`CONNECT_TIMEOUT`] and [`COMMAND_TIMEOUT`].
pub fn connect(client: &redis::Client) -> RedisResult<Connection> {
    Source::from(client.clone()).connect()
}

/// The result key of task `id`.
pub fn result_key(id: &str) -> String {
    format!("celery-task-meta-{id}")
}

/// Adds to `pipe` the result record of task `id` ([`store`]: `SETEX` + `PUBLISH` on its
/// key).
pub fn add_result(pipe: &mut redis::Pipeline, id: &str, result: &TaskResult, expires: Duration) {
    let meta = result.to_meta(id, SystemTime::now()).to_string();
    store(pipe, &result_key(id), &meta, expires);
}

/// Adds to `pipe` the result record of task `id` with its place in a workflow (`flow`):
/// Celery's `parent_id`, `group_id` and `children` fields.
pub(crate) fn add_record(
    pipe: &mut redis::Pipeline,
    id: &str,
    result: &TaskResult,
    flow: Option<&Flow>,
    expires: Duration,
) {
    let Some(flow) = flow else {
        return add_result(pipe, id, result, expires);
    };
    let mut meta = result.to_meta(id, SystemTime::now());
    if let Value::Object(m) = &mut meta {
        m.insert("children".into(), Value::Array(flow.next.children.clone()));
        if let Some(g) = &flow.group_id {
            m.insert("group_id".into(), json!(g));
        }
        if let Some(p) = &flow.parent_id {
            m.insert("parent_id".into(), json!(p));
        }
    }
    store(pipe, &result_key(id), &meta.to_string(), expires);
}

/// The `RETRY` record of task `id`, with `reason` as its message.
pub fn retry_meta(id: &str, reason: &str) -> String {
    TaskResult::Retry(reason.to_owned())
        .to_meta(id, SystemTime::now())
        .to_string()
}

/// Adds to `pipe` the result record `meta` under `key` (`SETEX` with `expires`, at least a
/// second, then `PUBLISH` on the same name).
pub fn store(pipe: &mut redis::Pipeline, key: &str, meta: &str, expires: Duration) {
    pipe.set_ex(key, meta, expires.as_secs().max(1))
        .ignore()
        .publish(key, meta)
        .ignore();
}

// ---------------------------------------------------------------------------------------
// Chords: Celery 5.7's counters in the Redis result backend
// ---------------------------------------------------------------------------------------

/// Celery's key of group `gid` (`celery-taskset-meta-<gid>`) with `suffix`: `.j` the
/// header results (a sorted set of `[1, id, state, result]` by `group_index`), `.t` the
/// size difference (from tasks replaced in the header), `.s` the chord size (set by the
/// sender of the header), `.d` the parts counted (`id:index`, so a redelivered part counts
/// once), `.c` the claim of the worker that sends the body (`done` once sent).
pub fn group_key(gid: &str, suffix: &str) -> String {
    format!("celery-taskset-meta-{gid}{suffix}")
}

/// How long the first claim of a completed chord holds (Celery: twice its 5 s join
/// timeout).
pub const CHORD_CLAIM: Duration = Duration::from_secs(6);
/// How long a claim holds while the body is sent.
pub const CHORD_PUBLISH_CLAIM: Duration = Duration::from_secs(21);
/// How long the `done` marker keeps late duplicates of a finished chord's parts out.
pub const CHORD_DONE: Duration = Duration::from_secs(300);

/// Adds to `pipe` Celery's `set_chord_size`: the chord of group `gid` waits for `size`
/// header results (`DEL .c`, `SET .s size EX expires`).
pub fn add_chord_size(pipe: &mut redis::Pipeline, gid: &str, size: usize, expires: Duration) {
    pipe.del(group_key(gid, ".c"))
        .ignore()
        .set_ex(group_key(gid, ".s"), size, expires.as_secs().max(1))
        .ignore();
}

/// What counting a chord part found.
pub(crate) enum PartCounted {
    /// The chord is not complete yet, or another worker sends its body, or it was done.
    Pending,
    /// This worker completed the chord and holds its claim (`token`): it sends the body
    /// (or stores its failure), then calls [`chord_cleanup`].
    Claimed {
        /// The header results in header order, or the `ChordError` of the first failed
        /// part.
        results: Result<Vec<Value>, TaskResult>,
        /// The claim.
        token: String,
    },
}

/// Counts a chord part whose result is stored (Celery's `on_chord_part_return`), in one
/// script: a part already counted (same id and index) is not counted again; the worker
/// whose part completes the chord claims it (`SET .c token NX EX`). The claimer reads the
/// header results and extends its claim for the time it needs to send the body.
pub(crate) fn chord_part_return(
    conn: &mut Connection,
    part: &ChordPart,
    expires: Duration,
) -> RedisResult<PartCounted> {
    let gid = &part.group;
    let keys = [".j", ".t", ".s", ".d", "", ".c"].map(|s| group_key(gid, s));
    let result = part.result.to_meta(&part.id, SystemTime::now())["result"].clone();
    let encoded = json!([1, part.id, part.result.status(), result]).to_string();
    let score = part
        .group_index
        .map_or_else(|| "+inf".to_owned(), |i| i.to_string());
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut inv = CHORD_PART_RETURN.prepare_invoke();
    for k in &keys {
        inv.key(k);
    }
    let secs = expires.as_secs();
    inv.arg(&part.id)
        .arg(&encoded)
        .arg(1)
        .arg(&score)
        .arg(secs)
        .arg(secs)
        .arg(CHORD_CLAIM.as_secs())
        .arg(&token);
    let (ready, diff, size, claimed): (i64, Option<i64>, Option<i64>, i64) = inv.invoke(conn)?;
    let Some(size) = size else {
        return Ok(PartCounted::Pending);
    };
    if ready < 0 || claimed != 1 || ready != size + diff.unwrap_or(0) {
        return Ok(PartCounted::Pending);
    }
    let members: Vec<String> = conn.zrange(&keys[0], 0, -1)?;
    let results = members
        .iter()
        .map(|m| unpack_part(m))
        .collect::<Result<Vec<Value>, TaskResult>>();
    let extended: i64 = CHORD_CLAIM_EXTEND
        .key(&keys[5])
        .key(&keys[2])
        .arg(&token)
        .arg(CHORD_PUBLISH_CLAIM.as_secs())
        .invoke(conn)?;
    if extended != 1 {
        return Ok(PartCounted::Pending);
    }
    Ok(PartCounted::Claimed { results, token })
}

/// Releases the claim of a chord whose body was sent and removes its counters, leaving
/// the `done` marker; false if the claim was lost meanwhile (the counters are then left to
/// expire).
pub fn chord_cleanup(conn: &mut Connection, gid: &str, token: &str) -> RedisResult<bool> {
    let n: i64 = CHORD_CLEANUP
        .key(group_key(gid, ".c"))
        .key(group_key(gid, ".j"))
        .key(group_key(gid, ".t"))
        .key(group_key(gid, ".s"))
        .key(group_key(gid, ".d"))
        .arg(token)
        .arg(CHORD_DONE.as_secs())
        .invoke(conn)?;
    Ok(n == 1)
}

/// One header result (`[1, id, state, result]`): its value, or the `ChordError` of a
/// failed or revoked part.
fn unpack_part(member: &str) -> Result<Value, TaskResult> {
    let v: Value = serde_json::from_str(member).map_err(|e| TaskResult::error(e.to_string()))?;
    let id = v.get(1).and_then(Value::as_str).unwrap_or_default();
    let state = v.get(2).and_then(Value::as_str).unwrap_or_default();
    let result = v.get(3).cloned().unwrap_or(Value::Null);
    match state {
        "FAILURE" | "REVOKED" => {
            let meta = json!({"status": state, "result": result}).to_string();
            let failed = TaskResult::from_meta(meta.as_bytes())
                .ok()
                .flatten()
                .unwrap_or_else(|| TaskResult::error(result.to_string()));
            Err(chord_error(id, &failed))
        }
        _ => Ok(result),
    }
}

/// KEYS: .j .t .s .d (group key) .c; ARGV: id, encoded part, ordered (1), score,
/// expires, group expires, claim seconds, claim token. Returns {ready count, .t, .s,
/// claimed}; ready -1 when the chord was already done. The same protocol as Celery
/// 5.7's `on_chord_part_return`, so Python and weft workers count one chord together.
static CHORD_PART_RETURN: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[6]) == 'done' then return {-1, false, false, 0} end
local seen = ARGV[1] .. ':' .. ARGV[4]
if redis.call('SADD', KEYS[4], seen) == 1 then
  if ARGV[3] == '1' then
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
  else
    redis.call('RPUSH', KEYS[1], ARGV[2])
  end
end
local ready
if ARGV[3] == '1' then ready = redis.call('ZCARD', KEYS[1]) else ready = redis.call('LLEN', KEYS[1]) end
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
  if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[5], tonumber(ARGV[6])) end
end
local diff = redis.call('GET', KEYS[2])
local size = redis.call('GET', KEYS[3])
local claimed = 0
if size and ready == tonumber(size) + tonumber(diff or 0) then
  if redis.call('SET', KEYS[6], ARGV[8], 'NX', 'EX', tonumber(ARGV[7])) then claimed = 1 end
end
return {ready, diff and tonumber(diff) or false, size and tonumber(size) or false, claimed}
"#,
    )
});

/// KEYS: .c .s; ARGV: token, seconds. Extends a claim still held, or takes an expired
/// one back while the chord's size key remains.
static CHORD_CLAIM_EXTEND: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then return redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
if not held and redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then return 1 end
end
return 0
"#,
    )
});

/// KEYS: .c .j .t .s .d; ARGV: token, done seconds. With the claim still held: deletes
/// the counters and marks the chord done.
static CHORD_CLEANUP: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
return 1
"#,
    )
});

/// Adds to `pipe` the failures `next` stores (the rest of a failed chain). Its chord sizes
/// are the transport's to write, in their place among its messages.
pub(crate) fn add_next_records(pipe: &mut redis::Pipeline, next: &Next, expires: Duration) {
    for (id, result) in &next.results {
        add_result(pipe, id, result, expires);
    }
}

/// Counts each of `parts` (their results stored), and for a chord one of them completes
/// with this worker's claim: `send`s what follows (the body, or its failure: see
/// [`finish_chord`](super::canvas::after::finish_chord)), then releases the claim and the
/// chord's keys. False if Redis or `send` failed (the message is then not acknowledged:
/// counting again is harmless, a part is counted once).
pub(crate) fn count_parts(
    conn: &mut Connection,
    parts: &[ChordPart],
    expires: Duration,
    mut send: impl FnMut(&mut Connection, &Next) -> bool,
) -> bool {
    for part in parts {
        match chord_part_return(conn, part, expires) {
            Ok(PartCounted::Pending) => {}
            Ok(PartCounted::Claimed { results, token }) => {
                let next = finish_chord(part, results);
                if !send(conn, &next) {
                    return false;
                }
                let _ = chord_cleanup(conn, &part.group, &token);
            }
            Err(_) => return false,
        }
    }
    true
}
