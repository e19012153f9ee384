//! What an x86-64 kernel's address space holds, in the terms the kernel itself reports:
//! the direct map (Linux's `DirectMap4k/2M/1G` in /proc/meminfo) and the page-table pages
//! per half and level (Linux's `PageTables`).
//!
//! A ptsnap records tables, not the kernel's bookkeeping, so both are found from the
//! tables alone:
//!
//! * the **direct map** (the linear map of all RAM) is the kernel-half set of leaf
//!   mappings sharing one offset `va - pa`, the offset shared by the most bytes: every
//!   direct-map page maps `pa` at `PAGE_OFFSET + pa` (0xffff_8880_0000_0000 on x86-64
//!   4-level without KASLR), while the kernel image, vmalloc, vmemmap and fixmap each
//!   have a different or no common offset and, below a few GiB of RAM, fewer bytes;
//! * **table pages** are listed once each by guest-physical address with the level and the
//!   first virtual address they serve, and counted below the root per half of the address
//!   space (top-level index < 256: user) and level, because kernels account them
//!   differently: Linux 6.1 counts PMD and PTE pages made for a process, and PMD pages
//!   made for the kernel's vmalloc area after boot, in `PageTables`, but no PGD or PUD
//!   page and no kernel PTE page.
//!
//! These checks let a live ptsnap be compared against the guest's own figures
//! (`tests/linux_ptsnap.rs`).

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::enumerate::{enumerate, Error as EnumError, MappedBytes, MappingRange};
use crate::mem::GuestPhysMemory;
use crate::paging::{level_shift, PageSize, PTE_ADDR_MASK, PTE_P, PTE_PS};
use crate::ptsnap::Ptsnap;
use crate::walker::WalkConfig;

/// The kernel's linear map of physical memory, as found in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DirectMap {
    /// `va - pa` (wrapping) of every page in it: Linux's `PAGE_OFFSET`.
    pub offset: u64,
    /// Lowest guest-physical address mapped.
    pub pa_start: u64,
    /// End of the highest guest-physical page mapped (exclusive).
    pub pa_end: u64,
    /// Mapped bytes per page size (holes, such as the MMIO gap, are not counted).
    pub bytes: MappedBytes,
}

/// One page-table page of an address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TableRef {
    /// Guest-physical address.
    pub gpa: u64,
    /// Hardware level: 1 = page table (PTE), 2 = page directory (PMD), 3 = PDPT (PUD),
    /// 4 = PML4, 5 = PML5.
    pub level: u8,
    /// The first (canonical) virtual address it translates; 0 for the root.
    pub va: u64,
}

/// Page-table pages of one address space, each counted once.
///
/// Levels as in [`TableRef`]; index `level - 1` of the arrays. The root (the CR3 page) is
/// in neither half. A page reachable from both halves (which Linux never builds) counts
/// in the half it is first reached from: the user half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TablePages {
    /// Below the root, serving the user half (top-level indices 0..256).
    pub user: [u64; 4],
    /// Below the root, serving the kernel half (top-level indices 256..512).
    pub kernel: [u64; 4],
    /// Every distinct table page, the root included.
    pub total: u64,
}

impl TablePages {
    /// User-half table pages at all levels below the root.
    pub fn user_total(&self) -> u64 {
        self.user.iter().sum()
    }
    /// Kernel-half table pages at all levels below the root.
    pub fn kernel_total(&self) -> u64 {
        self.kernel.iter().sum()
    }
}

/// What one address space maps, summed the way a kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Census {
    /// The direct map; `None` when the kernel half maps nothing.
    pub direct_map: Option<DirectMap>,
    /// Bytes mapped in the user half, per page size.
    pub user: MappedBytes,
    /// Bytes mapped in the kernel half, per page size (the direct map included).
    pub kernel: MappedBytes,
    /// Page-table pages.
    pub tables: TablePages,
}

fn is_kernel_half(va: u64) -> bool {
    va >> 63 == 1
}

fn add(m: &mut MappedBytes, size: PageSize, len: u64) {
    match size {
        PageSize::Size4K => m.bytes_4k += len,
        PageSize::Size2M => m.bytes_2m += len,
        PageSize::Size1G => m.bytes_1g += len,
    }
}

