//! Synthetic address spaces: "8 GiB heap at VA X in 4 KiB pages", "70% in 2 MiB pages",
//! several processes, for tests and for modelling without a guest.
//!
//! Placement (guest-physical): one RAM range starting at 0. Page-table pages are bump
//! allocated from 1 MiB up; each process's heap is backed by a guest-physically
//! contiguous block starting at a 1 GiB boundary above the tables, so large pages are
//! aligned and the heap is one linear region (what a guest direct segment maps). Data
//! pages are only *addresses*: nothing is allocated for them, so an 8 GiB heap in
//! 4 KiB pages costs 16 MiB of PTE pages and nothing else.
//!
//! Host backing: host page size `host=4k|2m|1g` (default 4k: a VMM without huge pages),
//! and `segments=k` host-physically contiguous runs (default 1: all guest RAM is one
//! segment, as a Compromis VMM allocates it; 0: host-physical layout unknown).
//!
//! Spec syntax: `heap=8G,pages=4k` / `heap=8G,pages=2m:0.7` (70% of the heap in 2 MiB
//! pages, the rest 4 KiB) / `pages=1g:0.5`, plus optional `base=0x...`, `procs=N`,
//! `levels=4|5`, `host=2m`, `segments=k`, `ram=SIZE`.

use std::str::FromStr;

use super::{AddressSpace, CpuState, Error, HostRun, Ptsnap, RamRange};
use crate::mem::{PageStore, PAGE_SIZE};
use crate::paging::{
    level_index, PageSize, PagingMode, PTE_A, PTE_D, PTE_NX, PTE_P, PTE_PS, PTE_RW, PTE_US,
};
use crate::units::{pairs, parse_count, parse_f64, parse_size};

/// Errors of synthetic specs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SynthError {
    /// Unknown key.
    #[error("synthetic spec: unknown key {0:?} (known: heap, pages, base, procs, levels, host, segments, ram)")]
    UnknownKey(String),
    /// A value did not parse or is out of range.
    #[error("synthetic spec: {0}")]
    Bad(String),
    /// The built ptsnap failed validation (a bug; reported rather than panicking).
    #[error("synthetic ptsnap: {0}")]
    Ptsnap(#[from] Error),
}

/// A parsed synthetic spec.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// Heap bytes per process.
    pub heap: u64,
    /// Page size of the large-page part of the heap.
    pub large: PageSize,
    /// Fraction of the heap in `large` pages (the rest is 4 KiB).
    pub large_fraction: f64,
    /// Virtual base of the heap.
    pub base: u64,
    /// Number of processes (address spaces), each with its own heap.
    pub procs: u32,
    /// 4- or 5-level paging.
    pub mode: PagingMode,
    /// Host page size backing guest RAM.
    pub host_page: u64,
    /// Host-physically contiguous runs (0 = unknown layout).
    pub segments: u32,
    /// Guest RAM size (default: just enough, rounded up to 1 GiB).
    pub ram: Option<u64>,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            heap: 1 << 30,
            large: PageSize::Size4K,
            large_fraction: 0.0,
            base: 0x1000_0000_0000,
            procs: 1,
            mode: PagingMode::Level4,
            host_page: PAGE_SIZE,
            segments: 1,
            ram: None,
        }
    }
}

impl FromStr for SyntheticSpec {
    type Err = SynthError;
    fn from_str(s: &str) -> Result<Self, SynthError> {
        let mut spec = SyntheticSpec::default();
        let bad = |k: &str, v: &str| SynthError::Bad(format!("bad value {v:?} for {k}"));
        for (k, v) in pairs(s) {
            match k {
                "heap" => spec.heap = parse_size(v).map_err(|_| bad(k, v))?,
                "base" => spec.base = parse_size(v).map_err(|_| bad(k, v))?,
                "procs" => {
                    spec.procs = parse_count(v)
                        .ok()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad(k, v))?
                }
                "levels" => {
                    spec.mode = parse_count(v)
                        .ok()
                        .and_then(|n| PagingMode::from_levels(n).ok())
                        .ok_or_else(|| bad(k, v))?
                }
                "host" => spec.host_page = parse_size(v).map_err(|_| bad(k, v))?,
                "segments" => {
                    spec.segments = parse_count(v)
                        .ok()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad(k, v))?
                }
                "ram" => spec.ram = Some(parse_size(v).map_err(|_| bad(k, v))?),
                "pages" => {
                    let (size, frac) = match v.split_once(':') {
                        Some((sz, f)) => (sz, parse_f64(f).map_err(|_| bad(k, v))?),
                        None => (v, 1.0),
                    };
                    let size = parse_size(size)
                        .ok()
                        .and_then(|b| PageSize::from_bytes(b).ok())
                        .ok_or_else(|| bad(k, v))?;
                    if !(0.0..=1.0).contains(&frac) {
                        return Err(bad(k, v));
                    }
                    spec.large = size;
                    spec.large_fraction = if size == PageSize::Size4K { 0.0 } else { frac };
                }
                _ => return Err(SynthError::UnknownKey(k.to_string())),
            }
        }
        spec.check()?;
        Ok(spec)
    }
}

