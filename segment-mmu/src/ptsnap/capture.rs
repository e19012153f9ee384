//! Building a ptsnap by walking a live guest's memory.
//!
//! The VMM only has to provide a [`GuestPhysMemory`] reader over guest RAM plus the CPU
//! state and RAM layout; this follows the tables from every CR3 and copies each table
//! page reachable, so the VMM never needs to understand page tables itself.

use super::{traverse_tables, AddressSpace, Error, Ptsnap, RamRange};
use crate::mem::{GuestPhysMemory, PageStore};
use crate::paging::{PagingMode, CR4_LA57, CR4_PAE, EFER_LME, EFER_NXE};

/// The control-register state a ptsnap records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuState {
    /// 4- or 5-level paging.
    pub mode: PagingMode,
    /// CR4 (LA57 must agree with `mode`).
    pub cr4: u64,
    /// EFER (NXE is used by the walker).
    pub efer: u64,
}

impl CpuState {
    /// Typical long-mode state for `mode`: PAE (+LA57), LME, LMA, NXE.
    pub fn long_mode(mode: PagingMode) -> Self {
        let la57 = if mode == PagingMode::Level5 {
            CR4_LA57
        } else {
            0
        };
        Self {
            mode,
            cr4: CR4_PAE | la57,
            efer: EFER_LME | (1 << 10) | EFER_NXE,
        }
    }
}

/// Table pages copied out of a guest, not yet checked: what a VMM holds between the copy
/// (done with the guest paused, so it does nothing else) and [`Capture::finish`] (after
/// the guest resumed). The walk already refused cycles, level conflicts and tables
/// outside RAM; `finish` runs the full [`Ptsnap::validate`] and builds the fast index,
/// so a [`Ptsnap`] in hand is still always consistent.
#[derive(Debug, Clone)]
pub struct Capture {
    snap: Ptsnap,
}

impl Capture {
    /// Page-table pages copied.
    pub fn table_pages(&self) -> usize {
        self.snap.pages.len()
    }

    /// The RAM ranges, for the caller to add what it learns after the copy (host page
    /// size, host-physical runs); `finish` checks them.
    pub fn ram_mut(&mut self) -> &mut [RamRange] {
        &mut self.snap.ram
    }

    /// Validates and indexes the copy.
    pub fn finish(self) -> Result<Ptsnap, Error> {
        let mut snap = self.snap;
        snap.validate()?;
        snap.optimize();
        Ok(snap)
    }
}

impl Ptsnap {
    /// Captures the tables reachable from each address space's CR3 out of `mem`.
    ///
    /// `ram` must list guest RAM (sorted, non-overlapping); a table outside it, a cycle or
    /// an unreadable table is an error.
    pub fn capture<M: GuestPhysMemory + ?Sized>(
        mem: &M,
        spaces: Vec<AddressSpace>,
        cpu: CpuState,
        ram: Vec<RamRange>,
    ) -> Result<Ptsnap, Error> {
        Self::capture_tables(mem, spaces, cpu, ram, PageStore::new())?.finish()
    }

    /// The copying half of [`Ptsnap::capture`]: follows the tables and copies every
    /// table page reachable into `store` (empty; see [`PageStore::with_buffer`]), and
    /// nothing else, so that a VMM keeps its guest paused only for this.
    pub fn capture_tables<M: GuestPhysMemory + ?Sized>(
        mem: &M,
        spaces: Vec<AddressSpace>,
        cpu: CpuState,
        mut ram: Vec<RamRange>,
        store: PageStore,
    ) -> Result<Capture, Error> {
        ram.sort_by_key(|r| r.gpa_start);
        let mut snap = Ptsnap {
            mode: cpu.mode,
            cr4: cpu.cr4,
            efer: cpu.efer,
            spaces,
            ram,
            pages: PageStore::new(),
        };
        let roots: Vec<u64> = snap.spaces.iter().map(|s| s.cr3).collect();
        let mut pages = store;
        traverse_tables(cpu.mode, &roots, |gpa| {
            if snap.ram_range_of(gpa).is_none() {
                return Err(Error::TableOutsideRam(gpa));
            }
            let mut page = [0u64; 512];
            mem.read_page(gpa, &mut page)?;
            pages.insert(gpa, page);
            Ok(page)
        })?;
        snap.pages = pages;
        Ok(Capture { snap })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{PTE_P, PTE_RW};

    fn ram() -> Vec<RamRange> {
        vec![RamRange {
            gpa_start: 0,
            len: 1 << 30,
            host_va: 0x7f00_0000_0000,
            host_page_size: 4096,
            runs: None,
        }]
    }

    #[test]
    fn capture_copies_reachable_tables_only() {
        let mut mem = PageStore::new();
        let mut p = [0u64; 512];
        p[0] = 0x2000 | PTE_P | PTE_RW;
        mem.insert(0x1000, p);
        let mut p = [0u64; 512];
        p[3] = 0x3000 | PTE_P | PTE_RW; // PDPT -> PD
        mem.insert(0x2000, p);
        mem.insert(0x3000, [0u64; 512]);
        mem.insert(0x9000, [7u64; 512]); // unreachable
        let spaces = vec![AddressSpace {
            cr3: 0x1000,
            label: "p".into(),
        }];
        let s =
            Ptsnap::capture(&mem, spaces, CpuState::long_mode(PagingMode::Level4), ram()).unwrap();
        assert_eq!(s.pages.len(), 3);
        assert!(!s.pages.contains(0x9000));
        let back = Ptsnap::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        // The two halves give the same ptsnap, into a caller's buffer too.
        let spaces = s.spaces.clone();
        let store = PageStore::with_buffer(Vec::with_capacity(8));
        let c = Ptsnap::capture_tables(
            &mem,
            spaces,
            CpuState::long_mode(PagingMode::Level4),
            ram(),
            store,
        )
        .unwrap();
        assert_eq!(c.table_pages(), 3);
        let mut bad = c.clone();
        assert_eq!(c.finish().unwrap(), s);
        // What the caller adds after the copy is checked by `finish`.
        bad.ram_mut()[0].host_page_size = 3;
        assert!(matches!(
            bad.finish(),
            Err(Error::BadRange { index: 0, .. })
        ));
    }

    #[test]
    fn capture_rejects_cycles_and_tables_outside_ram() {
        let mut mem = PageStore::new();
        let mut p = [0u64; 512];
        p[0] = 0x2000 | PTE_P;
        mem.insert(0x1000, p);
        let mut p = [0u64; 512];
        p[0] = 0x1000 | PTE_P; // PDPT points back at the PML4
        mem.insert(0x2000, p);
        let spaces = vec![AddressSpace {
            cr3: 0x1000,
            label: "p".into(),
        }];
        let cpu = CpuState::long_mode(PagingMode::Level4);
        assert_eq!(
            Ptsnap::capture(&mem, spaces.clone(), cpu, ram()),
            Err(Error::Cycle(0x1000))
        );
        let mut p = [0u64; 512];
        p[0] = 0x8000_0000 | PTE_P; // beyond 1 GiB of RAM
        mem.insert(0x2000, p);
        assert_eq!(
            Ptsnap::capture(&mem, spaces, cpu, ram()),
            Err(Error::TableOutsideRam(0x8000_0000))
        );
    }
}
