//! The tests' one random-number generator, for random timing and random inputs.

use std::time::{SystemTime, UNIX_EPOCH};

/// The variable that replays a test seeded by [`Rng::from_clock`].
pub const SEED_VAR: &str = "WEFT_TEST_SEED";

/// xorshift64*: small and fast, good enough for jitter and test inputs (nothing else).
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`: the same numbers at every run.
    pub fn seeded(seed: u64) -> Rng {
        // xorshift stays at 0 forever: any other state will do.
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// A generator seeded from the clock, or from `WEFT_TEST_SEED` when it is set; the
    /// seed is printed under `what`, so that a failure can be replayed.
    pub fn from_clock(what: &str) -> Rng {
        let seed = std::env::var(SEED_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: {SEED_VAR}={seed}");
        Rng::seeded(seed)
    }

    /// A generator of its own, seeded from this one (one per thread, say): the same
    /// numbers for the same seed of this one.
    pub fn split(&mut self) -> Rng {
        Rng::seeded(self.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
