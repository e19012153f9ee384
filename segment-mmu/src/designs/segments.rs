//! Segment-based designs: Compromis and the three direct-segment designs of Gandhi et
//! al.
//!
//! * **Compromis** (Teabe et al., VEE'21, "(No) Compromis: Paging Virtualization Is Not
//!   a Fatality"): the guest keeps paging (1D walk) while the VMM maps all VM memory
//!   with one direct segment (base, limit, offset), so every guest-physical address the
//!   walk produces, page-table pointers included, is translated by base-bound
//!   arithmetic. With k host-contiguous runs, a small k-entry segment table (searched
//!   in parallel: one base-bound computation per address). An address outside every
//!   segment falls back to the nested host walk.
//! * **VMM direct** (Gandhi et al., MICRO'14, "Efficient Memory Virtualization"): the
//!   same with exactly one VMM segment: n references, n+1 base-bound computations.
//! * **Guest direct**: a guest direct segment (Basu et al., ISCA'13) maps the primary
//!   region gVA→gPA with one base-bound; the gPA then takes the host walk (m references).
//! * **Dual direct**: both segments, composed into one base-bound computation, 0
//!   references; outside the guest segment it degrades to VMM direct, and a gPA outside
//!   the VMM segment (or escaped) to guest direct.
//!
//! The escape filter (Gandhi et al., MICRO'14) excludes listed guest-physical pages from
//! the VMM segment; its hits take the paging path.

use super::core::{splinter, Core, Cost, Env};
use super::nested::Nested;
use super::{Design, DesignKind, DesignReport, Error, Translation};
use crate::bloom::EscapeFilter;
use crate::host::SegmentTable;
use crate::walker::Walk;

/// gPA→hPA through a segment table with an escape filter, falling back to the host walk.
#[derive(Debug, Clone)]
struct VmmSegments {
    table: SegmentTable,
    filter: Option<EscapeFilter>,
}

impl VmmSegments {
    fn new(env: &Env, k: usize) -> Result<Self, Error> {
        Ok(Self {
            table: SegmentTable::new(env.host.largest_segments(k)),
            filter: env.escape_filter()?,
        })
    }

    /// True when `gpa` is translated by a segment (not escaped).
    #[inline]
    fn covers(&mut self, gpa: u64) -> bool {
        self.table.find(gpa).is_some() && !self.filter.as_mut().is_some_and(|f| f.escapes(gpa))
    }

    /// Costs one guest walk whose guest-physical addresses go through the segments.
    /// Returns the cost and whether the data address was segment-translated.
    #[inline]
    fn walk(&mut self, core: &mut Core, env: &Env, va: u64, w: &Walk) -> Option<(Cost, bool)> {
        let mut data_seg = false;
        let cost = core.guest_walk(env, va, w, |c, e, gpa| {
            if self.covers(gpa) {
                data_seg = true;
                Some((0, 1))
            } else {
                data_seg = false;
                c.host_walk(e, gpa)
            }
        })?;
        Some((cost, data_seg))
    }

    fn report(&self, mut r: DesignReport) -> DesignReport {
        r.escape_filter = self.filter.as_ref().map(|f| f.report());
        r
    }
}

/// The miss path of Compromis and VMM direct.
#[inline]
fn segment_miss(core: &mut Core, segs: &mut VmmSegments, env: &Env, va: u64, w: &Walk) {
    match segs.walk(core, env, va, w) {
        Some(((refs, bb), data_seg)) => {
            core.c.walk(refs, bb);
            let size = if data_seg {
                w.size
            } else {
                splinter(w.size, env.host.page_size(w.pa))
            };
            core.tlb.fill(va, size, env.asid);
        }
        None => core.c.faults += 1,
    }
}

macro_rules! common_impl {
    () => {
        fn fill_exits(&self) -> u64 {
            self.core.c.fills
        }
        fn pt_write(&mut self, env: &Env, va: u64) {
            // The guest owns its tables; segments are unaffected by guest remaps.
            self.core.c.pt_writes += 1;
            self.core.tlb.invalidate(va, env.asid);
        }
    };
}

/// Compromis: guest paging over a k-segment VM.
#[derive(Debug, Clone)]
pub struct Compromis {
    core: Core,
    segs: VmmSegments,
}

impl Compromis {
    /// A cold Compromis MMU with `cfg.compromis_segments` segments.
    pub fn new(env: &Env) -> Result<Self, Error> {
        Ok(Self {
            core: Core::new(&env.cfg.tlb)?,
            segs: VmmSegments::new(env, env.cfg.compromis_segments.max(1))?,
        })
    }
}

