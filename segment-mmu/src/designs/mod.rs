//! MMU designs: one type per design behind [`Design`], all fed the same stream.
//!
//! The replay engine computes the *functional* guest translation of each access once
//! (the guest page walk: what the guest's tables say) and hands it to every design;
//! each design then decides, with its own TLBs and caches, which memory references and
//! base-bound computations its hardware would spend to produce that translation. So
//! designs never disagree on *what* an address maps to, only on what it costs.
//!
//! Counting conventions (the papers' table, `--tlb none`):
//! * native 1D walk: one reference per guest level (4, or 5 with LA57);
//! * nested 2D walk (Bhargava et al., ASPLOS'08): every guest-physical address the guest
//!   walk produces (n table pointers plus the final data address) is translated by an
//!   m-level host walk, so (n+1)(m+1)-1 references: 24 for 4+4, 35 for 5+5;
//! * a direct segment translates one address with one base-bound computation.

mod core;
mod dynamic;
mod native;
mod nested;
mod segments;
mod shadow;

pub use self::core::{Counters, Env, EnvError, ModelConfig, NptMode, SwitchPolicy};
pub use dynamic::{DynamicSwitch, SwitchReport};
pub use native::Native;
pub use nested::{EnlargedTdp, Nested};
pub use segments::{Compromis, DualDirect, GuestDirect, VmmDirect};
pub use shadow::Shadow;

use serde::{Deserialize, Serialize};

use crate::bloom::EscapeReport;
use crate::walker::{Fault, Walk};

/// The functional guest translation of one access (computed once, shared).
pub type Translation = Result<Walk, Fault>;

/// Errors of design selection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Unknown design name.
    #[error("unknown design {0:?} (known: native, nested, shadow, compromis, dual-direct, vmm-direct, guest-direct, enlarged-tdp, dynamic-switch, or all)")]
    Unknown(String),
    /// Empty list.
    #[error("no design selected")]
    Empty,
    /// TLB geometry.
    #[error(transparent)]
    Tlb(#[from] crate::tlb::Error),
    /// Escape-filter configuration.
    #[error(transparent)]
    Bloom(#[from] crate::bloom::Error),
}

/// The designs, with their CLI/JSON names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DesignKind {
    /// Bare metal, 1D walk.
    Native,
    /// EPT/NPT 2D walk.
    Nested,
    /// Shadow paging.
    Shadow,
    /// Compromis (Teabe et al., VEE'21).
    Compromis,
    /// Gandhi et al. dual direct.
    DualDirect,
    /// Gandhi et al. VMM direct.
    VmmDirect,
    /// Gandhi et al. guest direct.
    GuestDirect,
    /// Nested with fewer, larger host levels.
    EnlargedTdp,
    /// Shadow/nested switching.
    DynamicSwitch,
}

impl DesignKind {
    /// Every design, in report order.
    pub const ALL: [DesignKind; 9] = [
        DesignKind::Native,
        DesignKind::Nested,
        DesignKind::Shadow,
        DesignKind::Compromis,
        DesignKind::DualDirect,
        DesignKind::VmmDirect,
        DesignKind::GuestDirect,
        DesignKind::EnlargedTdp,
        DesignKind::DynamicSwitch,
    ];

    /// CLI/JSON name.
    pub const fn name(self) -> &'static str {
        match self {
            DesignKind::Native => "native",
            DesignKind::Nested => "nested",
            DesignKind::Shadow => "shadow",
            DesignKind::Compromis => "compromis",
            DesignKind::DualDirect => "dual-direct",
            DesignKind::VmmDirect => "vmm-direct",
            DesignKind::GuestDirect => "guest-direct",
            DesignKind::EnlargedTdp => "enlarged-tdp",
            DesignKind::DynamicSwitch => "dynamic-switch",
        }
    }

    /// Parses one name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| Error::Unknown(s.to_string()))
    }

    /// Parses `all` or a comma-separated list (duplicates dropped, order kept).
    pub fn parse_list(s: &str) -> Result<Vec<Self>, Error> {
        if s.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut v = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let k = Self::parse(part)?;
            if !v.contains(&k) {
                v.push(k);
            }
        }
        if v.is_empty() {
            return Err(Error::Empty);
        }
        Ok(v)
    }

    /// Builds the design for `env`.
    pub fn build(self, env: &Env) -> Result<Box<dyn Design>, Error> {
        Ok(match self {
            DesignKind::Native => Box::new(Native::new(env)?),
            DesignKind::Nested => Box::new(Nested::new(env)?),
            DesignKind::Shadow => Box::new(Shadow::new(env)?),
            DesignKind::Compromis => Box::new(Compromis::new(env)?),
            DesignKind::DualDirect => Box::new(DualDirect::new(env)?),
            DesignKind::VmmDirect => Box::new(VmmDirect::new(env)?),
            DesignKind::GuestDirect => Box::new(GuestDirect::new(env)?),
            DesignKind::EnlargedTdp => Box::new(EnlargedTdp::new(env)?),
            DesignKind::DynamicSwitch => Box::new(DynamicSwitch::new(env)?),
        })
    }
}

