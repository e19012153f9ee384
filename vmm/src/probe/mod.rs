//! The measurement guest and its host-native twin.
//!
//! On this project's hosts a Linux guest cannot be measured usefully (kvm_pvm emulates
//! guest ring-0 code, so every guest page fault or system call costs milliseconds), while
//! guest ring-3 code runs at native speed with its TLB misses walked in hardware over
//! KVM's shadow tables. So segvmm carries its own guest: a freestanding ring-3 image
//! ([`image`]) on page tables the VMM builds from a layout ([`layout`], [`guest`]), which
//! talks to the VMM through an MMIO page ([`device`]); the same workload code
//! (`workloads::kernels`) also runs natively on the host ([`native`]) for comparison. The
//! matrix over workloads, backings and guest page sizes is in [`bench`].

pub mod bench;
pub mod device;
pub mod guest;
pub mod image;
pub mod layout;
pub mod native;

use serde::Serialize;
use workloads::kernels::{self, Workload};

use crate::memory::Backing;
use layout::PageSize;

/// Default footprint of a measurement: 256 MiB, well beyond the TLB reach of 4 KiB pages.
pub const DEFAULT_FOOTPRINT: u64 = 256 << 20;
/// Default seed.
pub const DEFAULT_SEED: u64 = 42;

/// What to run: one workload over one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The workload.
    pub workload: Workload,
    /// Buffer bytes.
    pub footprint: u64,
    /// Seed of its random stream.
    pub seed: u64,
    /// Operations (None: the workload's default, [`WorkloadSpec::count`]).
    pub count: Option<u64>,
}

impl WorkloadSpec {
    /// The operations asked of the guest: chase and gups 2^22 (enough to swamp the TLB
    /// many times over without making the matrix slow); stream eight passes over its arrays;
    /// touch every page (a count from 1 to the pages touches only the first pages, for a
    /// guest whose tables map far more than it touches; 0 means all; the Linux guest's
    /// /init always touches all); ptchurn 2000 map/touch/unmap cycles (each costs tens of
    /// microseconds in a guest on a software-KVM host).
    pub fn count(&self) -> u64 {
        let pages = (self.footprint / kernels::TOUCH_PAGE_BYTES as u64).max(1);
        match (self.workload, self.count) {
            (Workload::Touch, Some(c)) if c > 0 => return c.min(pages),
            (Workload::Touch, _) => return pages,
            (_, Some(c)) => return c,
            _ => {}
        }
        let words = (self.footprint / 8) as usize;
        match self.workload {
            Workload::Chase | Workload::Gups => 1 << 22,
            Workload::Stream => 8 * kernels::stream_elems(words) as u64,
            Workload::Touch => pages,
            Workload::PtChurn => 2000,
        }
    }
}

/// One measured run, guest or native: the unit of every report, table and plot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// Workload name.
    pub workload: String,
    /// "guest" or "native".
    pub environment: String,
    /// Host backing of the buffer (guest: of guest RAM).
    pub backing: Backing,
    /// Guest page size of the buffer (None for native).
    pub guest_pages: Option<PageSize>,
    /// Buffer bytes.
    pub footprint: u64,
    /// Seed.
    pub seed: u64,
    /// Virtual address of the buffer where the workload ran (the model replays the same
    /// stream at this address).
    pub data_va: u64,
    /// Operations performed in the timed part.
    pub ops: u64,
    /// Timed part, nanoseconds, from the TSC at KVM's TSC frequency.
    pub elapsed_ns: f64,
    /// The same interval by the VMM's (or the process's) own clock; in a guest it also
    /// covers the two signal exits.
    pub wall_ns: f64,
    /// TSC frequency used, kHz.
    pub tsc_khz: Option<u32>,
    /// `elapsed_ns / ops`.
    pub ns_per_op: f64,
    /// The workload's checksum (equal between guest and native for the same inputs).
    pub checksum: u64,
    /// Set-up before the timed part (init, first touch), nanoseconds.
    pub init_ns: f64,
    /// KVM exits during the timed part (guest only).
    pub kvm_exits: Option<u64>,
    /// Page faults KVM fixed during the timed part: shadow page faults (guest only).
    pub shadow_page_faults: Option<u64>,
    /// Host-physically contiguous runs backing the buffer's memory (guest: all guest RAM).
    pub contiguous_runs: Option<u64>,
}

impl Measurement {
    /// Nanoseconds per operation from a TSC interval, or from the wall clock when the TSC
    /// frequency is unknown.
    fn timing(ticks: u64, wall_ns: f64, tsc_khz: Option<u32>, ops: u64) -> (f64, f64) {
        let elapsed = match tsc_khz {
            Some(k) if k > 0 => ticks as f64 * 1e6 / f64::from(k),
            _ => wall_ns,
        };
        (elapsed, if ops == 0 { 0.0 } else { elapsed / ops as f64 })
    }
}

impl std::fmt::Display for Measurement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (backing {}, guest pages {}, footprint {} MiB, seed {}): {:.2} ns/op over {} ops ({:.1} ms by TSC, {:.1} ms by the {} clock), checksum {:#x}",
            self.environment,
            self.workload,
            self.backing,
            self.guest_pages.map_or("-", PageSize::label),
            self.footprint >> 20,
            self.seed,
            self.ns_per_op,
            self.ops,
            self.elapsed_ns / 1e6,
            self.wall_ns / 1e6,
            if self.environment == "guest" { "VMM's" } else { "host" },
            self.checksum
        )?;
        if let (Some(e), Some(p)) = (self.kvm_exits, self.shadow_page_faults) {
            write!(f, "; timed part: {e} KVM exits, {p} shadow page faults")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_count_is_pages_capped_and_zero_means_all() {
        let spec = |count| WorkloadSpec {
            workload: Workload::Touch,
            footprint: 1 << 30,
            seed: 1,
            count,
        };
        let all = (1u64 << 30) / kernels::TOUCH_PAGE_BYTES as u64;
        assert_eq!(spec(None).count(), all);
        assert_eq!(spec(Some(0)).count(), all);
        assert_eq!(spec(Some(1)).count(), 1);
        assert_eq!(spec(Some(u64::MAX)).count(), all);
        let chase = WorkloadSpec {
            workload: Workload::Chase,
            ..spec(Some(7))
        };
        assert_eq!(chase.count(), 7);
    }
}
