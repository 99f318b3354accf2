//! [`ServiceError`]: why a node could not start.

use std::fmt;
use std::io;

/// Why a node could not start.
///
/// ```
/// use weft::service::{Node, Registry};
/// let rt = tokio::runtime::Runtime::new().unwrap();
/// let err = rt
///     .block_on(Node::new(Registry::new()).ephemeral().tcp("0.0.0.0:0".parse().unwrap()).start())
///     .unwrap_err();
/// assert!(err.is_token_required());
/// ```
pub struct ServiceError {
    kind: ErrorKind,
    message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ErrorKind {
    InUse,
    UnsafeSocketDir,
    TokenRequired,
    Config,
    Store,
    Io,
}

impl ServiceError {
    pub(super) fn new(kind: ErrorKind, message: impl Into<String>) -> ServiceError {
        ServiceError {
            kind,
            message: message.into(),
        }
    }

    pub(super) fn io(what: impl fmt::Display, e: io::Error) -> ServiceError {
        ServiceError::new(ErrorKind::Io, format!("{what}: {e}"))
    }

    /// Another node is listening on the socket already, or holds the data directory.
    pub fn is_in_use(&self) -> bool {
        self.kind == ErrorKind::InUse
    }

    /// The socket's directory is not safe to listen in: it belongs to another user, or
    /// group or others may write to it (see [`default_socket_path`](crate::service::default_socket_path) for the rule).
    pub fn is_unsafe_socket_dir(&self) -> bool {
        self.kind == ErrorKind::UnsafeSocketDir
    }

    /// A TCP bind to a non-loopback address was asked for without a token.
    pub fn is_token_required(&self) -> bool {
        self.kind == ErrorKind::TokenRequired
    }

    /// The configuration is unusable (a zero limit, a path that is not a socket, ...).
    pub fn is_config(&self) -> bool {
        self.kind == ErrorKind::Config
    }

    /// The durable store cannot be read (corrupt, truncated, or written by a newer weft);
    /// the node refuses to start rather than lose what it holds.
    pub fn is_store(&self) -> bool {
        self.kind == ErrorKind::Store
    }

    /// An I/O error (binding, the socket's directory, the data directory, the runtime).
    pub fn is_io(&self) -> bool {
        self.kind == ErrorKind::Io
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for ServiceError {}
