//! Celery's canvas: signatures and the workflows built from them (chain, group, chord,
//! chunks, map, starmap), as Celery 5.7 carries them in a message's embed.
//!
//! A [`Signature`] is Celery's signature dict (`task`, `args`, `kwargs`, `options`,
//! `subtask_type`, `immutable`, `chord_size`) kept as JSON, so that whatever Python put in
//! it survives a trip through a weft worker. The workflow kinds are signatures too, as in
//! Python: a chain is `celery.chain` with `kwargs.tasks`, a group `celery.group` with
//! `kwargs.tasks`, a chord `celery.chord` with `kwargs.header` and `kwargs.body`, chunks
//! `celery.chunks` with `kwargs.task`, `kwargs.it`, `kwargs.n`; `celery.map` and
//! `celery.starmap` are plain (immutable) tasks that weft workers run in process.
//!
//! Sending one ([`Client::apply`](super::Client::apply), or a worker passing a workflow
//! on) follows Celery's `apply_async` of each kind (`apply.rs`): the same message ids,
//! `group_id`/`group_index`, `parent_id`/`root_id`, `chain` and `chord` embeds, and the
//! chord's size in the result backend, so that Python and weft workers can run the steps
//! of one workflow between them. What a worker does after a task ends (the next chain
//! step, `link` callbacks, `link_error` errbacks, the chord counter) is in `after.rs`.

pub(crate) mod after;
pub(crate) mod apply;
mod freeze;
mod signature;

pub use apply::ResultRef;
pub use signature::{chain, chord, chunks, group, xmap, xstarmap, Kind, Signature};

use serde_json::Value;

use super::protocol::ProtocolError;

/// The embed of a task message (its body's third element), read. The rest of a chain is
/// kept as the message has it (`chain`): a step forwards it as it is, so a long chain is
/// moved on, not parsed or copied ([`Embed::take`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Embed<'a> {
    /// `link`: sent with the result prepended when the task succeeds.
    pub callbacks: Vec<Signature>,
    /// `link_error`: sent with the task id prepended when the task fails.
    pub errbacks: Vec<Signature>,
    /// The rest of the chain, last step first (the next step is the last element), as
    /// signature dicts ([`Signature::check`]ed when the message was read).
    pub chain: std::borrow::Cow<'a, [Value]>,
    /// The body of the chord this task is a header part of.
    pub chord: Option<Signature>,
}

/// Celery's `maybe_list`: a list of signature dicts, or one dict alone.
pub(crate) fn maybe_list(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value::Array(a)) => a,
        Some(one @ Value::Object(_)) => std::slice::from_ref(one),
        _ => &[],
    }
}

impl<'a> Embed<'a> {
    /// Checks an embed without copying it: `null` (or a missing one) is empty; a field
    /// that is not what Celery writes is an error naming it (such a message is
    /// dead-lettered, not run).
    pub fn check(v: &Value) -> Result<(), ProtocolError> {
        let obj = match v {
            Value::Null => return Ok(()),
            Value::Object(m) => m,
            _ => return Err(ProtocolError::Canvas("the embed is not an object".into())),
        };
        for field in ["callbacks", "errbacks", "chain"] {
            match obj.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) => {
                    for (i, s) in a.iter().enumerate() {
                        Signature::check(s)
                            .map_err(|e| ProtocolError::Canvas(format!("{field}[{i}]: {e}")))?;
                    }
                }
                Some(s @ Value::Object(_)) => {
                    Signature::check(s)
                        .map_err(|e| ProtocolError::Canvas(format!("{field}: {e}")))?;
                }
                Some(_) => {
                    return Err(ProtocolError::Canvas(format!(
                        "{field}: not a list of signatures"
                    )))
                }
            }
        }
        match obj.get("chord") {
            None | Some(Value::Null) => Ok(()),
            Some(s) => Signature::check(s)
                .map(drop)
                .map_err(|e| ProtocolError::Canvas(format!("chord: {e}"))),
        }
    }

    /// Reads an embed that was [`check`](Self::check)ed when its message was read
    /// (what does not fit is left out, not refused).
    pub fn parse(v: &'a Value) -> Embed<'a> {
        let field = |k: &str| v.get(k);
        let sigs = |k: &str| {
            maybe_list(field(k))
                .iter()
                .filter_map(|s| Signature::from_value(s).ok())
                .collect()
        };
        Embed {
            callbacks: sigs("callbacks"),
            errbacks: sigs("errbacks"),
            chain: std::borrow::Cow::Borrowed(maybe_list(field("chain"))),
            chord: field("chord")
                .filter(|c| !c.is_null())
                .and_then(|c| Signature::from_value(c).ok()),
        }
    }

    /// Reads an embed (as [`parse`](Self::parse)), moving the rest of the chain out of it.
    pub fn take(v: &mut Value) -> Embed<'static> {
        let chain = match v.get_mut("chain").map(Value::take) {
            Some(Value::Array(a)) => a,
            Some(one @ Value::Object(_)) => vec![one],
            _ => Vec::new(),
        };
        let rest = Embed::parse(v);
        Embed {
            callbacks: rest.callbacks,
            errbacks: rest.errbacks,
            chain: std::borrow::Cow::Owned(chain),
            chord: rest.chord,
        }
    }

    /// True if nothing follows the task.
    pub fn is_empty(&self) -> bool {
        self.callbacks.is_empty()
            && self.errbacks.is_empty()
            && self.chain.is_empty()
            && self.chord.is_none()
    }
}

#[cfg(test)]
mod tests;
