//! Fork-join and spawn benchmarks: weft beside rayon and chili (and tokio where it has the
//! shape), in one process, runs interleaved, medians (issue 17's harness).
//!
//! Not criterion: criterion measures one library after the other, so a noisy stretch of a
//! shared machine lands on one of them. Here every case builds its inputs once, then runs
//! each contender once per round, in an order that rotates from round to round (A B C D,
//! B C D A, ...), timing each call on its own with `Instant`. One untimed warm-up call of
//! each contender comes first (it also checks the result). Between two calls the benchmark
//! thread sleeps [`GAP`] (1 ms), so that the pool that just ran has parked its threads
//! before the next contender starts (on 2 cores a pool still spinning after its run would
//! slow whoever runs next). So every call starts from an idle pool, as an occasional user's
//! call would, and pays for waking it: tens of µs here, which dominates the 1,023-node
//! tree. `BENCH_GAP_US=0` measures back-to-back calls instead.
//!
//! Each parallel call is timed from outside the pool, as a user makes it:
//! `pool.install(|| f())` for weft and rayon (the hand-off into the pool and back is in
//! the time), and for chili `let mut s = pool.scope(); f(&mut s)` on the benchmark thread
//! (chili's scope runs on the calling thread, which takes part as one of its threads).
//! Every result goes through `std::hint::black_box` and is checked against the
//! sequential answer after the timer stops.
//!
//! The pools, built once per process with `BENCH_WORKERS` threads (default 2):
//!
//! - weft: `weft::Pool::builder().workers(n)`;
//! - rayon: `rayon::ThreadPoolBuilder::new().num_threads(n)`, in an `Arc` (the chain
//!   clones it);
//! - chili: `chili::ThreadPool::with_config(Config { thread_count: n, .. })` with its
//!   default 100 µs heartbeat. chili's `thread_count` counts the calling thread: it starts
//!   `n - 1` threads of its own, and the thread that holds the scope is the n-th. So every
//!   library works with n threads while the benchmark thread waits (weft, rayon) or works
//!   (chili);
//! - tokio (cases 4 and 5 only): a multi-thread runtime with `n` worker threads.
//!
//! Cases (the sizes in brackets are the smoke mode's):
//!
//! 1. `tree`: the sum of a balanced binary tree of 1,023, 1,048,575 and 16,777,215 nodes
//!    [1,023, 16,383, 65,535], with a join at every node (leaves too, as chili's own
//!    benchmark does): `weft::join`, `rayon::join`, chili's `Scope::join`, each called as
//!    `join(left, right)`. The nodes (a `u64` value and the indices of two children) lie in
//!    one `Vec`, built once per case outside the timing, level by level by default
//!    (`BENCH_TREE_LAYOUT`, below). Reported in ns per node. The 1,023-node tree takes
//!    microseconds, so it gets 20× the rounds.
//!
//!    Why the layout matters: chili's `join(a, b)` runs `b` first on the calling thread and
//!    offers `a` to thieves, where weft and rayon run `a` first and offer `b`; so the same
//!    `join(left, right)` walks a chili tree right subtree first. A tree whose children
//!    were allocated before their parent (post-order: what `Box::new(build(..))` gives, as
//!    in chili's benchmark) is read by that right-first walk in descending address order,
//!    and by a left-first walk out of order, which on this machine made the sequential
//!    16M-node sum about twice as slow and chili look faster than its share of the work.
//!    Level order is as near for either walk.
//! 2. `fib`: fib(30) [fib(20)] with a join at every level, no cutoff. Reported in ms.
//! 3. `sort`: merge sort of 4,194,304 `u64` [262,144] (random, from a fixed seed) with
//!    4,096-element leaves sorted by `sort_unstable` and joins above; the merges are
//!    sequential, between the slice and one scratch buffer of the same length, alternating.
//!    Each call sorts a fresh copy of the input, made before the timer starts into buffers
//!    that the contender reuses; the result is compared with the input sorted by
//!    `sort_unstable`. Reported in ms.
//! 4. `chain`: 10,000 hops [1,000]. Each hop calls `spawn` on a cloned handle of the pool
//!    and drops the task's handle, moving the clone into the task; the last hop sends on a
//!    `std::sync::mpsc` channel that the benchmark thread waits on. The first hop is
//!    spawned from the benchmark thread. weft: `weft::Pool::spawn` on a cloned `Pool`;
//!    rayon: `ThreadPool::spawn` on a cloned `Arc<ThreadPool>`; tokio: `Handle::spawn` on
//!    a cloned runtime `Handle`. chili has no spawn. Reported in µs for the whole chain,
//!    4× the rounds.
//! 5. `spawn`: spawn 100,000 empty tasks [10,000] from a worker and join them all.
//!    weft: `pool.install(|| ..)` whose body spawns with `weft::spawn`, keeps the handles
//!    and joins each; rayon: `pool.install(|| rayon::scope(|s| for .. { s.spawn(..) }))`;
//!    tokio: `rt.block_on(rt.spawn(async { .. }))` whose body spawns with `tokio::spawn`,
//!    keeps the handles and awaits each (from a worker, as the others; not from
//!    `block_on`'s thread). chili has no spawn. Reported in µs, 4× the rounds.
//!
//! Output: per case, each contender's median, min and max, and the ratios of weft's
//! median to the others' (below 1: weft is faster); at the end, a markdown table of the
//! medians and ratios.
//!
//! Run: `cargo bench --bench forkjoin` (a few minutes on 2 cores; the 16M-node tree is
//! most of it). Settings, from the environment:
//!
//! - `BENCH_WORKERS=n`: threads per library (default 2);
//! - `BENCH_ROUNDS=r`: rounds per case (default 15; the cases above that say so multiply
//!   it). A case whose slowest warm-up call took over [`LONG_RUN`] runs at most
//!   [`LONG_RUN_ROUNDS`] rounds, and says so;
//! - `BENCH_GAP_US=us`: the pause after every timed call (default 1,000 µs; 0 for
//!   back-to-back calls, where a pool may still be awake from its previous call, or
//!   spinning while the next contender runs);
//! - `BENCH_TREE_LAYOUT=bfs|postorder|preorder`: the order of the tree's nodes in memory
//!   (default `bfs`, level by level; `postorder` is chili's benchmark's, children before
//!   their parent; `preorder` the parent before its subtrees);
//! - `BENCH_QUICK=1`, or the `--test` argument (`cargo bench --bench forkjoin -- --test`,
//!   which `cargo bench -- --test` in `.ci/run` passes): the smoke mode, every case once on
//!   the small sizes in brackets, no warm-up, in a few seconds. Its numbers are not results.
//!
//! Other arguments select cases by name: `cargo bench --bench forkjoin -- fib sort` runs
//! the cases whose name contains `fib` or `sort` (names: `tree-1k`, `tree-1m`, `tree-16m`,
//! `fib`, `sort`, `chain`, `spawn`).

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The default pause between two timed calls (see the module docs; `BENCH_GAP_US`).
const GAP: Duration = Duration::from_millis(1);