/// Finds the direct map among `ranges` (as [`enumerate`] lists them): the kernel-half
/// offset `va - pa` shared by the most mapped bytes (ties: the lowest offset).
pub fn direct_map(ranges: &[MappingRange]) -> Option<DirectMap> {
    let mut by_offset: BTreeMap<u64, DirectMap> = BTreeMap::new();
    for r in ranges.iter().filter(|r| is_kernel_half(r.va)) {
        let offset = r.va.wrapping_sub(r.pa);
        let d = by_offset.entry(offset).or_insert(DirectMap {
            offset,
            pa_start: r.pa,
            pa_end: r.pa + r.len,
            bytes: MappedBytes::default(),
        });
        d.pa_start = d.pa_start.min(r.pa);
        d.pa_end = d.pa_end.max(r.pa + r.len);
        add(&mut d.bytes, r.size, r.len);
    }
    // max_by_key keeps the last maximum: iterate from the highest offset so that a tie
    // goes to the lowest.
    by_offset
        .into_values()
        .rev()
        .max_by_key(|d| d.bytes.total())
}

/// Lists every table page reachable from `cr3`, the root first, then depth first in
/// ascending virtual-address order; a page reached again (a table shared between entries)
/// is listed once, at its first reach, which also ends cycles. Entries that are not
/// present, leaves, and entries pointing beyond `cfg.max_phys_bits` are not followed, as
/// in [`enumerate`]; a table that cannot be read is an error.
pub fn tables<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    cfg: &WalkConfig,
    cr3: u64,
) -> Result<Vec<TableRef>, EnumError> {
    let addr_mask = PTE_ADDR_MASK & ((1u64 << cfg.max_phys_bits) - 1);
    let root = TableRef {
        gpa: cr3 & addr_mask,
        level: cfg.mode.levels(),
        va: 0,
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut page = [0u64; 512];
    let mut stack = vec![root];
    while let Some(t) = stack.pop() {
        if !seen.insert(t.gpa) {
            continue;
        }
        out.push(t);
        if t.level == 1 {
            continue;
        }
        mem.read_page(t.gpa, &mut page)?;
        // Pushed in reverse so that the lowest index comes off the stack first.
        for (idx, &e) in page.iter().enumerate().rev() {
            if let Some(child) = next_table(e, t.level, addr_mask) {
                let va = t.va | (idx as u64) << level_shift(t.level);
                stack.push(TableRef {
                    gpa: child,
                    level: t.level - 1,
                    va: sign_extend(va, cfg.mode.va_bits()),
                });
            }
        }
    }
    Ok(out)
}

/// Counts the table pages reachable from `cr3` (see [`TablePages`], [`tables`]).
pub fn table_pages<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    cfg: &WalkConfig,
    cr3: u64,
) -> Result<TablePages, EnumError> {
    let list = tables(mem, cfg, cr3)?;
    let mut t = TablePages {
        total: list.len() as u64,
        ..Default::default()
    };
    for r in list.iter().skip(1) {
        let half = if is_kernel_half(r.va) {
            &mut t.kernel
        } else {
            &mut t.user
        };
        half[r.level as usize - 1] += 1;
    }
    Ok(t)
}

fn sign_extend(va: u64, bits: u32) -> u64 {
    let s = 64 - bits;
    (((va << s) as i64) >> s) as u64
}

/// The table an entry at `level` points to, if it points to one.
fn next_table(e: u64, level: u8, addr_mask: u64) -> Option<u64> {
    let present = e & PTE_P != 0 && e & PTE_ADDR_MASK & !addr_mask == 0;
    let leaf = level == 1 || (e & PTE_PS != 0 && level <= 3);
    // A PS bit at levels 4 and 5 is reserved: such an entry faults, it maps nothing.
    let reserved = e & PTE_PS != 0 && level >= 4;
    (present && !leaf && !reserved).then_some(e & addr_mask)
}

/// The census of the address space rooted at `cr3`.
pub fn census<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    cfg: &WalkConfig,
    cr3: u64,
) -> Result<Census, EnumError> {
    let ranges = enumerate(mem, cfg, cr3)?;
    let (mut user, mut kernel) = (MappedBytes::default(), MappedBytes::default());
    for r in &ranges {
        let half = if is_kernel_half(r.va) {
            &mut kernel
        } else {
            &mut user
        };
        add(half, r.size, r.len);
    }
    Ok(Census {
        direct_map: direct_map(&ranges),
        user,
        kernel,
        tables: table_pages(mem, cfg, cr3)?,
    })
}

