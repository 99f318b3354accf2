//! A small, deterministic workout of every path that allocates or frees a task, for
//! valgrind's memcheck: spawn and join, handles dropped unjoined (here and on another
//! thread), cancel, panics, `join` and `scope`, nested spawns, priorities, delays (short,
//! cancelled, `Duration::MAX`), retries, periodic schedules, the three kinds of shutdown,
//! refused spawns, handles polled as futures, and the global pool.
//!
//! Every result is asserted (a wrong one panics, and the process exits non-zero), and a
//! count of live test values proves that every closure and output was dropped. There are
//! no timing assertions and no sleeps: every wait is on a condition (a join, a channel,
//! `is_finished`); the short timeouts used only ever expire against a task held shut.
//!
//! Run it under valgrind (CI does, from `.ci/run`):
//!
//! ```sh
//! cargo build --release --example memcheck
//! valgrind --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
//!     --error-exitcode=1 target/release/examples/memcheck
//! ```
//!
//! It also runs on its own (`cargo run --release --example memcheck`) in well under a
//! second.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender, TryRecvError};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use weft::{JoinHandle, Pool, Priority, RetryPolicy};

/// Test values alive right now: each `Token` counts itself in and out.
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// A heap-allocated value that counts itself, captured by closures and returned as
/// outputs: one that weft forgot to drop shows up both in `LIVE` and in valgrind's report.
#[derive(Debug)]
struct Token(Box<u64>);

impl Token {
    fn new(v: u64) -> Token {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Token(Box::new(v))
    }

    fn get(&self) -> u64 {
        *self.0
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The start of every deliberate panic message; the panic hook keeps those quiet.
const DELIBERATE: &str = "deliberate panic";

/// A task that occupies one worker until the returned sender is used (or dropped). Returns
/// once the task is running, so on a one-worker pool everything spawned after it waits.
fn gate(pool: &Pool) -> (JoinHandle<()>, Sender<()>) {
    let (started_tx, started_rx) = channel();
    let (open_tx, open_rx) = channel::<()>();
    let h = pool.spawn(move || {
        started_tx.send(()).unwrap();
        let _ = open_rx.recv();
    });
    started_rx.recv().unwrap();
    (h, open_tx)
}

fn one_worker() -> Pool {
    Pool::builder().workers(1).build().unwrap()
}

fn spawn_and_join(pool: &Pool) {
    let handles: Vec<_> = (0..200u64)
        .map(|i| {
            let t = Token::new(i);
            pool.spawn(move || Token::new(t.get() * 2))
        })
        .collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap().get()).sum();
    assert_eq!(sum, 2 * (0..200).sum::<u64>());

    // `try_join` and `join_timeout` give an unfinished task back; an unbounded wait.
    let pool1 = one_worker();
    let (blocker, open) = gate(&pool1);
    let waiting = pool1.spawn(|| Token::new(5));
    let waiting = waiting.try_join().expect_err("gated task finished");
    let waiting = waiting
        .join_timeout(Duration::from_millis(1))
        .expect_err("gated task finished");
    open.send(()).unwrap();
    assert_eq!(waiting.join().unwrap().get(), 5);
    blocker.join().unwrap();
    let done = pool1.spawn(|| Token::new(6));
    let done = match done.join_timeout(Duration::MAX) {
        Ok(r) => r,
        Err(_) => unreachable!("an unbounded join_timeout returned early"),
    };
    assert_eq!(done.unwrap().get(), 6);
    drop(pool1);
    println!("spawn and join: ok");
}

fn detached() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let task = |ran: &Arc<AtomicUsize>, i: u64| {
        let ran = ran.clone();
        let t = Token::new(i);
        move || {
            ran.fetch_add(1, Ordering::SeqCst);
            Token::new(t.get())
        }
    };
    // Dropped at once by the spawning thread.
    for i in 0..100 {
        drop(pool.spawn(task(&ran, i)));
    }
    // Dropped by another thread.
    let handles: Vec<_> = (0..100).map(|i| pool.spawn(task(&ran, i))).collect();
    thread::spawn(move || drop(handles)).join().unwrap();
    // Dropped after the task finished: the handle drops the output.
    let handles: Vec<_> = (0..50).map(|i| pool.spawn(task(&ran, i))).collect();
    for h in &handles {
        while !h.is_finished() {
            thread::yield_now();
        }
    }
    drop(handles);
    // Dropped from inside the pool, by tasks that spawned them.
    let outer: Vec<_> = (0..20)
        .map(|i| {
            let p = pool.clone();
            let child = task(&ran, i);
            pool.spawn(move || drop(p.spawn(child)))
        })
        .collect();
    for h in outer {
        h.join().unwrap();
    }
    pool.shutdown(); // graceful: every detached task still runs
    assert_eq!(ran.load(Ordering::SeqCst), 270);
    println!("detached handles: ok");
}

