//! Redis Sentinel: kombu's `sentinel://` URL and the lookup of the current master that
//! every connection behind Sentinel starts with (see [`Source`](super::source::Source)).
//!
//! # The URL (kombu's `SentinelChannel`, Celery's `SentinelBackend`)
//!
//! Sentinels separated by `;`, each `sentinel://[user:password@]host[:port][/db]`, port
//! [`DEFAULT_PORT`] when not given: `sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/3`.
//! The database, user and password are the first part's (as in kombu and Celery: the
//! other parts give only their sentinel's address) and are the master's, not the
//! sentinels': sentinels are asked without a password, as kombu asks them without
//! `sentinel_kwargs`. A query string (`?...`) is ignored. The master's name is not in the
//! URL (Celery's `broker_transport_options={'master_name': ...}`): it is given apart
//! ([`Worker::sentinel_master`](super::Worker::sentinel_master),
//! [`ClientBuilder::sentinel_master`](super::ClientBuilder::sentinel_master)).
//!
//! # The lookup ([`Sentinel::connect`])
//!
//! Each connection asks again, so that a reconnect after a failover finds the promoted
//! replica. The sentinels are asked one after the other, first the one that answered last
//! time, each within [`SENTINEL_TIMEOUT`] (connecting and answering):
//!
//! 1. `SENTINEL MASTER <name>`: the master this sentinel knows, with its flags. A master
//!    this sentinel flags down (`s_down`, `o_down`) is skipped, and so is a sentinel that
//!    does not know the name: the next sentinel is asked.
//! 2. That address is connected to (with the URL's database, user and password, within
//!    [`CONNECT_TIMEOUT`](super::backend::CONNECT_TIMEOUT), commands within
//!    [`COMMAND_TIMEOUT`](super::backend::COMMAND_TIMEOUT)) and asked `ROLE`: only a
//!    `master` is used, so an old master a sentinel has not yet caught up with (one that
//!    came back after a failover, still a master until the sentinels demote it) is not.
//!
//! When no sentinel gives a usable master (during a failover, before a replica is
//! promoted) the connect fails with an I/O error that lists what each sentinel said; the
//! caller's reconnect loop (consumer, finisher, tracker, remote control) tries again later.
//! redis-rs's own `redis::sentinel` is not used: it has no timeouts on the sentinel
//! connections, and it gives up at the first sentinel whose master is flagged down or
//! unreachable instead of asking the next.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::{
    Client, Connection, ConnectionAddr, ConnectionInfo, RedisConnectionInfo, RedisResult, Value,
};

use super::backend::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use super::error::Error;

/// A sentinel's port when its URL names none (kombu's `SentinelTransport.default_port`).
pub const DEFAULT_PORT: u16 = 26379;

/// How long connecting to a sentinel, and each question to it, may take before the next
/// sentinel is asked.
pub const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);

/// The sentinels of a `sentinel://` URL and the master they are asked for.
pub(crate) struct Sentinel {
    /// `(host, port)` of each sentinel, in the URL's order.
    sentinels: Vec<(String, u16)>,
    /// The master's name (`sentinel monitor <name> ...`).
    master: String,
    /// The database, user and password for the master (the URL's first part).
    redis: RedisConnectionInfo,
    /// The sentinel that answered last: asked first next time (Relaxed: a hint only).
    first: AtomicUsize,
}

/// One part of a `sentinel://` URL.
#[derive(Debug, PartialEq)]
struct Part {
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: Option<String>,
}

/// True if `url` names sentinels (`sentinel://...`).
pub(crate) fn is_sentinel_url(url: &str) -> bool {
    url.trim_start().starts_with("sentinel://")
}

