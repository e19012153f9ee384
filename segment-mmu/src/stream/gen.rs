//! Address-stream generators.
//!
//! GUPS and pointer chase call the `workloads` crate, the very code the measurement
//! guest runs, so for the same seed the model replays exactly the guest's stream:
//! GUPS access i is a read-modify-write of the 8-byte element at `base + 8*index`; the
//! chase visits element 0 first, then `next[cur]`, element k at `base + 64*k`.

use workloads::{chase_permutation, GupsIndices, XorShift64, CHASE_ELEM_BYTES};

use super::{Event, EventKind};

/// Sequential or strided reads over `footprint` bytes, wrapping around.
#[derive(Debug, Clone)]
pub struct Strided {
    base: u64,
    footprint: u64,
    step: u64,
    at: u64,
    left: u64,
}

impl Strided {
    /// `count` reads from `base`, `step` bytes apart, modulo `footprint` (> 0).
    pub fn new(base: u64, footprint: u64, step: u64, count: u64) -> Self {
        Self {
            base,
            footprint: footprint.max(1),
            step,
            at: 0,
            left: count,
        }
    }
}

impl Iterator for Strided {
    type Item = Event;
    #[inline]
    fn next(&mut self) -> Option<Event> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let va = self.base + self.at;
        self.at += self.step;
        if self.at >= self.footprint {
            // Wrap, shifting by one 8-byte word per lap so that a stride equal to the
            // footprint does not replay one address forever.
            self.at = (self.at - self.footprint + 8) % self.footprint;
        }
        Some(Event::read(va))
    }
}

/// GUPS: uniform random read-modify-writes of 8-byte elements (`workloads::GupsIndices`).
#[derive(Debug, Clone)]
pub struct Gups {
    base: u64,
    idx: GupsIndices,
}

impl Gups {
    /// `count` updates over `footprint / 8` elements from `seed`.
    pub fn new(base: u64, footprint: u64, count: u64, seed: u64) -> Self {
        Self {
            base,
            idx: GupsIndices::new(seed, footprint / 8, count),
        }
    }
}

impl Iterator for Gups {
    type Item = Event;
    #[inline]
    fn next(&mut self) -> Option<Event> {
        self.idx.next().map(|i| Event::write(self.base + 8 * i))
    }
}

/// Pointer chase over a Sattolo cycle (`workloads::chase_permutation`).
#[derive(Debug, Clone)]
pub struct Chase {
    base: u64,
    next: Vec<u64>,
    cur: u64,
    left: u64,
}

impl Chase {
    /// `count` dependent loads over `footprint / 64` elements from `seed`.
    pub fn new(base: u64, footprint: u64, count: u64, seed: u64) -> Self {
        let n = (footprint / CHASE_ELEM_BYTES) as usize;
        let mut next = vec![0u64; n];
        chase_permutation(&mut next, seed);
        Self {
            base,
            next,
            cur: 0,
            left: if n == 0 { 0 } else { count },
        }
    }
}

impl Iterator for Chase {
    type Item = Event;
    #[inline]
    fn next(&mut self) -> Option<Event> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let va = self.base + CHASE_ELEM_BYTES * self.cur;
        self.cur = self.next[self.cur as usize];
        Some(Event::read(va))
    }
}

/// Zipfian page popularity (Gray et al., SIGMOD'94 "Quickly generating billion-record
/// synthetic databases", the generator YCSB uses), scrambled so hot pages are spread
/// over the footprint, with a random 8-byte offset inside the page.
#[derive(Debug, Clone)]
pub struct Zipf {
    base: u64,
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    rng: XorShift64,
    left: u64,
}

impl Zipf {
    /// `count` reads over `footprint / 4096` pages with skew `theta` (0 < θ, θ ≠ 1).
    pub fn new(base: u64, footprint: u64, count: u64, theta: f64, seed: u64) -> Self {
        let n = (footprint / 4096).max(1);
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Self {
            base,
            n,
            theta,
            alpha,
            zetan,
            eta,
            rng: XorShift64::new(seed),
            left: count,
        }
    }

    fn rank(&mut self) -> u64 {
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        ((self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64).min(self.n - 1)
    }
}

impl Iterator for Zipf {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = self.rank();
        // FNV-style scramble (YCSB's ScrambledZipfian does the same: hash then modulo).
        let page = (r.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (r >> 7)) % self.n;
        let off = self.rng.next_u64() & 0xff8;
        Some(Event::read(self.base + page * 4096 + off))
    }
}

/// Page-table churn: GUPS-like uniform accesses where, with probability `rate` per
/// access, a random page is first unmapped then mapped again (munmap/mmap or page
/// migration churn). The mapping after the pair is the same, so the ptsnap stays
/// valid; what the designs see is two guest page-table writes and an invalidation.
#[derive(Debug, Clone)]
pub struct PtChurn {
    base: u64,
    pages: u64,
    rate_threshold: u64,
    rng: XorShift64,
    left: u64,
    pending: [Option<Event>; 2],
}

