//! Workloads shared by the measurement guest, the host-native twin and the models.
//!
//! Everything here is `no_std` and allocation-free so the very same code runs in three
//! places: inside the freestanding measurement guest (ring 3, no OS), natively on the host
//! (the "twin" run over a buffer with the same layout), and inside `segment-mmu`, whose
//! address-stream generators call these functions so that the model replays exactly the
//! stream the workload ran (same algorithm, same seed).
#![no_std]

#[cfg(feature = "rt")]
mod rt;

pub mod kernels;
pub mod protocol;

/// xorshift64* (Vigna 2016): tiny, fast, good enough for address streams, identical on
/// every platform. A seed of zero is mapped to a fixed non-zero constant because xorshift
/// has an all-zero fixed point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// The constant used in place of a zero seed.
    pub const ZERO_SEED_REPLACEMENT: u64 = 0x9E37_79B9_7F4A_7C15;

    /// Creates a generator from `seed`.
    pub const fn new(seed: u64) -> Self {
        let state = if seed == 0 {
            Self::ZERO_SEED_REPLACEMENT
        } else {
            seed
        };
        Self { state }
    }

    /// Next 64-bit value.
    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform value in `0..n` (Lemire's multiply-shift; `n` must be non-zero).
    #[inline(always)]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Size of one element of the pointer-chase workload: one cache line, so that every
/// dependent load touches a new line and (for footprints beyond the TLB reach) usually a
/// new page.
pub const CHASE_ELEM_BYTES: u64 = 64;

/// Fills `next` with a single random cycle over all indices (Sattolo's algorithm):
/// `next[i]` is the index visited after `i`. Starting anywhere, following `next` visits
/// every element exactly once before returning to the start.
pub fn chase_permutation(next: &mut [u64], seed: u64) {
    for (i, slot) in next.iter_mut().enumerate() {
        *slot = i as u64;
    }
    sattolo_swaps(next.len(), seed, |i, j| next.swap(i, j));
}

/// The swaps of Sattolo's algorithm over `n` items from `seed`, in order. Shared by
/// [`chase_permutation`] (a dense index array, used by the models) and
/// [`kernels::chase_init`] (the same permutation stored inside the 64-byte elements), so
/// both produce the identical cycle for a seed.
#[inline(always)]
pub fn sattolo_swaps(n: usize, seed: u64, mut swap: impl FnMut(usize, usize)) {
    let mut rng = XorShift64::new(seed);
    let mut i = n;
    while i > 1 {
        i -= 1;
        let j = rng.below(i as u64) as usize; // j < i: Sattolo, not Fisher-Yates
        swap(i, j);
    }
}

/// The GUPS index stream: `count` uniform random element indices in `0..elems`.
#[derive(Debug, Clone)]
pub struct GupsIndices {
    rng: XorShift64,
    elems: u64,
    left: u64,
}

impl GupsIndices {
    /// A stream of `count` indices over `elems` 8-byte elements, from `seed`.
    pub const fn new(seed: u64, elems: u64, count: u64) -> Self {
        Self {
            rng: XorShift64::new(seed),
            elems,
            left: count,
        }
    }
}

impl Iterator for GupsIndices {
    type Item = u64;
    #[inline(always)]
    fn next(&mut self) -> Option<u64> {
        if self.left == 0 || self.elems == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.rng.below(self.elems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_deterministic_and_nonzero_seeded() {
        let mut a = XorShift64::new(0);
        let mut b = XorShift64::new(0);
        for _ in 0..100 {
            let x = a.next_u64();
            assert_eq!(x, b.next_u64());
        }
        assert_ne!(XorShift64::new(1).next_u64(), XorShift64::new(2).next_u64());
    }

    #[test]
    fn chase_is_one_cycle() {
        let mut next = [0u64; 1000];
        chase_permutation(&mut next, 42);
        let mut seen = [false; 1000];
        let mut at = 0usize;
        for _ in 0..1000 {
            assert!(!seen[at]);
            seen[at] = true;
            at = next[at] as usize;
        }
        assert_eq!(at, 0);
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn gups_stays_in_range_and_counts() {
        let v: u64 = GupsIndices::new(7, 1 << 20, 10_000)
            .map(|i| {
                assert!(i < 1 << 20);
                1
            })
            .sum();
        assert_eq!(v, 10_000);
    }
}
