//! The beat's Redis keys and scripts: the lease (acquire, renew, release) and the send
//! script that checks the fence, records the tick and pushes the message (rules 1 to 3 of
//! the module docs).

pub(super) struct Keys {
    pub(super) lease: String,
    pub(super) fence: String,
    pub(super) last: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            lease: format!("{prefix}lease"),
            fence: format!("{prefix}fence"),
            last: format!("{prefix}last"),
        }
    }
}

/// Rule 1: takes a free lease with a fresh fence number; the lease's value, or nil.
pub(super) const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local n = redis.call('INCR', KEYS[2])
local v = ARGV[1] .. ':' .. n
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return v
";

/// Rule 1 and 5: renews the lease if it is still ours; {renewed, seconds, microseconds}.
pub(super) const RENEW: &str = r"
local t = redis.call('TIME')
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, t[1], t[2]}
end
return {0, t[1], t[2]}
";

/// Gives the lease back if it is still ours.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Rules 2 and 3: KEYS lease, last, queue (empty: record only); ARGV lease value, entry,
/// tick (0: Redis's clock now), least gap after the last run (ms), message. Returns
/// {-1} (not the leaseholder), {0, last} (sent already), or {1, tick, now}.
pub(super) const SEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tick = tonumber(ARGV[3])
if tick == 0 then tick = now end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1')
if last >= 0 and (tick <= last or tick - last < tonumber(ARGV[4])) then return {0, last} end
redis.call('HSET', KEYS[2], ARGV[2], tick)
if KEYS[3] ~= '' then redis.call('LPUSH', KEYS[3], ARGV[5]) end
return {1, tick, now}
";

/// The scripts, loaded once (their SHA-1 is computed when made).
pub(super) struct Scripts {
    pub(super) acquire: redis::Script,
    pub(super) renew: redis::Script,
    pub(super) release: redis::Script,
    pub(super) send: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
            send: redis::Script::new(SEND),
        }
    }
}

/// What a send script answered.
pub(super) enum Sent {
    NotLeader,
    Already(u64),
    Done { tick: u64, now: u64 },
}
