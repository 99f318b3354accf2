//! A durable node's start: the tasks read back from its store become records again;
//! finished ones readable for the rest of their TTL, unfinished ones run again.

use std::sync::Arc;
use std::time::Duration;

use super::app::{App, Plan};
use super::journal::{JournalTx, Op, StoredTask};
use super::store::{now_ms, FinalOutcome, Record};
use super::submission::SubmitRequest;
use super::wire::State;

/// What a start found in the store.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Finished tasks still readable.
    pub results: usize,
    /// Finished tasks past their TTL, deleted.
    pub expired: usize,
    /// Unfinished tasks queued or scheduled to run again.
    pub requeued: usize,
    /// Of those, the ones that were running when the node stopped.
    pub interrupted: usize,
    /// Unfinished tasks that cannot run again (their task is no longer registered, say):
    /// recorded as `FAILURE` with the reason.
    pub failed: usize,
}

/// Makes records of `tasks` (read back by [`Journal::open`](super::journal::Journal::open)):
/// finished ones in the order they finished, with the TTL left to them; unfinished ones
/// spawned again in the order they were accepted, a delayed one at its due time, a
/// running one counted as interrupted. Each keeps its id and its attempts.
pub(crate) async fn recover(app: &Arc<App>, j: &JournalTx, tasks: Vec<StoredTask>) -> Recovered {
    let now = now_ms();
    let ttl_ms = u64::try_from(app.store.ttl().as_millis()).unwrap_or(u64::MAX);
    let mut report = Recovered::default();
    let (mut finished, unfinished): (Vec<_>, Vec<_>) =
        tasks.into_iter().partition(|t| t.state.is_finished());
    finished.sort_by_key(|t| (t.finished_at_ms, t.seq));
    for t in finished {
        let age = now.saturating_sub(t.finished_at_ms.unwrap_or(t.submitted_at_ms));
        if age >= ttl_ms {
            j.send(Op::Delete { seq: t.seq });
            report.expired += 1;
            continue;
        }
        let args = t
            .request
            .as_deref()
            .and_then(|r| serde_json::from_str::<SubmitRequest>(r).ok())
            .map(|r| r.args);
        let (record, _) = Record::restore(&t, t.state, t.interrupted, args);
        app.store
            .restore_finished(&record, Duration::from_millis(age));
        report.results += 1;
    }
    for t in unfinished {
        let was_running = t.state == State::Started;
        let interrupted = t.interrupted + u32::from(was_running);
        let due = t.due_at_ms.filter(|&d| d > now);
        let state = if due.is_some() {
            State::Scheduled
        } else {
            State::Pending
        };
        let request = t
            .request
            .as_deref()
            .map(serde_json::from_str::<SubmitRequest>);
        let args = match &request {
            Some(Ok(req)) => Some(req.args.clone()),
            _ => None,
        };
        let (record, cancel_rx) = Record::restore(&t, state, interrupted, args);
        j.send(Op::Requeue {
            seq: t.seq,
            state,
            interrupted,
        });
        app.store.reserve_anyway();
        let planned = match request {
            None => Err("its submission was not kept".to_owned()),
            Some(Err(e)) => Err(format!("its submission cannot be read: {e}")),
            Some(Ok(req)) => app.plan(&t.name, req).map_err(|e| match e {
                Plan::UnknownTask => format!("the task {:?} is no longer registered", t.name),
                Plan::Bad(why) => why,
            }),
        };
        let launched = planned.and_then(|(attempt, mut spawn)| {
            spawn.delay = due.map(|d| Duration::from_millis(d - now));
            let max_attempts = spawn.retry.map_or(1, |p| p.attempts());
            app.launch(&record, attempt, spawn, max_attempts, cancel_rx, false)
                .map_err(|_| "the node's pool refused it".to_owned())
        });
        match launched {
            Ok(()) => {
                report.requeued += 1;
                report.interrupted += usize::from(was_running);
            }
            Err(why) => {
                app.store.insert(&record);
                let why = format!("cannot run again after the node restarted: {why}");
                app.finish(&record, FinalOutcome::Failure(why)).await;
                report.failed += 1;
            }
        }
    }
    report
}
