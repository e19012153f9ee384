//! The x86-64 page walker: 4- and 5-level paging over any [`GuestPhysMemory`].
//!
//! A walk returns the translation *and* the ordered list of entries it read, because the
//! cost models count references: which entries a hardware walker reads, in what order,
//! decides what page-walk caches can skip and which guest-physical addresses a nested or
//! segment MMU must translate. The walk is allocation free (the path is a fixed array)
//! so it can sit on the replay hot path.

use crate::mem::{GuestPhysMemory, MemError};
use crate::paging::{
    level_index, Flags, PageSize, PagingMode, PTE_A, PTE_ADDR_MASK, PTE_D, PTE_G, PTE_NX, PTE_P,
    PTE_PS, PTE_RW, PTE_US,
};

/// Why a walk did not produce a translation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The virtual address is not canonical for the paging mode.
    #[error("virtual address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// An entry on the path has P=0.
    #[error("not present at level {level} (entry at {entry_gpa:#x})")]
    NotPresent {
        /// Level of the entry (1 = PT ... 5 = PML5).
        level: u8,
        /// Guest-physical address of the entry.
        entry_gpa: u64,
    },
    /// An entry has a reserved bit set (address bits above MAXPHYADDR, PS where not
    /// allowed, misaligned large-page frame, NX without EFER.NXE).
    #[error("reserved bit set at level {level} (entry {entry:#x})")]
    Reserved {
        /// Level of the entry.
        level: u8,
        /// The entry's value.
        entry: u64,
    },
    /// The access is not permitted by the combined U/S, R/W or NX bits.
    #[error("protection fault ({0})")]
    Protection(&'static str),
    /// A table could not be read.
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// What the walker needs to know about the CPU state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkConfig {
    /// 4- or 5-level paging.
    pub mode: PagingMode,
    /// Physical-address width (entries with address bits above it are reserved).
    pub max_phys_bits: u8,
    /// EFER.NXE: when clear, bit 63 of an entry is reserved.
    pub nxe: bool,
}

impl WalkConfig {
    /// 52-bit physical addresses, NX enabled.
    pub const fn new(mode: PagingMode) -> Self {
        Self {
            mode,
            max_phys_bits: 52,
            nxe: true,
        }
    }
}

/// The kind of access being translated (for permission checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// A write.
    pub write: bool,
    /// From user mode (CPL 3).
    pub user: bool,
    /// An instruction fetch.
    pub exec: bool,
}

/// One page-table entry the walk read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryRead {
    /// Level of the table (1 = PT ... 5 = PML5).
    pub level: u8,
    /// Guest-physical address of the entry.
    pub gpa: u64,
    /// Its value.
    pub value: u64,
}

/// A successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// Entries read, top level first.
    pub path: [EntryRead; 5],
    /// How many of `path` are valid.
    pub len: u8,
    /// The translated (guest-)physical address.
    pub pa: u64,
    /// Size of the leaf page.
    pub size: PageSize,
    /// Combined flags.
    pub flags: Flags,
}

impl Walk {
    /// The entries read, top level first.
    #[inline]
    pub fn entries(&self) -> &[EntryRead] {
        &self.path[..self.len as usize]
    }
}