fn cancel_before_run() {
    let pool = one_worker();
    let (blocker, open) = gate(&pool);
    let ran = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..60u64)
        .map(|i| {
            let t = Token::new(i);
            let ran = ran.clone();
            pool.spawn(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                Token::new(t.get())
            })
        })
        .collect();
    let mut handles = handles.into_iter();
    let joined: Vec<_> = handles.by_ref().take(20).collect();
    let dropped: Vec<_> = handles.by_ref().take(20).collect();
    for h in joined.iter().chain(&dropped) {
        assert!(h.cancel(), "a queued task could not be cancelled");
        assert!(!h.cancel(), "a second cancel won");
    }
    drop(dropped); // cancelled, never joined: the queue's reference frees them
    open.send(()).unwrap();
    blocker.join().unwrap();
    for h in joined {
        assert!(h.join().unwrap_err().is_cancelled());
    }
    let values: u64 = handles.map(|h| h.join().unwrap().get()).sum();
    assert_eq!(values, (40..60).sum::<u64>());
    // Cancelling a finished task fails and changes nothing.
    let h = pool.spawn(|| Token::new(1));
    while !h.is_finished() {
        thread::yield_now();
    }
    assert!(!h.cancel());
    assert_eq!(h.join().unwrap().get(), 1);
    pool.shutdown();
    assert_eq!(ran.load(Ordering::SeqCst), 20);
    println!("cancel before run: ok");
}

fn panics(pool: &Pool) {
    let joined: Vec<_> = (0..50u64)
        .map(|i| {
            let t = Token::new(i);
            pool.spawn(move || -> Token { panic!("{DELIBERATE} {}", t.get()) })
        })
        .collect();
    for (i, h) in joined.into_iter().enumerate() {
        let err = h.join().unwrap_err();
        assert!(err.is_panic());
        assert_eq!(err.panic_message(), Some(&*format!("{DELIBERATE} {i}")));
        if i % 2 == 0 {
            // The payload itself, dropped by us.
            drop(err.try_into_panic().unwrap());
        }
    }
    // Panics nobody joins: the worker drops the payload.
    for i in 0..50u64 {
        let t = Token::new(i);
        drop(pool.spawn(move || -> Token { panic!("{DELIBERATE} {}", t.get()) }));
    }
    // A non-string payload.
    let err = pool
        .spawn(|| panic::panic_any(Token::new(7)))
        .join()
        .unwrap_err();
    assert_eq!(err.panic_message(), None);
    let payload = err.try_into_panic().unwrap();
    assert_eq!(payload.downcast_ref::<Token>().map(Token::get), Some(7));
    // The pool carries on.
    assert_eq!(pool.spawn(|| Token::new(3)).join().unwrap().get(), 3);
    println!("panics: ok");
}

fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = weft::join(|| fib(n - 1), || fib(n - 2));
    a + b
}

