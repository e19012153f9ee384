//! The escape filter: a Bloom filter of pages excluded from a segment.
//!
//! Gandhi et al. (MICRO'14, "Efficient Memory Virtualization") let a few pages inside a
//! direct segment "escape" to paging (e.g. pages with hard faults, or pages the VMM
//! must remap) by checking a small Bloom filter beside the segment registers. A hit
//! sends the access down the paging path; false positives cost a needless walk but are
//! never incorrect. The filter here also keeps the exact set so it can report its
//! false-positive rate.

use serde::{Deserialize, Serialize};

use crate::mem::PfnMap;

/// Errors of filter configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Zero bits or hashes.
    #[error(
        "escape filter needs at least one bit and one hash (got {bits} bits, {hashes} hashes)"
    )]
    Empty {
        /// Bits requested.
        bits: u32,
        /// Hashes requested.
        hashes: u32,
    },
}

/// A Bloom filter over page numbers with `k` hashes by double hashing (Kirsch and
/// Mitzenmacher, 2006).
#[derive(Debug, Clone)]
pub struct Bloom {
    bits: Vec<u64>,
    m: u64,
    k: u32,
}

#[inline]
fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Bloom {
    /// `bits` bits and `hashes` hash functions.
    pub fn new(bits: u32, hashes: u32) -> Result<Self, Error> {
        if bits == 0 || hashes == 0 {
            return Err(Error::Empty { bits, hashes });
        }
        Ok(Self {
            bits: vec![0; (bits as usize).div_ceil(64)],
            m: bits as u64,
            k: hashes,
        })
    }

    #[inline]
    fn positions(&self, key: u64) -> impl Iterator<Item = u64> + '_ {
        let h1 = mix(key);
        let h2 = mix(h1 ^ 0x9e37_79b9_7f4a_7c15) | 1;
        (0..self.k as u64).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.m)
    }

    /// Adds `key`.
    pub fn insert(&mut self, key: u64) {
        let pos: Vec<u64> = self.positions(key).collect();
        for p in pos {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// True when `key` may be in the set (never false for an inserted key).
    #[inline]
    pub fn may_contain(&self, key: u64) -> bool {
        self.positions(key)
            .all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
}

/// What the escape filter saw.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct EscapeReport {
    /// Pages excluded from the segment.
    pub escaped_pages: u64,
    /// Filter bits.
    pub bits: u32,
    /// Hash functions.
    pub hashes: u32,
    /// Addresses checked.
    pub checks: u64,
    /// Checks that hit a truly escaped page.
    pub true_hits: u64,
    /// Checks that hit although the page is not escaped.
    pub false_positives: u64,
    /// false_positives / (checks - true_hits).
    pub false_positive_rate: f64,
}

/// A Bloom filter plus the exact set it summarises, with hit statistics.
#[derive(Debug, Clone)]
pub struct EscapeFilter {
    bloom: Bloom,
    exact: PfnMap<()>,
    bits: u32,
    hashes: u32,
    checks: u64,
    true_hits: u64,
    false_positives: u64,
}

impl EscapeFilter {
    /// A filter of the given 4 KiB page numbers.
    pub fn new(pages: &[u64], bits: u32, hashes: u32) -> Result<Self, Error> {
        let mut bloom = Bloom::new(bits, hashes)?;
        let mut exact = PfnMap::default();
        for &p in pages {
            bloom.insert(p);
            exact.insert(p, ());
        }
        Ok(Self {
            bloom,
            exact,
            bits,
            hashes,
            checks: 0,
            true_hits: 0,
            false_positives: 0,
        })
    }

    /// True when the access to `gpa` must take the paging path.
    #[inline]
    pub fn escapes(&mut self, gpa: u64) -> bool {
        if self.exact.is_empty() {
            return false;
        }
        let pfn = gpa >> 12;
        self.checks += 1;
        if !self.bloom.may_contain(pfn) {
            return false;
        }
        if self.exact.contains_key(&pfn) {
            self.true_hits += 1;
        } else {
            self.false_positives += 1;
        }
        true
    }

    /// Statistics so far.
    pub fn report(&self) -> EscapeReport {
        let negatives = self.checks - self.true_hits;
        EscapeReport {
            escaped_pages: self.exact.len() as u64,
            bits: self.bits,
            hashes: self.hashes,
            checks: self.checks,
            true_hits: self.true_hits,
            false_positives: self.false_positives,
            false_positive_rate: if negatives == 0 {
                0.0
            } else {
                self.false_positives as f64 / negatives as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_measured_fp_rate() {
        let pages: Vec<u64> = (0..16).map(|i| i * 7919).collect();
        let mut f = EscapeFilter::new(&pages, 256, 4).unwrap();
        for &p in &pages {
            assert!(f.escapes(p << 12));
        }
        for p in 200_000..210_000u64 {
            f.escapes(p << 12);
        }
        let r = f.report();
        assert_eq!(r.true_hits, 16);
        // 16 keys, 256 bits, 4 hashes: theoretical FP ≈ (1 - e^{-kn/m})^k ≈ 0.024.
        assert!(
            r.false_positive_rate > 0.0 && r.false_positive_rate < 0.1,
            "{r:?}"
        );
        assert!(EscapeFilter::new(&[], 0, 1).is_err());
    }
}