impl SyntheticSpec {
    fn check(&self) -> Result<(), SynthError> {
        let bad = |m: &str| Err(SynthError::Bad(m.to_string()));
        if self.heap == 0 || self.heap % PAGE_SIZE != 0 {
            return bad("heap must be a non-zero multiple of 4 KiB");
        }
        if self.procs == 0 || self.procs > 4096 {
            return bad("procs must be 1..=4096");
        }
        if !self.host_page.is_power_of_two() || self.host_page < PAGE_SIZE {
            return bad("host page size must be a power of two ≥ 4 KiB");
        }
        if self.base % self.large.bytes() != 0 {
            return bad("base must be aligned to the large page size");
        }
        let end = self.base.checked_add(self.heap);
        let limit = 1u64 << (self.mode.va_bits() - 1);
        if end.is_none_or(|e| e > limit) {
            return bad("heap does not fit in the lower canonical half");
        }
        if self.segments > 1 << 16 {
            return bad("segments must be ≤ 65536");
        }
        Ok(())
    }

    /// Bytes of the heap in large pages.
    pub fn large_bytes(&self) -> u64 {
        let b = (self.heap as f64 * self.large_fraction) as u64;
        b - b % self.large.bytes()
    }

    /// Builds the ptsnap.
    pub fn build(&self) -> Result<Ptsnap, SynthError> {
        self.check()?;
        const GIB: u64 = 1 << 30;
        let large = self.large_bytes();
        let small = self.heap - large;
        // Upper bound of table pages per process: one per 2 MiB of 4K-mapped heap, one
        // per GiB, one per 512 GiB, plus a chain of fresh tables at each end.
        let per_proc =
            small.div_ceil(1 << 21) + self.heap.div_ceil(GIB) + self.heap.div_ceil(512 * GIB) + 12;
        let table_bytes = per_proc * self.procs as u64 * PAGE_SIZE;
        let tables_at = 0x10_0000u64;
        let data_start = (tables_at + table_bytes).div_ceil(GIB) * GIB;
        let heap_span = self.heap.div_ceil(GIB) * GIB;
        let needed = data_start + heap_span * self.procs as u64;
        let ram = match self.ram {
            Some(r) if r < needed => {
                return Err(SynthError::Bad(format!(
                    "ram={r:#x} is smaller than the {needed:#x} bytes needed"
                )))
            }
            Some(r) => r.div_ceil(PAGE_SIZE) * PAGE_SIZE,
            None => needed,
        };
        let mut b = TableBuilder {
            store: PageStore::new(),
            next: tables_at,
            limit: data_start,
            mode: self.mode,
        };
        let mut spaces = Vec::new();
        for p in 0..self.procs as u64 {
            let root = b.alloc()?;
            let pa = data_start + p * heap_span;
            let flags = PTE_P | PTE_RW | PTE_US | PTE_NX | PTE_A | PTE_D;
            b.map_range(root, self.base, pa, large, self.large, flags)?;
            b.map_range(
                root,
                self.base + large,
                pa + large,
                small,
                PageSize::Size4K,
                flags,
            )?;
            spaces.push(AddressSpace {
                cr3: root,
                label: format!("proc{p}"),
            });
        }
        let runs = match self.segments {
            0 => None,
            k => {
                // k equal runs (2 MiB aligned), each placed 1 GiB apart on the host so they
                // are not contiguous with each other.
                let step = (ram / k as u64).div_ceil(1 << 21) << 21;
                let mut runs = Vec::new();
                let mut at = 0;
                let mut hpa = 4 * GIB;
                while at < ram {
                    let len = step.min(ram - at);
                    runs.push(HostRun {
                        gpa_start: at,
                        len,
                        hpa_start: hpa,
                    });
                    hpa += len.div_ceil(GIB) * GIB + GIB;
                    at += len;
                }
                Some(runs)
            }
        };
        let range = RamRange {
            gpa_start: 0,
            len: ram,
            host_va: 0x7f00_0000_0000,
            host_page_size: self.host_page,
            runs,
        };
        let cpu = CpuState::long_mode(self.mode);
        let mut snap = Ptsnap {
            mode: self.mode,
            cr4: cpu.cr4,
            efer: cpu.efer,
            spaces,
            ram: vec![range],
            pages: b.store,
        };
        snap.validate()?;
        snap.optimize();
        Ok(snap)
    }
}

/// Creates tables on demand in a [`PageStore`], bump-allocating table pages.
struct TableBuilder {
    store: PageStore,
    next: u64,
    limit: u64,
    mode: PagingMode,
}