/// A case whose slowest warm-up call takes longer than this runs fewer rounds...
const LONG_RUN: Duration = Duration::from_secs(2);

/// ...at most this many.
const LONG_RUN_ROUNDS: usize = 5;

/// Elements per merge-sort leaf (sorted sequentially by `sort_unstable`).
const LEAF: usize = 4096;

/// The merge sort's input seed.
const SEED: u64 = 0x5eed_f04b_1017;

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

/// What this process runs: worker count, rounds, sizes.
struct Settings {
    workers: usize,
    rounds: usize,
    quick: bool,
    /// Case-name filters from the command line; empty means every case.
    filters: Vec<String>,
    /// Depths of the three trees (a tree of depth d has 2^d - 1 nodes).
    tree_depths: [u32; 3],
    tree_layout: Layout,
    /// The pause after each timed call.
    gap: Duration,
    fib_n: u64,
    sort_len: usize,
    chain_hops: usize,
    spawn_tasks: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick =
            args.iter().any(|a| a == "--test") || env_usize("BENCH_QUICK").is_some_and(|q| q > 0);
        let filters = args.into_iter().filter(|a| !a.starts_with('-')).collect();
        let workers = env_usize("BENCH_WORKERS").filter(|&n| n > 0).unwrap_or(2);
        let rounds = env_usize("BENCH_ROUNDS").filter(|&n| n > 0).unwrap_or(15);
        let tree_layout = Layout::from_env();
        let gap = env_usize("BENCH_GAP_US").map_or(GAP, |us| Duration::from_micros(us as u64));
        if quick {
            Settings {
                workers,
                rounds: 1,
                quick,
                filters,
                tree_depths: [10, 14, 16],
                tree_layout,
                gap,
                fib_n: 20,
                sort_len: 1 << 18,
                chain_hops: 1_000,
                spawn_tasks: 10_000,
            }
        } else {
            Settings {
                workers,
                rounds,
                quick,
                filters,
                tree_depths: [10, 20, 24],
                tree_layout,
                gap,
                fib_n: 30,
                sort_len: 1 << 22,
                chain_hops: 10_000,
                spawn_tasks: 100_000,
            }
        }
    }

    /// Whether the case named `name` was selected.
    fn wants(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }

    /// Rounds for a case that asks for `factor` times the default (always 1 when quick).
    fn rounds(&self, factor: usize) -> usize {
        if self.quick {
            1
        } else {
            self.rounds * factor
        }
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Every library's pool or runtime, built once per process.
struct Pools {
    weft: weft::Pool,
    rayon: Arc<rayon::ThreadPool>,
    chili: chili::ThreadPool,
    tokio: tokio::runtime::Runtime,
}

impl Pools {
    fn new(workers: usize) -> Pools {
        Pools {
            weft: weft::Pool::builder()
                .workers(workers)
                .build()
                .expect("build weft pool"),
            rayon: Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(workers)
                    .build()
                    .expect("build rayon pool"),
            ),
            // `thread_count` counts the thread that holds the scope (see the module docs).
            chili: chili::ThreadPool::with_config(chili::Config {
                thread_count: NonZeroUsize::new(workers),
                ..chili::Config::default()
            }),
            tokio: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .build()
                .expect("build tokio runtime"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------

/// A column of the result table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    Sequential,
    Weft,
    Rayon,
    Chili,
    Tokio,
}

impl Column {
    const ALL: [Column; 5] = [
        Column::Sequential,
        Column::Weft,
        Column::Rayon,
        Column::Chili,
        Column::Tokio,
    ];

    fn name(self) -> &'static str {
        match self {
            Column::Sequential => "sequential",
            Column::Weft => "weft",
            Column::Rayon => "rayon",
            Column::Chili => "chili",
            Column::Tokio => "tokio",
        }
    }
}

/// How a case reports its times.
#[derive(Clone, Copy)]
enum Unit {
    /// Nanoseconds per item, for `count` items.
    NsPer {
        count: u64,
        item: &'static str,
    },
    Ms,
    Us,
}

impl Unit {
    fn value(self, d: Duration) -> f64 {
        match self {
            Unit::NsPer { count, .. } => d.as_nanos() as f64 / count as f64,
            Unit::Ms => d.as_secs_f64() * 1e3,
            Unit::Us => d.as_secs_f64() * 1e6,
        }
    }

    fn label(self) -> String {
        match self {
            Unit::NsPer { item, .. } => format!("ns/{item}"),
            Unit::Ms => "ms".to_string(),
            Unit::Us => "µs".to_string(),
        }
    }
}

/// One contender of a case: its column and one timed call (the closure does its own
/// untimed preparation and checking, and returns the time of the call alone).
struct Contender<'a> {
    column: Column,
    run: Box<dyn FnMut() -> Duration + 'a>,
}

impl<'a> Contender<'a> {
    fn new(column: Column, run: impl FnMut() -> Duration + 'a) -> Contender<'a> {
        Contender {
            column,
            run: Box::new(run),
        }
    }
}

/// Median, min and max of one contender's samples.
#[derive(Clone, Copy)]
struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Stats {
        assert!(!samples.is_empty());
        samples.sort_unstable();
        let n = samples.len();
        let median = if !n.is_multiple_of(2) {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2
        };
        Stats {
            median,
            min: samples[0],
            max: samples[n - 1],
        }
    }
}

/// A measured case: its title and unit, and each contender's figures.
struct CaseResult {
    title: String,
    unit: Unit,
    stats: Vec<(Column, Stats)>,
}

impl CaseResult {
    fn median(&self, column: Column) -> Option<f64> {
        self.stats
            .iter()
            .find(|(c, _)| *c == column)
            .map(|(_, s)| self.unit.value(s.median))
    }

    /// weft's median over `column`'s.
    fn ratio(&self, column: Column) -> Option<f64> {
        Some(self.median(Column::Weft)? / self.median(column)?)
    }
}

/// Sleeps `gap`, if not zero.
fn pause(gap: Duration) {
    if !gap.is_zero() {
        std::thread::sleep(gap);
    }
}

/// Times `f` alone; its result goes through `black_box` before the clock stops.
fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let start = Instant::now();
    let r = black_box(f());
    (r, start.elapsed())
}