impl PtChurn {
    /// `count` accesses over `footprint`, churn probability `rate` in [0, 1].
    pub fn new(base: u64, footprint: u64, count: u64, rate: f64, seed: u64) -> Self {
        Self {
            base,
            pages: (footprint / 4096).max(1),
            rate_threshold: (rate.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
            rng: XorShift64::new(seed),
            left: count,
            pending: [None; 2],
        }
    }
}

impl Iterator for PtChurn {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        if let Some(e) = self.pending[0].take() {
            self.pending[0] = self.pending[1].take();
            return Some(e);
        }
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let va = self.base + 8 * self.rng.below(self.pages * 512);
        let access = Event {
            va,
            kind: if self.rng.next_u64() & 1 == 0 {
                EventKind::Read
            } else {
                EventKind::Write
            },
        };
        if self.rng.next_u64() < self.rate_threshold {
            let page = self.base + 4096 * self.rng.below(self.pages);
            self.pending = [
                Some(Event {
                    va: page,
                    kind: EventKind::Map,
                }),
                Some(access),
            ];
            return Some(Event {
                va: page,
                kind: EventKind::Unmap,
            });
        }
        Some(access)
    }
}

/// Skewed GUPS (`gups:...,zipf=S`): read-modify-writes like [`Gups`], but the page is
/// drawn from a scrambled Zipf(S) over the footprint's 4 KiB pages (the [`Zipf`]
/// generator, so the hottest pages are spread over the footprint) and the 8-byte element
/// uniformly inside it. A stand-in for the skewed key-value and graph workloads the
/// tiering papers (vTMM, ACM TOCS 2024; HeMem, SOSP'21) use.
#[derive(Debug, Clone)]
pub struct ZipfGups {
    z: Zipf,
}

impl ZipfGups {
    /// `count` updates over `footprint` with skew `s` (0 < s, s ≠ 1).
    pub fn new(base: u64, footprint: u64, count: u64, s: f64, seed: u64) -> Self {
        Self {
            z: Zipf::new(base, footprint, count, s, seed),
        }
    }
}

impl Iterator for ZipfGups {
    type Item = Event;
    #[inline]
    fn next(&mut self) -> Option<Event> {
        self.z.next().map(|e| Event::write(e.va))
    }
}

/// A hot-set stream (vTMM-like): each access is a read-modify-write of a random 8-byte
/// element, in the hot set with probability `frac`, else anywhere in the footprint. The
/// hot set is a `hot` fraction of the pages spread evenly over the footprint (hot page
/// j is page `j·stride + phase`, stride = pages / hot pages), so neither address order
/// nor huge-page grain finds it by accident; with `shift` > 0 it moves to the next
/// pages (phase + 1) every `shift` accesses (a phase change the tiering policy must
/// follow).
#[derive(Debug, Clone)]
pub struct HotSet {
    base: u64,
    pages: u64,
    hot_pages: u64,
    frac_threshold: u64,
    shift: u64,
    at: u64,
    left: u64,
    rng: XorShift64,
}

impl HotSet {
    /// `count` updates over `footprint`; `hot` and `frac` in (0, 1].
    pub fn new(
        base: u64,
        footprint: u64,
        count: u64,
        hot: f64,
        frac: f64,
        shift: u64,
        seed: u64,
    ) -> Self {
        let pages = (footprint / 4096).max(1);
        Self {
            base,
            pages,
            hot_pages: ((pages as f64 * hot) as u64).clamp(1, pages),
            frac_threshold: (frac.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
            shift,
            at: 0,
            left: count,
            rng: XorShift64::new(seed),
        }
    }
}

impl Iterator for HotSet {
    type Item = Event;
    #[inline]
    fn next(&mut self) -> Option<Event> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let phase = self.at.checked_div(self.shift).unwrap_or(0);
        self.at += 1;
        let page = if self.rng.next_u64() < self.frac_threshold {
            let stride = (self.pages / self.hot_pages).max(1);
            (self.rng.below(self.hot_pages) * stride + phase) % self.pages
        } else {
            self.rng.below(self.pages)
        };
        let off = self.rng.next_u64() & 0xff8;
        Some(Event::write(self.base + page * 4096 + off))
    }
}

/// A phase-changing stream for shadow/nested switching: phases of `phase` accesses
/// alternate between page-table churn over the first `churn` bytes ([`PtChurn`] at
/// `rate`: shadow pays two exits per remap, the TLB mostly hits) and uniform GUPS over
/// the whole footprint on static tables (TLB-miss heavy: a 2D walk per access, where
/// shadow's 1D walk wins). Starts with a churn phase.
#[derive(Debug, Clone)]
pub struct Phases {
    base: u64,
    footprint: u64,
    churn: u64,
    rate: f64,
    phase: u64,
    seed: u64,
    index: u64,
    left: u64,
    cur: PhaseIter,
}

#[derive(Debug, Clone)]
enum PhaseIter {
    Churn(PtChurn),
    Gups(Gups),
}

