//! The host side of a VM: how guest-physical addresses become host-physical.
//!
//! Built from a ptsnap's RAM ranges. Each range has a host page size (the leaf size
//! of the nested/EPT table for that range) and, where known, host-physically
//! contiguous runs, which become direct segments (base, limit, offset). The nested
//! table itself is not materialised: its shape is fully determined by the host page
//! size and the number of levels, and the models only need which entries a walk reads.

use crate::paging::PageSize;
use crate::ptsnap::Ptsnap;

/// A direct segment: addresses in `[base, limit)` translate to `addr + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    /// First address covered.
    pub base: u64,
    /// One past the last address covered.
    pub limit: u64,
    /// Added (wrapping) to translate.
    pub offset: u64,
}

impl Segment {
    /// True when `addr` is inside.
    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.limit
    }
    /// Base-bound translation.
    #[inline]
    pub fn translate(&self, addr: u64) -> u64 {
        addr.wrapping_add(self.offset)
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.limit - self.base
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.limit == self.base
    }
}

/// Guest-physical to host-physical model.
#[derive(Debug, Clone)]
pub struct HostModel {
    /// `(start, end, host page size)` per RAM range, sorted.
    ranges: Vec<(u64, u64, PageSize)>,
    /// All host-physical runs as segments, sorted by base.
    segments: Vec<Segment>,
}

impl HostModel {
    /// From a ptsnap's RAM layout.
    pub fn from_ptsnap(s: &Ptsnap) -> Self {
        let ranges = s
            .ram
            .iter()
            .map(|r| (r.gpa_start, r.end(), PageSize::at_most(r.host_page_size)))
            .collect();
        let mut segments: Vec<Segment> = s
            .ram
            .iter()
            .flat_map(|r| r.runs.iter().flatten())
            .map(|run| Segment {
                base: run.gpa_start,
                limit: run.gpa_start + run.len,
                offset: run.hpa_start.wrapping_sub(run.gpa_start),
            })
            .collect();
        // Adjacent runs that are also host-contiguous form one segment.
        segments.sort_by_key(|s| s.base);
        let mut merged: Vec<Segment> = Vec::with_capacity(segments.len());
        for s in segments {
            match merged.last_mut() {
                Some(p) if p.limit == s.base && p.offset == s.offset => p.limit = s.limit,
                _ => merged.push(s),
            }
        }
        Self {
            ranges,
            segments: merged,
        }
    }

    /// Host page size backing `gpa`, or `None` outside RAM (an EPT violation).
    #[inline]
    pub fn page_size(&self, gpa: u64) -> Option<PageSize> {
        if let [(lo, hi, size)] = self.ranges[..] {
            return (gpa >= lo && gpa < hi).then_some(size);
        }
        let i = self.ranges.partition_point(|r| r.1 <= gpa);
        self.ranges.get(i).filter(|r| r.0 <= gpa).map(|r| r.2)
    }

    /// All segments, sorted by base.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The `k` largest segments, sorted by base: a k-entry segment table.
    pub fn largest_segments(&self, k: usize) -> Vec<Segment> {
        let mut v = self.segments.clone();
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        v.truncate(k);
        v.sort_by_key(|s| s.base);
        v
    }
}

/// A small segment table searched by base-bound comparisons (done in parallel in
/// hardware: one base-bound computation per lookup whatever the table size).
#[derive(Debug, Clone, Default)]
pub struct SegmentTable {
    segs: Vec<Segment>,
}

impl SegmentTable {
    /// A table of `segs` (sorted by base, non-overlapping).
    pub fn new(segs: Vec<Segment>) -> Self {
        Self { segs }
    }
    /// The segment holding `addr`.
    #[inline]
    pub fn find(&self, addr: u64) -> Option<&Segment> {
        if self.segs.len() == 1 {
            return self.segs.first().filter(|s| s.contains(addr));
        }
        let i = self.segs.partition_point(|s| s.limit <= addr);
        self.segs.get(i).filter(|s| s.contains(addr))
    }
    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segs.len()
    }
    /// True when there is no segment.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptsnap::SyntheticSpec;

    #[test]
    fn segments_and_page_sizes_come_from_ram_ranges() {
        let snap = "heap=64M,host=2m,segments=3"
            .parse::<SyntheticSpec>()
            .unwrap()
            .build()
            .unwrap();
        let h = HostModel::from_ptsnap(&snap);
        assert_eq!(h.page_size(0x1000), Some(PageSize::Size2M));
        assert_eq!(h.page_size(snap.ram_bytes()), None);
        assert_eq!(h.segments().len(), 3);
        let t = SegmentTable::new(h.largest_segments(2));
        assert_eq!(t.len(), 2);
        let s = h.segments()[1];
        let found = SegmentTable::new(h.segments().to_vec())
            .find(s.base + 5)
            .copied();
        assert_eq!(found, Some(s));
        assert_eq!(s.translate(s.base + 5), s.base + 5 + s.offset);
    }
}