/// Runs a case: a warm-up call of each contender (skipped when quick), then `rounds`
/// rounds in rotating order, a pause of `s.gap` after every call. Prints the case's lines.
fn measure(
    s: &Settings,
    title: String,
    unit: Unit,
    factor: usize,
    mut contenders: Vec<Contender<'_>>,
) -> CaseResult {
    let mut rounds = s.rounds(factor);
    let mut note = String::new();
    if !s.quick {
        let mut slowest = Duration::ZERO;
        for c in &mut contenders {
            slowest = slowest.max((c.run)());
            pause(s.gap);
        }
        if slowest > LONG_RUN && rounds > LONG_RUN_ROUNDS {
            rounds = LONG_RUN_ROUNDS;
            note = format!(
                " (lowered: a warm-up call took {:.1} s)",
                slowest.as_secs_f64()
            );
        }
    }
    let k = contenders.len();
    let mut samples = vec![Vec::with_capacity(rounds); k];
    for round in 0..rounds {
        for i in 0..k {
            let at = (round + i) % k;
            samples[at].push((contenders[at].run)());
            pause(s.gap);
        }
    }

    let result = CaseResult {
        title,
        unit,
        stats: contenders
            .iter()
            .zip(&mut samples)
            .map(|(c, v)| (c.column, Stats::of(v)))
            .collect(),
    };
    println!("{} ({}), {rounds} rounds{note}", result.title, unit.label());
    for (column, st) in &result.stats {
        println!(
            "  {:<10}  median {:>10}   min {:>10}   max {:>10}",
            column.name(),
            fmt(unit.value(st.median)),
            fmt(unit.value(st.min)),
            fmt(unit.value(st.max)),
        );
    }
    let ratios: Vec<String> = [
        Column::Chili,
        Column::Rayon,
        Column::Tokio,
        Column::Sequential,
    ]
    .into_iter()
    .filter_map(|c| Some(format!("weft/{} {:.2}", c.name(), result.ratio(c)?)))
    .collect();
    println!("  ratios: {}", ratios.join(", "));
    println!();
    result
}

