//! The measurement guest's page tables, built by the VMM from a layout: which virtual
//! ranges are backed by which guest-physical ranges, with which page size and rights.
//!
//! The VMM knows every entry exactly, so this module is also the reference a page-table
//! ptsnap of a running guest is compared with ([`PageTables::entries`]). Tables are
//! allocated level by level (root, then all PDPTs, all PDs, all PTs), each level in
//! ascending virtual order, so the leaf entries of one virtually contiguous range are
//! contiguous in guest-physical memory (ptchurn edits them by address).

use std::collections::BTreeMap;

use serde::Serialize;

/// Present.
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_RW: u64 = 1 << 1;
/// User-accessible.
pub const PTE_US: u64 = 1 << 2;
/// Write-through.
pub const PTE_PWT: u64 = 1 << 3;
/// Cache disable.
pub const PTE_PCD: u64 = 1 << 4;
/// Page size (a 2 MiB or 1 GiB leaf).
pub const PTE_PS: u64 = 1 << 7;
/// The physical-address bits of an entry.
pub const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Errors in a layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// An address or length is not a multiple of the mapping's page size.
    #[error("mapping '{name}': {what} {value:#x} is not a multiple of its page size {page:#x}")]
    Misaligned {
        /// Mapping.
        name: String,
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// Page size.
        page: u64,
    },
    /// Empty mapping.
    #[error("mapping '{0}' is empty")]
    Empty(String),
    /// Outside the lower half of the 48-bit address space.
    #[error("mapping '{0}' leaves the lower half of the 48-bit virtual address space")]
    NotCanonical(String),
    /// Two mappings share virtual addresses.
    #[error("mappings '{0}' and '{1}' overlap")]
    Overlap(String, String),
    /// Page tables would need more room than given.
    #[error("the page tables need {need} bytes but only {room} are reserved")]
    NoRoom {
        /// Needed.
        need: u64,
        /// Reserved.
        room: u64,
    },
}

/// A guest page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PageSize {
    /// 4 KiB (PTE).
    #[serde(rename = "4k")]
    Size4K,
    /// 2 MiB (PDE with PS).
    #[serde(rename = "2m")]
    Size2M,
    /// 1 GiB (PDPTE with PS).
    #[serde(rename = "1g")]
    Size1G,
}

impl PageSize {
    /// Bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// The table level holding the leaf: 1 = PT, 2 = PD, 3 = PDPT.
    pub const fn leaf_level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    /// Short name ("4k", "2m", "1g").
    pub const fn label(self) -> &'static str {
        match self {
            PageSize::Size4K => "4k",
            PageSize::Size2M => "2m",
            PageSize::Size1G => "1g",
        }
    }
}

impl segment_mmu::named::Named for PageSize {
    const ALL: &'static [Self] = &[PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];
    fn name(self) -> &'static str {
        self.label()
    }
    fn help(self) -> &'static str {
        match self {
            PageSize::Size4K => "4 KiB (PTE)",
            PageSize::Size2M => "2 MiB (PDE with PS)",
            PageSize::Size1G => "1 GiB (PDPTE with PS)",
        }
    }
}

impl std::fmt::Display for PageSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One virtually and physically contiguous mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapping {
    /// What it holds (for messages and reports).
    pub name: String,
    /// First virtual address.
    pub va: u64,
    /// First guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// Page size of its leaves.
    pub page: PageSize,
    /// Ring 3 may access it.
    pub user: bool,
    /// Writable.
    pub writable: bool,
    /// Uncached (MMIO).
    pub uncached: bool,
    /// Leaves present (false: built complete but with P clear, for ptchurn to set).
    pub present: bool,
}

impl Mapping {
    /// One past the last virtual address.
    pub fn va_end(&self) -> u64 {
        self.va + self.len
    }

    /// The leaf entry for the page at offset `off`.
    fn leaf(&self, off: u64) -> u64 {
        let mut e = (self.gpa + off) & PTE_ADDR;
        if self.present {
            e |= PTE_P;
        }
        if self.writable {
            e |= PTE_RW;
        }
        if self.user {
            e |= PTE_US;
        }
        if self.uncached {
            e |= PTE_PCD | PTE_PWT;
        }
        if self.page != PageSize::Size4K {
            e |= PTE_PS;
        }
        e
    }
}

