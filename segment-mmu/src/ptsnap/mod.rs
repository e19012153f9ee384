//! Page-table ptsnaps: the `.ptsnap` format, capture from a live guest, and a
//! synthetic builder.
//!
//! A [`Ptsnap`] is everything the models need from a guest: its paging mode and
//! control bits, one CR3 per address space, the guest-physical RAM layout with how each
//! range is backed on the host (host virtual base, host page size and, where known, the
//! host-physical contiguous runs: the segments a Compromis or direct-segment MMU would
//! use), and every page-table page reachable from the CR3s. Data pages are never held.
//!
//! # The `.ptsnap` format, version 1
//!
//! All integers little endian.
//!
//! | field | type | notes |
//! |---|---|---|
//! | magic | 8 bytes | `b"PTSNAP\r\n"` |
//! | version | u32 | 1 |
//! | levels | u32 | 4 or 5 (must agree with CR4.LA57) |
//! | cr4, efer | u64, u64 | CR4.LA57 and EFER.NXE are used |
//! | spaces | u32 n, then n × (cr3 u64, label_len u32, label UTF-8) | |
//! | ram ranges | u32 n, then n × (gpa_start u64, len u64, host_va u64, host_page_size u64, runs u32 r, r × (gpa_start u64, len u64, hpa_start u64)) | r = `0xFFFF_FFFF`: host-physical layout unknown |
//! | table pages | u64 n, then n × (gpa u64, 4096 bytes) | each 4 KiB aligned, inside RAM |
//! | checksum | u64 | FNV-1a 64 of every preceding byte |
//!
//! The reader ([`Ptsnap::from_bytes`], [`Ptsnap::read_from`]) rejects truncated
//! files, bad magic/version/checksum, inconsistent ranges, table pages outside RAM,
//! tables missing from the file and cycles in the tables, each with a typed [`Error`].
//! The writer ([`Ptsnap::to_bytes`], [`Ptsnap::write_to`]) emits exactly what the
//! reader accepts; the VMM writes live guests through the same code.

mod capture;
mod format;
mod synth;

pub use capture::{Capture, CpuState};
pub use synth::{SynthError, SyntheticSpec};

use serde::Serialize;

use crate::enumerate::{enumerate, linear_regions, Error as EnumError, LinearRegion, MappingRange};
use crate::mem::{GuestPhysMemory, MemError, PageStore, PAGE_SIZE};
use crate::paging::{PagingMode, EFER_NXE, PTE_ADDR_MASK, PTE_P, PTE_PS};
use crate::walker::WalkConfig;

/// Ptsnap errors (reader, validation, capture).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input ended early.
    #[error("truncated ptsnap: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Offset at which the read failed.
        offset: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// Not a `.ptsnap` file.
    #[error("bad magic: not a .ptsnap file")]
    BadMagic,
    /// A version this reader does not know.
    #[error("unsupported .ptsnap version {0} (this reader knows 1)")]
    BadVersion(u32),
    /// Checksum mismatch (corrupt file).
    #[error("checksum mismatch: file says {stored:#x}, content hashes to {computed:#x}")]
    BadChecksum {
        /// Checksum in the file.
        stored: u64,
        /// Checksum of the content.
        computed: u64,
    },
    /// Bytes after the checksum.
    #[error("{0} trailing bytes after the checksum")]
    TrailingBytes(usize),
    /// Levels not 4/5, or disagreeing with CR4.LA57.
    #[error("bad paging mode: {0}")]
    BadMode(String),
    /// An address-space label is not UTF-8.
    #[error("address space {0}: label is not UTF-8")]
    BadLabel(usize),
    /// No address space.
    #[error("ptsnap has no address space")]
    NoSpaces,
    /// A malformed RAM range.
    #[error("RAM range {index}: {why}")]
    BadRange {
        /// Index of the range.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// A page-table page outside every RAM range.
    #[error("page-table page {0:#x} is outside guest RAM")]
    TableOutsideRam(u64),
    /// A page-table page not 4 KiB aligned.
    #[error("page-table page {0:#x} is not 4 KiB aligned")]
    UnalignedTable(u64),
    /// The same table page appears twice.
    #[error("page-table page {0:#x} appears twice")]
    DuplicateTable(u64),
    /// A CR3 or table entry points at a page the ptsnap does not hold.
    #[error("table page {gpa:#x} (level {level}) is referenced but missing")]
    MissingTable {
        /// Guest-physical address of the missing table.
        gpa: u64,
        /// Level it would have.
        level: u8,
    },
    /// A table reachable from itself.
    #[error("cycle in the page tables: table {0:#x} is its own ancestor")]
    Cycle(u64),
    /// A table used at two different levels.
    #[error("table {gpa:#x} is used at levels {a} and {b}")]
    LevelConflict {
        /// The table page.
        gpa: u64,
        /// One level.
        a: u8,
        /// The other.
        b: u8,
    },
    /// Guest memory could not be read during capture.
    #[error("capture: {0}")]
    Memory(#[from] MemError),
    /// I/O error while reading or writing.
    #[error("i/o: {0}")]
    Io(String),
}

/// One address space (a process, or the kernel): a CR3 and a label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressSpace {
    /// Root of the tables (CR3; low 12 bits and bits above MAXPHYADDR ignored).
    pub cr3: u64,
    /// Human label (`pid 42`, `proc0`).
    pub label: String,
}

