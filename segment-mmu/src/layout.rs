//! A guest's memory layout from a page-table capture (`segvmm layout`): RAM ranges and
//! their host mapping, page sizes, host-physically contiguous runs, and how much one
//! segment would cover on each side of translation (guest-physical → host-physical for
//! a Compromis/VMM direct segment, guest-virtual → guest-physical for a guest direct
//! segment).

use std::fmt::Write as _;

use serde::Serialize;

use crate::census::{direct_map, table_pages, DirectMap, TablePages};
use crate::enumerate::{enumerate, linear_regions, mapped_bytes, MappingRange};
use crate::ptsnap::Ptsnap;

/// An address space whose tables cannot be walked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Enumerating or counting the space's tables failed.
    #[error("address space {label}: {source}")]
    Space {
        /// The space's label.
        label: String,
        /// Cause.
        source: crate::enumerate::Error,
    },
}

/// One RAM range.
#[derive(Debug, Serialize)]
pub struct RamLayout {
    /// First guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// Host virtual address of `gpa`.
    pub host_va: u64,
    /// Host page size.
    pub host_page_size: u64,
    /// Host-physically contiguous runs (segments needed), when known.
    pub runs: Option<usize>,
    /// Largest run, bytes.
    pub largest_run: Option<u64>,
}

/// One address space.
#[derive(Debug, Serialize)]
pub struct SpaceLayout {
    /// Label.
    pub label: String,
    /// CR3.
    pub cr3: u64,
    /// Mapped bytes by page size.
    pub mapped_4k: u64,
    /// 2 MiB.
    pub mapped_2m: u64,
    /// 1 GiB.
    pub mapped_1g: u64,
    /// Coalesced mapping ranges.
    pub ranges: usize,
    /// Largest VA range mapped linearly onto guest-physical memory (one guest direct
    /// segment): (va, pa, len).
    pub largest_linear: Option<(u64, u64, u64)>,
    /// Fraction of mapped bytes that segment covers.
    pub guest_segment_coverage: f64,
    /// The kernel's direct map (the kernel-half offset va - pa with the most bytes), per
    /// page size: what Linux reports as DirectMap4k/2M/1G.
    pub direct_map: Option<DirectMap>,
    /// Page-table pages per half and level.
    pub tables: TablePages,
}