fn fork_join_and_scope(pool: &Pool) {
    assert_eq!(pool.install(|| fib(12)), 144);
    assert_eq!(
        pool.join(|| Token::new(1).get(), || Token::new(2).get()),
        (1, 2)
    );

    // Scoped tasks borrowing from the stack, nested scoped spawns, a scope inside a task.
    let data: Vec<u64> = (1..=100).collect();
    let mut parts = [0u64; 4];
    pool.scope(|s| {
        for (part, chunk) in parts.iter_mut().zip(data.chunks(25)) {
            s.spawn(move |s| {
                let t = Token::new(0);
                s.spawn(move |_| drop(t));
                *part = chunk.iter().sum();
            });
        }
    });
    assert_eq!(parts.iter().sum::<u64>(), 5050);
    let inner = pool.spawn(|| {
        let mut n = 0;
        weft::scope(|s| s.spawn(|_| n = fib(10)));
        n
    });
    assert_eq!(inner.join().unwrap(), 55);

    // Panics in a scoped task and in a join half are re-raised to the caller.
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        pool.scope(|s| {
            s.spawn(|_| panic!("{DELIBERATE} in a scope"));
            s.spawn(|_| drop(Token::new(0)));
        })
    }));
    assert!(r.is_err());
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        pool.join(
            || Token::new(1),
            || -> Token { panic!("{DELIBERATE} in a join half") },
        )
    }));
    assert!(r.is_err());
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        pool.install(|| -> Token { panic!("{DELIBERATE} in install") })
    }));
    assert!(r.is_err());
    println!("join and scope: ok");
}

fn nested_and_priorities(pool: &Pool) {
    let other = one_worker();
    let outer: Vec<_> = (0..20u64)
        .map(|i| {
            let p = pool.clone();
            let o = other.clone();
            pool.spawn(move || {
                // Children on this pool (the worker's own deque), in every lane, joined.
                let children: Vec<_> = [Priority::High, Priority::Normal, Priority::Low]
                    .into_iter()
                    .map(|prio| p.task().priority(prio).spawn(move || Token::new(i)))
                    .collect();
                let mut sum: u64 = children.into_iter().map(|h| h.join().unwrap().get()).sum();
                // Through the free function, which uses the current worker's pool.
                sum += weft::spawn(move || i).join().unwrap();
                // A grandchild left detached, and a task on another pool, joined here.
                drop(weft::spawn(move || {
                    drop(weft::spawn(move || Token::new(i)))
                }));
                sum += o.spawn(move || i).join().unwrap();
                sum
            })
        })
        .collect();
    let total: u64 = outer.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 5 * (0..20).sum::<u64>());

    // Every lane from outside the pool.
    let lanes: Vec<_> = (0..150u64)
        .map(|i| {
            let prio = [Priority::High, Priority::Normal, Priority::Low][(i % 3) as usize];
            pool.task().priority(prio).spawn(move || Token::new(i))
        })
        .collect();
    let sum: u64 = lanes.into_iter().map(|h| h.join().unwrap().get()).sum();
    assert_eq!(sum, (0..150).sum::<u64>());

    // A task that joins its own handle gets an error instead of a deadlock.
    let (handle_tx, handle_rx) = channel::<JoinHandle<bool>>();
    let (result_tx, result_rx) = channel();
    let me = pool.spawn(move || {
        let me = handle_rx.recv().unwrap();
        let self_join = me.join().unwrap_err().is_self_join();
        result_tx.send(self_join).unwrap();
        self_join
    });
    handle_tx.send(me).unwrap();
    assert!(result_rx.recv().unwrap());
    other.shutdown();
    println!("nested spawns and priorities: ok");
}

/// Polls a future to completion on this thread.
fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = thread_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

fn thread_waker() -> Waker {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    Waker::from(Arc::new(Unpark(thread::current())))
}

