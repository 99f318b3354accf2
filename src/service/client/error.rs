//! [`ClientError`]: why a request to the node did not give an answer.

use std::fmt;
use std::time::Duration;

/// Why a request to the node failed.
///
/// An opaque error over four kinds, told apart with the `is_*` queries:
/// - [`is_unreachable`](Self::is_unreachable): the connection could not be made (no socket,
///   nothing listening, refused).
/// - [`is_status`](Self::is_status): the node answered with an error status; the code is in
///   [`status`](Self::status) and the node's `{"error": ..}` text in
///   [`message`](Self::message).
/// - [`is_bad_response`](Self::is_bad_response): the node answered something that is not
///   the API's shape, or the connection broke mid-request.
/// - [`is_timeout`](Self::is_timeout): no answer in time, or a wait ran out before the task
///   finished.
///
/// Plus [`is_invalid_input`](Self::is_invalid_input) for a request that was never sent (a bad
/// URL).
///
/// ```
/// use weft::service::Client;
///
/// let client = Client::unix("/nonexistent/weft.sock");
/// let err = client.health().unwrap_err();
/// assert!(err.is_unreachable());
/// assert_eq!(err.status(), None);
/// ```
pub struct ClientError {
    kind: Kind,
}

enum Kind {
    Unreachable {
        target: String,
        source: std::io::Error,
    },
    Status {
        status: u16,
        message: String,
        body: Option<serde_json::Value>,
        retry_after: Option<Duration>,
    },
    UnsafeSocket {
        target: String,
        message: String,
    },
    BadResponse(String),
    Timeout(String),
    InvalidInput(String),
}

impl ClientError {
    pub(crate) fn unreachable(target: String, source: std::io::Error) -> ClientError {
        ClientError {
            kind: Kind::Unreachable { target, source },
        }
    }

    pub(crate) fn status_error(
        status: u16,
        message: String,
        body: Option<serde_json::Value>,
        retry_after: Option<Duration>,
    ) -> ClientError {
        ClientError {
            kind: Kind::Status {
                status,
                message,
                body,
                retry_after,
            },
        }
    }

    pub(crate) fn unsafe_socket(target: String, message: String) -> ClientError {
        ClientError {
            kind: Kind::UnsafeSocket { target, message },
        }
    }

    pub(crate) fn bad_response(what: impl Into<String>) -> ClientError {
        ClientError {
            kind: Kind::BadResponse(what.into()),
        }
    }

    pub(crate) fn timeout(what: impl Into<String>) -> ClientError {
        ClientError {
            kind: Kind::Timeout(what.into()),
        }
    }

    pub(crate) fn invalid_input(what: impl Into<String>) -> ClientError {
        ClientError {
            kind: Kind::InvalidInput(what.into()),
        }
    }

    /// True if the connection to the node could not be made (or was not tried: see
    /// [`is_unsafe_socket`](Self::is_unsafe_socket)).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self.kind,
            Kind::Unreachable { .. } | Kind::UnsafeSocket { .. }
        )
    }

    /// True if the client refused to connect because the socket's directory is not safe:
    /// it belongs to another user, or group or others may write to it, so the socket in
    /// it may not be the node's (see
    /// [`default_socket_path`](crate::service::default_socket_path) for the rule). Such an
    /// error is also [`is_unreachable`](Self::is_unreachable).
    pub fn is_unsafe_socket(&self) -> bool {
        matches!(self.kind, Kind::UnsafeSocket { .. })
    }

    /// True if the node answered with an error status (see [`status`](Self::status)).
    pub fn is_status(&self) -> bool {
        matches!(self.kind, Kind::Status { .. })
    }

    /// True if the node's answer was not the API's shape, or the connection broke.
    pub fn is_bad_response(&self) -> bool {
        matches!(self.kind, Kind::BadResponse(_))
    }

    /// True if no answer came in time, or a wait ended before the task finished.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(_))
    }

    /// True if the request was never sent because its input was invalid (a bad URL).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self.kind, Kind::InvalidInput(_))
    }

    /// The HTTP status code of an error answer (400, 401, 404, 413, 429, 503, ...).
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            Kind::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The node's `error` text for an error answer, or what went wrong otherwise.
    pub fn message(&self) -> String {
        match &self.kind {
            Kind::Unreachable { source, .. } => source.to_string(),
            Kind::Status { message, .. } | Kind::UnsafeSocket { message, .. } => message.clone(),
            Kind::BadResponse(m) | Kind::Timeout(m) | Kind::InvalidInput(m) => m.clone(),
        }
    }

    /// The whole JSON body of an error answer, e.g. for a 404 on an unknown task name,
    /// `{"error": "unknown task \"x\"", "tasks": ["add", ...]}`.
    pub fn body(&self) -> Option<&serde_json::Value> {
        match &self.kind {
            Kind::Status { body, .. } => body.as_ref(),
            _ => None,
        }
    }

    /// The `Retry-After` of an error answer (the node sends one with 429).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            Kind::Status { retry_after, .. } => retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Unreachable { target, source } => {
                write!(
                    f,
                    "cannot reach the weft node at {target}: {source} (is it running?)"
                )
            }
            Kind::UnsafeSocket { target, message } => {
                write!(f, "not connecting to {target}: {message}")
            }
            Kind::Status {
                status, message, ..
            } => write!(f, "the node refused the request ({status}): {message}"),
            Kind::BadResponse(m) => write!(f, "bad response from the node: {m}"),
            Kind::Timeout(m) => write!(f, "timed out: {m}"),
            Kind::InvalidInput(m) => write!(f, "invalid input: {m}"),
        }
    }
}

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Unreachable { target, source } => f
                .debug_struct("Unreachable")
                .field("target", target)
                .field("source", source)
                .finish(),
            Kind::UnsafeSocket { target, message } => f
                .debug_struct("UnsafeSocket")
                .field("target", target)
                .field("message", message)
                .finish(),
            Kind::Status {
                status,
                message,
                retry_after,
                ..
            } => f
                .debug_struct("Status")
                .field("status", status)
                .field("message", message)
                .field("retry_after", retry_after)
                .finish(),
            Kind::BadResponse(m) => f.debug_tuple("BadResponse").field(m).finish(),
            Kind::Timeout(m) => f.debug_tuple("Timeout").field(m).finish(),
            Kind::InvalidInput(m) => f.debug_tuple("InvalidInput").field(m).finish(),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Unreachable { source, .. } => Some(source),
            _ => None,
        }
    }
}
