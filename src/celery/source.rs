//! [`Source`]: where a worker's and a client's Redis connections come from. Every
//! connection (the consumer's, the settler's, the tracker's, remote control's, the
//! client's, the result backend's) is opened through it, so that a reconnect after a
//! fault asks it again: a Redis named by its URL is connected to directly; one behind
//! Redis Sentinel (`sentinel://`, see [`sentinel`](super::sentinel)) is looked up again
//! at each connect, so that a reconnect after a failover reaches the promoted replica.

use std::sync::Arc;

use redis::{Connection, RedisResult};

use super::backend::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use super::error::Error;
use super::sentinel::{is_sentinel_url, Sentinel};

/// Where Redis connections come from (cheap to clone).
#[derive(Clone)]
pub(crate) enum Source {
    /// The Redis a `redis://`, `rediss://` or `unix://` URL names.
    Direct(redis::Client),
    /// The master that Sentinel names now.
    Sentinel(Arc<Sentinel>),
}

impl Source {
    /// The Redis at `url`: `redis://`, `rediss://`, `unix://`, or the sentinels of a
    /// `sentinel://` URL asked for the master named `master` (required for such a URL,
    /// ignored for the others).
    pub fn open(url: &str, master: Option<&str>) -> Result<Source, Error> {
        if is_sentinel_url(url) {
            Ok(Source::Sentinel(Arc::new(Sentinel::open(url, master)?)))
        } else {
            Ok(Source::Direct(redis::Client::open(url)?))
        }
    }

    /// A connection with [`CONNECT_TIMEOUT`] and [`COMMAND_TIMEOUT`]; behind Sentinel, to
    /// the master the sentinels name now.
    pub fn connect(&self) -> RedisResult<Connection> {
        match self {
            Source::Direct(client) => {
                let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
                conn.set_read_timeout(Some(COMMAND_TIMEOUT))?;
                conn.set_write_timeout(Some(COMMAND_TIMEOUT))?;
                Ok(conn)
            }
            Source::Sentinel(sentinel) => sentinel.connect(),
        }
    }

    /// The database number (the pidbox channel is named after it, as kombu names it).
    pub fn db(&self) -> i64 {
        match self {
            Source::Direct(client) => client.get_connection_info().redis.db,
            Source::Sentinel(sentinel) => sentinel.db(),
        }
    }
}

impl From<redis::Client> for Source {
    fn from(client: redis::Client) -> Source {
        Source::Direct(client)
    }
}
