use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::RateLimits;
use crate::registry::{RateLimit, Registry, TaskOptions};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Tasks "a" (5/s) and "b" (10/m), and "free" without a limit.
fn limits() -> RateLimits {
    let with = |limit| TaskOptions::new().rate_limit(limit);
    let registry = Registry::new()
        .task_with("a", with(RateLimit::per_second(5)), |(): ()| {
            Ok::<_, String>(())
        })
        .task_with("b", with(RateLimit::per_minute(10)), |(): ()| {
            Ok::<_, String>(())
        })
        .task("free", |(): ()| Ok::<_, String>(()));
    RateLimits::new(&registry)
}

/// A task due later (an ETA) books its own start: the tasks due now are not held
/// back behind it, and every start stays an interval from the others.
#[test]
fn a_later_start_does_not_hold_back_earlier_ones() {
    let limits = limits();
    let t0 = Instant::now();
    assert_eq!(limits.reserve("a", t0 + ms(10_000)), t0 + ms(10_000));
    let now: Vec<_> = (0..3).map(|_| limits.reserve("a", t0)).collect();
    assert_eq!(now, [t0, t0 + ms(200), t0 + ms(400)]);
    // Due just before the booked start: it goes after it.
    assert_eq!(limits.reserve("a", t0 + ms(9_900)), t0 + ms(10_200));
    // A gap between two starts that fits one more is used; one too small is not.
    assert_eq!(limits.reserve("a", t0 + ms(9_000)), t0 + ms(9_000));
    assert_eq!(limits.reserve("a", t0 + ms(9_700)), t0 + ms(9_700));
    assert_eq!(limits.reserve("a", t0 + ms(9_100)), t0 + ms(9_200));
    assert_eq!(limits.reserve("a", t0 + ms(9_300)), t0 + ms(9_400));
    assert_eq!(limits.reserve("a", t0 + ms(9_500)), t0 + ms(10_400));
}

#[test]
fn starts_are_spaced_by_the_interval() {
    let limits = limits();
    let t0 = Instant::now();
    // A burst of five at t0: the first at once, then 200 ms apart.
    let starts: Vec<_> = (0..5).map(|_| limits.reserve("a", t0)).collect();
    assert_eq!(
        starts,
        [t0, t0 + ms(200), t0 + ms(400), t0 + ms(600), t0 + ms(800)]
    );
    // One due within the queue's span still waits its turn.
    assert_eq!(limits.reserve("a", t0 + ms(900)), t0 + ms(1000));
    // Another task's limit is its own.
    assert_eq!(limits.reserve("b", t0), t0);
    assert_eq!(limits.reserve("b", t0), t0 + Duration::from_secs(6));
    // A task without a limit is never held back.
    assert_eq!(limits.reserve("free", t0), t0);
    assert_eq!(limits.reserve("free", t0), t0);
    assert_eq!(limits.reserve("unknown", t0), t0);
}

#[test]
fn a_start_after_an_idle_spell_is_immediate() {
    let limits = limits();
    let t0 = Instant::now();
    assert_eq!(limits.reserve("a", t0), t0);
    // The token is back after one interval, no sooner...
    assert_eq!(limits.reserve("a", t0 + ms(150)), t0 + ms(200));
    assert_eq!(limits.reserve("a", t0 + ms(400)), t0 + ms(400));
    // ...and an idle spell saves no burst (capacity 1).
    let later = t0 + Duration::from_secs(10);
    assert_eq!(limits.reserve("a", later), later);
    assert_eq!(limits.reserve("a", later), later + ms(200));
}

#[test]
fn set_zero_or_empty_removes_the_limit() {
    let limits = limits();
    let t0 = Instant::now();
    assert_eq!(limits.set("a", "0"), Ok(false));
    assert_eq!(limits.get("a"), None);
    assert_eq!(limits.reserve("a", t0), t0);
    assert_eq!(limits.reserve("a", t0), t0);
    assert_eq!(limits.set("b", ""), Ok(false));
    assert_eq!(limits.get("b"), None);
    // No limit left: the lock-free path answers.
    assert!(!limits.limited.load(Ordering::Relaxed));
    assert_eq!(limits.reserve("b", t0), t0);
    assert_eq!(limits.set("free", "0"), Ok(false));
    assert!(!limits.limited.load(Ordering::Relaxed));
}

#[test]
fn set_replaces_the_limit_and_refills_every_bucket() {
    let limits = limits();
    let t0 = Instant::now();
    for _ in 0..3 {
        limits.reserve("a", t0);
        limits.reserve("b", t0);
    }
    assert_eq!(limits.set("a", "100/m"), Ok(true));
    assert_eq!(
        limits.get("a").map(|l| l.to_string()).as_deref(),
        Some("100/m")
    );
    // Both buckets are full again (as Celery's reset_rate_limits), "a" at its new pace.
    assert_eq!(limits.reserve("a", t0), t0);
    assert_eq!(limits.reserve("a", t0), t0 + ms(600));
    assert_eq!(limits.reserve("b", t0), t0);
    // A task without a limit gets one.
    assert_eq!(limits.set("free", "5"), Ok(true));
    assert_eq!(
        limits.get("free").map(|l| l.to_string()).as_deref(),
        Some("5")
    );
    assert_eq!(limits.reserve("free", t0), t0);
    assert_eq!(limits.reserve("free", t0), t0 + ms(200));
    // On a worker that had none, too.
    let none = RateLimits::new(&Registry::new());
    assert_eq!(none.get("x"), None);
    assert_eq!(none.set("x", "1/h"), Ok(true));
    assert_eq!(none.reserve("x", t0), t0);
    assert_eq!(none.reserve("x", t0), t0 + Duration::from_secs(3600));
}

