//! [`Source`]: where a worker's and a client's Redis connections come from. Every
//! connection (the consumer's, the settler's, the tracker's, remote control's, the
//! client's, the result backend's) is opened through it, so that a reconnect after a
//! fault asks it again: a Redis named by its URL is connected to directly; one behind
//! Redis Sentinel (`sentinel://`, see [`sentinel`](super::sentinel)) is looked up again
//! at each connect, so that a reconnect after a failover reaches the promoted replica.

use std::sync::Arc;
use std::time::Duration;

use redis::{Connection, RedisResult};

use super::backend::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use super::error::Error;
use super::sentinel::{is_sentinel_url, Sentinel};

/// Where Redis connections come from (cheap to clone).
#[derive(Clone)]
pub(crate) struct Source {
    kind: Kind,
    /// How long one command may wait for an answer.
    command_timeout: Duration,
}

#[derive(Clone)]
enum Kind {
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
        let kind = if is_sentinel_url(url) {
            Kind::Sentinel(Arc::new(Sentinel::open(url, master)?))
        } else {
            Kind::Direct(redis::Client::open(url)?)
        };
        Ok(Source {
            kind,
            command_timeout: COMMAND_TIMEOUT,
        })
    }

    /// The same source with another command timeout.
    pub fn command_timeout(mut self, d: Duration) -> Source {
        self.command_timeout = d;
        self
    }

    /// A connection with [`CONNECT_TIMEOUT`] and the command timeout
    /// ([`COMMAND_TIMEOUT`] unless set); behind Sentinel, to the master the sentinels
    /// name now.
    pub fn connect(&self) -> RedisResult<Connection> {
        let conn = match &self.kind {
            Kind::Direct(client) => client.get_connection_with_timeout(CONNECT_TIMEOUT)?,
            Kind::Sentinel(sentinel) => sentinel.connect()?,
        };
        conn.set_read_timeout(Some(self.command_timeout))?;
        conn.set_write_timeout(Some(self.command_timeout))?;
        Ok(conn)
    }

    /// The database number (the pidbox channel is named after it, as kombu names it).
    pub fn db(&self) -> i64 {
        match &self.kind {
            Kind::Direct(client) => client.get_connection_info().redis.db,
            Kind::Sentinel(sentinel) => sentinel.db(),
        }
    }
}

impl From<redis::Client> for Source {
    fn from(client: redis::Client) -> Source {
        Source {
            kind: Kind::Direct(client),
            command_timeout: COMMAND_TIMEOUT,
        }
    }
}
