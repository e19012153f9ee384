//! Lists every mapping of an address space as coalesced ranges.
//!
//! The models need to know what a guest maps (how much in each page size, and which
//! virtually contiguous regions are also physically contiguous: the candidates for a
//! guest direct segment). Walking the tables once, depth first, gives that in
//! ascending virtual-address order.

use serde::Serialize;

use crate::mem::{GuestPhysMemory, MemError};
use crate::paging::{level_shift, PageSize, PTE_ADDR_MASK, PTE_NX, PTE_P, PTE_PS, PTE_RW, PTE_US};
use crate::walker::WalkConfig;

/// One run of mappings: contiguous in virtual and physical address, same page size
/// and permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MappingRange {
    /// First virtual address (canonical).
    pub va: u64,
    /// First (guest-)physical address.
    pub pa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Page size of every page in the range.
    pub size: PageSize,
    /// Writable at every level.
    pub writable: bool,
    /// User accessible at every level.
    pub user: bool,
    /// Execute disabled.
    pub no_exec: bool,
}

impl MappingRange {
    fn extends(&self, o: &MappingRange) -> bool {
        self.size == o.size
            && (self.writable, self.user, self.no_exec) == (o.writable, o.user, o.no_exec)
            && self.va.wrapping_add(self.len) == o.va
            && self.pa.wrapping_add(self.len) == o.pa
    }
}

/// Mapped bytes per page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MappedBytes {
    /// Bytes in 4 KiB pages.
    pub bytes_4k: u64,
    /// Bytes in 2 MiB pages.
    pub bytes_2m: u64,
    /// Bytes in 1 GiB pages.
    pub bytes_1g: u64,
}

impl MappedBytes {
    /// Sum over all sizes.
    pub fn total(&self) -> u64 {
        self.bytes_4k + self.bytes_2m + self.bytes_1g
    }
}

/// Sums mapped bytes per page size.
pub fn mapped_bytes(ranges: &[MappingRange]) -> MappedBytes {
    let mut m = MappedBytes::default();
    for r in ranges {
        match r.size {
            PageSize::Size4K => m.bytes_4k += r.len,
            PageSize::Size2M => m.bytes_2m += r.len,
            PageSize::Size1G => m.bytes_1g += r.len,
        }
    }
    m
}

/// Errors of the enumerator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A table could not be read.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// More leaf entries than [`MAX_LEAVES`]: tables shared many times over (legal in a
    /// DAG, but a hostile ptsnap could make enumeration take forever).
    #[error("more than {0} leaf entries (the cap MAX_LEAVES): refusing to enumerate (tables shared many times over?)")]
    TooManyLeaves(u64),
    /// More coalesced ranges than [`MAX_RANGES`]: the output would not fit in a bounded
    /// amount of memory.
    #[error("more than {0} separate mapping ranges (the cap MAX_RANGES, 48 bytes each): refusing to enumerate (tables shared many times over?)")]
    TooManyRanges(usize),
}

/// Most leaf entries the enumerator visits (2^28: 1 TiB in 4 KiB pages).
pub const MAX_LEAVES: u64 = 1 << 28;

/// Most coalesced ranges the enumerator returns (2^21, about 100 MB of output): a real
/// guest has a few thousand; tables shared many times over (a DAG) can fan out to
/// billions of distinct leaves from a few KiB of ptsnap.
pub const MAX_RANGES: usize = 1 << 21;

/// Lists all present mappings reachable from `cr3`, coalesced, in ascending VA order.
/// Entries with reserved bits (which would fault) are skipped; a table that cannot be
/// read is an error.
pub fn enumerate<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    cfg: &WalkConfig,
    cr3: u64,
) -> Result<Vec<MappingRange>, Error> {
    enumerate_capped(mem, cfg, cr3, MAX_LEAVES)
}

