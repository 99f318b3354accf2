//! The soak test: a long random mix of everything a pool does, then a check that the
//! promise held. Ignored by default (it runs for minutes); `.ci/run` runs a bounded count:
//!
//! ```text
//! WEFT_SOAK_OPS=300000 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! `WEFT_SOAK_OPS` sets the total number of operations (default 1 000 000), run in rounds
//! of 50 000; `WEFT_SOAK_SEED` the random seed (default: from the clock; printed, so a
//! failure can be replayed).
//!
//! Each round builds a bounded pool and drives it from several submitter threads with
//! random operations: spawns from outside and from inside tasks at every priority,
//! delays, retries, periodic schedules, time limits with `checkpoint`, cancels (before and
//! during a run), panicking tasks, closures and outputs whose `Drop` panics, handles
//! joined, dropped, or sent to another thread to be dropped there, `try_spawn` against the
//! bound, and a shutdown (graceful, `shutdown_now` or `shutdown_timeout`) in the middle,
//! while the submitters carry on. Checked at the end:
//! - every handle resolved (no join hangs), with an outcome its history allows;
//! - no task ran twice, and a task whose `cancel()` returned true never ran;
//! - `Metrics` adds up: `spawned == completed + panicked + cancelled + timed_out` once the
//!   pool is shut down (a retried task that ends in `Err` counts as completed, once);
//! - every closure and output was dropped exactly once (live-value ledger), and every
//!   panicking `Drop` was caught (`weft::drop_panics`);
//! - a counting global allocator: the live allocations after a large round exceed those
//!   after a small warm-up round by a bounded amount, not by anything that grows with the
//!   number of tasks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use weft::{JoinError, JoinHandle, Pool, Priority, RetryPolicy};

mod common;
use common::rng::Rng;

/// A balanced tree of `weft::join`s `depth` deep with up to a few µs of random work at each
/// leaf; returns the number of leaves.
fn join_tree(seed: u64, depth: u32) -> u64 {
    let mut rng = Rng::seeded(seed);
    if depth == 0 {
        let spin = rng.below(2_000);
        let mut x = seed;
        for _ in 0..spin {
            x = std::hint::black_box(x.rotate_left(5) ^ 0x9e37_79b9);
        }
        std::hint::black_box(x);
        return 1;
    }
    let (l, r) = (rng.next_u64() | 1, rng.next_u64() | 1);
    let (a, b) = weft::join(|| join_tree(l, depth - 1), || join_tree(r, depth - 1));
    a + b
}

// ---------------------------------------------------------------------------------------
// The counting allocator.

struct Counting;

static LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------
// The live-value ledger: every closure and output carries a token; each token is dropped
// exactly once.

/// 0: never made; 1: alive; 2: dropped.
static LEDGER: OnceLock<Vec<AtomicU8>> = OnceLock::new();
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(0);
static LIVE_TOKENS: AtomicI64 = AtomicI64::new(0);

struct Token(usize);