/// Three significant digits (all the digits before the point from 1,000 up).
fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// `n` with thousands separators.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The closing markdown table: medians and ratios of every case.
fn print_markdown(results: &[CaseResult]) {
    let header: Vec<&str> = Column::ALL.iter().map(|c| c.name()).collect();
    println!(
        "| case | {} | weft/chili | weft/rayon | weft/tokio |",
        header.join(" | ")
    );
    println!("|{}", " --- |".repeat(header.len() + 4));
    for r in results {
        let cells: Vec<String> = Column::ALL
            .iter()
            .map(|&c| r.median(c).map_or("–".to_string(), fmt))
            .collect();
        let ratio = |c| r.ratio(c).map_or("–".to_string(), |v| format!("{v:.2}"));
        println!(
            "| {} ({}) | {} | {} | {} | {} |",
            r.title,
            r.unit.label(),
            cells.join(" | "),
            ratio(Column::Chili),
            ratio(Column::Rayon),
            ratio(Column::Tokio),
        );
    }
}

// ---------------------------------------------------------------------------------------
// 1. Tree sum
// ---------------------------------------------------------------------------------------

/// No child.
const NONE: u32 = u32::MAX;

/// A node of a balanced binary tree held in one `Vec`: its value and its children's
/// indices ([`NONE`] for none).
struct Node {
    val: u64,
    left: u32,
    right: u32,
}

