//! [`Source`]: where a worker's and a client's Redis connections come from. Every
//! connection (the consumer's, the settler's, the tracker's, remote control's, the
//! client's, the result backend's) is opened through it, so that a reconnect after a
//! fault asks it again: a Redis named by its URL is connected to directly; one behind
//! Redis Sentinel is looked up again at each connect.

use redis::{Connection, RedisResult};

use super::backend::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use super::error::Error;

/// Where Redis connections come from (cheap to clone).
#[derive(Clone)]
pub(crate) struct Source {
    client: redis::Client,
    command_timeout: std::time::Duration,
}

impl Source {
    /// The Redis at `url` (`redis://`, `rediss://`, `unix://`).
    pub fn open(url: &str) -> Result<Source, Error> {
        Ok(Source::from(redis::Client::open(url)?))
    }

    /// The same source with another command timeout.
    pub fn command_timeout(mut self, d: std::time::Duration) -> Source {
        self.command_timeout = d;
        self
    }

    /// A connection with [`CONNECT_TIMEOUT`] and the command timeout
    /// ([`COMMAND_TIMEOUT`] unless set).
    pub fn connect(&self) -> RedisResult<Connection> {
        let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(self.command_timeout))?;
        conn.set_write_timeout(Some(self.command_timeout))?;
        Ok(conn)
    }

    /// The database number (the pidbox channel is named after it, as kombu names it).
    pub fn db(&self) -> i64 {
        self.client.get_connection_info().redis.db
    }
}

impl From<redis::Client> for Source {
    fn from(client: redis::Client) -> Source {
        Source {
            client,
            command_timeout: COMMAND_TIMEOUT,
        }
    }
}
