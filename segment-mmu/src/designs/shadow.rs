//! Shadow paging: the hypervisor keeps a gVA→hPA table the hardware walks in 1D.
//!
//! A miss costs a 1D walk of the shadow table (its leaf is the smaller of the guest
//! and host page sizes). Keeping it in sync costs VM exits (Adams and Agesen,
//! ASPLOS'06; Wang et al., VEE'11): the guest's page tables are write-protected, so
//! every guest page-table write exits, and the first touch of a page the shadow table
//! does not map yet is a hidden page fault that exits too. Each exit is charged
//! `Costs::vm_exit_cycles` (default documented there; the VMM supplies a measured one).

use super::core::{splinter, Core, Env};
use super::{Design, DesignKind, DesignReport, Error, Translation};
use crate::mem::PfnMap;
use crate::paging::PageSize;

/// Shadow paging.
#[derive(Debug, Clone)]
pub struct Shadow {
    pub(crate) core: Core,
    /// Pages the shadow table maps.
    shadowed: PageSet,
    /// Pages ever shadowed: a fill of one of these (after an invalidation or a rebuild)
    /// is steady-state cost, the first fill of any other is cold-start cost.
    ever: PageSet,
}

/// A set of pages as bitmaps per 1 GiB region: a shadow table of a large heap holds
/// millions of entries, and a bit per page (32 KiB per GiB of 4 KiB pages) is both far
/// smaller and far faster than a hash set of page numbers.
#[derive(Debug, Clone, Default)]
pub struct PageSet {
    regions: PfnMap<Box<[u64]>>,
}

impl PageSet {
    #[inline]
    fn slot(va: u64, size: PageSize, asid: u16) -> (u64, usize) {
        // Region key: 1 GiB number, size and asid in disjoint fields (57-bit VAs leave
        // 27 bits of region number).
        let key =
            ((va & ((1 << 57) - 1)) >> 30) | ((size.index() as u64) << 28) | ((asid as u64) << 32);
        let bit = ((va >> size.shift()) & ((1 << (30 - size.shift())) - 1)) as usize;
        (key, bit)
    }

    /// Inserts; true when the page was not there.
    #[inline]
    pub fn insert(&mut self, va: u64, size: PageSize, asid: u16) -> bool {
        let (key, bit) = Self::slot(va, size, asid);
        let words = (1usize << (30 - size.shift())).div_ceil(64);
        let r = self
            .regions
            .entry(key)
            .or_insert_with(|| vec![0u64; words].into_boxed_slice());
        let (w, m) = (bit / 64, 1u64 << (bit % 64));
        let new = r[w] & m == 0;
        r[w] |= m;
        new
    }

    /// Removes the page if present.
    pub fn remove(&mut self, va: u64, size: PageSize, asid: u16) {
        let (key, bit) = Self::slot(va, size, asid);
        if let Some(r) = self.regions.get_mut(&key) {
            r[bit / 64] &= !(1u64 << (bit % 64));
        }
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        self.regions.clear();
    }
}

impl Shadow {
    /// A cold shadow MMU (empty shadow table).
    pub fn new(env: &Env) -> Result<Self, Error> {
        Ok(Self {
            core: Core::new(&env.cfg.tlb)?,
            shadowed: PageSet::default(),
            ever: PageSet::default(),
        })
    }

    /// Records that `va` (at `size`) was already translated in another mode (dynamic
    /// switching): its first shadow fill is then rebuild cost, not cold start.
    #[inline]
    pub(crate) fn mark_seen(&mut self, va: u64, size: PageSize, asid: u16) {
        self.ever.insert(va, size, asid);
    }

    /// Drops the whole shadow table (on a switch away from shadow mode).
    pub(crate) fn drop_shadow(&mut self) {
        self.shadowed.clear();
        self.core.flush();
    }
}

impl Design for Shadow {
    fn kind(&self) -> DesignKind {
        DesignKind::Shadow
    }

    #[inline]
    fn access(&mut self, env: &Env, va: u64, _write: bool, t: &Translation) {
        let Some(w) = self.core.miss_walk(env, va, t) else {
            return;
        };
        let Some(hp) = env.host.page_size(w.pa) else {
            self.core.c.faults += 1;
            return;
        };
        let size = splinter(w.size, Some(hp));
        if self.shadowed.insert(va, size, env.asid) {
            self.core.c.vm_exits += 1; // hidden fault: the VMM fills the shadow entry
            if self.ever.insert(va, size, env.asid) {
                self.core.c.fills += 1;
            }
        }
        let leaf = size.leaf_level();
        let start = self.core.pwc.start_level(va, env.guest_levels, leaf);
        self.core.c.walk((start - leaf + 1) as u32, 0);
        self.core.tlb.fill(va, size, env.asid);
    }

    fn pt_write(&mut self, env: &Env, va: u64) {
        self.core.c.pt_writes += 1;
        self.core.c.vm_exits += 1; // write-protected guest table
        for s in PageSize::ALL {
            self.shadowed.remove(va, s, env.asid);
        }
        self.core.tlb.invalidate(va, env.asid);
    }

    fn report(&self, env: &Env) -> DesignReport {
        self.core.c.report(self.kind(), &env.cfg.tlb.costs)
    }

    fn fill_exits(&self) -> u64 {
        self.core.c.fills
    }
}
