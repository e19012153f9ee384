//! Nested paging (Intel EPT / AMD NPT) and its enlarged-TDP variant.
//!
//! Every guest-physical address produced by the guest walk, table pointers included,
//! goes through a host walk: (n+1)(m+1)-1 references without caches (Bhargava et al.,
//! ASPLOS'08). The enlarged variant keeps the guest dimension and replaces the m-level
//! host radix table by one with fewer, larger levels (e.g. 2 levels of 2^18 entries,
//! after the flattened page tables of Park et al., ASPLOS'22, "Every walk's a hit"):
//! (n+1)(L+1)-1 references.

use super::core::{splinter, Core, Env};
use super::{Design, DesignKind, DesignReport, Error, Translation};

/// EPT/NPT 2D walk.
#[derive(Debug, Clone)]
pub struct Nested {
    pub(crate) core: Core,
}

impl Nested {
    /// A cold nested MMU.
    pub fn new(env: &Env) -> Result<Self, Error> {
        Ok(Self {
            core: Core::new(&env.cfg.tlb)?,
        })
    }

    /// The 2D translation of an L1/L2 miss (shared with the designs that fall back to
    /// it). Returns false when the translation faulted (gPA outside RAM).
    #[inline]
    pub(crate) fn miss(core: &mut Core, env: &Env, va: u64, w: &crate::walker::Walk) -> bool {
        match core.guest_walk(env, va, w, Core::host_walk) {
            Some((refs, bb)) => {
                core.c.walk(refs, bb);
                core.tlb
                    .fill(va, splinter(w.size, env.host.page_size(w.pa)), env.asid);
                true
            }
            None => {
                core.c.faults += 1;
                false
            }
        }
    }
}

impl Design for Nested {
    fn kind(&self) -> DesignKind {
        DesignKind::Nested
    }

    #[inline]
    fn access(&mut self, env: &Env, va: u64, _write: bool, t: &Translation) {
        if let Some(w) = self.core.miss_walk(env, va, t) {
            Self::miss(&mut self.core, env, va, w);
        }
    }

    fn pt_write(&mut self, env: &Env, va: u64) {
        // Under EPT/NPT the guest owns its tables: a write is an ordinary store.
        self.core.c.pt_writes += 1;
        self.core.tlb.invalidate(va, env.asid);
    }

    fn report(&self, env: &Env) -> DesignReport {
        self.core.c.report(self.kind(), &env.cfg.tlb.costs)
    }

    fn fill_exits(&self) -> u64 {
        self.core.c.fills
    }
}

/// Nested paging with an enlarged (fewer-level) host table.
#[derive(Debug, Clone)]
pub struct EnlargedTdp {
    core: Core,
}

impl EnlargedTdp {
    /// A cold enlarged-TDP MMU.
    pub fn new(env: &Env) -> Result<Self, Error> {
        Ok(Self {
            core: Core::new(&env.cfg.tlb)?,
        })
    }
}

impl Design for EnlargedTdp {
    fn kind(&self) -> DesignKind {
        DesignKind::EnlargedTdp
    }

    #[inline]
    fn access(&mut self, env: &Env, va: u64, _write: bool, t: &Translation) {
        let Some(w) = self.core.miss_walk(env, va, t) else {
            return;
        };
        // Host dimension: nested TLB, host page-walk caches, then the L-level table
        // (the same caches as nested paging: `Core::enlarged_host_walk`).
        let host = |c: &mut Core, e: &Env, gpa: u64| c.enlarged_host_walk(e, gpa);
        match self.core.guest_walk(env, va, w, host) {
            Some((refs, bb)) => {
                self.core.c.walk(refs, bb);
                self.core
                    .tlb
                    .fill(va, splinter(w.size, env.host.page_size(w.pa)), env.asid);
            }
            None => self.core.c.faults += 1,
        }
    }

    fn pt_write(&mut self, env: &Env, va: u64) {
        self.core.c.pt_writes += 1;
        self.core.tlb.invalidate(va, env.asid);
    }

    fn report(&self, env: &Env) -> DesignReport {
        self.core.c.report(self.kind(), &env.cfg.tlb.costs)
    }

    fn fill_exits(&self) -> u64 {
        self.core.c.fills
    }
}