impl Ptsnap {
    /// The [`census`] of address space `space`.
    pub fn census(&self, space: usize) -> Result<Census, EnumError> {
        let cr3 = self
            .spaces
            .get(space)
            .map(|s| s.cr3)
            .ok_or(EnumError::Mem(crate::mem::MemError::Unreadable(0)))?;
        census(self, &self.walk_config(), cr3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::PageStore;
    use crate::paging::{PagingMode, PTE_RW, PTE_US};

    const PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
    const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

    fn idx(va: u64, level: u8) -> usize {
        crate::paging::level_index(va, level) as usize
    }

    /// A Linux-like address space in a page store: a user heap of `heap_pages` 4 KiB
    /// pages at 0x40_0000 (one PTE page per 512), a direct map of 1 GiB of RAM (first
    /// 2 MiB in 4 KiB pages, the rest in 2 MiB pages, 256..258 MiB left out as a hole)
    /// and a kernel image mapping 16 MiB of 2 MiB pages at -2 GiB, of pa 16 MiB.
    struct Builder {
        mem: PageStore,
        next: u64,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                mem: PageStore::new(),
                next: 0x100_0000_0000,
            }
        }
        fn table(&mut self) -> u64 {
            let gpa = self.next;
            self.next += 0x1000;
            self.mem.insert(gpa, [0; 512]);
            gpa
        }
        fn set(&mut self, table: u64, i: usize, e: u64) {
            let mut p = [0u64; 512];
            self.mem.read_page(table, &mut p).unwrap();
            p[i] = e;
            self.mem.insert(table, p);
        }
        fn get(&self, table: u64, i: usize) -> u64 {
            let mut p = [0u64; 512];
            self.mem.read_page(table, &mut p).unwrap();
            p[i]
        }
        /// Maps `va` -> `pa` with a leaf of `size` under `root`, making tables as needed.
        fn map(&mut self, root: u64, va: u64, pa: u64, size: PageSize, user: bool) {
            let flags = PTE_P | PTE_RW | if user { PTE_US } else { 0 };
            let mut table = root;
            for level in (size.leaf_level() + 1..=4).rev() {
                let e = self.get(table, idx(va, level));
                table = if e & PTE_P != 0 {
                    e & PTE_ADDR_MASK
                } else {
                    let t = self.table();
                    self.set(table, idx(va, level), t | flags | PTE_US);
                    t
                };
            }
            let ps = if size == PageSize::Size4K { 0 } else { PTE_PS };
            self.set(table, idx(va, size.leaf_level()), pa | flags | ps);
        }
    }

    fn linux_like(heap_pages: u64) -> (PageStore, u64) {
        let mut b = Builder::new();
        let root = b.table();
        for i in 0..heap_pages {
            b.map(
                root,
                0x40_0000 + i * 4096,
                0x2000_0000 + i * 4096,
                PageSize::Size4K,
                true,
            );
        }
        for pa in (0..2 << 20).step_by(4096) {
            b.map(root, PAGE_OFFSET + pa, pa, PageSize::Size4K, false);
        }
        for pa in (2u64 << 20..1 << 30).step_by(2 << 20) {
            if (256 << 20..258 << 20).contains(&pa) {
                continue;
            }
            b.map(root, PAGE_OFFSET + pa, pa, PageSize::Size2M, false);
        }
        for i in 0..8u64 {
            b.map(
                root,
                KERNEL_MAP + (i << 21),
                (16 << 20) + (i << 21),
                PageSize::Size2M,
                false,
            );
        }
        (b.mem, root)
    }

    #[test]
    fn finds_the_direct_map_and_sums_it_per_page_size() {
        let (mem, root) = linux_like(600);
        let cfg = WalkConfig::new(PagingMode::Level4);
        let c = census(&mem, &cfg, root).unwrap();
        let d = c.direct_map.unwrap();
        assert_eq!(d.offset, PAGE_OFFSET);
        assert_eq!((d.pa_start, d.pa_end), (0, 1 << 30));
        assert_eq!(d.bytes.bytes_4k, 2 << 20);
        assert_eq!(d.bytes.bytes_2m, (1 << 30) - (2 << 20) - (2 << 20));
        assert_eq!(d.bytes.bytes_1g, 0);
        // The kernel image has its own offset and is counted only in the kernel half.
        assert_eq!(c.kernel.total(), d.bytes.total() + (16 << 20));
        assert_eq!(c.user.bytes_4k, 600 * 4096);
    }