impl Token {
    fn new() -> Token {
        let id = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let ledger = LEDGER.get().expect("ledger");
        assert!(id < ledger.len(), "ledger too small");
        assert_eq!(ledger[id].swap(1, Ordering::Relaxed), 0);
        LIVE_TOKENS.fetch_add(1, Ordering::Relaxed);
        Token(id)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let was = LEDGER.get().unwrap()[self.0].swap(2, Ordering::Relaxed);
        if was != 1 {
            // A double drop: abort rather than unwind, which weft would catch.
            eprintln!("soak: token {} dropped twice", self.0);
            std::process::abort();
        }
        LIVE_TOKENS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Panics when dropped (after dropping its token).
struct Bomb(#[allow(dead_code)] Token);

static BOMBS_GONE_OFF: AtomicU64 = AtomicU64::new(0);

impl Drop for Bomb {
    fn drop(&mut self) {
        BOMBS_GONE_OFF.fetch_add(1, Ordering::Relaxed);
        std::panic::panic_any(Quiet);
    }
}

/// The payload of the soak's deliberate panics: the panic hook keeps quiet about them.
struct Quiet;

fn quiet_panic() -> ! {
    std::panic::panic_any(Quiet)
}

// ---------------------------------------------------------------------------------------
// Random numbers.

/// A random lane.
fn random_priority(rng: &mut Rng) -> Priority {
    [Priority::High, Priority::Normal, Priority::Low][rng.below(3) as usize]
}

// ---------------------------------------------------------------------------------------
// What a submitter keeps about each task.

/// What a task returns.
struct Out {
    _token: Option<Token>,
    _bomb: Option<Bomb>,
}

/// A task's output. If the task's closure holds a bomb, the output carries no token: when
/// a captured value's `Drop` panics at the end of a closure call, Rust leaks the value the
/// call was returning (rust-lang/rust#47949), which the ledger would report as ours.
fn out(token: Token, closure_bomb: bool, bomb_output: bool) -> Out {
    Out {
        _token: if closure_bomb {
            drop(token);
            None
        } else {
            Some(token)
        },
        _bomb: bomb_output.then(|| Bomb(Token::new())),
    }
}

enum Handle {
    Plain(JoinHandle<Out>),
    Retry(JoinHandle<Result<Out, u32>>),
}

/// Outcomes a task may end with, given how it was made and what happened to it.
#[derive(Clone, Copy)]
struct Allowed {
    value: bool,
    panic: bool,
    time_limit: bool,
    /// `cancel()` returned false on it: a running task may resolve as cancelled.
    cancel_requested: bool,
}

struct Tracked {
    handle: Handle,
    id: usize,
    allowed: Allowed,
    /// `cancel()` returned true: must resolve as cancelled, must never have run.
    cancel_won: bool,
}

/// Per-task run counts, indexed by task id.
struct Runs(Vec<AtomicU8>);

impl Runs {
    fn ran(&self, id: usize) {
        let before = self.0[id].fetch_add(1, Ordering::Relaxed);
        assert_eq!(before, 0, "task {id} ran twice");
    }
}

struct Ctx {
    pool: Pool,
    runs: Runs,
    next_task: AtomicUsize,
    /// Handles sent here are dropped on another thread.
    dropper: Sender<Handle>,
}

impl Ctx {
    fn task_id(&self) -> usize {
        let id = self.next_task.fetch_add(1, Ordering::Relaxed);
        assert!(id < self.runs.0.len(), "task table too small");
        id
    }
}

/// Spawns one random task; returns what to track about it.
fn spawn_random(ctx: &Arc<Ctx>, rng: &mut Rng) -> Tracked {
    let id = ctx.task_id();
    let priority = random_priority(rng);
    let token = Token::new();
    let kind = rng.below(100);
    // A closure whose `Drop` panics: it goes off when the task is cancelled or discarded
    // (caught by weft), or right after a plain run, which makes the run panic. Never
    // together with an output bomb: that would be a panic while unwinding (an abort, in
    // any Rust code).
    let bomb_closure = (!(18..25).contains(&kind) && rng.chance(3)).then(|| Bomb(Token::new()));
    let bomb_output = bomb_closure.is_none() && !(18..25).contains(&kind) && rng.chance(3);
    let mut allowed = Allowed {
        value: true,
        // A retrying closure is dropped by weft after its last attempt (caught there).
        panic: bomb_closure.is_some() && kind >= 10,
        time_limit: false,
        cancel_requested: false,
    };
    let mut builder = ctx.pool.task().priority(priority);
    if rng.chance(15) {
        builder = builder.delay(Duration::from_micros(rng.below(3_000)));
    }
    let cb = bomb_closure.is_some();
    let c = ctx.clone();
    let handle = if kind < 10 {
        // A retrying task: fails `fails` times, then succeeds (if attempts allow).
        let fails = rng.below(4) as u32;
        let policy = RetryPolicy::fixed(Duration::from_micros(rng.below(500)))
            .max_attempts(1 + rng.below(4) as u32);
        let mut attempt = 0;
        let mut token = Some(token);
        let _bomb = bomb_closure;
        Handle::Retry(builder.retry(policy).spawn(move || {
            if attempt == 0 {
                c.runs.ran(id);
            }
            attempt += 1;
            if attempt <= fails {
                return Err(attempt);
            }
            let _keep = &_bomb;
            // The closure outlives this call (weft drops it after the last attempt, with
            // a panic caught there), so the output may keep its token.
            Ok(out(
                token.take().unwrap_or_else(Token::new),
                false,
                bomb_output,
            ))
        }))
    } else if kind < 18 {
        // A time-limited task that polls `checkpoint` for a random while.
        allowed.time_limit = true;
        let spin = Duration::from_micros(rng.below(2_000));
        let limit = Duration::from_micros(rng.below(2_000));
        Handle::Plain(builder.time_limit(limit).spawn(move || {
            c.runs.ran(id);
            let _keep = &bomb_closure;
            let start = Instant::now();
            while start.elapsed() < spin && weft::checkpoint().is_ok() {
                thread::yield_now();
            }
            out(token, cb, bomb_output)
        }))
    } else if kind < 25 {
        // A panicking task.
        allowed.value = false;
        allowed.panic = true;
        Handle::Plain(builder.spawn(move || {
            c.runs.ran(id);
            let _keep = &token;
            quiet_panic()
        }))
    } else if kind < 40 {
        // A task that spawns children from inside (joined or detached), and maybe waits;
        // some first run a tree of `weft::join`s with random work at the leaves.
        let children = rng.below(4);
        let join_them = rng.chance(50);
        let child_seed = rng.next_u64() | 1;
        let tree = rng
            .chance(30)
            .then(|| (rng.next_u64() | 1, rng.below(11) as u32));
        Handle::Plain(builder.spawn(move || {
            c.runs.ran(id);
            let _keep = &bomb_closure;
            if let Some((seed, depth)) = tree {
                assert_eq!(
                    join_tree(seed, depth),
                    1 << depth,
                    "a join tree lost a leaf"
                );
            }
            let mut rng = Rng::seeded(child_seed);
            let handles: Vec<_> = (0..children)
                .map(|_| {
                    let child = c.task_id();
                    let cc = c.clone();
                    let t = Token::new();
                    weft::task()
                        .priority(random_priority(&mut rng))
                        .spawn(move || {
                            cc.runs.ran(child);
                            drop(t);
                        })
                })
                .collect();
            if join_them {
                for h in handles {
                    // A child may resolve as shut down if the pool closes meanwhile.
                    let r = h.join();
                    assert!(r.is_ok() || r.unwrap_err().is_shutdown());
                }
            }
            out(token, cb, bomb_output)
        }))
    } else if kind < 45 {
        // `try_spawn` against the bound; a refusal hands the closure back, which is
        // dropped here (its token with it).
        let f = move || {
            c.runs.ran(id);
            let _keep = &bomb_closure;
            out(token, cb, false)
        };
        match builder.try_spawn(f) {
            Ok(h) => Handle::Plain(h),
            Err(e) => {
                // Refused (full lane or shut down): the closure came back whole. Drop it
                // (its tokens with it) and spawn a plain task instead, waiting for room.
                assert!(e.is_full() || e.is_shutdown());
                drop_catching(e.into_inner());
                let id = ctx.task_id();
                let c = ctx.clone();
                let token = Token::new();
                let h = ctx.pool.spawn(move || {
                    c.runs.ran(id);
                    out(token, false, false)
                });
                allowed.panic = false;
                return Tracked {
                    handle: Handle::Plain(h),
                    id,
                    allowed,
                    cancel_won: false,
                };
            }
        }
    } else {
        // A plain task.
        Handle::Plain(builder.spawn(move || {
            c.runs.ran(id);
            let _keep = &bomb_closure;
            out(token, cb, bomb_output)
        }))
    };
    Tracked {
        handle,
        id,
        allowed,
        cancel_won: false,
    }
}

fn is_finished(h: &Handle) -> bool {
    match h {
        Handle::Plain(h) => h.is_finished(),
        Handle::Retry(h) => h.is_finished(),
    }
}

fn cancel(h: &Handle) -> bool {
    match h {
        Handle::Plain(h) => h.cancel(),
        Handle::Retry(h) => h.cancel(),
    }
}

/// Joins and checks the outcome against what the task's history allows. The output
/// (tokens, bombs) is dropped here: a bomb's panic must not escape, so it is caught.
fn join_and_check(t: Tracked, runs: &Runs) {
    const HANG: Duration = Duration::from_secs(120);
    let retrying = matches!(t.handle, Handle::Retry(_));
    let err: Option<JoinError> = match t.handle {
        Handle::Plain(h) => match h.join_timeout(HANG).expect("a handle never resolved") {
            Ok(out) => {
                assert!(t.allowed.value, "task {} returned a value", t.id);
                drop_catching(out);
                None
            }
            Err(e) => Some(e),
        },
        Handle::Retry(h) => match h.join_timeout(HANG).expect("a handle never resolved") {
            Ok(result) => {
                assert!(t.allowed.value);
                drop_catching(result);
                None
            }
            Err(e) => Some(e),
        },
    };
    let ran = runs.0[t.id].load(Ordering::Relaxed);
    if t.cancel_won {
        assert!(err.as_ref().is_some_and(JoinError::is_cancelled));
        // A retrying task may be cancelled while it waits for its next attempt.
        if !retrying {
            assert_eq!(ran, 0, "task {} ran after cancel() returned true", t.id);
        }
        return;
    }
    if let Some(e) = err {
        let ok = e.is_shutdown()
            || (e.is_panic() && t.allowed.panic)
            || (e.is_time_limit() && t.allowed.time_limit)
            || (e.is_cancelled() && t.allowed.cancel_requested);
        assert!(ok, "task {}: unexpected {e:?}", t.id);
        if e.is_panic() || e.is_time_limit() {
            assert_eq!(ran, 1);
        }
    } else {
        assert_eq!(ran, 1, "task {} has a value but did not run once", t.id);
    }
}

/// Panicking `Drop`s caught by the test's own code (outputs it took from handles).
static CAUGHT_BY_TEST: AtomicU64 = AtomicU64::new(0);

fn drop_catching<T>(x: T) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(x))).is_err() {
        CAUGHT_BY_TEST.fetch_add(1, Ordering::Relaxed);
    }
}

