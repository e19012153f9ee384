//! What every design shares: the environment (guest tables, host model, segments),
//! the model configuration, counters, and the walk-costing helpers.

use crate::bloom::EscapeFilter;
use crate::enumerate::linear_regions;
use crate::host::{HostModel, Segment};
use crate::paging::PageSize;
use crate::ptsnap::Ptsnap;
use crate::tlb::{tlb_key, Costs, Hit, SetAssoc, TlbConfig, TlbHierarchy, WalkCaches};
use crate::walker::{prefetch_walk, walk, Access, Walk, WalkConfig};

use super::shadow::PageSet;
use super::{DesignKind, DesignReport, Error, Translation};

/// Errors building an [`Env`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// No such address space.
    #[error("address space {0} does not exist (ptsnap has {1})")]
    NoSpace(usize, usize),
    /// Host levels not 4 or 5, or enlarged levels not 1..=4.
    #[error("bad model configuration: {0}")]
    BadConfig(String),
    /// The tables could not be enumerated.
    #[error("enumerating mappings: {0}")]
    Enumerate(#[from] crate::enumerate::Error),
}

/// Parameters of the shadow/nested switching policy (after Wang et al., VEE'11,
/// "Selective hardware/software memory virtualization").
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SwitchPolicy {
    /// Accesses per decision interval.
    pub interval: u64,
    /// Switch only when the other mode is predicted this much cheaper (0.2 = 20%).
    pub hysteresis: f64,
}

impl Default for SwitchPolicy {
    fn default() -> Self {
        Self {
            interval: 100_000,
            hysteresis: 0.2,
        }
    }
}

/// How the host (EPT/NPT) table is populated.
///
/// `Lazy` is what KVM does: guest memory is an anonymous mapping faulted in on first
/// touch, so the first access to each host page through the nested table is an EPT/NPT
/// violation exit that fills the entry. `Eager` pre-populates the table (no fill exits;
/// the table's reference counts are unchanged). Segment-translated memory (Compromis,
/// direct segments) is backed eagerly by construction: a segment is allocated when the
/// VM is created (Gandhi et al., MICRO'14 §4; Teabe et al., VEE'21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NptMode {
    /// Pre-populated host table.
    #[default]
    Eager,
    /// Filled on first touch, one exit per host page.
    Lazy,
}

/// Model configuration shared by every design of a replay.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// TLBs, caches and latencies.
    pub tlb: TlbConfig,
    /// Host (nested) paging levels; `None`: same as the guest (4+4 or 5+5).
    pub host_levels: Option<u8>,
    /// Levels of the enlarged-TDP host table (default 2: 18 bits per level, i.e. 2 MiB
    /// table nodes, after the flattened tables of Park et al., ASPLOS'22).
    pub enlarged_levels: u8,
    /// Compromis segment-table size (k largest host-contiguous runs).
    pub compromis_segments: usize,
    /// Guest-physical pages excluded from the VMM segment (escape filter).
    pub escape_pages: u64,
    /// Escape-filter bits (Gandhi et al. use 256).
    pub escape_bits: u32,
    /// Escape-filter hash functions.
    pub escape_hashes: u32,
    /// Seed for choosing escaped pages.
    pub seed: u64,
    /// Dynamic switching policy.
    pub switch: SwitchPolicy,
    /// Host-table population (lazy: one fill exit per host page on first touch).
    #[serde(default)]
    pub npt: NptMode,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            tlb: TlbConfig::intel(),
            host_levels: None,
            enlarged_levels: 2,
            compromis_segments: 8,
            escape_pages: 0,
            escape_bits: 256,
            escape_hashes: 4,
            seed: 1,
            switch: SwitchPolicy::default(),
            npt: NptMode::Eager,
        }
    }
}

