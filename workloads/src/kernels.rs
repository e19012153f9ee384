//! The workload kernels themselves: one source compiled into the measurement guest (ring 3,
//! no OS) and into the `segvmm` binary (the host-native twin), so that both run the very
//! same instructions over a buffer with the same layout and can be compared op for op.
//!
//! Every kernel works on a plain `&mut [u64]` view of the workload buffer and returns a
//! checksum, which (a) keeps the compiler from discarding the work and (b) lets the tests
//! check that the guest and the native twin computed the same thing for the same seed.
//! The set-up steps (`*_init`) are separate from the timed steps (`*_run`) so that callers
//! time only the latter.

use crate::{sattolo_swaps, GupsIndices, CHASE_ELEM_BYTES};

/// Words (u64) per chase element: one cache line.
pub const CHASE_ELEM_WORDS: usize = (CHASE_ELEM_BYTES / 8) as usize;
/// The unit of `touch`: one 4 KiB page (the guest's and the host's base page).
pub const TOUCH_PAGE_BYTES: usize = 4096;
/// The multiplier of the stream triad `a = b + s * c`.
pub const STREAM_SCALAR: u64 = 3;
/// Mixed into each GUPS update (the golden-ratio constant; any odd value would do).
const GUPS_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The workloads, with the codes the guest protocol carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u64)]
pub enum Workload {
    /// Dependent loads along a random cyclic permutation (TLB-miss bound).
    Chase = 1,
    /// Random 8-byte read-modify-writes (xorshift index stream).
    Gups = 2,
    /// The stream triad `a[i] = b[i] + s * c[i]` (bandwidth bound).
    Stream = 3,
    /// First write to every 4 KiB page (the first-touch / shadow-fault cost).
    Touch = 4,
    /// Map a page, touch it, unmap it (the cost of page-table updates).
    PtChurn = 5,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 5] = [
        Workload::Chase,
        Workload::Gups,
        Workload::Stream,
        Workload::Touch,
        Workload::PtChurn,
    ];

    /// The protocol code.
    pub const fn code(self) -> u64 {
        self as u64
    }

    /// The workload for a protocol code.
    pub const fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(Workload::Chase),
            2 => Some(Workload::Gups),
            3 => Some(Workload::Stream),
            4 => Some(Workload::Touch),
            5 => Some(Workload::PtChurn),
            _ => None,
        }
    }

    /// The name used on command lines and in results.
    pub const fn name(self) -> &'static str {
        match self {
            Workload::Chase => "chase",
            Workload::Gups => "gups",
            Workload::Stream => "stream",
            Workload::Touch => "touch",
            Workload::PtChurn => "ptchurn",
        }
    }

    /// The workload with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// What one "operation" of this workload is, for reports.
    pub const fn op_unit(self) -> &'static str {
        match self {
            Workload::Chase => "dependent load",
            Workload::Gups => "8-byte read-modify-write",
            Workload::Stream => "triad element (2 loads + 1 store of 8 bytes)",
            Workload::Touch => "first write to a 4 KiB page",
            Workload::PtChurn => "map + touch + unmap of one page",
        }
    }
}

/// Number of chase elements in a buffer of `words` u64s.
pub const fn chase_elems(words: usize) -> usize {
    words / CHASE_ELEM_WORDS
}

/// Writes a single random cycle into the buffer: element `k` (at word `8k`, byte `64k`)
/// holds the index of the element visited after it. The cycle is exactly the one
/// [`crate::chase_permutation`] computes for the same seed and element count.
pub fn chase_init(buf: &mut [u64], seed: u64) {
    let n = chase_elems(buf.len());
    for k in 0..n {
        buf[k * CHASE_ELEM_WORDS] = k as u64;
    }
    sattolo_swaps(n, seed, |i, j| {
        buf.swap(i * CHASE_ELEM_WORDS, j * CHASE_ELEM_WORDS)
    });
}

/// Follows the cycle for `steps` dependent loads starting at element 0; returns the
/// wrapping sum of the visited indices.
#[inline(never)]
pub fn chase_run(buf: &[u64], steps: u64) -> u64 {
    let mut cur = 0usize;
    let mut sum = 0u64;
    for _ in 0..steps {
        sum = sum.wrapping_add(cur as u64);
        match buf.get(cur * CHASE_ELEM_WORDS) {
            Some(&next) => cur = next as usize,
            None => break,
        }
    }
    sum
}

/// Sets element `i` to `i`.
pub fn gups_init(buf: &mut [u64]) {
    for (i, x) in buf.iter_mut().enumerate() {
        *x = i as u64;
    }
}