/// One submitter's share of the operations.
fn submitter(ctx: Arc<Ctx>, seed: u64, ops: usize, shutdown_at: Option<usize>) {
    let mut rng = Rng::seeded(seed);
    let mut live: Vec<Tracked> = Vec::new();
    let mut schedules = Vec::new();
    for op in 0..ops {
        if Some(op) == shutdown_at {
            match rng.below(3) {
                0 => ctx.pool.shutdown(),
                1 => ctx.pool.shutdown_now(),
                _ => {
                    let report = ctx
                        .pool
                        .shutdown_timeout(Duration::from_millis(rng.below(5)));
                    // A later `shutdown` joins whatever was still busy.
                    if report.threads_still_running > 0 {
                        ctx.pool.shutdown();
                    }
                }
            }
        }
        match rng.below(100) {
            0..=54 => live.push(spawn_random(&ctx, &mut rng)),
            55..=64 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let t = &mut live[i];
                if !t.cancel_won {
                    if cancel(&t.handle) {
                        t.cancel_won = true;
                    } else {
                        t.allowed.cancel_requested = true;
                    }
                }
            }
            65..=79 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                join_and_check(live.swap_remove(i), &ctx.runs);
            }
            80..=86 if !live.is_empty() => {
                // Detach: drop here, or on the dropper thread.
                let i = rng.below(live.len() as u64) as usize;
                let t = live.swap_remove(i);
                // A plain drop: weft must catch an output's panicking `Drop` itself.
                if rng.chance(50) {
                    let _ = ctx.dropper.send(t.handle);
                } else {
                    drop(t.handle);
                }
            }
            87..=88 => {
                let token = Token::new();
                let p = ctx.pool.task().priority(random_priority(&mut rng)).every(
                    Duration::from_micros(rng.below(2_000)),
                    move || {
                        let _keep = &token;
                    },
                );
                schedules.push(p);
            }
            89..=90 if !schedules.is_empty() => {
                let i = rng.below(schedules.len() as u64) as usize;
                let p = schedules.swap_remove(i);
                if rng.chance(50) {
                    p.cancel();
                }
                drop(p);
            }
            91..=92 => {
                // A join and a scope from outside the pool.
                let t = Token::new();
                let (a, b) = ctx.pool.join(|| 1, || 2);
                assert_eq!(a + b, 3);
                ctx.pool.scope(|s| s.spawn(move |_| drop(t)));
            }
            _ => {
                // Let some of the work finish.
                if let Some(t) = live.iter().position(|t| is_finished(&t.handle)) {
                    join_and_check(live.swap_remove(t), &ctx.runs);
                }
            }
        }
    }
    drop(schedules);
    for t in live {
        join_and_check(t, &ctx.runs);
    }
}