/// Walks the tables rooted at `cr3` for `va`, checking `access` permissions.
#[inline(always)]
pub fn walk<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    cfg: &WalkConfig,
    cr3: u64,
    va: u64,
    access: Access,
) -> Result<Walk, Fault> {
    if !cfg.mode.is_canonical(va) {
        return Err(Fault::NonCanonical(va));
    }
    let addr_mask = PTE_ADDR_MASK & ((1u64 << cfg.max_phys_bits) - 1);
    // Bits 51:MAXPHYADDR of any entry are reserved.
    let rsvd_high = PTE_ADDR_MASK & !addr_mask;
    let mut path = [EntryRead::default(); 5];
    let mut table = cr3 & addr_mask;
    let (mut rw, mut us, mut nx) = (true, true, false);
    let mut level = cfg.mode.levels();
    let mut n = 0usize;
    loop {
        let entry_gpa = table + 8 * level_index(va, level);
        let e = mem.read_u64(entry_gpa)?;
        path[n] = EntryRead {
            level,
            gpa: entry_gpa,
            value: e,
        };
        n += 1;
        if e & PTE_P == 0 {
            return Err(Fault::NotPresent { level, entry_gpa });
        }
        if e & rsvd_high != 0 || (!cfg.nxe && e & PTE_NX != 0) {
            return Err(Fault::Reserved { level, entry: e });
        }
        rw &= e & PTE_RW != 0;
        us &= e & PTE_US != 0;
        nx |= cfg.nxe && e & PTE_NX != 0;
        let leaf_size = match level {
            1 => Some(PageSize::Size4K),
            2 if e & PTE_PS != 0 => Some(PageSize::Size2M),
            3 if e & PTE_PS != 0 => Some(PageSize::Size1G),
            4 | 5 if e & PTE_PS != 0 => return Err(Fault::Reserved { level, entry: e }),
            _ => None,
        };
        if let Some(size) = leaf_size {
            let frame = e & addr_mask;
            // Large-page frames: bit 12 is PAT, bits below the page size (13 and up) are
            // reserved and must be zero.
            let frame = if size == PageSize::Size4K {
                frame
            } else {
                let low = frame & (size.bytes() - 1) & !0x1000;
                if low != 0 {
                    return Err(Fault::Reserved { level, entry: e });
                }
                frame & !(size.bytes() - 1)
            };
            if access.write && !rw {
                return Err(Fault::Protection("write to read-only page"));
            }
            if access.user && !us {
                return Err(Fault::Protection("user access to supervisor page"));
            }
            if access.exec && nx {
                return Err(Fault::Protection("fetch from no-execute page"));
            }
            let flags = Flags {
                writable: rw,
                user: us,
                no_exec: nx,
                accessed: e & PTE_A != 0,
                dirty: e & PTE_D != 0,
                global: e & PTE_G != 0,
            };
            return Ok(Walk {
                path,
                len: n as u8,
                pa: frame | (va & (size.bytes() - 1)),
                size,
                flags,
            });
        }
        table = e & addr_mask;
        level -= 1;
    }
}

