//! TLBs, page-walk caches and the nested TLB: set-associative LRU tag arrays.
//!
//! The models only need *whether* a translation is cached, never its value (the
//! functional walk already knows the answer), so every structure here is a flat array
//! of tags with LRU stamps: no allocation after construction and no pointer chasing on
//! the hit path, which is what lets the TLB-hit path run at tens of millions of
//! translations per second.

use serde::{Deserialize, Serialize};

use crate::paging::{level_shift, PageSize};

/// Errors of TLB configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Unknown preset name.
    #[error("unknown TLB preset {0:?} (known: intel, amd, none)")]
    UnknownPreset(String),
    /// Entries not a multiple of ways.
    #[error("{what}: {entries} entries is not a multiple of {ways} ways")]
    BadGeometry {
        /// Which structure.
        what: &'static str,
        /// Entries.
        entries: u32,
        /// Ways.
        ways: u32,
    },
}

/// Size and associativity of one structure. `entries == 0` disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Geometry {
    /// Total entries.
    pub entries: u32,
    /// Ways per set (`ways == entries`: fully associative).
    pub ways: u32,
}

impl Geometry {
    /// A disabled structure.
    pub const NONE: Geometry = Geometry {
        entries: 0,
        ways: 0,
    };
    /// `entries` entries, `ways`-way.
    pub const fn new(entries: u32, ways: u32) -> Self {
        Self { entries, ways }
    }
    /// Fully associative.
    pub const fn full(entries: u32) -> Self {
        Self {
            entries,
            ways: entries,
        }
    }
}

/// A set-associative cache of 64-bit keys with true LRU replacement.
///
/// Each set's ways are kept in recency order (most recent first), so LRU needs no
/// stamps: a hit rotates the way to the front, an insert shifts the set and drops the
/// last way. Half the memory of tags-plus-stamps, which matters because the replay of a
/// large random stream is bound by cache misses on these arrays.
#[derive(Debug, Clone)]
pub struct SetAssoc {
    sets: u64,
    ways: usize,
    pow2_mask: Option<u64>,
    /// `key + 1` in recency order per set; 0 = invalid (always at the end of a set).
    tags: Vec<u64>,
}

impl SetAssoc {
    /// Builds an empty cache.
    pub fn new(g: Geometry, what: &'static str) -> Result<Self, Error> {
        if g.entries == 0 {
            return Ok(Self {
                sets: 0,
                ways: 0,
                pow2_mask: None,
                tags: Vec::new(),
            });
        }
        if g.ways == 0 || g.entries % g.ways != 0 {
            return Err(Error::BadGeometry {
                what,
                entries: g.entries,
                ways: g.ways,
            });
        }
        let sets = (g.entries / g.ways) as u64;
        Ok(Self {
            sets,
            ways: g.ways as usize,
            pow2_mask: sets.is_power_of_two().then_some(sets - 1),
            tags: vec![0; g.entries as usize],
        })
    }

    /// True when the cache has no entries.
    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.ways == 0
    }

    #[inline]
    fn set(&mut self, key: u64) -> &mut [u64] {
        let set = match self.pow2_mask {
            Some(m) => key & m,
            None => key % self.sets,
        };
        let base = set as usize * self.ways;
        &mut self.tags[base..base + self.ways]
    }

    /// Looks `key` up; a hit makes it the most recently used way.
    #[inline]
    pub fn lookup(&mut self, key: u64) -> bool {
        if self.ways == 0 {
            return false;
        }
        let tag = key.wrapping_add(1);
        let set = self.set(key);
        match set.iter().position(|&t| t == tag) {
            Some(0) => true,
            Some(w) => {
                shift_in(set, w, tag);
                true
            }
            None => false,
        }
    }

    /// Inserts `key` as the most recently used way (evicting the least recently used
    /// one when the set is full).
    #[inline]
    pub fn insert(&mut self, key: u64) {
        if self.ways == 0 {
            return;
        }
        let tag = key.wrapping_add(1);
        let set = self.set(key);
        let w = set.iter().position(|&t| t == tag).unwrap_or(set.len() - 1);
        shift_in(set, w, tag);
    }

    /// Drops `key` if present.
    pub fn invalidate(&mut self, key: u64) {
        if self.ways == 0 {
            return;
        }
        let tag = key.wrapping_add(1);
        let set = self.set(key);
        if let Some(w) = set.iter().position(|&t| t == tag) {
            set[w..].rotate_left(1);
            let last = set.len() - 1;
            set[last] = 0;
        }
    }

    /// Drops everything.
    pub fn flush(&mut self) {
        self.tags.fill(0);
    }
}