/// As [`enumerate`], visiting at most `max_leaves` leaf entries (fuzzers use a small cap).
pub fn enumerate_capped<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    cfg: &WalkConfig,
    cr3: u64,
    max_leaves: u64,
) -> Result<Vec<MappingRange>, Error> {
    let mut leaves = 0u64;
    let mut out = Vec::new();
    let top = cfg.mode.levels();
    let addr_mask = PTE_ADDR_MASK & ((1u64 << cfg.max_phys_bits) - 1);
    let mut page = [0u64; 512];
    // Explicit stack of work items, depth first: a table to read, or a leaf to emit.
    // Children are pushed in reverse so the lowest index is handled first, which keeps
    // the output sorted by virtual address.
    let mut stack = vec![Item::Table {
        gpa: cr3 & addr_mask,
        level: top,
        prefix: 0,
        perm: (true, true, false),
    }];
    while let Some(item) = stack.pop() {
        let (table, level, prefix, (rw, us, nx)) = match item {
            Item::Leaf(r) => {
                leaves += 1;
                if leaves > max_leaves {
                    return Err(Error::TooManyLeaves(max_leaves));
                }
                let full = out.len() >= MAX_RANGES;
                match out.last_mut() {
                    Some(prev) if MappingRange::extends(prev, &r) => prev.len += r.len,
                    _ if full => return Err(Error::TooManyRanges(MAX_RANGES)),
                    _ => out.push(r),
                }
                continue;
            }
            Item::Table {
                gpa,
                level,
                prefix,
                perm,
            } => (gpa, level, prefix, perm),
        };
        mem.read_page(table, &mut page)?;
        for idx in (0..512u64).rev() {
            let e = page[idx as usize];
            if e & PTE_P == 0 || e & PTE_ADDR_MASK & !addr_mask != 0 {
                continue;
            }
            let va = prefix | (idx << level_shift(level));
            let perm = (
                rw && e & PTE_RW != 0,
                us && e & PTE_US != 0,
                nx || (cfg.nxe && e & PTE_NX != 0),
            );
            let size = match level {
                1 => Some(PageSize::Size4K),
                2 if e & PTE_PS != 0 => Some(PageSize::Size2M),
                3 if e & PTE_PS != 0 => Some(PageSize::Size1G),
                4 | 5 if e & PTE_PS != 0 => continue,
                _ => None,
            };
            match size {
                Some(size) => stack.push(Item::Leaf(MappingRange {
                    va: sign_extend(va, cfg.mode.va_bits()),
                    pa: e & addr_mask & !(size.bytes() - 1),
                    len: size.bytes(),
                    size,
                    writable: perm.0,
                    user: perm.1,
                    no_exec: perm.2,
                })),
                None => stack.push(Item::Table {
                    gpa: e & addr_mask,
                    level: level - 1,
                    prefix: va,
                    perm,
                }),
            }
        }
    }
    Ok(out)
}

enum Item {
    Table {
        gpa: u64,
        level: u8,
        prefix: u64,
        perm: (bool, bool, bool),
    },
    Leaf(MappingRange),
}

fn sign_extend(va: u64, bits: u32) -> u64 {
    let s = 64 - bits;
    (((va << s) as i64) >> s) as u64
}

/// A virtually and physically contiguous region, regardless of page size: what a
/// guest direct segment (Basu et al., ISCA'13) could map with one base/limit/offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LinearRegion {
    /// First virtual address.
    pub va: u64,
    /// First physical address.
    pub pa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Merges coalesced ranges further across page sizes and permissions.
pub fn linear_regions(ranges: &[MappingRange]) -> Vec<LinearRegion> {
    let mut out: Vec<LinearRegion> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(p) if p.va.wrapping_add(p.len) == r.va && p.pa.wrapping_add(p.len) == r.pa => {
                p.len += r.len
            }
            _ => out.push(LinearRegion {
                va: r.va,
                pa: r.pa,
                len: r.len,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::PageStore;
    use crate::paging::PagingMode;

    #[test]
    fn coalesces_and_sums() {
        let mut s = PageStore::new();
        let mut p = [0u64; 512];
        p[0] = 0x2000 | PTE_P | PTE_RW | PTE_US;
        p[511] = 0x5000 | PTE_P | PTE_RW; // kernel half
        s.insert(0x1000, p);
        let mut p = [0u64; 512];
        p[0] = 0x3000 | PTE_P | PTE_RW | PTE_US;
        s.insert(0x2000, p);
        let mut p = [0u64; 512];
        p[0] = 0x4000 | PTE_P | PTE_RW | PTE_US;
        p[1] = 0x20_0000 | PTE_P | PTE_RW | PTE_US | PTE_PS;
        s.insert(0x3000, p);
        let mut p = [0u64; 512];
        for (i, e) in p.iter_mut().enumerate().take(512) {
            *e = (0x10_0000 + 0x1000 * i as u64) | PTE_P | PTE_RW | PTE_US;
        }
        s.insert(0x4000, p);
        let mut p = [0u64; 512];
        p[0] = 0x4000_0000 | PTE_P | PTE_RW | PTE_PS;
        s.insert(0x5000, p);
        let cfg = WalkConfig::new(PagingMode::Level4);
        let r = enumerate(&s, &cfg, 0x1000).unwrap();
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(
            (r[0].va, r[0].pa, r[0].len, r[0].size),
            (0, 0x10_0000, 0x20_0000, PageSize::Size4K)
        );
        assert_eq!(
            (r[1].va, r[1].pa, r[1].size),
            (0x20_0000, 0x20_0000, PageSize::Size2M)
        );
        assert_eq!(r[2].va, 0xffff_ff80_0000_0000);
        assert!(!r[2].user);
        let m = mapped_bytes(&r);
        assert_eq!(
            (m.bytes_4k, m.bytes_2m, m.bytes_1g),
            (0x20_0000, 0x20_0000, 0x4000_0000)
        );
        // 4K range ends at pa 0x30_0000 != 0x20_0000, so no linear merge.
        assert_eq!(linear_regions(&r).len(), 3);
    }
}