fn futures() {
    let pool = one_worker();
    assert_eq!(block_on(pool.spawn(|| Token::new(4))).unwrap().get(), 4);
    // A handle polled once (it stores a waker), then dropped before the task ran.
    let (blocker, open) = gate(&pool);
    let mut h = pool.spawn(|| Token::new(8));
    let waker = thread_waker();
    assert!(Pin::new(&mut h)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    drop(h);
    // Another polled, then joined; and one polled, then cancelled.
    let mut joined = pool.spawn(|| Token::new(9));
    assert!(Pin::new(&mut joined)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    let mut cancelled = pool.spawn(|| Token::new(10));
    assert!(Pin::new(&mut cancelled)
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    assert!(cancelled.cancel());
    assert!(block_on(cancelled).unwrap_err().is_cancelled());
    open.send(()).unwrap();
    assert_eq!(block_on(joined).unwrap().get(), 9);
    blocker.join().unwrap();
    pool.shutdown();
    println!("handles as futures: ok");
}

fn delays() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let hour = Duration::from_secs(3600);
    // Short delays, joined, in every lane; `at` in the future and in the past.
    let delayed: Vec<_> = (0..30u64)
        .map(|i| {
            let prio = [Priority::High, Priority::Normal, Priority::Low][(i % 3) as usize];
            let t = Token::new(i);
            pool.task()
                .priority(prio)
                .delay(Duration::from_millis(1 + i % 5))
                .spawn(move || Token::new(t.get()))
        })
        .collect();
    let sum: u64 = delayed.into_iter().map(|h| h.join().unwrap().get()).sum();
    assert_eq!(sum, (0..30).sum::<u64>());
    let soon = pool
        .task()
        .at(Instant::now() + Duration::from_millis(2))
        .spawn(|| Token::new(1));
    let past = pool.task().at(Instant::now()).spawn(|| Token::new(2));
    assert_eq!(soon.join().unwrap().get() + past.join().unwrap().get(), 3);

    // Detached delayed tasks: they fire and drop their own output.
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..10 {
        let ran = ran.clone();
        let t = Token::new(i);
        drop(
            pool.task()
                .delay(Duration::from_millis(1 + i % 3))
                .spawn(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    t
                }),
        );
    }

    // Cancelled while waiting in the timer (an hour, and never).
    let waiting = pool.task().delay(hour).spawn(|| Token::new(0));
    assert!(waiting.cancel());
    assert!(waiting.join().unwrap_err().is_cancelled());
    let never = pool.task().delay(Duration::MAX).spawn(|| Token::new(0));
    assert!(never.cancel());
    assert!(never.join().unwrap_err().is_cancelled());
    // Cancelled and dropped without a join.
    let t = Token::new(0);
    let dropped = pool.task().delay(hour).spawn(move || t);
    assert!(dropped.cancel());
    drop(dropped);
    // A cancel racing the deadline: either side may win.
    for i in 0..10 {
        let racing = pool
            .task()
            .delay(Duration::from_millis(1))
            .spawn(move || Token::new(i));
        let won = racing.cancel();
        match racing.join() {
            Ok(t) => assert!(!won && t.get() == i),
            Err(e) => assert!(won && e.is_cancelled()),
        }
    }

    // Left pending at shutdown: resolved as shut down, joined or not.
    let pending_never = pool.task().delay(Duration::MAX).spawn(|| Token::new(0));
    let pending_hour = pool
        .task()
        .priority(Priority::Low)
        .delay(hour)
        .spawn(|| Token::new(0));
    let t = Token::new(0);
    drop(pool.task().delay(Duration::MAX).spawn(move || t));
    let t = Token::new(0);
    drop(pool.task().delay(hour).spawn(move || t));
    pool.shutdown();
    assert!(pending_never.join().unwrap_err().is_shutdown());
    assert!(pending_hour.join().unwrap_err().is_shutdown());
    assert!(ran.load(Ordering::SeqCst) <= 10);
    println!("delayed tasks: ok");
}

fn retries() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let ms = Duration::from_millis(1);
    let hour = Duration::from_secs(3600);

    // Success on the third attempt; the error values of the first two are dropped.
    let mut n = 0;
    let t = Token::new(0);
    let ok = pool
        .task()
        .retry(RetryPolicy::fixed(ms).max_attempts(5))
        .spawn(move || {
            n += 1;
            if n < 3 {
                Err(Token::new(n))
            } else {
                Ok(Token::new(n + t.get()))
            }
        });
    assert_eq!(ok.join().unwrap().ok().unwrap().get(), 3);

    // The attempts run out: the last error comes back.
    let mut n = 0;
    let failed = pool
        .task()
        .retry(RetryPolicy::exponential(ms).max_attempts(3))
        .spawn(move || -> Result<Token, String> {
            n += 1;
            Err(format!("attempt {n} failed"))
        });
    let failed_attempts = {
        while !failed.is_finished() {
            thread::yield_now();
        }
        failed.attempts()
    };
    assert_eq!(failed_attempts, 3);
    assert_eq!(failed.join().unwrap().err().unwrap(), "attempt 3 failed");

    // The predicate declines: no retry.
    let t = Token::new(0);
    let declined = pool
        .task()
        .retry(RetryPolicy::fixed(ms).max_attempts(10))
        .retry_if(move |e: &Token| e.get() != t.get())
        .spawn(|| Err::<(), _>(Token::new(0)));
    assert_eq!(declined.join().unwrap().err().unwrap().get(), 0);

    // A panic on the second attempt is not retried.
    let mut n = 0;
    let t = Token::new(0);
    let panicked = pool
        .task()
        .retry(RetryPolicy::fixed(ms).max_attempts(5))
        .spawn(move || -> Result<Token, Token> {
            n += 1;
            if n == 2 {
                panic!("{DELIBERATE} on attempt {n} ({})", t.get());
            }
            Err(Token::new(n))
        });
    while !panicked.is_finished() {
        thread::yield_now();
    }
    assert_eq!(panicked.attempts(), 2);
    assert!(panicked.join().unwrap_err().is_panic());

    // Cancelled while waiting an hour for its second attempt.
    let (tried_tx, tried_rx) = channel();
    let t = Token::new(0);
    let cancelled =
        pool.task()
            .retry(RetryPolicy::fixed(hour))
            .spawn(move || -> Result<(), Token> {
                tried_tx.send(()).unwrap();
                Err(Token::new(t.get()))
            });
    tried_rx.recv().unwrap();
    // `cancel` fails while the first attempt is still running; it wins once the task
    // waits in the timer.
    while !cancelled.cancel() {
        thread::yield_now();
    }
    assert_eq!(cancelled.attempts(), 1);
    assert!(cancelled.join().unwrap_err().is_cancelled());

    // Many at once, some detached.
    let many: Vec<_> = (0..20u64)
        .map(|i| {
            let mut n = 0;
            pool.task().retry(RetryPolicy::fixed(ms)).spawn(move || {
                n += 1;
                if n < 2 {
                    Err(Token::new(i))
                } else {
                    Ok(Token::new(i))
                }
            })
        })
        .collect();
    for i in 0..10u64 {
        let mut n = 0;
        drop(pool.task().retry(RetryPolicy::fixed(ms)).spawn(move || {
            n += 1;
            if n < 2 {
                Err(Token::new(i))
            } else {
                Ok(Token::new(i))
            }
        }));
    }
    let sum: u64 = many
        .into_iter()
        .map(|h| h.join().unwrap().ok().unwrap().get())
        .sum();
    assert_eq!(sum, (0..20).sum::<u64>());

    // Waiting for its next attempt at shutdown: resolved as shut down.
    let (tried_tx, tried_rx) = channel();
    let pending =
        pool.task()
            .retry(RetryPolicy::fixed(hour))
            .spawn(move || -> Result<(), Token> {
                let _ = tried_tx.send(());
                Err(Token::new(0))
            });
    let t = Token::new(0);
    drop(
        pool.task()
            .retry(RetryPolicy::fixed(hour))
            .spawn(move || Err::<(), _>(Token::new(t.get()))),
    );
    tried_rx.recv().unwrap();
    pool.shutdown();
    assert!(pending.join().unwrap_err().is_shutdown());
    println!("retries: ok");
}

