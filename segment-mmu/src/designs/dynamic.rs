//! Dynamic switching between shadow and nested paging.
//!
//! After Wang et al. (VEE'11, "Selective hardware/software memory virtualization"):
//! each interval, the policy looks at what the active mode observed (TLB-miss rate,
//! references per walk, guest page-table-write rate, pages missed for the first time)
//! and predicts the other mode's cost: a shadow walk is about 1/(m+1) of a 2D walk (one
//! reference per level instead of m+1); shadow pays one VM exit per guest page-table
//! write, one per page it has not shadowed yet (pages new to the stream), and, right
//! after a switch, one per page of the working set to rebuild the shadow table
//! (amortised over [`REBUILD_HORIZON`] intervals). It switches when the other mode is
//! predicted cheaper by more than the hysteresis. A switch costs one VM exit plus cold
//! state: TLBs and walk caches are flushed, and shadow mode starts from an empty shadow
//! table whose hidden faults are charged as they happen.

use serde::{Deserialize, Serialize};

use super::core::{Counters, Env};
use super::nested::Nested;
use super::shadow::Shadow;
use super::{Design, DesignKind, DesignReport, Error, Translation};

/// What the switching policy did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct SwitchReport {
    /// Mode switches.
    pub switches: u64,
    /// Decision intervals.
    pub intervals: u64,
    /// Intervals spent in shadow mode.
    pub shadow_intervals: u64,
    /// Intervals spent in nested mode.
    pub nested_intervals: u64,
    /// Cycles relative to fixed shadow (filled by the replay when shadow ran too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_shadow: Option<f64>,
    /// Cycles relative to fixed nested (filled by the replay when nested ran too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_nested: Option<f64>,
}

/// Intervals over which the policy amortises rebuilding a shadow table.
pub const REBUILD_HORIZON: f64 = 10.0;

/// Bits in the page-history filters (2^22 bits = 512 KiB each).
const HISTORY_BITS: u64 = 1 << 22;

/// Shadow/nested switching.
#[derive(Debug, Clone)]
pub struct DynamicSwitch {
    shadow: Shadow,
    nested: Nested,
    in_shadow: bool,
    /// Counters of the active mode at the start of the interval.
    mark: Counters,
    in_interval: u64,
    switch_exits: u64,
    rep: SwitchReport,
    /// Pages ever missed on (hashed bitmap): estimates pages new to the stream.
    ever: Vec<u64>,
    /// Pages missed on this interval (hashed bitmap): estimates the working set.
    window: Vec<u64>,
    new_pages: u64,
    distinct: u64,
}

#[inline]
fn test_and_set(bits: &mut [u64], page: u64) -> bool {
    let h = page.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 22);
    let (w, m) = ((h / 64) as usize, 1u64 << (h % 64));
    let was = bits[w] & m != 0;
    bits[w] |= m;
    was
}

impl DynamicSwitch {
    /// Starts in nested mode (what a VMM boots with).
    pub fn new(env: &Env) -> Result<Self, Error> {
        Ok(Self {
            shadow: Shadow::new(env)?,
            nested: Nested::new(env)?,
            in_shadow: false,
            mark: Counters::default(),
            in_interval: 0,
            switch_exits: 0,
            rep: SwitchReport::default(),
            ever: vec![0; (HISTORY_BITS / 64) as usize],
            window: vec![0; (HISTORY_BITS / 64) as usize],
            new_pages: 0,
            distinct: 0,
        })
    }

    fn active(&self) -> &Counters {
        if self.in_shadow {
            &self.shadow.core.c
        } else {
            &self.nested.core.c
        }
    }

    fn decide(&mut self, env: &Env) {
        let now = self.active().clone();
        let d = |f: fn(&Counters) -> u64| f(&now).saturating_sub(f(&self.mark)) as f64;
        let (refs, writes) = (d(|c| c.refs), d(|c| c.pt_writes));
        let c = &env.cfg.tlb.costs;
        let m1 = env.host_levels as f64 + 1.0;
        let (current, other) = if self.in_shadow {
            // Going forward, shadow pays for writes and pages new to the stream; the
            // rebuild after the switch is sunk.
            let steady = (writes + self.new_pages as f64) * c.vm_exit_cycles;
            (refs * c.ref_cycles + steady, refs * m1 * c.ref_cycles)
        } else {
            let faults = self.new_pages as f64 + self.distinct as f64 / REBUILD_HORIZON;
            (
                refs * c.ref_cycles,
                refs / m1 * c.ref_cycles + (writes + faults) * c.vm_exit_cycles,
            )
        };
        self.window.fill(0);
        self.new_pages = 0;
        self.distinct = 0;
        self.rep.intervals += 1;
        if self.in_shadow {
            self.rep.shadow_intervals += 1;
        } else {
            self.rep.nested_intervals += 1;
        }
        if other + c.vm_exit_cycles < current * (1.0 - env.cfg.switch.hysteresis) {
            self.in_shadow = !self.in_shadow;
            self.rep.switches += 1;
            self.switch_exits += 1;
            if self.in_shadow {
                self.shadow.drop_shadow();
            } else {
                self.nested.core.flush();
            }
        }
        self.mark = self.active().clone();
        self.in_interval = 0;
    }
}

impl Design for DynamicSwitch {
    fn kind(&self) -> DesignKind {
        DesignKind::DynamicSwitch
    }

    #[inline]
    fn access(&mut self, env: &Env, va: u64, write: bool, t: &Translation) {
        let before = self.active().walks;
        if self.in_shadow {
            self.shadow.access(env, va, write, t);
        } else {
            self.nested.access(env, va, write, t);
        }
        if self.active().walks != before {
            if !self.in_shadow {
                if let Ok(w) = t {
                    let size = super::core::splinter(w.size, env.host.page_size(w.pa));
                    self.shadow.mark_seen(va, size, env.asid);
                }
            }
            let page = va >> 12;
            if !test_and_set(&mut self.ever, page) {
                self.new_pages += 1;
            }
            if !test_and_set(&mut self.window, page) {
                self.distinct += 1;
            }
        }
        self.in_interval += 1;
        if self.in_interval >= env.cfg.switch.interval.max(1) {
            self.decide(env);
        }
    }

    fn pt_write(&mut self, env: &Env, va: u64) {
        if self.in_shadow {
            self.shadow.pt_write(env, va);
        } else {
            self.nested.pt_write(env, va);
        }
    }

    fn report(&self, env: &Env) -> DesignReport {
        let mut c = self.shadow.core.c.clone();
        c.add(&self.nested.core.c);
        c.vm_exits += self.switch_exits;
        let mut r = c.report(self.kind(), &env.cfg.tlb.costs);
        r.switching = Some(self.rep);
        r
    }

    fn fill_exits(&self) -> u64 {
        self.shadow.core.c.fills + self.nested.core.c.fills
    }
}
