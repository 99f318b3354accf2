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

/// The embed of a task message (its body's third element), read and checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Embed {
    /// `link`: sent with the result prepended when the task succeeds.
    pub callbacks: Vec<Signature>,
    /// `link_error`: sent with the task id prepended when the task fails.
    pub errbacks: Vec<Signature>,
    /// The rest of the chain, last step first (the next step is the last element).
    pub chain: Vec<Signature>,
    /// The body of the chord this task is a header part of.
    pub chord: Option<Signature>,
}

impl Embed {
    /// Reads an embed; `null` (or a missing one) is empty. A field that is not what
    /// Celery writes is an error naming it: such a message is dead-lettered, not run.
    pub fn parse(v: &Value) -> Result<Embed, ProtocolError> {
        let obj = match v {
            Value::Null => return Ok(Embed::default()),
            Value::Object(m) => m,
            _ => return Err(ProtocolError::Canvas("the embed is not an object".into())),
        };
        let list = |field: &str| -> Result<Vec<Signature>, ProtocolError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        Signature::from_value(s)
                            .map_err(|e| ProtocolError::Canvas(format!("{field}[{i}]: {e}")))
                    })
                    .collect(),
                // A single signature where a list is expected: Celery's maybe_list.
                Some(s @ Value::Object(_)) => Signature::from_value(s)
                    .map(|s| vec![s])
                    .map_err(|e| ProtocolError::Canvas(format!("{field}: {e}"))),
                Some(_) => Err(ProtocolError::Canvas(format!(
                    "{field}: not a list of signatures"
                ))),
            }
        };
        let chord = match obj.get("chord") {
            None | Some(Value::Null) => None,
            Some(s) => Some(
                Signature::from_value(s)
                    .map_err(|e| ProtocolError::Canvas(format!("chord: {e}")))?,
            ),
        };
        Ok(Embed {
            callbacks: list("callbacks")?,
            errbacks: list("errbacks")?,
            chain: list("chain")?,
            chord,
        })
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