/// The whole layout.
#[derive(Debug, Serialize)]
pub struct Layout {
    /// Paging levels.
    pub levels: u8,
    /// Guest RAM bytes.
    pub ram_bytes: u64,
    /// RAM ranges.
    pub ram: Vec<RamLayout>,
    /// Fraction of guest RAM the largest host-contiguous run covers (one Compromis segment).
    pub vm_segment_coverage: Option<f64>,
    /// Segments needed to cover all of guest RAM (sum of runs), when known.
    pub vm_segments_needed: Option<usize>,
    /// Address spaces.
    pub spaces: Vec<SpaceLayout>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Computes the layout of `snap`; also returns the largest ranges per space for printing.
pub fn layout(snap: &Ptsnap, top: usize) -> Result<(Layout, Vec<Vec<MappingRange>>), Error> {
    let ram: Vec<RamLayout> = snap
        .ram
        .iter()
        .map(|r| RamLayout {
            gpa: r.gpa_start,
            len: r.len,
            host_va: r.host_va,
            host_page_size: r.host_page_size,
            runs: r.runs.as_ref().map(|v| v.len()),
            largest_run: r.runs.as_ref().and_then(|v| v.iter().map(|x| x.len).max()),
        })
        .collect();
    let ram_bytes = snap.ram_bytes();
    let known = ram.iter().all(|r| r.runs.is_some());
    let largest = ram.iter().filter_map(|r| r.largest_run).max();
    let cfg = snap.walk_config();
    let mut spaces = Vec::new();
    let mut tops = Vec::new();
    for s in &snap.spaces {
        let space = |source| Error::Space {
            label: s.label.clone(),
            source,
        };
        let ranges = enumerate(snap, &cfg, s.cr3).map_err(space)?;
        let mb = mapped_bytes(&ranges);
        let lin = linear_regions(&ranges).into_iter().max_by_key(|l| l.len);
        let tables = table_pages(snap, &cfg, s.cr3).map_err(space)?;
        let total = mb.total();
        spaces.push(SpaceLayout {
            label: s.label.clone(),
            cr3: s.cr3,
            mapped_4k: mb.bytes_4k,
            mapped_2m: mb.bytes_2m,
            mapped_1g: mb.bytes_1g,
            ranges: ranges.len(),
            largest_linear: lin.as_ref().map(|l| (l.va, l.pa, l.len)),
            guest_segment_coverage: match (&lin, total) {
                (Some(l), t) if t > 0 => l.len as f64 / t as f64,
                _ => 0.0,
            },
            direct_map: direct_map(&ranges),
            tables,
        });
        let mut sorted = ranges;
        sorted.sort_by_key(|r| std::cmp::Reverse(r.len));
        sorted.truncate(top);
        tops.push(sorted);
    }
    Ok((
        Layout {
            levels: cfg.mode.levels(),
            ram_bytes,
            ram,
            vm_segment_coverage: (known && ram_bytes > 0)
                .then(|| largest.unwrap_or(0) as f64 / ram_bytes as f64),
            vm_segments_needed: known.then(|| {
                snap.ram
                    .iter()
                    .map(|r| r.runs.as_ref().map_or(0, |v| v.len()))
                    .sum()
            }),
            spaces,
        },
        tops,
    ))
}

/// The layout as `segvmm layout` prints it, with `name` (the file) in the first line and
/// `tops` (from [`layout`]) listed per space.
pub fn text(name: &str, l: &Layout, tops: &[Vec<MappingRange>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {}-level paging, {:.0} MiB of guest RAM, {} address space(s)",
        name,
        l.levels,
        mib(l.ram_bytes),
        l.spaces.len()
    );
    let _ = writeln!(out, "guest RAM (one host mapping: hva = base + gpa)");
    for r in &l.ram {
        let runs = match (r.runs, r.largest_run) {
            (Some(n), Some(big)) => {
                format!("{n} host-contiguous runs, largest {:.0} MiB", mib(big))
            }
            _ => "host-physical runs unknown".into(),
        };
        let _ = writeln!(
            out,
            "  gpa {:#012x}-{:#012x} {:>8.0} MiB  hva {:#x}  host pages {} KiB  {runs}",
            r.gpa,
            r.gpa + r.len,
            mib(r.len),
            r.host_va,
            r.host_page_size / 1024
        );
    }
    let _ = match (l.vm_segment_coverage, l.vm_segments_needed) {
        (Some(c), Some(n)) => writeln!(
            out,
            "one VM segment (Compromis / VMM direct) covers {:.1}% of guest RAM; {n} segment(s) cover all of it",
            c * 100.0
        ),
        _ => writeln!(
            out,
            "one VM segment: coverage unknown (the ptsnap has no host-physical runs)"
        ),
    };
    for (s, top) in l.spaces.iter().zip(tops) {
        space_text(&mut out, s, top);
    }
    out
}

/// One address space's lines of [`text`].
fn space_text(out: &mut String, s: &SpaceLayout, top: &[MappingRange]) {
    let _ = writeln!(
        out,
        "address space {} (cr3 {:#x}): mapped {:.1} MiB in 4K, {:.1} MiB in 2M, {:.1} MiB in 1G pages; {} ranges",
        s.label,
        s.cr3,
        mib(s.mapped_4k),
        mib(s.mapped_2m),
        mib(s.mapped_1g),
        s.ranges
    );
    if let Some((va, pa, len)) = s.largest_linear {
        let _ = writeln!(
            out,
            "  one guest direct segment: va {va:#x} -> gpa {pa:#x}, {:.1} MiB = {:.1}% of mapped bytes",
            mib(len),
            s.guest_segment_coverage * 100.0
        );
    }
    if let Some(d) = &s.direct_map {
        let _ = writeln!(
            out,
            "  direct map (va = gpa + {:#x}, gpa {:#x}-{:#x}): {:.1} MiB in 4K, {:.1} MiB in 2M, {:.1} MiB in 1G pages",
            d.offset,
            d.pa_start,
            d.pa_end,
            mib(d.bytes.bytes_4k),
            mib(d.bytes.bytes_2m),
            mib(d.bytes.bytes_1g)
        );
    }
    let t = &s.tables;
    let _ = writeln!(
        out,
        "  page-table pages: {} in all; user half {} (PT {}, PD {}, PDPT {}), kernel half {} (PT {}, PD {}, PDPT {})",
        t.total,
        t.user_total(),
        t.user[0],
        t.user[1],
        t.user[2],
        t.kernel_total(),
        t.kernel[0],
        t.kernel[1],
        t.kernel[2]
    );
    for r in top {
        let _ = writeln!(
            out,
            "  va {:#018x} -> gpa {:#012x} {:>10.1} MiB {:?}{}{}{}",
            r.va,
            r.pa,
            mib(r.len),
            r.size,
            if r.writable { " rw" } else { " ro" },
            if r.user { " user" } else { " kernel" },
            if r.no_exec { " nx" } else { "" }
        );
    }
}