impl TableBuilder {
    fn alloc(&mut self) -> Result<u64, SynthError> {
        if self.next >= self.limit {
            return Err(SynthError::Bad("table area exhausted".into()));
        }
        let a = self.next;
        self.next += PAGE_SIZE;
        self.store.insert(a, [0; 512]);
        Ok(a)
    }

    /// Returns the table at `level` (≥ 1) covering `va`, creating tables on the way.
    fn table_for(&mut self, root: u64, va: u64, level: u8) -> Result<u64, SynthError> {
        let mut table = root;
        let mut l = self.mode.levels();
        while l > level {
            let idx = level_index(va, l) as usize;
            let e = self.store.page(table).map(|p| p[idx]).unwrap_or(0);
            table = if e & PTE_P != 0 {
                if e & PTE_PS != 0 {
                    return Err(SynthError::Bad(format!("overlapping mappings at {va:#x}")));
                }
                e & crate::paging::PTE_ADDR_MASK
            } else {
                let t = self.alloc()?;
                if let Some(p) = self.store.page_mut(table) {
                    p[idx] = t | PTE_P | PTE_RW | PTE_US;
                }
                t
            };
            l -= 1;
        }
        Ok(table)
    }

    /// Maps `len` bytes at `va` to `pa` with pages of `size`. Fills one table at a time.
    fn map_range(
        &mut self,
        root: u64,
        va: u64,
        pa: u64,
        len: u64,
        size: PageSize,
        flags: u64,
    ) -> Result<(), SynthError> {
        let level = size.leaf_level();
        let ps = if size == PageSize::Size4K { 0 } else { PTE_PS };
        let mut off = 0;
        while off < len {
            let v = va + off;
            let table = self.table_for(root, v, level)?;
            let first = level_index(v, level) as usize;
            let page = self
                .store
                .page_mut(table)
                .ok_or_else(|| SynthError::Bad("lost table".into()))?;
            for e in page.iter_mut().skip(first) {
                if off >= len {
                    break;
                }
                *e = (pa + off) | flags | ps;
                off += size.bytes();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walker::{walk, Access};

    #[test]
    fn parses_specs() {
        let s: SyntheticSpec = "heap=8G,pages=2m:0.7".parse().unwrap();
        assert_eq!(
            (s.heap, s.large, s.large_fraction),
            (8 << 30, PageSize::Size2M, 0.7)
        );
        let s: SyntheticSpec =
            "heap=64M,pages=4k,base=0x40000000,procs=3,levels=5,host=2m,segments=4"
                .parse()
                .unwrap();
        assert_eq!(
            (s.base, s.procs, s.mode, s.host_page, s.segments),
            (0x4000_0000, 3, PagingMode::Level5, 2 << 20, 4)
        );
        assert!(matches!(
            "heap=8G,color=red".parse::<SyntheticSpec>(),
            Err(SynthError::UnknownKey(_))
        ));
        assert!("heap=8G,pages=3m".parse::<SyntheticSpec>().is_err());
        assert!("heap=8G,pages=2m:1.5".parse::<SyntheticSpec>().is_err());
        assert!("heap=0".parse::<SyntheticSpec>().is_err());
    }

    #[test]
    fn builds_mixed_heap_that_walks_and_sums() {
        let s: SyntheticSpec = "heap=64M,pages=2m:0.5,procs=2".parse().unwrap();
        let snap = s.build().unwrap();
        assert_eq!(snap.spaces.len(), 2);
        let m = crate::enumerate::mapped_bytes(&snap.mappings(1).unwrap());
        assert_eq!((m.bytes_2m, m.bytes_4k), (32 << 20, 32 << 20));
        let cfg = snap.walk_config();
        let w = walk(
            &snap,
            &cfg,
            snap.spaces[0].cr3,
            s.base + 0x1234,
            Access::default(),
        )
        .unwrap();
        assert_eq!(w.size, PageSize::Size2M);
        let w2 = walk(
            &snap,
            &cfg,
            snap.spaces[0].cr3,
            s.base + (40 << 20) + 8,
            Access::default(),
        )
        .unwrap();
        assert_eq!(w2.size, PageSize::Size4K);
        // Heap is guest-physically linear.
        assert_eq!(w2.pa - w.pa, (40 << 20) + 8 - 0x1234);
        let lin = snap.largest_linear_region(0).unwrap().unwrap();
        assert_eq!((lin.va, lin.len), (s.base, 64 << 20));
        // Round trip through the file format.
        assert_eq!(Ptsnap::from_bytes(&snap.to_bytes()).unwrap(), snap);
    }

    #[test]
    fn eight_gib_heap_in_4k_pages_is_light() {
        let snap: Ptsnap = "heap=8G,pages=4k"
            .parse::<SyntheticSpec>()
            .unwrap()
            .build()
            .unwrap();
        // 2 M PTEs = 4096 PT pages, 8 PDs, 1 PDPT, 1 PML4.
        assert_eq!(snap.pages.len(), 4096 + 8 + 1 + 1);
    }
}