/// Prepares a later [`walk`] of `va`: follows the path through the upper levels (small
/// tables, normally cached) and prefetches the last-level (PT) entry, which on a big
/// footprint is the walk's one cache miss. Issued a few walks ahead, it lets those
/// misses overlap instead of each walk waiting for its own. Checks nothing and returns
/// nothing: a path that faults or ends in a large page is simply not prefetched.
#[inline]
pub fn prefetch_walk<M: GuestPhysMemory + ?Sized>(mem: &M, cfg: &WalkConfig, cr3: u64, va: u64) {
    let addr_mask = PTE_ADDR_MASK & ((1u64 << cfg.max_phys_bits) - 1);
    let mut table = cr3 & addr_mask;
    let mut level = cfg.mode.levels();
    while level > 1 {
        let Ok(e) = mem.read_u64(table + 8 * level_index(va, level)) else {
            return;
        };
        if e & PTE_P == 0 || e & PTE_PS != 0 {
            return;
        }
        table = e & addr_mask;
        level -= 1;
    }
    mem.prefetch(table + 8 * level_index(va, 1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::PageStore;

    /// Builds a 4-level map of one 4 KiB page and one 2 MiB page.
    fn tables() -> (PageStore, u64) {
        let mut s = PageStore::new();
        let (pml4, pdpt, pd, pt) = (0x1000, 0x2000, 0x3000, 0x4000);
        let mut p = [0u64; 512];
        p[0] = pdpt | PTE_P | PTE_RW | PTE_US;
        s.insert(pml4, p);
        let mut p = [0u64; 512];
        p[0] = pd | PTE_P | PTE_RW | PTE_US;
        s.insert(pdpt, p);
        let mut p = [0u64; 512];
        p[0] = pt | PTE_P | PTE_RW | PTE_US;
        p[1] = 0x4000_0000 | PTE_P | PTE_PS | PTE_US; // 2 MiB, read-only
        s.insert(pd, p);
        let mut p = [0u64; 512];
        p[5] = 0x7_0000 | PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D;
        s.insert(pt, p);
        (s, pml4)
    }

    #[test]
    fn walks_4k_and_2m_and_lists_entries() {
        let (s, cr3) = tables();
        let cfg = WalkConfig::new(PagingMode::Level4);
        let w = walk(&s, &cfg, cr3, 0x5123, Access::default()).unwrap();
        assert_eq!(w.pa, 0x7_0123);
        assert_eq!(w.size, PageSize::Size4K);
        assert_eq!(w.len, 4);
        let levels: Vec<u8> = w.entries().iter().map(|e| e.level).collect();
        assert_eq!(levels, vec![4, 3, 2, 1]);
        assert_eq!(w.entries()[3].gpa, 0x4000 + 5 * 8);
        assert!(w.flags.dirty && w.flags.writable);
        let w = walk(&s, &cfg, cr3, 0x20_1234, Access::default()).unwrap();
        assert_eq!((w.pa, w.size, w.len), (0x4000_1234, PageSize::Size2M, 3));
    }

    #[test]
    fn faults_are_typed() {
        let (s, cr3) = tables();
        let cfg = WalkConfig::new(PagingMode::Level4);
        let a = Access::default();
        assert_eq!(
            walk(&s, &cfg, cr3, 0x8000_0000_0000, a),
            Err(Fault::NonCanonical(0x8000_0000_0000))
        );
        assert!(matches!(
            walk(&s, &cfg, cr3, 0x6000, a),
            Err(Fault::NotPresent { level: 1, .. })
        ));
        let w = Access { write: true, ..a };
        assert!(matches!(
            walk(&s, &cfg, cr3, 0x20_0000, w),
            Err(Fault::Protection(_))
        ));
        let narrow = WalkConfig {
            max_phys_bits: 30,
            ..cfg
        };
        assert!(matches!(
            walk(&s, &narrow, cr3, 0x20_0000, a),
            Err(Fault::Reserved { level: 2, .. })
        ));
        // A missing table page is a memory error, not a panic.
        let lone = PageStore::new();
        assert!(matches!(
            walk(&lone, &cfg, cr3, 0, a),
            Err(Fault::Memory(_))
        ));
    }

    #[test]
    fn prefetch_walk_is_a_hint_on_any_path() {
        let (s, cr3) = tables();
        let cfg = WalkConfig::new(PagingMode::Level4);
        // 4 KiB leaf, 2 MiB leaf, not present, missing table: none panics.
        for va in [0x5123, 0x20_1234, 0x6000, 0x40_0000_0000] {
            prefetch_walk(&s, &cfg, cr3, va);
        }
        prefetch_walk(&PageStore::new(), &cfg, cr3, 0);
        let w = walk(&s, &cfg, cr3, 0x5123, Access::default()).unwrap();
        assert_eq!(w.pa, 0x7_0123);
    }

    #[test]
    fn five_level_walk_reads_five_entries() {
        let (mut s, cr3) = tables();
        let mut p = [0u64; 512];
        p[0] = cr3 | PTE_P | PTE_RW | PTE_US;
        s.insert(0x9000, p);
        let cfg = WalkConfig::new(PagingMode::Level5);
        let w = walk(&s, &cfg, 0x9000, 0x5000, Access::default()).unwrap();
        assert_eq!(w.len, 5);
        assert_eq!(w.pa, 0x7_0000);
    }
}