/// One MMU design. Implementations keep their own TLBs and counters; `access` must not
/// allocate (it is the replay hot path).
pub trait Design: Send {
    /// Which design this is.
    fn kind(&self) -> DesignKind;
    /// One access to `va`; `t` is its functional guest translation.
    fn access(&mut self, env: &Env, va: u64, write: bool, t: &Translation);
    /// The guest wrote the page-table entry mapping `va` (map or unmap).
    fn pt_write(&mut self, env: &Env, va: u64);
    /// What it cost so far.
    fn report(&self, env: &Env) -> DesignReport;
    /// Cold-start fill exits so far (included in the report's `vm_exits`): first shadow
    /// fills and first lazy EPT/NPT fills.
    fn fill_exits(&self) -> u64;
}

/// What one design cost over a replay (serialised into the JSON output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesignReport {
    /// Design name (`native`, `nested`, ...).
    pub name: String,
    /// Accesses replayed.
    pub accesses: u64,
    /// L1 dTLB hits.
    pub l1_hits: u64,
    /// L2 STLB hits.
    pub l2_hits: u64,
    /// Translations not served by a TLB (walks, including 0-reference segment
    /// translations).
    pub walks: u64,
    /// Memory references spent on walks.
    pub refs: u64,
    /// `refs / walks`.
    pub refs_per_walk: f64,
    /// Walks by reference count: `refs_histogram[r]` walks read `r` entries.
    pub refs_histogram: Vec<u64>,
    /// Base-bound (segment) computations.
    pub base_bound_ops: u64,
    /// `base_bound_ops / walks`.
    pub base_bound_per_walk: f64,
    /// VM exits charged.
    pub vm_exits: u64,
    /// Guest page-table writes seen.
    pub pt_writes: u64,
    /// Accesses whose translation faulted (unmapped, outside RAM): not costed.
    pub faults: u64,
    /// Estimated translation cycles.
    pub cycles: f64,
    /// `cycles / accesses`.
    pub cycles_per_access: f64,
    /// Escape-filter statistics (segment designs with escaped pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escape_filter: Option<EscapeReport>,
    /// Mode switching (dynamic-switch only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switching: Option<SwitchReport>,
}

impl DesignReport {
    /// What happened after `before` (an earlier report of the same design): counts,
    /// histogram and cycles subtracted, ratios recomputed. Escape-filter and switching
    /// statistics are `self`'s (cumulative).
    pub fn since(&self, before: &DesignReport) -> DesignReport {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut hist: Vec<u64> = self
            .refs_histogram
            .iter()
            .enumerate()
            .map(|(i, &h)| d(h, before.refs_histogram.get(i).copied().unwrap_or(0)))
            .collect();
        while hist.last() == Some(&0) {
            hist.pop();
        }
        let (accesses, walks, refs, bb) = (
            d(self.accesses, before.accesses),
            d(self.walks, before.walks),
            d(self.refs, before.refs),
            d(self.base_bound_ops, before.base_bound_ops),
        );
        let cycles = (self.cycles - before.cycles).max(0.0);
        DesignReport {
            name: self.name.clone(),
            accesses,
            l1_hits: d(self.l1_hits, before.l1_hits),
            l2_hits: d(self.l2_hits, before.l2_hits),
            walks,
            refs,
            refs_per_walk: per(refs, walks),
            refs_histogram: hist,
            base_bound_ops: bb,
            base_bound_per_walk: per(bb, walks),
            vm_exits: d(self.vm_exits, before.vm_exits),
            pt_writes: d(self.pt_writes, before.pt_writes),
            faults: d(self.faults, before.faults),
            cycles,
            cycles_per_access: if accesses == 0 {
                0.0
            } else {
                cycles / accesses as f64
            },
            escape_filter: self.escape_filter,
            switching: self.switching,
        }
    }
}