    #[test]
    fn counts_table_pages_per_half_and_level() {
        let (mem, root) = linux_like(600);
        let cfg = WalkConfig::new(PagingMode::Level4);
        let t = table_pages(&mem, &cfg, root).unwrap();
        // User: 600 pages from 0x40_0000 need 2 PTE pages, 1 PD, 1 PDPT.
        assert_eq!(t.user, [2, 1, 1, 0]);
        // Kernel: direct map 1 PDPT + 1 PD + 1 PTE page (first 2 MiB); the kernel image
        // 1 PDPT + 1 PD.
        assert_eq!(t.kernel, [1, 2, 2, 0]);
        assert_eq!(t.user_total(), 4);
        assert_eq!(t.kernel_total(), 5);
        assert_eq!(t.total, 1 + 4 + 5);
        assert_eq!(t.total as usize, mem.len());
        // Listed root first, then in VA order, with the VA each table starts at.
        let l = tables(&mem, &cfg, root).unwrap();
        assert_eq!((l[0].gpa, l[0].level, l[0].va), (root, 4, 0));
        let vas: Vec<(u8, u64)> = l[1..].iter().map(|t| (t.level, t.va)).collect();
        assert_eq!(
            vas,
            [
                (3, 0),
                (2, 0),
                (1, 0x40_0000),
                (1, 0x60_0000),
                (3, PAGE_OFFSET),
                (2, PAGE_OFFSET),
                (1, PAGE_OFFSET),
                (3, 0xffff_ff80_0000_0000),
                (2, KERNEL_MAP),
            ]
        );
    }

    #[test]
    fn the_offset_with_the_most_bytes_wins_and_ties_go_low() {
        let r = |va: u64, pa: u64, len: u64, size| MappingRange {
            va,
            pa,
            len,
            size,
            writable: true,
            user: false,
            no_exec: false,
        };
        let ranges = [
            // 4 MiB at offset A in two sizes, split by 8 MiB at offset B: B wins.
            r(PAGE_OFFSET, 0, 2 << 20, PageSize::Size4K),
            r(PAGE_OFFSET + (4 << 20), 4 << 20, 2 << 20, PageSize::Size2M),
            r(KERNEL_MAP, 0, 8 << 20, PageSize::Size2M),
            // The user half never counts.
            r(0x1000, 0, 1 << 30, PageSize::Size1G),
        ];
        let d = direct_map(&ranges).unwrap();
        assert_eq!(d.offset, KERNEL_MAP);
        assert_eq!(d.bytes.bytes_2m, 8 << 20);
        let tie = [
            r(KERNEL_MAP, 0, 4 << 20, PageSize::Size2M),
            r(PAGE_OFFSET, 0, 4 << 20, PageSize::Size2M),
        ];
        assert_eq!(direct_map(&tie).unwrap().offset, PAGE_OFFSET);
        assert_eq!(direct_map(&ranges[3..]), None);
    }

    #[test]
    fn shared_tables_count_once_and_cycles_end() {
        let mut b = Builder::new();
        let root = b.table();
        let pdpt = b.table();
        let pd = b.table();
        // Two user top-level entries share one PDPT; the PDPT points at one PD twice; the
        // PD points back at the PDPT (a cycle that real tables never have).
        b.set(root, 0, pdpt | PTE_P | PTE_RW | PTE_US);
        b.set(root, 1, pdpt | PTE_P | PTE_RW | PTE_US);
        b.set(pdpt, 0, pd | PTE_P | PTE_RW);
        b.set(pdpt, 1, pd | PTE_P | PTE_RW);
        b.set(pd, 0, pdpt | PTE_P | PTE_RW);
        // A PS bit in the PML4 is reserved: not followed.
        b.set(root, 300, pd | PTE_P | PTE_PS);
        let cfg = WalkConfig::new(PagingMode::Level4);
        let t = table_pages(&b.mem, &cfg, root).unwrap();
        // The PDPT reached again as a "page table" below the PD is not counted again.
        assert_eq!(t.user, [0, 1, 1, 0]);
        assert_eq!(t.kernel, [0; 4]);
        assert_eq!(t.total, 3);
        let l = tables(&b.mem, &cfg, root).unwrap();
        assert_eq!(
            l,
            [
                TableRef {
                    gpa: root,
                    level: 4,
                    va: 0
                },
                TableRef {
                    gpa: pdpt,
                    level: 3,
                    va: 0
                },
                TableRef {
                    gpa: pd,
                    level: 2,
                    va: 0
                },
            ]
        );
    }

    #[test]
    fn ptsnap_census_matches_the_free_function() {
        let spec = crate::ptsnap::SyntheticSpec {
            heap: 64 << 20,
            ..Default::default()
        };
        let snap = spec.build().unwrap();
        let c = snap.census(0).unwrap();
        let t = table_pages(&snap, &snap.walk_config(), snap.spaces[0].cr3).unwrap();
        assert_eq!(c.tables, t);
        assert_eq!(c.user.total() + c.kernel.total(), {
            let r = snap.mappings(0).unwrap();
            crate::enumerate::mapped_bytes(&r).total()
        });
        assert!(snap.census(99).is_err());
    }
}