fn periodic() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let ms = Duration::from_millis(1);

    // Cancelled after a few runs.
    let (tx, rx) = channel();
    let t = Token::new(0);
    let every = pool.task().every(ms, move || {
        let _ = tx.send(t.get());
    });
    for _ in 0..3 {
        rx.recv().unwrap();
    }
    assert!(every.cancel());
    assert!(!every.cancel());
    assert!(every.is_cancelled());
    drop(every);

    // Panicking on every odd run: counted, and the schedule goes on.
    let (tx, rx) = channel();
    let mut n = 0;
    let panicky = pool.task().priority(Priority::High).every(ms, move || {
        n += 1;
        let _ = tx.send(n);
        if n % 2 == 1 {
            panic!("{DELIBERATE} in periodic run {n}");
        }
    });
    assert_eq!(rx.recv().unwrap(), 1);
    assert_eq!(rx.recv().unwrap(), 2);
    assert!(panicky.panics() >= 1);
    drop(panicky); // dropping cancels

    // Started at a given time, stopped by drop after one run.
    let (tx, rx) = channel();
    let at = pool.task().at(Instant::now()).every(ms, move || {
        let _ = tx.send(());
    });
    rx.recv().unwrap();
    drop(at);

    // Detached, and one that never comes due: both cancelled by shutdown, which must free
    // their bodies (and so the senders they hold).
    let (detached_tx, detached_rx) = channel();
    let (started_tx, started_rx) = channel();
    let t = Token::new(0);
    pool.task()
        .priority(Priority::Low)
        .every(ms, move || {
            let _ = started_tx.send(());
            let _ = detached_tx.send(t.get());
        })
        .detach();
    let (never_tx, never_rx) = channel::<()>();
    let never = pool.task().delay(Duration::MAX).every(ms, move || {
        let _ = never_tx.send(());
    });
    started_rx.recv().unwrap();
    pool.shutdown();
    assert!(never.is_cancelled());
    assert!(!never.cancel());
    drop(never);
    assert_eq!(never_rx.try_recv(), Err(TryRecvError::Disconnected));
    loop {
        match detached_rx.try_recv() {
            Ok(_) => continue,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => panic!("a detached schedule outlived shutdown"),
        }
    }
    // Refused after shutdown: comes back cancelled, and its body is dropped.
    let t = Token::new(0);
    let refused = pool.task().every(ms, move || assert_eq!(t.get(), 0));
    assert!(refused.is_cancelled());
    println!("periodic schedules: ok");
}