/// A host-physically contiguous run of guest RAM: one candidate segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostRun {
    /// First guest-physical address.
    pub gpa_start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Host-physical address of `gpa_start`.
    pub hpa_start: u64,
}

/// A guest-physical RAM range and its host backing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RamRange {
    /// First guest-physical address (4 KiB aligned).
    pub gpa_start: u64,
    /// Length (multiple of 4 KiB).
    pub len: u64,
    /// Host virtual address backing `gpa_start`.
    pub host_va: u64,
    /// Host page size backing the range (power of two ≥ 4 KiB).
    pub host_page_size: u64,
    /// Host-physical contiguous runs, when the VMM knows them (sorted, inside the range).
    pub runs: Option<Vec<HostRun>>,
}

impl RamRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.gpa_start + self.len
    }
    /// True when `gpa` is inside.
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.gpa_start && gpa - self.gpa_start < self.len
    }
}

/// A guest's paging state: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ptsnap {
    /// 4- or 5-level paging.
    pub mode: PagingMode,
    /// CR4 as captured.
    pub cr4: u64,
    /// EFER as captured.
    pub efer: u64,
    /// Address spaces.
    pub spaces: Vec<AddressSpace>,
    /// RAM ranges, sorted by address, non-overlapping.
    pub ram: Vec<RamRange>,
    /// Page-table pages.
    pub pages: PageStore,
}

impl GuestPhysMemory for Ptsnap {
    #[inline]
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        self.pages.read_u64(gpa)
    }
    fn read_page(&self, gpa: u64, out: &mut [u64; 512]) -> Result<(), MemError> {
        self.pages.read_page(gpa, out)
    }
    #[inline]
    fn prefetch(&self, gpa: u64) {
        self.pages.prefetch(gpa)
    }
}

impl Ptsnap {
    /// Walker configuration for this guest (mode and EFER.NXE).
    pub fn walk_config(&self) -> WalkConfig {
        WalkConfig {
            nxe: self.efer & EFER_NXE != 0,
            ..WalkConfig::new(self.mode)
        }
    }

    /// The RAM range holding `gpa`.
    #[inline]
    pub fn ram_range_of(&self, gpa: u64) -> Option<&RamRange> {
        let i = self.ram.partition_point(|r| r.end() <= gpa);
        self.ram.get(i).filter(|r| r.contains(gpa))
    }

    /// Total guest RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.ram.iter().map(|r| r.len).sum()
    }

    /// All mappings of address space `space`, coalesced.
    pub fn mappings(&self, space: usize) -> Result<Vec<MappingRange>, EnumError> {
        let cr3 = self
            .spaces
            .get(space)
            .map(|s| s.cr3)
            .ok_or(EnumError::Mem(MemError::Unreadable(0)))?;
        enumerate(self, &self.walk_config(), cr3)
    }

    /// The largest virtually and physically contiguous region of `space`: the natural
    /// guest direct segment (Basu et al., ISCA'13).
    pub fn largest_linear_region(&self, space: usize) -> Result<Option<LinearRegion>, EnumError> {
        let r = self.mappings(space)?;
        Ok(linear_regions(&r).into_iter().max_by_key(|l| l.len))
    }

    /// Builds the page store's flat index (see [`PageStore::optimize`]); the reader,
    /// capture and builder call it, so walks over a ptsnap in hand are fast.
    pub fn optimize(&mut self) {
        self.pages.optimize();
    }

    /// Checks every invariant the reader promises. Called by the reader, the capture
    /// and the synthetic builder, so a `Ptsnap` in hand is always consistent.
    pub fn validate(&self) -> Result<(), Error> {
        let la57 = self.cr4 & crate::paging::CR4_LA57 != 0;
        if la57 != (self.mode == PagingMode::Level5) {
            return Err(Error::BadMode(format!(
                "{} levels but CR4.LA57={}",
                self.mode.levels(),
                la57 as u8
            )));
        }
        if self.spaces.is_empty() {
            return Err(Error::NoSpaces);
        }
        validate_ranges(&self.ram)?;
        for (gpa, _) in self.pages.iter() {
            if gpa % PAGE_SIZE != 0 {
                return Err(Error::UnalignedTable(gpa));
            }
            if self.ram_range_of(gpa).is_none() {
                return Err(Error::TableOutsideRam(gpa));
            }
        }
        let roots: Vec<u64> = self.spaces.iter().map(|s| s.cr3).collect();
        traverse_tables(self.mode, &roots, |gpa| {
            if self.ram_range_of(gpa).is_none() {
                return Err(Error::TableOutsideRam(gpa));
            }
            self.pages
                .page(gpa)
                .copied()
                .ok_or(Error::MissingTable { gpa, level: 0 })
        })?;
        Ok(())
    }
}