/// Everything a design reads: the guest tables, which address space, the host model,
/// the segments and the configuration. Immutable during a replay, shared by all designs.
#[derive(Debug)]
pub struct Env<'a> {
    /// The guest.
    pub snap: &'a Ptsnap,
    /// Address space replayed.
    pub space: usize,
    /// Its CR3.
    pub cr3: u64,
    /// Its TLB tag.
    pub asid: u16,
    /// Walker configuration.
    pub walk_cfg: WalkConfig,
    /// Guest levels (4 or 5).
    pub guest_levels: u8,
    /// Host levels (4 or 5).
    pub host_levels: u8,
    /// gPA to hPA.
    pub host: HostModel,
    /// The guest direct segment (gVA→gPA): the largest linear region of the space.
    pub guest_segment: Option<Segment>,
    /// Guest-physical pages escaped from the VMM segment.
    pub escaped: Vec<u64>,
    /// Configuration.
    pub cfg: ModelConfig,
}

impl<'a> Env<'a> {
    /// Prepares a replay of address space `space` of `snap`.
    pub fn new(snap: &'a Ptsnap, space: usize, cfg: ModelConfig) -> Result<Self, EnvError> {
        let s = snap
            .spaces
            .get(space)
            .ok_or(EnvError::NoSpace(space, snap.spaces.len()))?;
        let walk_cfg = snap.walk_config();
        let guest_levels = snap.mode.levels();
        let host_levels = cfg.host_levels.unwrap_or(guest_levels);
        if !(4..=5).contains(&host_levels) {
            return Err(EnvError::BadConfig(format!(
                "host levels {host_levels} (expected 4 or 5)"
            )));
        }
        if !(1..=4).contains(&cfg.enlarged_levels) {
            return Err(EnvError::BadConfig(format!(
                "enlarged-TDP levels {} (expected 1..=4)",
                cfg.enlarged_levels
            )));
        }
        let maps = crate::enumerate::enumerate(snap, &walk_cfg, s.cr3)?;
        let guest_segment = linear_regions(&maps)
            .into_iter()
            .max_by_key(|r| r.len)
            .map(|r| Segment {
                base: r.va,
                limit: r.va.wrapping_add(r.len),
                offset: r.pa.wrapping_sub(r.va),
            });
        // Escaped pages: chosen uniformly inside the guest segment's backing (the pages
        // the stream touches), else inside RAM.
        let (lo, hi) = match guest_segment {
            Some(g) => (g.translate(g.base), g.translate(g.base) + g.len()),
            None => (0, snap.ram_bytes()),
        };
        let mut rng = workloads::XorShift64::new(cfg.seed ^ 0x00E5_CA9E);
        let npages = ((hi - lo) / 4096).max(1);
        let escaped = (0..cfg.escape_pages)
            .map(|_| (lo >> 12) + rng.below(npages))
            .collect();
        Ok(Self {
            snap,
            space,
            cr3: s.cr3,
            asid: space as u16,
            walk_cfg,
            guest_levels,
            host_levels,
            host: HostModel::from_ptsnap(snap),
            guest_segment,
            escaped,
            cfg,
        })
    }

    /// The functional translation of `va` (a user-mode access).
    #[inline]
    pub fn translate(&self, va: u64, write: bool) -> Translation {
        walk(
            self.snap,
            &self.walk_cfg,
            self.cr3,
            va,
            Access {
                write,
                user: true,
                exec: false,
            },
        )
    }

    /// Prefetches the last-level entry a later [`Env::translate`] of `va` will read
    /// (see [`crate::walker::prefetch_walk`]); no effect on any result.
    #[inline]
    pub fn prefetch(&self, va: u64) {
        prefetch_walk(self.snap, &self.walk_cfg, self.cr3, va);
    }

    /// An escape filter over [`Env::escaped`], if any page escaped.
    pub fn escape_filter(&self) -> Result<Option<EscapeFilter>, Error> {
        if self.escaped.is_empty() {
            return Ok(None);
        }
        Ok(Some(EscapeFilter::new(
            &self.escaped,
            self.cfg.escape_bits,
            self.cfg.escape_hashes,
        )?))
    }
}

/// Largest reference count tracked individually in histograms.
pub const HIST_MAX: usize = 63;