impl Design for Compromis {
    fn kind(&self) -> DesignKind {
        DesignKind::Compromis
    }
    #[inline]
    fn access(&mut self, env: &Env, va: u64, _write: bool, t: &Translation) {
        if let Some(w) = self.core.miss_walk(env, va, t) {
            segment_miss(&mut self.core, &mut self.segs, env, va, w);
        }
    }
    common_impl!();
    fn report(&self, env: &Env) -> DesignReport {
        self.segs
            .report(self.core.c.report(self.kind(), &env.cfg.tlb.costs))
    }
}

/// VMM direct: guest paging, one VMM segment.
#[derive(Debug, Clone)]
pub struct VmmDirect {
    core: Core,
    segs: VmmSegments,
}

impl VmmDirect {
    /// A cold VMM-direct MMU.
    pub fn new(env: &Env) -> Result<Self, Error> {
        Ok(Self {
            core: Core::new(&env.cfg.tlb)?,
            segs: VmmSegments::new(env, 1)?,
        })
    }
}

impl Design for VmmDirect {
    fn kind(&self) -> DesignKind {
        DesignKind::VmmDirect
    }
    #[inline]
    fn access(&mut self, env: &Env, va: u64, _write: bool, t: &Translation) {
        if let Some(w) = self.core.miss_walk(env, va, t) {
            segment_miss(&mut self.core, &mut self.segs, env, va, w);
        }
    }
    common_impl!();
    fn report(&self, env: &Env) -> DesignReport {
        self.segs
            .report(self.core.c.report(self.kind(), &env.cfg.tlb.costs))
    }
}

/// The guest-direct translation of `va` inside the guest segment: one base-bound
/// computation to the gPA, then the host walk.
#[inline]
fn guest_direct_miss(core: &mut Core, env: &Env, va: u64, w: &Walk) {
    match core.host_walk(env, w.pa) {
        Some((refs, _)) => {
            core.c.walk(refs, 1);
            if let Some(hp) = env.host.page_size(w.pa) {
                core.tlb.fill(va, hp, env.asid);
            }
        }
        None => core.c.faults += 1,
    }
}

/// Guest direct: guest segment, nested host walk.
#[derive(Debug, Clone)]
pub struct GuestDirect {
    core: Core,
}

impl GuestDirect {
    /// A cold guest-direct MMU.
    pub fn new(env: &Env) -> Result<Self, Error> {
        Ok(Self {
            core: Core::new(&env.cfg.tlb)?,
        })
    }
}

impl Design for GuestDirect {
    fn kind(&self) -> DesignKind {
        DesignKind::GuestDirect
    }
    #[inline]
    fn access(&mut self, env: &Env, va: u64, _write: bool, t: &Translation) {
        let Some(w) = self.core.miss_walk(env, va, t) else {
            return;
        };
        if env.guest_segment.is_some_and(|g| g.contains(va)) {
            guest_direct_miss(&mut self.core, env, va, w);
        } else {
            Nested::miss(&mut self.core, env, va, w);
        }
    }
    common_impl!();
    fn report(&self, env: &Env) -> DesignReport {
        self.core.c.report(self.kind(), &env.cfg.tlb.costs)
    }
}

/// Dual direct: guest and VMM segments composed.
#[derive(Debug, Clone)]
pub struct DualDirect {
    core: Core,
    segs: VmmSegments,
}

impl DualDirect {
    /// A cold dual-direct MMU.
    pub fn new(env: &Env) -> Result<Self, Error> {
        Ok(Self {
            core: Core::new(&env.cfg.tlb)?,
            segs: VmmSegments::new(env, 1)?,
        })
    }
}

impl Design for DualDirect {
    fn kind(&self) -> DesignKind {
        DesignKind::DualDirect
    }
    #[inline]
    fn access(&mut self, env: &Env, va: u64, _write: bool, t: &Translation) {
        // The segment check runs beside the L1 lookup; segment translations are not
        // inserted into the TLBs (Basu et al., ISCA'13), so they never evict entries.
        let Some(w) = self.core.miss_walk(env, va, t) else {
            return;
        };
        if env.guest_segment.is_some_and(|g| g.contains(va)) {
            if self.segs.covers(w.pa) {
                self.core.c.walk(0, 1);
            } else {
                guest_direct_miss(&mut self.core, env, va, w);
            }
        } else {
            segment_miss(&mut self.core, &mut self.segs, env, va, w);
        }
    }
    common_impl!();
    fn report(&self, env: &Env) -> DesignReport {
        self.segs
            .report(self.core.c.report(self.kind(), &env.cfg.tlb.costs))
    }
}