/// Mappings making up one address space.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// The mappings, in any order.
    pub mappings: Vec<Mapping>,
}

/// A table: level 4 = PML4 (root), 3 = PDPT, 2 = PD, 1 = PT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Guest-physical address.
    pub gpa: u64,
    /// Level.
    pub level: u8,
    /// The 512 entries.
    pub entries: Box<[u64; 512]>,
}

/// Built page tables.
#[derive(Debug, Clone)]
pub struct PageTables {
    /// CR3: the root table's guest-physical address.
    pub cr3: u64,
    /// Every table, root first, then level by level in ascending virtual order.
    pub tables: Vec<Table>,
    index: BTreeMap<(u8, u64), usize>,
}

/// Shift of the virtual-address bits that select a table at `level` (its coverage).
const fn table_shift(level: u8) -> u32 {
    12 + 9 * level as u32
}

impl Layout {
    /// Checks alignment, canonical range and overlaps.
    pub fn validate(&self) -> Result<(), Error> {
        for m in &self.mappings {
            let page = m.page.bytes();
            for (what, value) in [
                ("virtual address", m.va),
                ("physical address", m.gpa),
                ("length", m.len),
            ] {
                if value % page != 0 {
                    return Err(Error::Misaligned {
                        name: m.name.clone(),
                        what,
                        value,
                        page,
                    });
                }
            }
            if m.len == 0 {
                return Err(Error::Empty(m.name.clone()));
            }
            if m.va.checked_add(m.len).is_none_or(|e| e > 1 << 47) {
                return Err(Error::NotCanonical(m.name.clone()));
            }
        }
        let mut sorted: Vec<&Mapping> = self.mappings.iter().collect();
        sorted.sort_by_key(|m| m.va);
        for w in sorted.windows(2) {
            if w[0].va_end() > w[1].va {
                return Err(Error::Overlap(w[0].name.clone(), w[1].name.clone()));
            }
        }
        Ok(())
    }

    /// The tables needed, as (level, key) with key = va >> table_shift(level), sorted the
    /// way they are allocated.
    fn table_keys(&self) -> Vec<(u8, u64)> {
        let mut keys = std::collections::BTreeSet::new();
        for m in &self.mappings {
            for level in m.page.leaf_level()..=3 {
                let s = table_shift(level);
                for k in (m.va >> s)..=((m.va_end() - 1) >> s) {
                    // Descending level first: PDPTs, then PDs, then PTs.
                    keys.insert((3 - level, k));
                }
            }
        }
        std::iter::once((4, 0))
            .chain(keys.into_iter().map(|(l, k)| (3 - l, k)))
            .collect()
    }

    /// Bytes of page tables this layout needs.
    pub fn table_bytes(&self) -> u64 {
        self.table_keys().len() as u64 * 4096
    }

    /// Builds the tables at `gpa`, using at most `room` bytes.
    pub fn build(&self, gpa: u64, room: u64) -> Result<PageTables, Error> {
        self.validate()?;
        let keys = self.table_keys();
        let need = keys.len() as u64 * 4096;
        if need > room {
            return Err(Error::NoRoom { need, room });
        }
        let mut index = BTreeMap::new();
        let mut tables = Vec::with_capacity(keys.len());
        for (i, &(level, key)) in keys.iter().enumerate() {
            index.insert((level, key), i);
            tables.push(Table {
                gpa: gpa + 4096 * i as u64,
                level,
                entries: Box::new([0; 512]),
            });
        }
        // Link every non-root table into its parent (non-leaf entries are permissive: the
        // leaves carry the rights).
        for &(level, key) in &keys[1..] {
            let child = tables[index[&(level, key)]].gpa;
            let parent = if level == 3 {
                index[&(4, 0)]
            } else {
                index[&(level + 1, key >> 9)]
            };
            tables[parent].entries[(key & 511) as usize] = child | PTE_P | PTE_RW | PTE_US;
        }
        for m in &self.mappings {
            let level = m.page.leaf_level();
            let page = m.page.bytes();
            let mut off = 0;
            while off < m.len {
                let va = m.va + off;
                let t = index[&(level, va >> table_shift(level))];
                tables[t].entries[((va >> table_shift(level - 1)) & 511) as usize] = m.leaf(off);
                off += page;
            }
        }
        Ok(PageTables {
            cr3: gpa,
            tables,
            index,
        })
    }
}