impl Sentinel {
    /// The sentinels of `url`, asked for the master `master`; a clear [`Error::Config`]
    /// for a URL that does not parse or a missing master name.
    pub fn open(url: &str, master: Option<&str>) -> Result<Sentinel, Error> {
        let parts = url
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_part)
            .collect::<Result<Vec<Part>, String>>()
            .map_err(|e| Error::Config(format!("{e} in the Sentinel URL {url:?}")))?;
        let Some(first) = parts.first() else {
            return Err(Error::Config(format!("no sentinel in the URL {url:?}")));
        };
        let master = match master {
            Some(m) if !m.is_empty() => m.to_owned(),
            _ => {
                return Err(Error::Config(
                    "a sentinel:// URL needs the master's name: Worker::sentinel_master(name) \
                     or ClientBuilder::sentinel_master(name) (Celery's transport option \
                     master_name)"
                        .into(),
                ))
            }
        };
        let redis = RedisConnectionInfo {
            db: first.db,
            username: first.username.clone(),
            password: first.password.clone(),
            ..Default::default()
        };
        Ok(Sentinel {
            sentinels: parts.into_iter().map(|p| (p.host, p.port)).collect(),
            master,
            redis,
            first: AtomicUsize::new(0),
        })
    }

    /// The database number (the first part's).
    pub fn db(&self) -> i64 {
        self.redis.db
    }

    /// A connection to the current master (see the module docs), with
    /// [`COMMAND_TIMEOUT`]; an I/O error saying what each sentinel answered when none
    /// gives a master that is up and says it is one.
    pub fn connect(&self) -> RedisResult<Connection> {
        let n = self.sentinels.len();
        let start = self.first.load(Ordering::Relaxed) % n;
        let mut why = Vec::with_capacity(n);
        for k in (start..n).chain(0..start) {
            let (host, port) = &self.sentinels[k];
            match self.ask(host, *port) {
                Ok(conn) => {
                    self.first.store(k, Ordering::Relaxed);
                    return Ok(conn);
                }
                Err(e) => why.push(format!("sentinel {host}:{port}: {e}")),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("no master {:?} up: {}", self.master, why.join("; ")),
        )
        .into())
    }

    /// Steps 1 and 2 of the lookup with the sentinel at `host:port`.
    fn ask(&self, host: &str, port: u16) -> Result<Connection, String> {
        let mut sentinel = open(
            ConnectionInfo {
                addr: ConnectionAddr::Tcp(host.to_owned(), port),
                redis: RedisConnectionInfo::default(),
            },
            SENTINEL_TIMEOUT,
            SENTINEL_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
        let info: HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.master)
            .query(&mut sentinel)
            .map_err(|e| e.to_string())?;
        let (ip, master_port) = usable_master(&info)?;
        let addr = format!("{ip}:{master_port}");
        let mut conn = open(
            ConnectionInfo {
                addr: ConnectionAddr::Tcp(ip, master_port),
                redis: self.redis.clone(),
            },
            CONNECT_TIMEOUT,
            COMMAND_TIMEOUT,
        )
        .map_err(|e| format!("master {addr}: {e}"))?;
        let role: Value = redis::cmd("ROLE")
            .query(&mut conn)
            .map_err(|e| format!("master {addr}: ROLE: {e}"))?;
        match role_name(&role) {
            Some("master") => Ok(conn),
            other => Err(format!(
                "{addr} is not a master (ROLE {})",
                other.unwrap_or("?")
            )),
        }
    }
}

/// A connection to `info` within `connect`, each command within `command`.
fn open(info: ConnectionInfo, connect: Duration, command: Duration) -> RedisResult<Connection> {
    let conn = Client::open(info)?.get_connection_with_timeout(connect)?;
    conn.set_read_timeout(Some(command))?;
    conn.set_write_timeout(Some(command))?;
    Ok(conn)
}

/// The address in a `SENTINEL MASTER` answer, unless its flags say it is not a master or
/// is down.
fn usable_master(info: &HashMap<String, String>) -> Result<(String, u16), String> {
    let flags = info.get("flags").map_or("", String::as_str);
    let flagged = |f: &str| flags.split(',').any(|x| x == f);
    if !flagged("master") || flagged("s_down") || flagged("o_down") {
        return Err(format!("master flagged {flags:?}"));
    }
    let ip = info.get("ip").ok_or("no ip in SENTINEL MASTER")?;
    let port = info
        .get("port")
        .and_then(|p| p.parse().ok())
        .ok_or("no port in SENTINEL MASTER")?;
    Ok((ip.clone(), port))
}

/// The first element of a `ROLE` answer (`master`, `slave`, `sentinel`).
fn role_name(role: &Value) -> Option<&str> {
    let Value::Array(items) = role else {
        return None;
    };
    match items.first()? {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// One `sentinel://[user:password@]host[:port][/db][?query]`.
fn parse_part(part: &str) -> Result<Part, String> {
    let rest = part
        .strip_prefix("sentinel://")
        .ok_or_else(|| format!("{part:?} is not sentinel://..."))?;
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let nonempty = |s: &str| percent_decode(s).map(|d| (!d.is_empty()).then_some(d));
            (nonempty(user)?, nonempty(pass)?)
        }
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{part:?}: unclosed ["))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{part:?}: no host"));
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p.parse().map_err(|_| format!("{part:?}: bad port {p:?}"))?,
    };
    let db = match path.trim_matches('/') {
        "" => 0,
        d => d
            .parse()
            .map_err(|_| format!("{part:?}: bad database {d:?}"))?,
    };
    Ok(Part {
        host: host.to_owned(),
        port,
        db,
        username,
        password,
    })
}

/// `%XX` escapes decoded (as kombu unquotes the user and password).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests;