fn validate_ranges(ram: &[RamRange]) -> Result<(), Error> {
    let bad = |index: usize, why: &str| {
        Err(Error::BadRange {
            index,
            why: why.to_string(),
        })
    };
    let mut prev_end = 0u64;
    for (i, r) in ram.iter().enumerate() {
        if r.len == 0 || r.gpa_start % PAGE_SIZE != 0 || r.len % PAGE_SIZE != 0 {
            return bad(i, "empty or not 4 KiB aligned");
        }
        if r.gpa_start.checked_add(r.len).is_none() {
            return bad(i, "wraps around the address space");
        }
        if i > 0 && r.gpa_start < prev_end {
            return bad(i, "overlaps or is out of order");
        }
        prev_end = r.end();
        if !r.host_page_size.is_power_of_two() || r.host_page_size < PAGE_SIZE {
            return bad(i, "host page size is not a power of two ≥ 4 KiB");
        }
        if let Some(runs) = &r.runs {
            let mut at = r.gpa_start;
            for run in runs {
                if run.len == 0
                    || run.gpa_start < at
                    || run
                        .gpa_start
                        .checked_add(run.len)
                        .is_none_or(|e| e > r.end())
                {
                    return bad(i, "host run empty, unsorted or outside the range");
                }
                if run.hpa_start.checked_add(run.len).is_none() {
                    return bad(i, "host run wraps");
                }
                at = run.gpa_start + run.len;
            }
        }
    }
    Ok(())
}

/// Depth-first traversal of the non-leaf structure from every root. `fetch` returns a
/// table page (or an error: missing, outside RAM). Shared tables (the same page under two
/// parents at the same level, e.g. a kernel half shared by processes) are visited once;
/// a table that is its own ancestor is a [`Error::Cycle`], one used at two levels a
/// [`Error::LevelConflict`].
pub(crate) fn traverse_tables(
    mode: PagingMode,
    roots: &[u64],
    mut fetch: impl FnMut(u64) -> Result<[u64; 512], Error>,
) -> Result<(), Error> {
    let mask = PTE_ADDR_MASK;
    let mut level_of: crate::mem::PfnMap<u8> = Default::default();
    for &root in roots {
        let root = root & mask;
        // Stack of (table, level, index of next entry, page); path = tables on the stack.
        let mut stack: Vec<(u64, u8, usize, Box<[u64; 512]>)> = Vec::new();
        let top = mode.levels();
        match level_of.get(&(root / PAGE_SIZE)) {
            Some(&l) if l == top => continue,
            Some(&l) => {
                return Err(Error::LevelConflict {
                    gpa: root,
                    a: l,
                    b: top,
                })
            }
            None => {}
        }
        let page = fetch(root).map_err(|e| fix_level(e, top))?;
        level_of.insert(root / PAGE_SIZE, top);
        stack.push((root, top, 0, Box::new(page)));
        while let Some(frame) = stack.last_mut() {
            let (_, level, ref mut next, ref page) = *frame;
            if *next >= 512 || level == 1 {
                stack.pop();
                continue;
            }
            let e = page[*next];
            *next += 1;
            if e & PTE_P == 0 || (e & PTE_PS != 0 && level <= 3) {
                continue;
            }
            let child = e & mask;
            let child_level = level - 1;
            if stack.iter().any(|f| f.0 == child) {
                return Err(Error::Cycle(child));
            }
            match level_of.get(&(child / PAGE_SIZE)) {
                Some(&l) if l == child_level => continue,
                Some(&l) => {
                    return Err(Error::LevelConflict {
                        gpa: child,
                        a: l,
                        b: child_level,
                    })
                }
                None => {}
            }
            let page = fetch(child).map_err(|e| fix_level(e, child_level))?;
            level_of.insert(child / PAGE_SIZE, child_level);
            if child_level > 1 {
                stack.push((child, child_level, 0, Box::new(page)));
            }
        }
    }
    Ok(())
}

fn fix_level(e: Error, level: u8) -> Error {
    match e {
        Error::MissingTable { gpa, .. } => Error::MissingTable { gpa, level },
        e => e,
    }
}

/// Summary of a ptsnap, for `segvmm layout` and reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Paging levels.
    pub levels: u8,
    /// Address spaces.
    pub spaces: Vec<AddressSpace>,
    /// Guest RAM bytes.
    pub ram_bytes: u64,
    /// Page-table pages held.
    pub table_pages: usize,
}

impl Ptsnap {
    /// A short summary.
    pub fn summary(&self) -> Summary {
        Summary {
            levels: self.mode.levels(),
            spaces: self.spaces.clone(),
            ram_bytes: self.ram_bytes(),
            table_pages: self.pages.len(),
        }
    }
}