impl PageTables {
    /// Bytes the tables occupy.
    pub fn bytes(&self) -> u64 {
        self.tables.len() as u64 * 4096
    }

    /// Every non-zero entry as (guest-physical address of the entry, value): what a
    /// ptsnap of the guest's tables must show, entry by entry.
    pub fn entries(&self) -> Vec<(u64, u64)> {
        self.tables
            .iter()
            .flat_map(|t| {
                t.entries
                    .iter()
                    .enumerate()
                    .filter(|(_, &e)| e != 0)
                    .map(move |(i, &e)| (t.gpa + 8 * i as u64, e))
            })
            .collect()
    }

    /// The guest-physical address of the leaf entry mapping `va`, and the page size.
    pub fn leaf_entry(&self, va: u64) -> Option<(u64, PageSize)> {
        for (level, page) in [
            (1u8, PageSize::Size4K),
            (2, PageSize::Size2M),
            (3, PageSize::Size1G),
        ] {
            let Some(&t) = self.index.get(&(level, va >> table_shift(level))) else {
                continue;
            };
            let i = ((va >> table_shift(level - 1)) & 511) as usize;
            let e = self.tables[t].entries[i];
            if level == 1 || e & PTE_PS != 0 {
                return Some((self.tables[t].gpa + 8 * i as u64, page));
            }
        }
        None
    }

