//! Small helpers with no protocol of their own: the unwind helpers in one place
//! ([`AbortOnPanic`], [`drop_quietly`] / [`run_quietly`] / [`drop_counted`] with the
//! process-wide count of panics caught from user `Drop`s, [`panic_message`]) and the
//! xorshift generators ([`xorshift64`], [`XorShift64Star`]).

use std::cell::Cell;

use crate::metrics::Counters;

/// Aborts the process if dropped while panicking.
///
/// Held across code that must not unwind because a half-done step would leave raw state
/// (a task's stage, a latch a thread is blocked on) corrupted. User code never runs under
/// it: user panics are caught first.
pub(crate) struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("weft: a panic inside the scheduler's own bookkeeping; aborting");
            std::process::abort();
        }
    }
}

/// Panics caught from user `Drop`s in the whole process (see [`crate::drop_panics`]).
/// A plain statistic, not part of any protocol, so not modelled by loom.
static DROP_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Panics caught from user `Drop`s so far, in every pool.
pub(crate) fn drop_panics() -> u64 {
    DROP_PANICS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs `x`'s drop glue, catching a panic from it: a panicking `Drop` in user code must
/// not unwind through the scheduler. Returns true (and counts it process-wide) if it
/// panicked.
pub(crate) fn drop_quietly<X>(x: X) -> bool {
    run_quietly(move || drop(x))
}

/// Runs `f` (drop glue of user values), catching a panic from it as `drop_quietly` does.
pub(crate) fn run_quietly(f: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => false,
        Err(payload) => {
            DROP_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Dropping the payload could panic again; leak it instead.
            std::mem::forget(payload);
            true
        }
    }
}

/// `drop_quietly`, also counting a panic in the pool's `drop_panics`.
pub(crate) fn drop_counted<X>(x: X, counters: &Counters) {
    if drop_quietly(x) {
        counters.bump(&counters.drop_panics);
    }
}

/// One step of Marsaglia's xorshift64 (13, 7, 17): the next value of a non-zero state, for
/// jitter and test data, where a few instructions of randomness are enough.
#[inline]
pub(crate) fn xorshift64(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A tiny xorshift generator for picking steal victims; not for anything else.
#[derive(Debug)]
pub(crate) struct XorShift64Star {
    state: Cell<u64>,
}

impl XorShift64Star {
    pub(crate) fn new(seed: u64) -> Self {
        // The state must never be zero.
        XorShift64Star {
            state: Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        }
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let mut x = self.state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`; `n` must be non-zero.
    pub(crate) fn next_usize(&self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((self.next_u64() >> 32) as usize * n) >> 32
    }
}

/// A scheduling point for weft's own stress tests. With the internal `__stress` feature
/// (`cargo test --features __stress --test stress`), a thread passing here now and then
/// yields or spins for a random while, at the points where the protocols race (before the
/// fences of the sleep and timer hand-offs, between a claim and a completion, around a
/// push): interleavings that real threads rarely hit get hit. Without the feature it is
/// nothing.
#[inline(always)]
pub(crate) fn jitter() {
    #[cfg(feature = "__stress")]
    stress::jitter();
}

#[cfg(feature = "__stress")]
mod stress {
    use std::cell::Cell;

    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn jitter() {
        let r = STATE.with(|s| {
            let mut x = s.get();
            if x == 0 {
                // Seeded per thread from its stack address and the clock.
                let here = &x as *const u64 as u64;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                x = (here ^ now) | 1;
            }
            x = super::xorshift64(x);
            s.set(x);
            x
        });
        match r % 16 {
            0 => std::thread::yield_now(),
            1 | 2 => {
                for _ in 0..(r >> 8) % 256 {
                    std::hint::spin_loop();
                }
            }
            _ => {}
        }
    }
}

/// Extracts a readable message from a panic payload (`&str` or `String`), if it has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Some(s)
    } else {
        payload.downcast_ref::<String>().map(String::as_str)
    }
}

#[cfg(test)]
mod tests;