#[test]
fn invalid_strings_are_refused_and_change_nothing() {
    let limits = limits();
    let t0 = Instant::now();
    limits.reserve("a", t0);
    for rate in ["abc", "5/x", "-1/s", "nan", "inf/s", "5/s "] {
        let message = limits.set("a", rate).unwrap_err();
        assert!(message.contains(&format!("{rate:?}")), "{message}");
        assert!(message.contains("\"10/s\""), "{message}");
    }
    assert_eq!(limits.get("a"), RateLimit::per_second(5));
    // The bucket was not refilled.
    assert_eq!(limits.reserve("a", t0), t0 + ms(200));
}

/// kombu's `TokenBucket(fill_rate, capacity=1)` on a simulated clock (seconds), as in
/// `kombu/utils/limits.py`.
struct TokenBucket {
    fill_rate: f64,
    tokens: f64,
    timestamp: f64,
}

impl TokenBucket {
    fn get_tokens(&mut self, now: f64) -> f64 {
        if self.tokens < 1.0 {
            let delta = self.fill_rate * (now - self.timestamp);
            self.tokens = (self.tokens + delta).min(1.0);
        }
        self.timestamp = now;
        self.tokens
    }

    /// Takes the token if it is whole. (The simulated timer fires exactly when the
    /// token is back, where floating point may leave it a hair short of 1.)
    fn can_consume(&mut self, now: f64) -> bool {
        if self.get_tokens(now) >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }

    fn expected_time(&mut self, now: f64) -> f64 {
        (1.0 - self.get_tokens(now)) / self.fill_rate
    }
}

/// When Celery's consumer starts requests that join a bucket of `fill_rate` at
/// `arrivals` (ascending, seconds): each joins the bucket's queue; the queue's head
/// starts when it can consume the token, else a timer retries when the token is
/// expected (`_schedule_bucket_request`).
fn kombu_starts(fill_rate: f64, arrivals: &[f64]) -> Vec<f64> {
    let mut bucket = TokenBucket {
        fill_rate,
        tokens: 1.0,
        timestamp: 0.0,
    };
    let mut starts = vec![f64::NAN; arrivals.len()];
    let mut waiting = VecDeque::new();
    let mut timer: Option<f64> = None;
    let mut next = 0;
    while next < arrivals.len() || !waiting.is_empty() {
        let now = match (arrivals.get(next), timer) {
            (Some(&a), Some(t)) if t < a => {
                timer = None;
                t
            }
            (Some(&a), _) => {
                waiting.push_back(next);
                next += 1;
                a
            }
            (None, Some(t)) => {
                timer = None;
                t
            }
            (None, None) => unreachable!("requests wait without a timer"),
        };
        while let Some(&i) = waiting.front() {
            if bucket.can_consume(now) {
                starts[i] = now;
                waiting.pop_front();
            } else {
                timer = Some(now + bucket.expected_time(now));
                break;
            }
        }
    }
    starts
}

proptest! {
    /// `reserve` starts each task when kombu's bucket would, within 1 µs, with
    /// arrivals in bursts, within an interval and after idle spells, for two limited
    /// tasks and one without a limit, interleaved.
    #[test]
    fn reserve_matches_kombus_token_bucket(
        rates in (1u32..50, 1u32..600),
        arrivals in proptest::collection::vec(
            (0usize..3, prop_oneof![Just(0.0), 0.0..0.05f64, 0.0..3.0f64]),
            1..120,
        ),
    ) {
        let (per_second, per_minute) = rates;
        let limit_a = RateLimit::per_second(per_second).unwrap();
        let limit_b = RateLimit::per_minute(per_minute).unwrap();
        let registry = Registry::new()
            .task_with("a", TaskOptions::new().rate_limit(limit_a), |(): ()| Ok::<_, String>(()))
            .task_with("b", TaskOptions::new().rate_limit(limit_b), |(): ()| Ok::<_, String>(()))
            .task("free", |(): ()| Ok::<_, String>(()));
        let limits = RateLimits::new(&registry);
        let names = ["a", "b", "free"];
        let intervals = [limit_a.interval().as_secs_f64(), limit_b.interval().as_secs_f64()];

        // Arrival times: gaps in units of the task's interval (the free task: seconds).
        let base = Instant::now();
        let mut clock = 0.0;
        let mut timed = Vec::new();
        for &(task, gap) in &arrivals {
            clock += gap * intervals.get(task).copied().unwrap_or(1.0);
            timed.push((task, clock));
        }
        let got: Vec<(usize, f64)> = timed
            .iter()
            .map(|&(task, at)| {
                let start = limits.reserve(names[task], base + Duration::from_secs_f64(at));
                (task, (start - base).as_secs_f64())
            })
            .collect();

        for (task, name) in names.iter().enumerate() {
            let at: Vec<f64> = timed.iter().filter(|t| t.0 == task).map(|t| t.1).collect();
            let want = match intervals.get(task) {
                Some(&interval) => kombu_starts(1.0 / interval, &at),
                None => at.clone(),
            };
            let got: Vec<f64> = got.iter().filter(|g| g.0 == task).map(|g| g.1).collect();
            prop_assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert!(
                    (g - w).abs() < 1e-6,
                    "task {} start {}: reserved {} s, kombu {} s (arrivals {:?})",
                    name, i, g, w, at
                );
            }
        }
    }
}