/// Tasks for the shutdown cases: each captures a token and returns one.
fn queue(pool: &Pool, n: u64) -> Vec<JoinHandle<Token>> {
    (0..n)
        .map(|i| {
            let t = Token::new(i);
            pool.spawn(move || Token::new(t.get()))
        })
        .collect()
}

fn shutdown_now() {
    let pool = one_worker();
    let (blocker, open) = gate(&pool);
    let kept = queue(&pool, 50);
    drop(queue(&pool, 50));
    let delayed = pool
        .task()
        .delay(Duration::from_secs(3600))
        .spawn(|| Token::new(0));
    let mut n = 0;
    let retrying = pool
        .task()
        .retry(RetryPolicy::fixed(Duration::ZERO))
        .spawn(move || {
            n += 1;
            Err::<(), _>(Token::new(n))
        });
    let p = pool.clone();
    let stopper = thread::spawn(move || p.shutdown_now());
    // Resolved while the worker is still busy: the queued tasks never run.
    for h in kept {
        assert!(h.join().unwrap_err().is_shutdown());
    }
    assert!(delayed.join().unwrap_err().is_shutdown());
    assert!(retrying.join().unwrap_err().is_shutdown());
    open.send(()).unwrap();
    stopper.join().unwrap();
    blocker.join().unwrap(); // the running task finished
    assert!(pool.metrics().cancelled >= 100);

    // Everything after shutdown is refused, and the closures are dropped.
    let t = Token::new(0);
    assert!(pool.spawn(move || t).join().unwrap_err().is_shutdown());
    let t = Token::new(0);
    let refused = pool.task().delay(Duration::from_millis(1)).spawn(move || t);
    assert!(refused.join().unwrap_err().is_shutdown());
    let t = Token::new(0);
    let refused = pool
        .task()
        .retry(RetryPolicy::fixed(Duration::ZERO))
        .spawn(move || Ok::<_, ()>(Token::new(t.get())));
    assert!(refused.join().unwrap_err().is_shutdown());
    let t = Token::new(0);
    drop(pool.task().delay(Duration::MAX).spawn(move || t));
    // `install` and `scope` still run, on the calling thread.
    assert_eq!(pool.install(|| Token::new(5)).get(), 5);
    let mut x = 0;
    pool.scope(|s| s.spawn(|_| x = 1));
    assert_eq!(x, 1);
    println!("shutdown_now with queued tasks: ok");
}