impl Phases {
    /// `count` accesses in phases of `phase` (> 0) accesses.
    pub fn new(
        base: u64,
        footprint: u64,
        count: u64,
        phase: u64,
        churn: u64,
        rate: f64,
        seed: u64,
    ) -> Self {
        let phase = phase.max(1);
        let churn = churn.clamp(4096, footprint.max(4096));
        let first = count.min(phase);
        Self {
            base,
            footprint,
            churn,
            rate,
            phase,
            seed,
            index: 0,
            left: count - first,
            cur: PhaseIter::Churn(PtChurn::new(base, churn, first, rate, seed)),
        }
    }
}

impl Iterator for Phases {
    type Item = Event;
    #[inline]
    fn next(&mut self) -> Option<Event> {
        loop {
            let e = match &mut self.cur {
                PhaseIter::Churn(c) => c.next(),
                PhaseIter::Gups(g) => g.next(),
            };
            if e.is_some() {
                return e;
            }
            if self.left == 0 {
                return None;
            }
            let n = self.left.min(self.phase);
            self.left -= n;
            self.index += 1;
            let seed = self.seed.wrapping_add(self.index.wrapping_mul(0x9E37_79B9));
            self.cur = if self.index % 2 == 0 {
                PhaseIter::Churn(PtChurn::new(self.base, self.churn, n, self.rate, seed))
            } else {
                PhaseIter::Gups(Gups::new(self.base, self.footprint, n, seed))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gups_replays_the_workload_stream() {
        let base = 0x1000_0000;
        let ours: Vec<u64> = Gups::new(base, 1 << 20, 100, 7).map(|e| e.va).collect();
        let theirs: Vec<u64> = GupsIndices::new(7, (1 << 20) / 8, 100)
            .map(|i| base + 8 * i)
            .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn chase_starts_at_zero_and_follows_next() {
        let mut next = vec![0u64; 1024];
        chase_permutation(&mut next, 3);
        let v: Vec<u64> = Chase::new(0, 1024 * 64, 5, 3).map(|e| e.va / 64).collect();
        assert_eq!(v[0], 0);
        for w in v.windows(2) {
            assert_eq!(w[1], next[w[0] as usize]);
        }
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let fp = 1024 * 4096;
        let mut counts = vec![0u32; 1024];
        for e in Zipf::new(0, fp, 50_000, 0.99, 1) {
            assert!(e.va < fp);
            counts[(e.va / 4096) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // The hottest 1% of pages take far more than 1% of accesses.
        let top: u32 = counts[..10].iter().sum();
        assert!(top > 50_000 / 5, "top10={top}");
    }

    #[test]
    fn skewed_streams_are_skewed_and_phases_alternate() {
        let fp = 4096 * 4096;
        let top = |it: &mut dyn Iterator<Item = Event>| {
            let mut c = vec![0u32; 4096];
            for e in it {
                assert!(e.va < fp && e.kind == EventKind::Write);
                c[(e.va / 4096) as usize] += 1;
            }
            c.sort_unstable_by(|a, b| b.cmp(a));
            c[..41].iter().sum::<u32>()
        };
        // Top 1% of pages: uniform would give about 1% of 100k accesses.
        assert!(top(&mut ZipfGups::new(0, fp, 100_000, 0.99, 1)) > 20_000);
        assert!(top(&mut HotSet::new(0, fp, 100_000, 0.01, 0.9, 0, 1)) > 80_000);
        // A moving hot set spreads over more pages.
        assert!(top(&mut HotSet::new(0, fp, 100_000, 0.01, 0.9, 10_000, 1)) < 30_000);
        let ev: Vec<Event> = Phases::new(0, fp, 4000, 1000, 1 << 20, 0.1, 3).collect();
        assert_eq!(ev.iter().filter(|e| e.is_access()).count(), 4000);
        let pt: Vec<usize> = ev
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.is_access())
            .map(|(i, _)| i)
            .collect();
        assert!(!pt.is_empty());
        // Churn only in phases 0 and 2 (accesses 0..1000 and 2000..3000), inside churn=.
        let mut acc = 0;
        for e in &ev {
            if e.is_access() {
                acc += 1;
            } else {
                assert!((acc / 1000) % 2 == 0 && e.va < 1 << 20, "{acc}");
            }
        }
    }

    #[test]
    fn strided_wraps_and_churn_emits_pairs() {
        let v: Vec<u64> = Strided::new(0, 8192, 4096, 4).map(|e| e.va).collect();
        assert_eq!(v, vec![0, 4096, 8, 4104]);
        let ev: Vec<Event> = PtChurn::new(0, 1 << 20, 1000, 0.5, 9).collect();
        let unmaps = ev.iter().filter(|e| e.kind == EventKind::Unmap).count();
        let maps = ev.iter().filter(|e| e.kind == EventKind::Map).count();
        assert!(unmaps > 300 && unmaps == maps);
        assert_eq!(ev.iter().filter(|e| e.is_access()).count(), 1000);
    }
}
