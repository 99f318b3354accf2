//! Property test against a reference model: random sequences of spawn / cancel / join /
//! drop with random priorities on pools of 1..=4 workers. Every handle resolves exactly
//! once with the right outcome, no task runs twice, cancelled tasks never run.
//!
//! Spawns first queue behind "blockers" that occupy every worker, so the model knows a
//! cancel must win until the `Open` step releases them; after that a cancel may win or
//! lose, and the outcome must agree with what it returned. A cancel that loses to a task
//! that has not finished requests cancellation: the task then resolves to its value or
//! to cancelled (it ran either way), depending on whether it finished first.

mod common;
use common::block_all;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use weft::{JoinHandle, Pool, Priority};

const MAX_TASKS: usize = 48;

#[derive(Clone, Debug)]
enum Op {
    Spawn(Priority, u32),
    Cancel(usize),
    Join(usize),
    Drop(usize),
    Open,
}

fn op() -> impl Strategy<Value = Op> {
    let prio = prop_oneof![
        Just(Priority::High),
        Just(Priority::Normal),
        Just(Priority::Low)
    ];
    prop_oneof![
        4 => (prio, any::<u32>()).prop_map(|(p, v)| Op::Spawn(p, v)),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => any::<usize>().prop_map(Op::Join),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => Just(Op::Open),
    ]
}

struct Model {
    value: u32,
    /// `cancel()` returned true.
    cancelled: bool,
    /// `cancel()` returned false: the task ran; it may still resolve as cancelled.
    requested: bool,
}

fn run(workers: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let pool = Pool::builder().workers(workers).build().unwrap();
    // Occupy every worker until `Open`.
    let (mut gates, blockers) = block_all(&pool);
    let mut open = false;

    let runs: Arc<Vec<AtomicUsize>> =
        Arc::new((0..MAX_TASKS).map(|_| AtomicUsize::new(0)).collect());
    let mut handles: Vec<Option<JoinHandle<u32>>> = Vec::new();
    let mut model: Vec<Model> = Vec::new();

    for op in ops {
        match op {
            Op::Spawn(p, v) if handles.len() < MAX_TASKS => {
                let i = handles.len();
                let r = runs.clone();
                handles.push(Some(pool.task().priority(p).spawn(move || {
                    r[i].fetch_add(1, Ordering::SeqCst);
                    v
                })));
                model.push(Model {
                    value: v,
                    cancelled: false,
                    requested: false,
                });
            }
            Op::Spawn(..) => {}
            Op::Cancel(i) if !handles.is_empty() => {
                let i = i % handles.len();
                if let Some(h) = &handles[i] {
                    let won = h.cancel();
                    if !open && !model[i].cancelled {
                        prop_assert!(won, "cancel of a task that cannot have started must win");
                    }
                    if model[i].cancelled {
                        prop_assert!(!won, "a second cancel never wins");
                    }
                    model[i].cancelled |= won;
                    model[i].requested |= !won && !model[i].cancelled;
                }
            }
            Op::Join(i) if !handles.is_empty() => {
                let i = i % handles.len();
                if let Some(h) = handles[i].take() {
                    let m = &model[i];
                    let r = if open || m.cancelled {
                        h.join_timeout(Duration::from_secs(60)).expect("hang")
                    } else {
                        // Still behind the blockers: not finished, the handle comes back.
                        let h = h
                            .try_join()
                            .expect_err("finished while workers are blocked");
                        handles[i] = Some(h);
                        continue;
                    };
                    if m.cancelled {
                        prop_assert!(r.unwrap_err().is_cancelled());
                        prop_assert_eq!(runs[i].load(Ordering::SeqCst), 0);
                    } else {
                        check_ran(m, r)?;
                        prop_assert_eq!(runs[i].load(Ordering::SeqCst), 1);
                    }
                }
            }
            Op::Drop(i) if !handles.is_empty() => {
                let i = i % handles.len();
                // Detach: the task still runs (checked after shutdown).
                drop(handles[i].take());
            }
            Op::Open => {
                gates.clear();
                open = true;
            }
            _ => {}
        }
    }
    gates.clear();
    for b in blockers {
        b.join().unwrap();
    }
    for (i, h) in handles.into_iter().enumerate() {
        if let Some(h) = h {
            let r = h.join_timeout(Duration::from_secs(60)).expect("hang");
            if model[i].cancelled {
                prop_assert!(r.unwrap_err().is_cancelled());
            } else {
                check_ran(&model[i], r)?;
            }
        }
    }
    pool.shutdown();
    for (i, m) in model.iter().enumerate() {
        let expected = if m.cancelled { 0 } else { 1 };
        prop_assert_eq!(
            runs[i].load(Ordering::SeqCst),
            expected,
            "task {} ran the wrong number of times",
            i
        );
    }
    let met = pool.metrics();
    let cancelled = model.iter().filter(|m| m.cancelled).count() as u64;
    let requested = model.iter().filter(|m| m.requested).count() as u64;
    prop_assert_eq!(met.spawned, (model.len() + workers) as u64);
    prop_assert!(met.cancelled >= cancelled && met.cancelled <= cancelled + requested);
    prop_assert_eq!(met.completed + met.cancelled, met.spawned);
    Ok(())
}

/// The outcome of a task that ran: its value, or cancelled if cancellation was requested.
fn check_ran(m: &Model, r: Result<u32, weft::JoinError>) -> Result<(), TestCaseError> {
    match r {
        Ok(v) => prop_assert_eq!(v, m.value),
        Err(e) => prop_assert!(m.requested && e.is_cancelled(), "{e:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_handle_resolves_once_with_the_model_outcome(
        workers in 1usize..=4,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(workers, ops)?;
    }
}
