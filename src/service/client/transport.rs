//! One HTTP/1.1 exchange with the node over a Unix socket or TCP, on pooled keep-alive
//! connections.
//!
//! Each connection is a hyper `SendRequest` whose driver future is spawned on the tokio
//! runtime that opened it. A sender goes back to the idle list only after its response
//! body has been read whole, so a sender taken from the list is between exchanges. A
//! reused connection may have been closed by the node meanwhile: a request that was never
//! written is sent again on a fresh connection, and so is an idempotent one (GET, DELETE)
//! that failed on a reused connection; a POST that may have been written is not.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};

use super::ClientError;

/// Idle connections kept per client.
const MAX_IDLE: usize = 16;
/// The largest response body read (the node's answers are far smaller).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

type Sender = SendRequest<Full<Bytes>>;

/// Where the node listens.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A Unix domain socket.
    Unix(PathBuf),
    /// `host:port` over TCP.
    Tcp(String),
}

impl Target {
    /// Reads `http://host:port`, `http://host` (port 80) or `host:port`.
    pub(crate) fn parse_url(url: &str) -> Result<Target, ClientError> {
        let bad = |why: &str| ClientError::invalid_input(format!("bad node URL {url:?}: {why}"));
        let uri: hyper::Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            None | Some("http") => {}
            Some(_) => return Err(bad("only http:// is supported")),
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("expected no path"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported; use a token"));
        }
        let port = authority.port_u16().unwrap_or(80);
        Ok(Target::Tcp(format!("{}:{port}", authority.host())))
    }

    /// How error messages name the target.
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::Unix(p) => p.display().to_string(),
            Target::Tcp(a) => format!("http://{a}"),
        }
    }

    fn host_header(&self) -> &str {
        match self {
            Target::Unix(_) => "localhost",
            Target::Tcp(a) => a,
        }
    }
}

/// A response read whole.
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<std::time::Duration>,
    pub(crate) body: Bytes,
}

/// A target, a token, and the idle connections to it.
pub(crate) struct Transport {
    target: Target,
    idle: Mutex<Vec<Sender>>,
}

impl Transport {
    pub(crate) fn new(target: Target) -> Transport {
        Transport {
            target,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Sends one request and reads the whole response. Must run inside a tokio runtime
    /// with IO enabled.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Response, ClientError> {
        let build = || {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, self.target.host_header())
                .header(hyper::header::ACCEPT, "application/json");
            if let Some(t) = token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            req.body(Full::new(body.clone().unwrap_or_default()))
                .map_err(|e| ClientError::invalid_input(format!("bad request {path:?}: {e}")))
        };
        let idempotent = method != Method::POST;
        // Reused connections first; a failure there that is safe to repeat falls through
        // to the next one, and finally to a fresh connection.
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(build()?).await {
                Ok(res) => return self.finish(sender, res).await,
                Err(mut e) => {
                    if e.take_message().is_some() || idempotent {
                        continue;
                    }
                    return Err(ClientError::bad_response(format!(
                        "connection lost: {}",
                        e.into_error()
                    )));
                }
            }
        }
        let mut sender = self.connect().await?;
        let res = sender
            .send_request(build()?)
            .await
            .map_err(|e| ClientError::bad_response(format!("connection lost: {e}")))?;
        self.finish(sender, res).await
    }

    /// Opens `GET path` on a connection of its own and answers as soon as the head
    /// arrives: a success with its body still coming (server-sent events), or an error
    /// answer read whole.
    pub(crate) async fn open_stream(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<Result<hyper::body::Incoming, Response>, ClientError> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(hyper::header::HOST, self.target.host_header())
            .header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::invalid_input(format!("bad request {path:?}: {e}")))?;
        let mut sender = self.connect().await?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::bad_response(format!("connection lost: {e}")))?;
        if res.status().is_success() {
            return Ok(Ok(res.into_body()));
        }
        Ok(Err(self.finish(sender, res).await?))
    }

    fn take_idle(&self) -> Option<Sender> {
        self.idle.lock().pop()
    }

    async fn finish(
        &self,
        sender: Sender,
        res: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Response, ClientError> {
        let status = res.status();
        let retry_after = res
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let body = http_body_util::Limited::new(res.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::bad_response(format!("reading the body: {e}")))?
            .to_bytes();
        if !sender.is_closed() {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        Ok(Response {
            status,
            retry_after,
            body,
        })
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let unreachable = |e| ClientError::unreachable(self.target.describe(), e);
        match &self.target {
            Target::Unix(path) => {
                // Before every connection: a socket in a directory others can write to
                // may be theirs.
                crate::service::socket::check_dir(&crate::service::socket::dir_of(path)).map_err(
                    |e| ClientError::unsafe_socket(self.target.describe(), e.to_string()),
                )?;
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unreachable)?;
                handshake(stream).await
            }
            Target::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(unreachable)?;
                // Small request/response pairs: don't let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                handshake(stream).await
            }
        }
    }
}

async fn handshake<S>(stream: S) -> Result<Sender, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::bad_response(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        // Ends when the node closes the connection or every sender is dropped.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