/// Raw event counts of one design.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    /// Accesses.
    pub accesses: u64,
    /// L1 hits.
    pub l1_hits: u64,
    /// L2 hits.
    pub l2_hits: u64,
    /// Walks.
    pub walks: u64,
    /// References.
    pub refs: u64,
    /// Histogram of references per walk.
    pub hist: [u64; HIST_MAX + 1],
    /// Base-bound computations.
    pub base_bound: u64,
    /// VM exits.
    pub vm_exits: u64,
    /// Page-table writes.
    pub pt_writes: u64,
    /// Faulting accesses.
    pub faults: u64,
    /// Cold-start fill exits (a subset of `vm_exits`): the first shadow fill of a page
    /// and, with [`NptMode::Lazy`], the first EPT/NPT fill of a host page. A page filled
    /// again after an invalidation is not cold: that exit is steady-state cost.
    pub fills: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            accesses: 0,
            l1_hits: 0,
            l2_hits: 0,
            walks: 0,
            refs: 0,
            hist: [0; HIST_MAX + 1],
            base_bound: 0,
            vm_exits: 0,
            pt_writes: 0,
            faults: 0,
            fills: 0,
        }
    }
}

impl Counters {
    /// Records one walk.
    #[inline]
    pub fn walk(&mut self, refs: u32, bb: u32) {
        self.walks += 1;
        self.refs += refs as u64;
        self.base_bound += bb as u64;
        self.hist[(refs as usize).min(HIST_MAX)] += 1;
    }

    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Counters) {
        self.accesses += o.accesses;
        self.l1_hits += o.l1_hits;
        self.l2_hits += o.l2_hits;
        self.walks += o.walks;
        self.refs += o.refs;
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a += b;
        }
        self.base_bound += o.base_bound;
        self.vm_exits += o.vm_exits;
        self.pt_writes += o.pt_writes;
        self.faults += o.faults;
        self.fills += o.fills;
    }

    /// Translation cycles under `c`.
    pub fn cycles(&self, c: &Costs) -> f64 {
        self.l2_hits as f64 * c.l2_hit_cycles
            + self.refs as f64 * c.ref_cycles
            + self.base_bound as f64 * c.base_bound_cycles
            + self.vm_exits as f64 * c.vm_exit_cycles
    }

    /// The serialisable report.
    pub fn report(&self, kind: DesignKind, c: &Costs) -> DesignReport {
        let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let cycles = self.cycles(c);
        let last = self.hist.iter().rposition(|&h| h != 0).map_or(0, |i| i + 1);
        DesignReport {
            name: kind.name().to_string(),
            accesses: self.accesses,
            l1_hits: self.l1_hits,
            l2_hits: self.l2_hits,
            walks: self.walks,
            refs: self.refs,
            refs_per_walk: per(self.refs, self.walks),
            refs_histogram: self.hist[..last].to_vec(),
            base_bound_ops: self.base_bound,
            base_bound_per_walk: per(self.base_bound, self.walks),
            vm_exits: self.vm_exits,
            pt_writes: self.pt_writes,
            faults: self.faults,
            cycles,
            cycles_per_access: if self.accesses == 0 {
                0.0
            } else {
                cycles / self.accesses as f64
            },
            escape_filter: None,
            switching: None,
        }
    }
}

/// TLBs, walk caches and counters: the state every design has.
#[derive(Debug, Clone)]
pub struct Core {
    /// L1/L2 TLBs.
    pub tlb: TlbHierarchy,
    /// 1D / guest-dimension page-walk caches.
    pub pwc: WalkCaches,
    /// Host-dimension page-walk caches.
    pub npwc: WalkCaches,
    /// Nested TLB (gPA page → hPA).
    pub ntlb: SetAssoc,
    /// Host pages the (lazily filled) EPT/NPT table maps so far.
    pub npt_filled: PageSet,
    /// Counts.
    pub c: Counters,
}

/// Cost of translating one address: (memory references, base-bound computations).
pub type Cost = (u32, u32);

impl Core {
    /// Empty structures of `cfg`.
    pub fn new(cfg: &TlbConfig) -> Result<Self, Error> {
        Ok(Self {
            tlb: TlbHierarchy::new(cfg)?,
            pwc: WalkCaches::new(&cfg.pwc)?,
            npwc: WalkCaches::new(&cfg.nested_pwc)?,
            ntlb: SetAssoc::new(cfg.ntlb, "nested TLB")?,
            npt_filled: PageSet::default(),
            c: Counters::default(),
        })
    }