/// Moves ways `0..w` one place down (dropping way `w`) and puts `tag` first. A plain
/// loop: sets are small, and `rotate_right` goes through an out-of-line memmove.
#[inline(always)]
fn shift_in(set: &mut [u64], w: usize, tag: u64) {
    let mut i = w;
    while i > 0 {
        set[i] = set[i - 1];
        i -= 1;
    }
    set[0] = tag;
}

/// Latencies that turn counts into cycles. Defaults are documented modelling
/// assumptions, not measurements; the VMM supplies `vm_exit_cycles` measured on the host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    /// Extra cycles of an L1 miss that hits the L2 STLB (≈7–9 on recent Intel and AMD
    /// cores; Intel optimization manual and AMD 19h optimization guide).
    pub l2_hit_cycles: f64,
    /// Cycles per page-walk memory reference. Walk references mostly hit the data
    /// caches (Bhargava et al., ASPLOS'08; Barr et al., ISCA'10), so the default, 30, is
    /// between an L2 hit (~14) and an LLC hit (~50–70).
    pub ref_cycles: f64,
    /// Cycles of one base/limit check plus offset add (a comparator and an adder done
    /// beside the L1 TLB lookup: Basu et al., ISCA'13; Gandhi et al., MICRO'14): 1.
    pub base_bound_cycles: f64,
    /// Cycles charged per VM exit (exit, handling, entry). Default 2000: the order of a
    /// shadow-paging write-protect or hidden-fault exit on recent cores (a bare
    /// VMEXIT/VMENTRY round trip is ≈1000–1500 cycles).
    pub vm_exit_cycles: f64,
}

impl Default for Costs {
    fn default() -> Self {
        Self {
            l2_hit_cycles: 8.0,
            ref_cycles: 30.0,
            base_bound_cycles: 1.0,
            vm_exit_cycles: 2000.0,
        }
    }
}

/// The whole translation-caching configuration of one core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlbConfig {
    /// Preset name.
    pub name: String,
    /// L1 dTLB per page size: 4K, 2M, 1G.
    pub l1: [Geometry; 3],
    /// Unified L2 STLB (all page sizes).
    pub l2: Geometry,
    /// Page-walk caches of upper-level entries, for levels 2 (PDE), 3, 4, 5. Used for the
    /// 1D walk and the guest dimension of a 2D walk.
    pub pwc: [Geometry; 4],
    /// Page-walk caches of the host (nested) dimension, levels 2..5.
    pub nested_pwc: [Geometry; 4],
    /// Nested TLB: guest-physical page to host-physical page.
    pub ntlb: Geometry,
    /// Latencies.
    pub costs: Costs,
}

impl TlbConfig {
    /// A recent Intel server core: Golden Cove (Sapphire Rapids).
    ///
    /// Source: Intel 64 and IA-32 Architectures Optimization Reference Manual
    /// (248966), Golden Cove TLB table: DTLB 96 entries 6-way (4K), 32 entries 4-way
    /// (2M/4M), 8 entries fully associative (1G); STLB 2048 entries 16-way shared by 4K
    /// and 2M pages (1G pages have their own STLB entries; modelled as shared here).
    /// Paging-structure cache sizes are not published (SDM Vol. 3A §4.10.3 describes
    /// them); the sizes here are the common estimates (PDE cache 32 entries).
    pub fn intel() -> Self {
        let pwc = [
            Geometry::new(32, 4),
            Geometry::full(4),
            Geometry::full(2),
            Geometry::full(2),
        ];
        Self {
            name: "intel".into(),
            l1: [
                Geometry::new(96, 6),
                Geometry::new(32, 4),
                Geometry::full(8),
            ],
            l2: Geometry::new(2048, 16),
            pwc,
            nested_pwc: pwc,
            ntlb: Geometry::NONE,
            costs: Costs::default(),
        }
    }

    /// A recent AMD server core: Zen 4 (Genoa).
    ///
    /// Source: AMD Software Optimization Guide for AMD Family 19h Processors (56665),
    /// Zen 4 section: L1 DTLB 72 entries fully associative for every page size
    /// (modelled as 72 entries per size), L2 DTLB 3072 entries (modelled 24-way).
    /// AMD's page-walk cache (PWC) and nested TLB (Bhargava et al., ASPLOS'08, "Nested
    /// TLB") sizes are not published; 64 and 32 entries are estimates.
    pub fn amd() -> Self {
        let pwc = [
            Geometry::new(64, 4),
            Geometry::full(8),
            Geometry::full(4),
            Geometry::full(2),
        ];
        Self {
            name: "amd".into(),
            l1: [Geometry::full(72), Geometry::full(72), Geometry::full(72)],
            l2: Geometry::new(3072, 24),
            pwc,
            nested_pwc: pwc,
            ntlb: Geometry::new(32, 4),
            costs: Costs::default(),
        }
    }