/// `count` read-modify-writes at the indices of [`GupsIndices`] (`seed`, all elements);
/// returns the wrapping sum of the values read.
#[inline(never)]
pub fn gups_run(buf: &mut [u64], seed: u64, count: u64) -> u64 {
    let mut sum = 0u64;
    for idx in GupsIndices::new(seed, buf.len() as u64, count) {
        if let Some(x) = buf.get_mut(idx as usize) {
            let v = *x;
            sum = sum.wrapping_add(v);
            *x = v ^ (idx | 1).wrapping_mul(GUPS_MIX);
        }
    }
    sum
}

/// Elements per stream array: the buffer holds `a`, `b` and `c` back to back.
pub const fn stream_elems(words: usize) -> usize {
    words / 3
}

/// `a = 0`, `b[i] = i`, `c[i] = 7i + 1`.
pub fn stream_init(buf: &mut [u64]) {
    let n = stream_elems(buf.len());
    let (a, rest) = buf.split_at_mut(n);
    let (b, c) = rest.split_at_mut(n);
    a.fill(0);
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u64;
    }
    for (i, x) in c.iter_mut().take(n).enumerate() {
        *x = (i as u64).wrapping_mul(7).wrapping_add(1);
    }
}

/// `passes` triads `a[i] = b[i] + s * c[i]`; returns the elements processed.
#[inline(never)]
pub fn stream_run(buf: &mut [u64], passes: u64) -> u64 {
    let n = stream_elems(buf.len());
    let (a, rest) = buf.split_at_mut(n);
    let (b, c) = rest.split_at_mut(n);
    let (b, c) = (&b[..n], &c[..n]);
    for _ in 0..passes {
        for ((x, &y), &z) in a.iter_mut().zip(b).zip(c) {
            *x = y.wrapping_add(STREAM_SCALAR.wrapping_mul(z));
        }
        // Each pass stores the same values; keep the compiler from noticing.
        core::hint::black_box(&mut *a);
    }
    passes.wrapping_mul(n as u64)
}

/// Wrapping sum of the `a` array (outside the timed part).
pub fn stream_checksum(buf: &[u64]) -> u64 {
    buf[..stream_elems(buf.len())]
        .iter()
        .fold(0u64, |s, &x| s.wrapping_add(x))
}

/// Writes `p + 1` into the first word of every 4 KiB page `p`; returns the pages touched.
#[inline(never)]
pub fn touch_run(buf: &mut [u64]) -> u64 {
    let stride = TOUCH_PAGE_BYTES / 8;
    let mut pages = 0u64;
    for x in buf.iter_mut().step_by(stride) {
        pages += 1;
        *x = pages;
    }
    pages
}

/// The first `pages` 4 KiB pages of `buf` (all of it when `pages` covers it): what
/// `touch` runs over when asked for fewer operations than the buffer has pages. The rest
/// stays untouched, so a large buffer whose tables map it all costs the host only the
/// pages touched (the ptsnap scale benchmark relies on that).
pub fn touch_prefix(buf: &mut [u64], pages: u64) -> &mut [u64] {
    let words = usize::try_from(pages)
        .unwrap_or(usize::MAX)
        .saturating_mul(TOUCH_PAGE_BYTES / 8)
        .min(buf.len());
    &mut buf[..words]
}

/// Wrapping sum of the first word of every 4 KiB page (outside the timed part).
pub fn touch_checksum(buf: &[u64]) -> u64 {
    buf.iter()
        .step_by(TOUCH_PAGE_BYTES / 8)
        .fold(0u64, |s, &x| s.wrapping_add(x))
}

/// How `ptchurn` maps and unmaps pages: in the guest a request to the ring-0 stub that
/// edits the guest's page table, natively `mmap`/`munmap`.
pub trait PageChurn {
    /// Pages that can be mapped (slots are used round-robin).
    fn slots(&self) -> usize;
    /// Maps slot `slot`; false when that failed.
    fn map(&mut self, slot: usize) -> bool;
    /// Writes `value` to the first word of the mapped slot, then reads it back.
    fn touch(&mut self, slot: usize, value: u64) -> u64;
    /// Unmaps slot `slot` (and flushes its TLB entry).
    fn unmap(&mut self, slot: usize);
}