    /// The front every paging design shares: a faulting translation is counted as an
    /// access and a fault; otherwise the TLBs are looked up. Returns the guest walk only
    /// when a page walk is needed (a TLB miss).
    #[inline]
    pub fn miss_walk<'t>(
        &mut self,
        env: &Env,
        va: u64,
        t: &'t super::Translation,
    ) -> Option<&'t crate::walker::Walk> {
        let Ok(w) = t else {
            self.c.accesses += 1;
            self.c.faults += 1;
            return None;
        };
        (!self.front(va, env.asid)).then_some(w)
    }

    /// Counts the access and looks the TLBs up: true on a hit (zero references).
    #[inline]
    pub fn front(&mut self, va: u64, asid: u16) -> bool {
        self.c.accesses += 1;
        match self.tlb.lookup(va, asid) {
            Hit::L1 => {
                self.c.l1_hits += 1;
                true
            }
            Hit::L2 => {
                self.c.l2_hits += 1;
                true
            }
            Hit::Miss => false,
        }
    }

    /// Drops every cached translation (a mode switch).
    pub fn flush(&mut self) {
        self.tlb.flush();
        self.pwc.flush();
        self.npwc.flush();
        self.ntlb.flush();
    }

    /// Host-dimension translation of `gpa` through an m-level radix table: nested TLB,
    /// then host page-walk caches, then the walk down to the host page size's leaf.
    /// `None` when `gpa` is outside guest RAM.
    #[inline(always)]
    pub fn host_walk(&mut self, env: &Env, gpa: u64) -> Option<Cost> {
        let hp = env.host.page_size(gpa)?;
        self.npt_fill(env, gpa, hp);
        let leaf = hp.leaf_level();
        if self.ntlb.is_disabled() && self.npwc.is_disabled() {
            // Nothing cached in the host dimension: the whole walk, no probes.
            return Some(((env.host_levels - leaf + 1) as u32, 0));
        }
        let key = tlb_key(gpa, hp, u16::MAX);
        if self.ntlb.lookup(key) {
            return Some((0, 0));
        }
        let start = self.npwc.start_level(gpa, env.host_levels, leaf);
        self.ntlb.insert(key);
        Some(((start - leaf + 1) as u32, 0))
    }

    /// With [`NptMode::Lazy`], the first touch of a host page through the host table is
    /// an EPT/NPT violation exit that fills it (cold-start cost).
    #[inline(always)]
    pub fn npt_fill(&mut self, env: &Env, gpa: u64, hp: PageSize) {
        if env.cfg.npt == NptMode::Lazy && self.npt_filled.insert(gpa, hp, u16::MAX) {
            self.c.vm_exits += 1;
            self.c.fills += 1;
        }
    }

    /// Host-dimension translation of `gpa` through enlarged TDP's L-level table: the
    /// nested TLB, then the host page-walk caches, then the remaining levels. The
    /// hardware is nested paging's with a different table shape, so it gets the same
    /// caches (docs/segment-mmu.md): the nested TLB caches gPA→hPA whatever the table
    /// looks like, and a host page-walk-cache entry holds an upper-level entry of the
    /// enlarged table (slot 0 the level just above the leaf, which with 2 levels is the
    /// top entry covering 2^30 bytes), as AMD's PWC holds nested-table entries
    /// (Bhargava et al., ASPLOS'08 §4).
    #[inline]
    pub fn enlarged_host_walk(&mut self, env: &Env, gpa: u64) -> Option<Cost> {
        let hp = env.host.page_size(gpa)?;
        self.npt_fill(env, gpa, hp);
        let (shifts, n) = enlarged_shifts(env.host_levels, env.cfg.enlarged_levels);
        let leaf = shifts[..n]
            .iter()
            .position(|&s| s <= hp.shift())
            .unwrap_or(n - 1);
        if self.ntlb.is_disabled() && self.npwc.is_disabled() {
            return Some((
                enlarged_refs(env.host_levels, env.cfg.enlarged_levels, hp),
                0,
            ));
        }
        let key = tlb_key(gpa, hp, u16::MAX);
        if self.ntlb.lookup(key) {
            return Some((0, 0));
        }
        self.ntlb.insert(key);
        let mut start = 0;
        for i in (0..leaf).rev() {
            if self.npwc.probe(leaf - 1 - i, gpa >> shifts[i]) {
                start = i + 1;
                break;
            }
        }
        for (i, &sh) in shifts.iter().enumerate().take(leaf).skip(start) {
            self.npwc.fill(leaf - 1 - i, gpa >> sh);
        }
        Some(((leaf + 1 - start) as u32, 0))
    }

    /// Cost of a guest walk `w` for `va` in which each guest-physical address (each
    /// table read, then the data address) is translated by `xlate`. Guest page-walk
    /// caches skip upper levels; a skipped level costs neither its read nor its
    /// translation (the cached entry holds the next table's final address, as in
    /// AMD's nested page-walk cache: Bhargava et al., ASPLOS'08).
    #[inline(always)]
    pub fn guest_walk(
        &mut self,
        env: &Env,
        va: u64,
        w: &Walk,
        mut xlate: impl FnMut(&mut Core, &Env, u64) -> Option<Cost>,
    ) -> Option<Cost> {
        let leaf = w.size.leaf_level();
        let start = self.pwc.start_level(va, env.guest_levels, leaf);
        let (mut refs, mut bb) = (0u32, 0u32);
        // The table reads not skipped (each costs its read), then the data address: one
        // call site, so that `xlate` is inlined.
        let reads = w.entries().iter().filter(|e| e.level <= start);
        for (gpa, read) in reads.map(|e| (e.gpa, 1)).chain([(w.pa, 0)]) {
            let (r, b) = xlate(self, env, gpa)?;
            refs += r + read;
            bb += b;
        }
        Some((refs, bb))
    }
}