/// The order in which a tree's nodes lie in its `Vec` (`BENCH_TREE_LAYOUT`; see the
/// module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// Level by level (a heap's order): as near for a walk that goes right first as for
    /// one that goes left first.
    Bfs,
    /// Children before their parent, left subtree first: what building boxed nodes with
    /// `Box::new(build(..))` gives (chili's own benchmark).
    PostOrder,
    /// The parent, then its left subtree, then its right subtree.
    PreOrder,
}

impl Layout {
    fn from_env() -> Layout {
        match std::env::var("BENCH_TREE_LAYOUT").as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("bfs") => Layout::Bfs,
            Ok("postorder") => Layout::PostOrder,
            Ok("preorder") => Layout::PreOrder,
            Ok(other) => panic!("BENCH_TREE_LAYOUT={other}: expected bfs, postorder or preorder"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::Bfs => "bfs",
            Layout::PostOrder => "postorder",
            Layout::PreOrder => "preorder",
        }
    }
}

/// A balanced binary tree of `2^depth - 1` nodes laid out as `layout` says; each node's
/// value is its index, so the sum is `n (n - 1) / 2`. Returns the nodes and the root.
fn build_tree(depth: u32, layout: Layout) -> (Vec<Node>, u32) {
    let n = (1usize << depth) - 1;
    assert!(n < NONE as usize);
    let mut nodes = Vec::with_capacity(n);
    let root = match layout {
        Layout::Bfs => {
            let child = |c: usize| if c < n { c as u32 } else { NONE };
            nodes.extend((0..n).map(|i| Node {
                val: i as u64,
                left: child(2 * i + 1),
                right: child(2 * i + 2),
            }));
            0
        }
        Layout::PostOrder => post_order(&mut nodes, depth),
        Layout::PreOrder => pre_order(&mut nodes, depth),
    };
    assert_eq!(nodes.len(), n);
    (nodes, root)
}

fn post_order(nodes: &mut Vec<Node>, depth: u32) -> u32 {
    if depth == 0 {
        return NONE;
    }
    let left = post_order(nodes, depth - 1);
    let right = post_order(nodes, depth - 1);
    let at = nodes.len();
    nodes.push(Node {
        val: at as u64,
        left,
        right,
    });
    at as u32
}

fn pre_order(nodes: &mut Vec<Node>, depth: u32) -> u32 {
    if depth == 0 {
        return NONE;
    }
    let at = nodes.len();
    nodes.push(Node {
        val: at as u64,
        left: NONE,
        right: NONE,
    });
    nodes[at].left = pre_order(nodes, depth - 1);
    nodes[at].right = pre_order(nodes, depth - 1);
    at as u32
}

fn sum_seq(t: &[Node], i: u32) -> u64 {
    if i == NONE {
        return 0;
    }
    let n = &t[i as usize];
    n.val + sum_seq(t, n.left) + sum_seq(t, n.right)
}

fn sum_weft(t: &[Node], i: u32) -> u64 {
    if i == NONE {
        return 0;
    }
    let n = &t[i as usize];
    let (l, r) = weft::join(|| sum_weft(t, n.left), || sum_weft(t, n.right));
    n.val + l + r
}

fn sum_rayon(t: &[Node], i: u32) -> u64 {
    if i == NONE {
        return 0;
    }
    let n = &t[i as usize];
    let (l, r) = rayon::join(|| sum_rayon(t, n.left), || sum_rayon(t, n.right));
    n.val + l + r
}

fn sum_chili(t: &[Node], i: u32, s: &mut chili::Scope<'_>) -> u64 {
    if i == NONE {
        return 0;
    }
    let n = &t[i as usize];
    let (l, r) = s.join(|s| sum_chili(t, n.left, s), |s| sum_chili(t, n.right, s));
    n.val + l + r
}

