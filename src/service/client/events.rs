//! The node's event stream (`GET /v1/events`) as the client reads it: server-sent events,
//! one [`Event`] at a time.

use http_body_util::BodyExt;
use serde_json::Value;

use super::ClientError;

/// The most an event stream buffers of one unfinished event.
const MAX_EVENT_BYTES: usize = 16 << 20;

/// One server-sent event: `task` (a task's record changed; `data` is its
/// [`TaskInfo`](super::TaskInfo) without result and args), `stats` (the node's figures,
/// every second), or `dropped` (the node dropped this stream: it read too slowly).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The event's name.
    pub kind: String,
    /// Its data, as JSON.
    pub data: Value,
}

/// An open `GET /v1/events`; made by [`AsyncClient::events`](super::AsyncClient::events).
pub struct EventStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    pub(crate) fn new(body: hyper::body::Incoming) -> EventStream {
        EventStream {
            body,
            buf: Vec::new(),
        }
    }

    /// The next event; `None` once the node ended the stream (it stops, or it dropped a
    /// slow reader after a `dropped` event).
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(event) = parse(&frame)? {
                    return Ok(Some(event));
                }
                continue;
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                return Err(ClientError::bad_response("an event over 16 MiB"));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::bad_response(format!(
                        "the event stream broke: {e}"
                    )))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// One frame: `event:` and `data:` lines; comments (`:`) alone give `None`.
fn parse(frame: &[u8]) -> Result<Option<Event>, ClientError> {
    let text = String::from_utf8_lossy(frame);
    let mut kind = "message".to_owned();
    let mut data = String::new();
    for line in text.lines() {
        if let Some(k) = line.strip_prefix("event:") {
            kind = k.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    if data.is_empty() {
        return Ok(None);
    }
    let data = serde_json::from_str(&data)
        .map_err(|e| ClientError::bad_response(format!("an event that is not JSON: {e}")))?;
    Ok(Some(Event { kind, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse() {
        let e = parse(b"event: stats\ndata: {\"workers\": 2}\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(e.kind, "stats");
        assert_eq!(e.data["workers"], 2);
        assert_eq!(parse(b": keep-alive\n\n").unwrap(), None);
        assert!(parse(b"event: task\ndata: {oops\n\n").is_err());
    }
}