struct RoundResult {
    ops: usize,
    tasks: usize,
    elapsed: Duration,
}

fn round(seed: u64, ops: usize) -> RoundResult {
    let start = Instant::now();
    const SUBMITTERS: usize = 3;
    let pool = Pool::builder().workers(3).max_queued(512).build().unwrap();
    let (dropper, dropped) = channel::<Handle>();
    let dropper_thread = thread::spawn(move || {
        for h in dropped {
            drop(h);
        }
    });
    let ctx = Arc::new(Ctx {
        pool: pool.clone(),
        runs: Runs((0..ops * 5 + 64).map(|_| AtomicU8::new(0)).collect()),
        next_task: AtomicUsize::new(0),
        dropper,
    });
    let mut rng = Rng::seeded(seed);
    let shutdown_by = rng.below(SUBMITTERS as u64) as usize;
    let per = ops / SUBMITTERS;
    let threads: Vec<_> = (0..SUBMITTERS)
        .map(|i| {
            let ctx = ctx.clone();
            let seed = rng.next_u64() | 1;
            // One submitter shuts the pool down somewhere in its second half.
            let at = (i == shutdown_by).then(|| per / 2 + (seed as usize % (per / 2).max(1)));
            thread::spawn(move || submitter(ctx, seed, per, at))
        })
        .collect();
    for t in threads {
        t.join().expect("a submitter failed");
    }
    pool.shutdown();
    let tasks = ctx.next_task.load(Ordering::Relaxed);
    let m = pool.metrics();
    assert_eq!(m.queued(), 0, "{m:?}");
    assert_eq!(m.timers_pending, 0, "{m:?}");
    assert_eq!(
        m.spawned,
        m.completed + m.panicked + m.cancelled + m.timed_out,
        "metrics do not add up: {m:?}"
    );
    drop(ctx);
    drop(pool);
    dropper_thread.join().unwrap();
    RoundResult {
        ops,
        tasks,
        elapsed: start.elapsed(),
    }
}