fn tree_case(s: &Settings, p: &Pools, depth: u32, factor: usize) -> CaseResult {
    let (tree, root) = build_tree(depth, s.tree_layout);
    let nodes = tree.len() as u64;
    let expected = nodes * (nodes - 1) / 2;
    assert_eq!(sum_seq(&tree, root), expected);
    let tree = &tree[..];
    let check = |(got, t): (u64, Duration)| {
        assert_eq!(got, expected);
        t
    };
    let contenders = vec![
        Contender::new(Column::Sequential, move || {
            check(timed(|| sum_seq(black_box(tree), root)))
        }),
        Contender::new(Column::Weft, move || {
            check(timed(|| p.weft.install(|| sum_weft(black_box(tree), root))))
        }),
        Contender::new(Column::Rayon, move || {
            check(timed(|| {
                p.rayon.install(|| sum_rayon(black_box(tree), root))
            }))
        }),
        Contender::new(Column::Chili, move || {
            check(timed(|| {
                let mut scope = p.chili.scope();
                sum_chili(black_box(tree), root, &mut scope)
            }))
        }),
    ];
    let layout = match s.tree_layout {
        Layout::Bfs => String::new(),
        other => format!(", {} layout", other.name()),
    };
    measure(
        s,
        format!("tree sum, {} nodes{layout}", grouped(nodes)),
        Unit::NsPer {
            count: nodes,
            item: "node",
        },
        factor,
        contenders,
    )
}

// ---------------------------------------------------------------------------------------
// 2. fib
// ---------------------------------------------------------------------------------------

fn fib_seq(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib_seq(n - 1) + fib_seq(n - 2)
    }
}

fn fib_weft(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = weft::join(|| fib_weft(n - 1), || fib_weft(n - 2));
    a + b
}

fn fib_rayon(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = rayon::join(|| fib_rayon(n - 1), || fib_rayon(n - 2));
    a + b
}

fn fib_chili(n: u64, s: &mut chili::Scope<'_>) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = s.join(|s| fib_chili(n - 1, s), |s| fib_chili(n - 2, s));
    a + b
}

fn fib_case(s: &Settings, p: &Pools) -> CaseResult {
    let n = s.fib_n;
    let expected = fib_seq(n);
    let check = move |(got, t): (u64, Duration)| {
        assert_eq!(got, expected);
        t
    };
    let contenders = vec![
        Contender::new(Column::Sequential, move || {
            check(timed(|| fib_seq(black_box(n))))
        }),
        Contender::new(Column::Weft, move || {
            check(timed(|| p.weft.install(|| fib_weft(black_box(n)))))
        }),
        Contender::new(Column::Rayon, move || {
            check(timed(|| p.rayon.install(|| fib_rayon(black_box(n)))))
        }),
        Contender::new(Column::Chili, move || {
            check(timed(|| {
                let mut scope = p.chili.scope();
                fib_chili(black_box(n), &mut scope)
            }))
        }),
    ];
    measure(
        s,
        format!("fib({n}), a join at every level"),
        Unit::Ms,
        1,
        contenders,
    )
}

// ---------------------------------------------------------------------------------------
// 3. Merge sort
// ---------------------------------------------------------------------------------------

/// `len` pseudo-random `u64`s from `seed` (splitmix64).
fn random_u64s(len: usize, seed: u64) -> Vec<u64> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