    /// Every TLB and cache disabled: each access is a full walk (the papers' table).
    pub fn none() -> Self {
        Self {
            name: "none".into(),
            l1: [Geometry::NONE; 3],
            l2: Geometry::NONE,
            pwc: [Geometry::NONE; 4],
            nested_pwc: [Geometry::NONE; 4],
            ntlb: Geometry::NONE,
            costs: Costs::default(),
        }
    }

    /// A preset by name: `intel`, `amd`, `none`.
    pub fn preset(name: &str) -> Result<Self, Error> {
        match name {
            "intel" => Ok(Self::intel()),
            "amd" => Ok(Self::amd()),
            "none" => Ok(Self::none()),
            _ => Err(Error::UnknownPreset(name.to_string())),
        }
    }
}

/// Which level of the TLB hierarchy answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// L1 dTLB.
    L1,
    /// L2 STLB.
    L2,
    /// Neither: a walk is needed.
    Miss,
}

/// L1 dTLBs (one per page size) and the unified L2 STLB, tagged by address-space id.
#[derive(Debug, Clone)]
pub struct TlbHierarchy {
    l1: [SetAssoc; 3],
    l2: SetAssoc,
    /// Bit i set once a page of size index i was inserted: only those sizes are probed.
    sizes_seen: u8,
    /// False when every TLB is disabled.
    any: bool,
}

/// Tag of `va` at `size` in address space `asid`: the page number, the size and the asid
/// in disjoint bit fields, so the low bits (the set index) are the page number's low bits.
#[inline]
pub fn tlb_key(va: u64, size: PageSize, asid: u16) -> u64 {
    ((va & ((1 << 57) - 1)) >> size.shift()) | ((size.index() as u64) << 46) | ((asid as u64) << 48)
}

impl TlbHierarchy {
    /// Builds the TLBs of `cfg`.
    pub fn new(cfg: &TlbConfig) -> Result<Self, Error> {
        Ok(Self {
            l1: [
                SetAssoc::new(cfg.l1[0], "L1 dTLB 4K")?,
                SetAssoc::new(cfg.l1[1], "L1 dTLB 2M")?,
                SetAssoc::new(cfg.l1[2], "L1 dTLB 1G")?,
            ],
            l2: SetAssoc::new(cfg.l2, "L2 STLB")?,
            sizes_seen: 0,
            any: cfg.l1.iter().chain([&cfg.l2]).any(|g| g.entries > 0),
        })
    }

    /// Looks `va` up in L1 then L2 (an L2 hit refills L1).
    #[inline]
    pub fn lookup(&mut self, va: u64, asid: u16) -> Hit {
        let seen = self.sizes_seen;
        for s in PageSize::ALL {
            if seen & (1 << s.index()) != 0 && self.l1[s.index()].lookup(tlb_key(va, s, asid)) {
                return Hit::L1;
            }
        }
        for s in PageSize::ALL {
            if seen & (1 << s.index()) != 0 {
                let k = tlb_key(va, s, asid);
                if self.l2.lookup(k) {
                    self.l1[s.index()].insert(k);
                    return Hit::L2;
                }
            }
        }
        Hit::Miss
    }

    /// Fills L1 and L2 after a walk.
    #[inline]
    pub fn fill(&mut self, va: u64, size: PageSize, asid: u16) {
        if !self.any {
            return;
        }
        let k = tlb_key(va, size, asid);
        self.sizes_seen |= 1 << size.index();
        self.l1[size.index()].insert(k);
        self.l2.insert(k);
    }

    /// INVLPG: drops `va` at every size.
    pub fn invalidate(&mut self, va: u64, asid: u16) {
        for s in PageSize::ALL {
            let k = tlb_key(va, s, asid);
            self.l1[s.index()].invalidate(k);
            self.l2.invalidate(k);
        }
    }

    /// Drops everything (a mode switch).
    pub fn flush(&mut self) {
        for c in &mut self.l1 {
            c.flush();
        }
        self.l2.flush();
    }
}

/// Page-walk caches for levels 2..=5, keyed by the address bits above each level.
#[derive(Debug, Clone)]
pub struct WalkCaches {
    levels: [SetAssoc; 4],
    /// False when every level is disabled (skips the per-level probes).
    any: bool,
}