#[test]
#[ignore = "minutes long: run with --ignored (see the module docs)"]
fn soak() {
    const ROUND: usize = 50_000;
    let ops: usize = std::env::var("WEFT_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = std::env::var("WEFT_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    println!("soak: WEFT_SOAK_SEED={seed} WEFT_SOAK_OPS={ops}");
    // Tokens: each op makes a few at most.
    LEDGER.get_or_init(|| {
        (0..(ops + ROUND + 2_000) * 8)
            .map(|_| AtomicU8::new(0))
            .collect()
    });
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<Quiet>() {
            default_hook(info);
        }
    }));
    let drop_panics_before = weft::drop_panics();

    // Warm-up: a small round, after which thread-locals, allocator caches and the like
    // exist; the big round must not add more live blocks than a bounded slack.
    let warm = round(seed, 2_000);
    let blocks_after_warm_up = LIVE_BLOCKS.load(Ordering::Relaxed);
    let mut rng = Rng::seeded(seed.rotate_left(17) | 1);
    let mut big = RoundResult {
        ops: 0,
        tasks: 0,
        elapsed: Duration::ZERO,
    };
    let mut rounds = 0;
    while big.ops < ops {
        let r = round(rng.next_u64() | 1, ROUND.min(ops - big.ops).max(1_000));
        big.ops += r.ops;
        big.tasks += r.tasks;
        big.elapsed += r.elapsed;
        rounds += 1;
    }
    let blocks_after = LIVE_BLOCKS.load(Ordering::Relaxed);

    assert_eq!(
        LIVE_TOKENS.load(Ordering::Relaxed),
        0,
        "a closure or output leaked"
    );
    // Every bomb went off exactly once: inside a task's run (a task panic), or in a
    // `Drop` caught by weft or by the test's own code. None escaped (the submitters and
    // the dropper thread would have failed).
    let bombs = BOMBS_GONE_OFF.load(Ordering::Relaxed);
    let caught = weft::drop_panics() - drop_panics_before + CAUGHT_BY_TEST.load(Ordering::Relaxed);
    assert!(caught <= bombs, "{caught} caught, {bombs} went off");
    let growth = blocks_after - blocks_after_warm_up;
    println!(
        "soak: warm-up {} ops / {} tasks in {:?}; {} rounds (each with a shutdown): {} ops / \
         {} tasks in {:?}; {} drop panics caught; live heap blocks {} after warm-up, {} \
         after ({:+})",
        warm.ops,
        warm.tasks,
        warm.elapsed,
        rounds,
        big.ops,
        big.tasks,
        big.elapsed,
        BOMBS_GONE_OFF.load(Ordering::Relaxed),
        blocks_after_warm_up,
        blocks_after,
        growth
    );
    // Bounded, whatever the number of tasks: one leaked block per five thousand tasks
    // fails this at CI's count (over a million tasks). What moves it otherwise is
    // crossbeam-epoch's deferred garbage and thread registrations, freed lazily: a plain
    // loop creating and dropping pools swings by about ±50 blocks per 100 pools, with no
    // trend.
    assert!(
        growth <= 256,
        "{growth} more live heap blocks after {} tasks than after the warm-up",
        big.tasks
    );
}