/// Merges the sorted `a` and `b` into `out` (`out.len() == a.len() + b.len()`).
fn merge(a: &[u64], b: &[u64], out: &mut [u64]) {
    debug_assert_eq!(out.len(), a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    for o in out.iter_mut() {
        if j == b.len() || (i < a.len() && a[i] <= b[j]) {
            *o = a[i];
            i += 1;
        } else {
            *o = b[j];
            j += 1;
        }
    }
}

/// A leaf: sorts `v`, and copies it into `buf` when the result belongs there.
fn sort_leaf(v: &mut [u64], buf: &mut [u64], into_buf: bool) {
    v.sort_unstable();
    if into_buf {
        buf.copy_from_slice(v);
    }
}

/// After both halves (split at `mid`) were sorted into the other buffer: merges them into
/// the one the result belongs in.
fn merge_halves(v: &mut [u64], buf: &mut [u64], mid: usize, into_buf: bool) {
    if into_buf {
        merge(&v[..mid], &v[mid..], buf);
    } else {
        merge(&buf[..mid], &buf[mid..], v);
    }
}

/// Sorts `v` with `buf` (the same length) as scratch. The result ends up in `buf` when
/// `into_buf`, else in `v`; the halves are sorted into the other one, then merged.
fn msort_seq(v: &mut [u64], buf: &mut [u64], into_buf: bool) {
    if v.len() <= LEAF {
        return sort_leaf(v, buf, into_buf);
    }
    let mid = v.len() / 2;
    {
        let (vl, vr) = v.split_at_mut(mid);
        let (bl, br) = buf.split_at_mut(mid);
        msort_seq(vl, bl, !into_buf);
        msort_seq(vr, br, !into_buf);
    }
    merge_halves(v, buf, mid, into_buf);
}

fn msort_weft(v: &mut [u64], buf: &mut [u64], into_buf: bool) {
    if v.len() <= LEAF {
        return sort_leaf(v, buf, into_buf);
    }
    let mid = v.len() / 2;
    {
        let (vl, vr) = v.split_at_mut(mid);
        let (bl, br) = buf.split_at_mut(mid);
        weft::join(
            || msort_weft(vl, bl, !into_buf),
            || msort_weft(vr, br, !into_buf),
        );
    }
    merge_halves(v, buf, mid, into_buf);
}

fn msort_rayon(v: &mut [u64], buf: &mut [u64], into_buf: bool) {
    if v.len() <= LEAF {
        return sort_leaf(v, buf, into_buf);
    }
    let mid = v.len() / 2;
    {
        let (vl, vr) = v.split_at_mut(mid);
        let (bl, br) = buf.split_at_mut(mid);
        rayon::join(
            || msort_rayon(vl, bl, !into_buf),
            || msort_rayon(vr, br, !into_buf),
        );
    }
    merge_halves(v, buf, mid, into_buf);
}

fn msort_chili(v: &mut [u64], buf: &mut [u64], into_buf: bool, s: &mut chili::Scope<'_>) {
    if v.len() <= LEAF {
        return sort_leaf(v, buf, into_buf);
    }
    let mid = v.len() / 2;
    {
        let (vl, vr) = v.split_at_mut(mid);
        let (bl, br) = buf.split_at_mut(mid);
        s.join(
            |s| msort_chili(vl, bl, !into_buf, s),
            |s| msort_chili(vr, br, !into_buf, s),
        );
    }
    merge_halves(v, buf, mid, into_buf);
}

fn sort_case(s: &Settings, p: &Pools) -> CaseResult {
    let input = random_u64s(s.sort_len, SEED);
    let mut expected = input.clone();
    expected.sort_unstable();
    let (input, expected) = (&input, &expected);

    /// One contender's call: copies the input into its own buffers (reused from call to
    /// call, so no page faults after the first), times `sort`, checks the result.
    fn sorter<'a>(
        column: Column,
        input: &'a [u64],
        expected: &'a [u64],
        sort: impl Fn(&mut [u64], &mut [u64]) + 'a,
    ) -> Contender<'a> {
        let mut v = vec![0u64; input.len()];
        let mut buf = vec![0u64; input.len()];
        Contender::new(column, move || {
            v.copy_from_slice(input);
            let ((), t) = timed(|| sort(black_box(&mut v), &mut buf));
            assert!(v == expected, "{} sorted wrongly", column.name());
            t
        })
    }

    let contenders = vec![
        sorter(Column::Sequential, input, expected, |v, buf| {
            msort_seq(v, buf, false)
        }),
        sorter(Column::Weft, input, expected, |v, buf| {
            p.weft.install(|| msort_weft(v, buf, false))
        }),
        sorter(Column::Rayon, input, expected, |v, buf| {
            p.rayon.install(|| msort_rayon(v, buf, false))
        }),
        sorter(Column::Chili, input, expected, |v, buf| {
            let mut scope = p.chili.scope();
            msort_chili(v, buf, false, &mut scope)
        }),
    ];
    measure(
        s,
        format!(
            "merge sort of {} u64, {}-element leaves",
            grouped(s.sort_len as u64),
            grouped(LEAF as u64)
        ),
        Unit::Ms,
        1,
        contenders,
    )
}

// ---------------------------------------------------------------------------------------
// 4. Chain
// ---------------------------------------------------------------------------------------

/// One hop of the weft chain: `left` more hops to spawn, then the signal.
fn hop_weft(pool: weft::Pool, left: usize, done: mpsc::Sender<()>) {
    if left == 0 {
        done.send(()).unwrap();
    } else {
        let next = pool.clone();
        drop(pool.spawn(move || hop_weft(next, left - 1, done)));
    }
}