/// `min(guest page, host page)`: the largest TLB entry a 2D translation can fill
/// (a large guest page over small host pages is splintered).
#[inline]
pub fn splinter(guest: PageSize, host: Option<PageSize>) -> PageSize {
    match host {
        Some(h) if h < guest => h,
        _ => guest,
    }
}

/// Host references of an enlarged-TDP table: `levels` levels splitting the host
/// address bits evenly; a walk stops at the lowest level whose entry can map the host
/// page (an entry at shift s maps 2^s bytes).
#[inline]
pub fn enlarged_refs(host_levels: u8, enlarged: u8, host_page: PageSize) -> u32 {
    let (shifts, n) = enlarged_shifts(host_levels, enlarged);
    shifts[..n]
        .iter()
        .position(|&s| s <= host_page.shift())
        .map_or(n, |i| i + 1) as u32
}

/// Coverage shifts of an enlarged table's levels, top first (level i maps 2^shift
/// bytes per entry: 12 + per·(L-1-i) with per = ⌈9m/L⌉ bits per level), and how many.
#[inline]
pub fn enlarged_shifts(host_levels: u8, enlarged: u8) -> ([u32; 4], usize) {
    let bits = 9 * host_levels as u32;
    let l = (enlarged as u32).clamp(1, 4);
    let per = bits.div_ceil(l);
    let mut s = [12u32; 4];
    for (i, v) in s.iter_mut().enumerate().take(l as usize) {
        *v = 12 + per.saturating_mul(l - 1 - i as u32).min(bits);
    }
    (s, l as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enlarged_table_shapes() {
        assert_eq!(enlarged_refs(4, 4, PageSize::Size4K), 4);
        assert_eq!(enlarged_refs(4, 4, PageSize::Size2M), 3);
        assert_eq!(enlarged_refs(4, 2, PageSize::Size4K), 2);
        assert_eq!(enlarged_refs(4, 2, PageSize::Size2M), 2);
        assert_eq!(enlarged_refs(4, 2, PageSize::Size1G), 1);
        assert_eq!(enlarged_refs(4, 1, PageSize::Size4K), 1);
        assert_eq!(
            splinter(PageSize::Size2M, Some(PageSize::Size4K)),
            PageSize::Size4K
        );
    }
}