/// `count` cycles of map, touch, unmap over the slots round-robin. Returns the cycles
/// completed and the wrapping sum of the values read back.
#[inline(never)]
pub fn ptchurn_run<C: PageChurn>(churn: &mut C, count: u64) -> (u64, u64) {
    let slots = churn.slots() as u64;
    let mut sum = 0u64;
    if slots == 0 {
        return (0, 0);
    }
    for i in 0..count {
        let slot = (i % slots) as usize;
        if !churn.map(slot) {
            return (i, sum);
        }
        sum = sum.wrapping_add(churn.touch(slot, i));
        churn.unmap(slot);
    }
    (count, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chase_permutation;

    #[test]
    fn chase_init_stores_the_model_permutation() {
        let n = 777;
        let mut next = [0u64; 777];
        chase_permutation(&mut next, 99);
        let mut buf = [0u64; 777 * 8];
        chase_init(&mut buf, 99);
        for k in 0..n {
            assert_eq!(buf[k * 8], next[k]);
        }
        // The run visits 0, next[0], next[next[0]], ...
        let mut cur = 0usize;
        let mut sum = 0u64;
        for _ in 0..1000 {
            sum = sum.wrapping_add(cur as u64);
            cur = next[cur] as usize;
        }
        assert_eq!(chase_run(&buf, 1000), sum);
        // A full cycle visits every index once.
        assert_eq!(chase_run(&buf, n as u64), (n as u64 * (n as u64 - 1)) / 2);
    }

    #[test]
    fn gups_is_deterministic_and_touches_the_index_stream() {
        let mut a = [0u64; 4096];
        let mut b = [0u64; 4096];
        gups_init(&mut a);
        gups_init(&mut b);
        let s1 = gups_run(&mut a, 5, 10_000);
        let s2 = gups_run(&mut b, 5, 10_000);
        assert_eq!(s1, s2);
        assert_eq!(a, b);
        let mut c = [0u64; 4096];
        gups_init(&mut c);
        assert_ne!(gups_run(&mut c, 6, 10_000), s1);
        // Exactly the indices of the stream changed (an index hit twice may flip back
        // only if the mix is zero, which `| 1` rules out for a single hit).
        let mut d = [0u64; 16];
        gups_init(&mut d);
        let idx: [u64; 1] = [GupsIndices::new(3, 16, 1).next().unwrap_or(0)];
        gups_run(&mut d, 3, 1);
        for (i, &x) in d.iter().enumerate() {
            assert_eq!(x != i as u64, i as u64 == idx[0]);
        }
    }

    #[test]
    fn stream_triad() {
        let mut buf = [0u64; 30];
        stream_init(&mut buf);
        assert_eq!(stream_run(&mut buf, 2), 20);
        for i in 0..10u64 {
            assert_eq!(buf[i as usize], i + 3 * (7 * i + 1));
        }
        assert_eq!(
            stream_checksum(&buf),
            (0..10u64).map(|i| i + 3 * (7 * i + 1)).sum()
        );
    }

    #[test]
    fn touch_every_page() {
        let mut buf = [0u64; 512 * 3 + 1];
        assert_eq!(touch_run(&mut buf), 4);
        assert_eq!(touch_checksum(&buf), 1 + 2 + 3 + 4);
        let mut buf = [0u64; 512 * 3 + 1];
        assert_eq!(touch_run(touch_prefix(&mut buf, 2)), 2);
        assert_eq!(touch_checksum(&buf), 1 + 2);
        assert_eq!(buf[512 * 2], 0);
        assert_eq!(touch_prefix(&mut buf, u64::MAX).len(), 512 * 3 + 1);
    }

    struct FakeChurn {
        mapped: [bool; 3],
        mem: [u64; 3],
        maps: u64,
    }

    impl PageChurn for FakeChurn {
        fn slots(&self) -> usize {
            3
        }
        fn map(&mut self, slot: usize) -> bool {
            assert!(!self.mapped[slot]);
            self.mapped[slot] = true;
            self.maps += 1;
            true
        }
        fn touch(&mut self, slot: usize, value: u64) -> u64 {
            assert!(self.mapped[slot]);
            self.mem[slot] = value;
            self.mem[slot]
        }
        fn unmap(&mut self, slot: usize) {
            self.mapped[slot] = false;
        }
    }

    #[test]
    fn ptchurn_cycles() {
        let mut c = FakeChurn {
            mapped: [false; 3],
            mem: [0; 3],
            maps: 0,
        };
        assert_eq!(ptchurn_run(&mut c, 10), (10, 45));
        assert_eq!(c.maps, 10);
    }

    #[test]
    fn names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(Workload::from_name(w.name()), Some(w));
            assert_eq!(Workload::from_code(w.code()), Some(w));
        }
        assert_eq!(Workload::from_name("nope"), None);
    }
}