impl WalkCaches {
    /// Builds the caches from four geometries (levels 2, 3, 4, 5).
    pub fn new(g: &[Geometry; 4]) -> Result<Self, Error> {
        Ok(Self {
            levels: [
                SetAssoc::new(g[0], "PWC level 2")?,
                SetAssoc::new(g[1], "PWC level 3")?,
                SetAssoc::new(g[2], "PWC level 4")?,
                SetAssoc::new(g[3], "PWC level 5")?,
            ],
            any: g.iter().any(|g| g.entries > 0),
        })
    }

    /// True when every level is disabled.
    #[inline]
    pub fn is_disabled(&self) -> bool {
        !self.any
    }

    /// For a walk from `top` down to a leaf at `leaf_level`, returns the level of the
    /// first entry that must be read from memory: the lowest cached non-leaf entry's
    /// level minus one, or `top` when nothing is cached. Then records every non-leaf
    /// entry the walk reads. References = returned level - leaf_level + 1.
    #[inline]
    pub fn start_level(&mut self, addr: u64, top: u8, leaf_level: u8) -> u8 {
        if !self.any {
            return top;
        }
        let mut start = top;
        for l in (leaf_level + 1)..=top {
            if self.levels[l as usize - 2].lookup(addr >> level_shift(l)) {
                start = l - 1;
                break;
            }
        }
        for l in (leaf_level + 1)..=start {
            self.levels[l as usize - 2].insert(addr >> level_shift(l));
        }
        start
    }

    /// Looks `key` up in slot `slot` (0 = the level just above a leaf) of a table
    /// whose levels do not follow the x86 9-bit split (enlarged TDP's host table).
    #[inline]
    pub fn probe(&mut self, slot: usize, key: u64) -> bool {
        self.levels.get_mut(slot).is_some_and(|c| c.lookup(key))
    }

    /// Inserts `key` in slot `slot` (see [`WalkCaches::probe`]).
    #[inline]
    pub fn fill(&mut self, slot: usize, key: u64) {
        if let Some(c) = self.levels.get_mut(slot) {
            c.insert(key);
        }
    }

    /// Drops everything.
    pub fn flush(&mut self) {
        for c in &mut self.levels {
            c.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recent() {
        let mut c = SetAssoc::new(Geometry::full(2), "t").unwrap();
        c.insert(1);
        c.insert(2);
        assert!(c.lookup(1)); // 2 is now LRU
        c.insert(3);
        assert!(c.lookup(1) && c.lookup(3) && !c.lookup(2));
        c.invalidate(3);
        assert!(!c.lookup(3));
        assert!(SetAssoc::new(Geometry::new(10, 4), "t").is_err());
    }

    #[test]
    fn hierarchy_refills_l1_from_l2_and_disabled_never_hits() {
        let mut t = TlbHierarchy::new(&TlbConfig::intel()).unwrap();
        assert_eq!(t.lookup(0x1000, 0), Hit::Miss);
        t.fill(0x1000, PageSize::Size4K, 0);
        assert_eq!(t.lookup(0x1fff, 0), Hit::L1);
        assert_eq!(t.lookup(0x1000, 1), Hit::Miss, "asid tags");
        // Evict from L1 (96 entries, 6-way: 16 sets) with 6 conflicting pages.
        for i in 1..=6u64 {
            t.fill(0x1000 + (i << 16), PageSize::Size4K, 0);
        }
        assert_eq!(t.lookup(0x1000, 0), Hit::L2);
        assert_eq!(t.lookup(0x1000, 0), Hit::L1);
        let mut n = TlbHierarchy::new(&TlbConfig::none()).unwrap();
        n.fill(0x1000, PageSize::Size4K, 0);
        assert_eq!(n.lookup(0x1000, 0), Hit::Miss);
    }

    #[test]
    fn walk_caches_skip_upper_levels() {
        let mut w = WalkCaches::new(&TlbConfig::intel().pwc).unwrap();
        assert_eq!(w.start_level(0x40_0000, 4, 1), 4);
        // Same 2 MiB region: PDE cached, only the PTE is read.
        assert_eq!(w.start_level(0x40_1000, 4, 1), 1);
        // Other 2 MiB region, same 1 GiB: PDPTE cached, read PDE and PTE.
        assert_eq!(w.start_level(0x80_0000, 4, 1), 2);
        assert_eq!(TlbConfig::preset("none").unwrap().l2, Geometry::NONE);
        assert!(TlbConfig::preset("arm").is_err());
    }
}