fn hop_rayon(pool: Arc<rayon::ThreadPool>, left: usize, done: mpsc::Sender<()>) {
    if left == 0 {
        done.send(()).unwrap();
    } else {
        let next = Arc::clone(&pool);
        pool.spawn(move || hop_rayon(next, left - 1, done));
    }
}

fn hop_tokio(rt: tokio::runtime::Handle, left: usize, done: mpsc::Sender<()>) {
    if left == 0 {
        done.send(()).unwrap();
    } else {
        let next = rt.clone();
        drop(rt.spawn(async move { hop_tokio(next, left - 1, done) }));
    }
}

fn chain_case(s: &Settings, p: &Pools) -> CaseResult {
    let hops = s.chain_hops;
    /// A contender that starts a chain with `start` and waits for its signal.
    fn chain<'a>(column: Column, start: impl Fn(mpsc::Sender<()>) + 'a) -> Contender<'a> {
        let (tx, rx) = mpsc::channel::<()>();
        Contender::new(column, move || {
            let done = tx.clone();
            let ((), t) = timed(|| {
                start(done);
                rx.recv().expect("the chain's signal");
            });
            t
        })
    }
    let contenders = vec![
        chain(Column::Weft, move |done| {
            hop_weft(p.weft.clone(), hops, done)
        }),
        chain(Column::Rayon, move |done| {
            hop_rayon(Arc::clone(&p.rayon), hops, done)
        }),
        chain(Column::Tokio, move |done| {
            hop_tokio(p.tokio.handle().clone(), hops, done)
        }),
    ];
    measure(
        s,
        format!("chain of {} `pool.spawn` hops", grouped(hops as u64)),
        Unit::Us,
        4,
        contenders,
    )
}

// ---------------------------------------------------------------------------------------
// 5. Spawn from a worker, join all
// ---------------------------------------------------------------------------------------

fn spawn_case(s: &Settings, p: &Pools) -> CaseResult {
    let n = s.spawn_tasks;
    let contenders = vec![
        Contender::new(Column::Weft, move || {
            let ((), t) = timed(|| {
                p.weft.install(|| {
                    let handles: Vec<_> = (0..n).map(|_| weft::spawn(|| ())).collect();
                    for h in handles {
                        h.join().expect("an empty task");
                    }
                })
            });
            t
        }),
        Contender::new(Column::Rayon, move || {
            let ((), t) = timed(|| {
                p.rayon.install(|| {
                    rayon::scope(|s| {
                        for _ in 0..n {
                            s.spawn(|_| ());
                        }
                    })
                })
            });
            t
        }),
        Contender::new(Column::Tokio, move || {
            let ((), t) = timed(|| {
                p.tokio
                    .block_on(p.tokio.spawn(async move {
                        let handles: Vec<_> = (0..n).map(|_| tokio::spawn(async {})).collect();
                        for h in handles {
                            h.await.expect("an empty task");
                        }
                    }))
                    .expect("the spawning task")
            });
            t
        }),
    ];
    measure(
        s,
        format!(
            "spawn {} empty tasks from a worker, join all",
            grouped(n as u64)
        ),
        Unit::Us,
        4,
        contenders,
    )
}

// ---------------------------------------------------------------------------------------

fn main() {
    let s = Settings::from_env();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "forkjoin: {} threads per library, {} rounds, tree layout {}, {} µs between calls, \
         {cpus} CPUs{}",
        s.workers,
        s.rounds(1),
        s.tree_layout.name(),
        s.gap.as_micros(),
        if s.quick {
            "; SMOKE MODE (small sizes, one call each): these numbers are not results"
        } else {
            ""
        }
    );
    println!();
    let p = Pools::new(s.workers);
    let mut results = Vec::new();
    let [d1, d2, d3] = s.tree_depths;
    for (name, depth, factor) in [("tree-1k", d1, 20), ("tree-1m", d2, 1), ("tree-16m", d3, 1)] {
        if s.wants(name) {
            results.push(tree_case(&s, &p, depth, factor));
        }
    }
    if s.wants("fib") {
        results.push(fib_case(&s, &p));
    }
    if s.wants("sort") {
        results.push(sort_case(&s, &p));
    }
    if s.wants("chain") {
        results.push(chain_case(&s, &p));
    }
    if s.wants("spawn") {
        results.push(spawn_case(&s, &p));
    }
    print_markdown(&results);
}
