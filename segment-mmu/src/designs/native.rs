//! Native (bare-metal) 1D paging: the baseline every slowdown is measured against.

use super::core::{Core, Env};
use super::{Design, DesignKind, DesignReport, Error, Translation};

/// 1D walk: one reference per guest level not skipped by the page-walk caches.
#[derive(Debug, Clone)]
pub struct Native {
    core: Core,
}

impl Native {
    /// A cold native MMU.
    pub fn new(env: &Env) -> Result<Self, Error> {
        Ok(Self {
            core: Core::new(&env.cfg.tlb)?,
        })
    }
}

impl Design for Native {
    fn kind(&self) -> DesignKind {
        DesignKind::Native
    }

    #[inline]
    fn access(&mut self, env: &Env, va: u64, _write: bool, t: &Translation) {
        let Some(w) = self.core.miss_walk(env, va, t) else {
            return;
        };
        if let Some((refs, bb)) = self.core.guest_walk(env, va, w, |_, _, _| Some((0, 0))) {
            self.core.c.walk(refs, bb);
            self.core.tlb.fill(va, w.size, env.asid);
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