    /// Walks the tables like the CPU: the guest-physical address and leaf entry for `va`,
    /// or `None` when not present.
    pub fn translate(&self, va: u64) -> Option<(u64, u64)> {
        let by_gpa: BTreeMap<u64, &Table> = self.tables.iter().map(|t| (t.gpa, t)).collect();
        let mut table = by_gpa.get(&self.cr3)?;
        for level in (1..=4u8).rev() {
            let e = table.entries[((va >> table_shift(level - 1)) & 511) as usize];
            if e & PTE_P == 0 {
                return None;
            }
            if level == 1 || (level <= 3 && e & PTE_PS != 0) {
                let mask = (1u64 << table_shift(level - 1)) - 1;
                return Some(((e & PTE_ADDR & !mask) | (va & mask), e));
            }
            table = by_gpa.get(&(e & PTE_ADDR))?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(
        name: &str,
        va: u64,
        gpa: u64,
        len: u64,
        page: PageSize,
        user: bool,
        present: bool,
    ) -> Mapping {
        Mapping {
            name: name.into(),
            va,
            gpa,
            len,
            page,
            user,
            writable: true,
            uncached: false,
            present,
        }
    }

    /// A small layout with every kind of leaf: 4K supervisor pages, 4K user pages, a 2 MiB
    /// range, an uncached page high up, and a non-present range.
    fn sample() -> Layout {
        let mut mmio = map(
            "mmio",
            0x30_0000_0000,
            0xd000_0000,
            4096,
            PageSize::Size4K,
            true,
            true,
        );
        mmio.uncached = true;
        Layout {
            mappings: vec![
                map("sys", 0x1000, 0x1000, 0x3000, PageSize::Size4K, false, true),
                map(
                    "image",
                    0x40_0000,
                    0x40_0000,
                    0x2000,
                    PageSize::Size4K,
                    true,
                    true,
                ),
                mmio,
                map(
                    "data",
                    0x40_0000_0000,
                    0x80_0000,
                    0x60_0000,
                    PageSize::Size2M,
                    true,
                    true,
                ),
                map(
                    "churn",
                    0x40_4000_0000,
                    0x100_0000,
                    0x3000,
                    PageSize::Size4K,
                    true,
                    false,
                ),
            ],
        }
    }

    #[test]
    fn entries_one_by_one() {
        let base = 0x60_0000;
        let pt = sample().build(base, 1 << 20).unwrap();
        // Tables: root; PDPTs for VA 0 and 0x30_0000_0000.. (both in PML4 slot 0) = one;
        // PDs: [0,1G), [192G,193G), [256G,257G), [257G,258G) = 4; PTs: [0,2M), [4M,6M),
        // mmio's 2M, churn's 2M = 4.
        assert_eq!(pt.tables.len(), 1 + 1 + 4 + 4);
        let t = |i: usize| base + 4096 * i as u64;
        let link = PTE_P | PTE_RW | PTE_US;
        let mut want: Vec<(u64, u64)> = vec![
            (t(0), t(1) | link),           // PML4[0] -> PDPT
            (t(1), t(2) | link),           // PDPT[0] -> PD [0,1G)
            (t(1) + 8 * 192, t(3) | link), // PDPT[192] -> PD mmio
            (t(1) + 8 * 256, t(4) | link), // PDPT[256] -> PD data
            (t(1) + 8 * 257, t(5) | link), // PDPT[257] -> PD churn
            (t(2), t(6) | link),           // PD[0] -> PT sys
            (t(2) + 8 * 2, t(7) | link),   // PD[2] -> PT image
            (t(3), t(8) | link),           // PD mmio[0] -> PT mmio
            (t(5), t(9) | link),           // PD churn[0] -> PT churn
        ];
        for p in 1..4u64 {
            want.push((t(6) + 8 * p, (p << 12) | PTE_P | PTE_RW));
        }
        for p in 0..2u64 {
            want.push((
                t(7) + 8 * p,
                (0x40_0000 + (p << 12)) | PTE_P | PTE_RW | PTE_US,
            ));
        }
        want.push((
            t(8),
            0xd000_0000 | PTE_P | PTE_RW | PTE_US | PTE_PCD | PTE_PWT,
        ));
        for p in 0..3u64 {
            want.push((
                t(4) + 8 * p,
                (0x80_0000 + (p << 21)) | PTE_P | PTE_RW | PTE_US | PTE_PS,
            ));
        }
        for p in 0..3u64 {
            want.push((t(9) + 8 * p, (0x100_0000 + (p << 12)) | PTE_RW | PTE_US));
        }
        want.sort();
        let mut got = pt.entries();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn translate_and_leaf_entries() {
        let pt = sample().build(0x60_0000, 1 << 20).unwrap();
        assert_eq!(pt.translate(0x1234).map(|x| x.0), Some(0x1234));
        assert_eq!(
            pt.translate(0x40_0000_0000 + 0x20_1234).map(|x| x.0),
            Some(0x80_0000 + 0x20_1234)
        );
        assert_eq!(pt.translate(0x30_0000_0008).map(|x| x.0), Some(0xd000_0008));
        assert_eq!(
            pt.translate(0x40_4000_0000),
            None,
            "churn range starts unmapped"
        );
        assert_eq!(pt.translate(0x0), None);
        // Leaf entries of a contiguous range are contiguous.
        let (e0, p0) = pt.leaf_entry(0x40_4000_0000).unwrap();
        let (e2, _) = pt.leaf_entry(0x40_4000_2000).unwrap();
        assert_eq!((e2 - e0, p0), (16, PageSize::Size4K));
        assert_eq!(
            pt.leaf_entry(0x40_0020_0000).map(|x| x.1),
            Some(PageSize::Size2M)
        );
    }

    #[test]
    fn bad_layouts_are_refused() {
        let mut l = sample();
        l.mappings[3].gpa += 4096;
        assert!(matches!(l.build(0, 1 << 20), Err(Error::Misaligned { .. })));
        let mut l = sample();
        l.mappings[1].va = 0x2000;
        assert!(matches!(l.build(0, 1 << 20), Err(Error::Overlap(..))));
        let mut l = sample();
        l.mappings[0].va = (1 << 47) - 0x1000;
        assert!(matches!(l.build(0, 1 << 20), Err(Error::NotCanonical(_))));
        assert!(matches!(sample().build(0, 4096), Err(Error::NoRoom { .. })));
        let mut l = sample();
        l.mappings[0].len = 0;
        assert!(matches!(l.build(0, 1 << 20), Err(Error::Empty(_))));
    }

    #[test]
    fn table_bytes_matches_build() {
        let l = sample();
        assert_eq!(
            l.table_bytes(),
            l.build(0x60_0000, 1 << 20).unwrap().bytes()
        );
    }
}