fn graceful_shutdown() {
    // With work queued behind a busy worker: all of it still runs.
    let pool = one_worker();
    let (blocker, open) = gate(&pool);
    let kept = queue(&pool, 50);
    drop(queue(&pool, 50));
    let p = pool.clone();
    let stopper = thread::spawn(move || p.shutdown());
    open.send(()).unwrap();
    stopper.join().unwrap();
    blocker.join().unwrap();
    let sum: u64 = kept.into_iter().map(|h| h.join().unwrap().get()).sum();
    assert_eq!(sum, (0..50).sum::<u64>());
    assert_eq!(pool.metrics().completed, 101);

    // Dropping the last handle is a graceful shutdown; the hooks are freed with the pool.
    let started = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicUsize::new(0));
    let (s, e) = (started.clone(), stopped.clone());
    let pool = Pool::builder()
        .workers(2)
        .thread_name(|i| format!("memcheck-{i}"))
        .on_thread_start(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .on_thread_stop(move |_| {
            e.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let kept = queue(&pool, 50);
    drop(queue(&pool, 50));
    drop(pool);
    let sum: u64 = kept.into_iter().map(|h| h.join().unwrap().get()).sum();
    assert_eq!(sum, (0..50).sum::<u64>());
    assert_eq!(started.load(Ordering::SeqCst), 2);
    assert_eq!(stopped.load(Ordering::SeqCst), 2);
    assert_eq!(
        Arc::strong_count(&started),
        1,
        "the pool kept its start hook"
    );
    assert_eq!(
        Arc::strong_count(&stopped),
        1,
        "the pool kept its stop hook"
    );
    println!("graceful shutdown: ok");
}

fn shutdown_timeout() {
    // Time runs out for sure: the only worker waits for us.
    let pool = one_worker();
    let (blocker, open) = gate(&pool);
    let kept = queue(&pool, 20);
    let delayed = pool
        .task()
        .delay(Duration::from_secs(3600))
        .spawn(|| Token::new(0));
    let never = pool.task().delay(Duration::MAX).spawn(|| Token::new(0));
    let report = pool.shutdown_timeout(Duration::from_millis(10));
    assert!(report.threads_still_running >= 1);
    // The queued tasks, plus the timers if the timer thread resolved them in between.
    assert!((20..=22).contains(&report.cancelled), "{report:?}");
    assert!(report.timers_dropped <= 2, "{report:?}");
    for h in kept {
        assert!(h.join().unwrap_err().is_shutdown());
    }
    assert!(delayed.join().unwrap_err().is_shutdown());
    assert!(never.join().unwrap_err().is_shutdown());
    open.send(()).unwrap();
    blocker.join().unwrap();
    pool.shutdown(); // joins the thread left running
    assert_eq!(
        pool.shutdown_timeout(Duration::ZERO).threads_still_running,
        0
    );

    // No limit: everything finishes and every thread is joined.
    let pool = Pool::builder().workers(2).build().unwrap();
    let kept = queue(&pool, 50);
    drop(queue(&pool, 50));
    let report = pool.shutdown_timeout(Duration::MAX);
    assert_eq!(report.threads_still_running, 0);
    assert_eq!(report.cancelled, 0);
    let sum: u64 = kept.into_iter().map(|h| h.join().unwrap().get()).sum();
    assert_eq!(sum, (0..50).sum::<u64>());
    println!("shutdown_timeout: ok");
}

fn global_pool() {
    let handles: Vec<_> = (0..100u64)
        .map(|i| {
            let t = Token::new(i);
            weft::spawn(move || Token::new(t.get()))
        })
        .collect();
    let sum: u64 = handles.into_iter().map(|h| h.join().unwrap().get()).sum();
    assert_eq!(sum, (0..100).sum::<u64>());
    for i in 0..50 {
        let t = Token::new(i);
        drop(weft::spawn(move || t));
    }
    let high = weft::task()
        .priority(Priority::High)
        .spawn(|| Token::new(1));
    let later = weft::task()
        .delay(Duration::from_millis(2))
        .spawn(|| Token::new(2));
    let mut n = 0;
    let retried = weft::task()
        .retry(RetryPolicy::fixed(Duration::from_millis(1)))
        .spawn(move || {
            n += 1;
            if n < 2 {
                Err(Token::new(0))
            } else {
                Ok(Token::new(3))
            }
        });
    let sum = high.join().unwrap().get()
        + later.join().unwrap().get()
        + retried.join().unwrap().ok().unwrap().get();
    assert_eq!(sum, 6);
    assert_eq!(weft::join(|| fib(10), || Token::new(7).get()), (55, 7));
    let mut parts = [0u64; 2];
    weft::scope(|s| {
        let (a, b) = parts.split_at_mut(1);
        s.spawn(|_| a[0] = fib(8));
        s.spawn(|_| b[0] = Token::new(9).get());
    });
    assert_eq!(parts, [21, 9]);
    let (tx, rx) = channel();
    let every = weft::task().every(Duration::from_millis(1), move || {
        let _ = tx.send(());
    });
    rx.recv().unwrap();
    rx.recv().unwrap();
    assert!(every.cancel());
    let pending = weft::task().delay(Duration::MAX).spawn(|| Token::new(0));

    // Shut the global pool down, so its threads are joined before the process exits.
    Pool::global().shutdown();
    assert!(pending.join().unwrap_err().is_shutdown());
    let t = Token::new(0);
    assert!(weft::spawn(move || t).join().unwrap_err().is_shutdown());
    println!("global pool: ok");
}

fn main() {
    // Keep deliberate panics quiet; anything else (a failed assertion) is reported.
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        let deliberate = msg.is_some_and(|m| m.starts_with(DELIBERATE))
            || payload.downcast_ref::<Token>().is_some();
        if !deliberate {
            default_hook(info);
        }
    }));

    let pool = Pool::builder().workers(2).build().unwrap();
    spawn_and_join(&pool);
    detached();
    cancel_before_run();
    panics(&pool);
    fork_join_and_scope(&pool);
    nested_and_priorities(&pool);
    futures();
    delays();
    retries();
    periodic();
    shutdown_now();
    graceful_shutdown();
    shutdown_timeout();
    pool.shutdown();
    drop(pool);
    global_pool();

    let live = LIVE.load(Ordering::SeqCst);
    assert_eq!(live, 0, "{live} test values were never dropped");
    println!("memcheck: all checks passed");
}
