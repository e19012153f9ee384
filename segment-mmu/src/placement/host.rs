//! One host's physical memory: free extents, the segments placed in it, and hard-faulted pages.
//!
//! Free memory is kept twice: by address (to coalesce neighbours on release and to answer
//! first-fit) and by size (to answer best-fit and worst-fit in O(log n)). Both views are
//! updated together so that they always describe the same extents; `check` verifies that.

use std::collections::{BTreeMap, BTreeSet};

use super::policy::ExtentPolicy;
use super::size::align_up;

/// The unit in which hard faults are recorded: one 4 KiB base page.
pub const PAGE: u64 = 4096;

/// Identifies the VM that owns a segment.
pub type Owner = u32;

/// A host-memory operation that would break the model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Host geometry that cannot describe memory (zero size, unaligned, reserved too large).
    #[error("bad host geometry: {0}")]
    Geometry(String),
    /// An allocation that is not entirely inside one free extent.
    #[error("range {start:#x}+{len:#x} is not free")]
    NotFree {
        /// First byte asked for.
        start: u64,
        /// Bytes asked for.
        len: u64,
    },
    /// A release of an address where no segment starts.
    #[error("no segment starts at {0:#x}")]
    NoSegment(u64),
    /// The two views of free memory, or free and used memory, disagree.
    #[error("host invariant broken: {0}")]
    Invariant(String),
}

/// A segment move decided by compaction: the segment at `from` now starts at `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// VM owning the segment.
    pub owner: Owner,
    /// Old start address.
    pub from: u64,
    /// New start address.
    pub to: u64,
    /// Segment length.
    pub len: u64,
}

/// Physical memory of one host.
#[derive(Debug, Clone)]
pub struct HostMemory {
    size: u64,
    reserved: u64,
    align: u64,
    free: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    free_bytes: u64,
    used: BTreeMap<u64, (u64, Owner)>,
    bad: BTreeSet<u64>,
    /// Faulted pages one segment may cover (the escape filter's size).
    filter: u32,
    /// Longest segment that could be placed now covering at most `filter` faulted pages;
    /// kept up to date only when the host has faulted pages (else it is `largest_free`).
    placeable: u64,
}

impl HostMemory {
    /// A host of `size` bytes whose first `reserved` bytes belong to the host kernel, placing
    /// segments at multiples of `align`, with hard-faulted pages at the given addresses.
    pub fn new(size: u64, reserved: u64, align: u64, bad_pages: &[u64]) -> Result<Self, Error> {
        if !align.is_power_of_two() || align < PAGE {
            return Err(Error::Geometry(format!(
                "alignment {align} is not a power of two >= 4 KiB"
            )));
        }
        if size == 0 || size % align != 0 {
            return Err(Error::Geometry(format!(
                "host size {size} is not a non-zero multiple of the alignment {align}"
            )));
        }
        let reserved = align_up(reserved, align);
        if reserved >= size {
            return Err(Error::Geometry(format!(
                "reserved region {reserved} leaves no memory in a host of {size}"
            )));
        }
        let mut h = Self {
            size,
            reserved,
            align,
            free: BTreeMap::new(),
            by_size: BTreeSet::new(),
            free_bytes: 0,
            used: BTreeMap::new(),
            bad: BTreeSet::new(),
            filter: 0,
            placeable: 0,
        };
        for &b in bad_pages {
            if b >= size {
                return Err(Error::Geometry(format!(
                    "hard-faulted page {b:#x} is outside the host"
                )));
            }
            if b >= reserved {
                h.bad.insert(b & !(PAGE - 1));
            }
        }
        h.insert_free(reserved, size - reserved);
        h.refresh_placeable();
        Ok(h)
    }

    /// Lets one segment cover up to `faults` faulted pages (an escape filter of that size).
    pub fn with_escape_filter(mut self, faults: u32) -> Self {
        self.filter = faults;
        self.refresh_placeable();
        self
    }

    /// Longest segment that one placement could get now, honouring the escape filter: the
    /// key by which the cluster picks hosts, so that a host it picks can really take the VM.
    pub fn placeable(&self) -> u64 {
        if self.bad.is_empty() {
            self.largest_free()
        } else {
            self.placeable
        }
    }

    /// Recomputes `placeable`: extents are visited largest first and the walk stops as soon
    /// as no remaining extent can beat the best window, so it costs about one step per
    /// faulted page rather than one per extent.
    fn refresh_placeable(&mut self) {
        if self.bad.is_empty() {
            return;
        }
        let mut best = 0;
        for &(l, s) in self.by_size.iter().rev() {
            if l <= best {
                break;
            }
            best = best.max(self.best_window(s, l, self.filter));
        }
        self.placeable = best;
    }

    /// Longest aligned window inside extent `[start, start + ext)` covering at most `faults`
    /// faulted pages. Best windows start at the extent start or just after a faulted page,
    /// and stop just before the (faults + 1)-th faulted page after their start.
    fn best_window(&self, start: u64, ext: u64, faults: u32) -> u64 {
        let end = start + ext;
        let bad: Vec<u64> = self.bad.range(start..end).copied().collect();
        if bad.len() <= faults as usize {
            return end - align_up(start, self.align).min(end);
        }
        let mut best = 0;
        for j in 0..=bad.len() {
            let from = if j == 0 {
                align_up(start, self.align)
            } else {
                align_up(bad[j - 1] + PAGE, self.align)
            };
            let stop = bad
                .get(j + faults as usize)
                .map_or(end, |&b| (b & !(self.align - 1)).min(end));
            best = best.max(stop.saturating_sub(from));
        }
        best
    }

    /// The `k` largest aligned holes of free memory that cover no faulted page, largest
    /// first (ties: lower address first). Extents are visited largest first and the walk stops
    /// once no extent can beat the k-th hole, so clean hosts cost k steps.
    pub fn largest_clean_holes(&self, k: usize) -> Vec<(u64, u64)> {
        let mut best: Vec<(u64, u64)> = Vec::with_capacity(k + 1);
        let mut pieces = Vec::new();
        for &(l, s) in self.by_size.iter().rev() {
            if k == 0 || (best.len() == k && l <= best[k - 1].1) {
                break;
            }
            pieces.clear();
            self.push_clean_holes(s, s + l, &mut pieces);
            for &p in &pieces {
                let at = best.partition_point(|b| {
                    (std::cmp::Reverse(b.1), b.0) < (std::cmp::Reverse(p.1), p.0)
                });
                best.insert(at, p);
                best.truncate(k);
            }
        }
        best
    }

    /// Total physical memory.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Bytes that VMs may use (size minus the reserved region).
    pub fn usable(&self) -> u64 {
        self.size - self.reserved
    }
    /// Free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }
    /// Largest free extent (ignoring hard faults: an upper bound on what one segment can get).
    pub fn largest_free(&self) -> u64 {
        self.by_size.last().map_or(0, |&(l, _)| l)
    }
    /// Number of free extents.
    pub fn free_extent_count(&self) -> usize {
        self.free.len()
    }
    /// Free extents as (start, len), in address order.
    pub fn free_extents(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter().map(|(&s, &l)| (s, l))
    }
    /// Placed segments as (start, len, owner), in address order.
    pub fn segments(&self) -> impl Iterator<Item = (u64, u64, Owner)> + '_ {
        self.used.iter().map(|(&s, &(l, o))| (s, l, o))
    }
    /// Number of hard-faulted pages in `[start, start + len)`.
    pub fn bad_pages_in(&self, start: u64, len: u64) -> u32 {
        self.bad.range(start..start.saturating_add(len)).count() as u32
    }

    /// The `k` largest free extent lengths, largest first: what a split placement could use.
    pub fn largest_extents(&self, k: usize) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_size.iter().rev().take(k).map(|&(l, s)| (s, l))
    }

    /// Where a segment of `len` bytes would go under `policy`, covering at most `faults`
    /// hard-faulted pages (the room left in the VM's escape filter). Returns the start and the
    /// number of faulted pages covered.
    pub fn find(&self, len: u64, policy: ExtentPolicy, faults: u32) -> Option<(u64, u32)> {
        if len == 0
            || len > self.largest_free()
            || (faults <= self.filter && len > self.placeable())
        {
            return None;
        }
        match policy {
            ExtentPolicy::FirstFit => self
                .free
                .iter()
                .filter(|(_, &l)| l >= len)
                .find_map(|(&s, &l)| self.place_in(s, l, len, faults)),
            ExtentPolicy::BestFit => self
                .by_size
                .range((len, 0)..)
                .find_map(|&(l, s)| self.place_in(s, l, len, faults)),
            ExtentPolicy::WorstFit => self
                .by_size
                .iter()
                .rev()
                .take_while(|&&(l, _)| l >= len)
                .find_map(|&(l, s)| self.place_in(s, l, len, faults)),
        }
    }

    /// Lowest aligned start inside the extent `[start, start + ext)` for `len` bytes covering
    /// at most `faults` hard-faulted pages. Only positions just after a faulted page can beat
    /// the extent start, so those are the only candidates tried.
    fn place_in(&self, start: u64, ext: u64, len: u64, faults: u32) -> Option<(u64, u32)> {
        let end = start + ext;
        let first = align_up(start, self.align);
        let after_bad = self
            .bad
            .range(start..end)
            .map(|&b| align_up(b + PAGE, self.align));
        std::iter::once(first).chain(after_bad).find_map(|x| {
            if x + len > end {
                return None;
            }
            let n = self.bad_pages_in(x, len);
            (n <= faults).then_some((x, n))
        })
    }

    /// Places a segment of `owner` at `[start, start + len)`, which must be free.
    pub fn allocate(&mut self, start: u64, len: u64, owner: Owner) -> Result<(), Error> {
        let (&fs, &fl) = self
            .free
            .range(..=start)
            .next_back()
            .ok_or(Error::NotFree { start, len })?;
        if len == 0 || start + len > fs + fl {
            return Err(Error::NotFree { start, len });
        }
        self.remove_free(fs, fl);
        if start > fs {
            self.insert_free(fs, start - fs);
        }
        if fs + fl > start + len {
            self.insert_free(start + len, fs + fl - start - len);
        }
        self.used.insert(start, (len, owner));
        self.refresh_placeable();
        Ok(())
    }

    /// Frees the segment starting at `start`, coalescing it with free neighbours.
    /// Returns its length and owner.
    pub fn release(&mut self, start: u64) -> Result<(u64, Owner), Error> {
        let (len, owner) = self.used.remove(&start).ok_or(Error::NoSegment(start))?;
        let mut s = start;
        let mut l = len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            if ps + pl == start {
                self.remove_free(ps, pl);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(start + len)) {
            self.remove_free(start + len, nl);
            l += nl;
        }
        self.insert_free(s, l);
        self.refresh_placeable();
        Ok((len, owner))
    }

    fn insert_free(&mut self, start: u64, len: u64) {
        self.free.insert(start, len);
        self.by_size.insert((len, start));
        self.free_bytes += len;
    }

    fn remove_free(&mut self, start: u64, len: u64) {
        self.free.remove(&start);
        self.by_size.remove(&(len, start));
        self.free_bytes -= len;
    }

    /// Plans the cheapest compaction that frees an aligned window of `len` bytes covering at
    /// most `faults` faulted pages, by moving whole segments that touch the window into free
    /// space outside it. Moved segments never cover faulted pages (their escape filters are
    /// not consulted). Returns the window start, the moves and the bytes moved, or `None` when
    /// no plan costs at most `budget` bytes.
    pub fn plan_compaction(
        &self,
        len: u64,
        faults: u32,
        budget: u64,
    ) -> Option<(u64, Vec<Move>, u64)> {
        if self.free_bytes < len {
            return None;
        }
        // Candidate windows start at the boundaries of blocks (free or used); a cheaper window
        // would have to start inside a block, which moves the same segments or more.
        let mut starts: Vec<u64> = self.free.keys().chain(self.used.keys()).copied().collect();
        starts.sort_unstable();
        let segs: Vec<(u64, u64, Owner)> = self.segments().collect();
        let mut cands: Vec<(u64, u64)> = Vec::new();
        let mut first_seg = 0usize;
        for &x0 in &starts {
            let x = align_up(x0, self.align);
            let end = x + len;
            if end > self.size || self.bad_pages_in(x, len) > faults {
                continue;
            }
            while first_seg < segs.len() && segs[first_seg].0 + segs[first_seg].1 <= x {
                first_seg += 1;
            }
            let cost: u64 = segs[first_seg..]
                .iter()
                .take_while(|s| s.0 < end)
                .map(|s| s.1)
                .sum();
            if cost <= budget {
                cands.push((cost, x));
            }
        }
        cands.sort_unstable();
        cands.dedup();
        for (cost, x) in cands {
            if let Some(moves) = self.relocate_out_of(x, x + len, &segs) {
                return Some((x, moves, cost));
            }
        }
        None
    }

    /// Finds new homes, outside `[lo, hi)` and away from faulted pages, for every segment
    /// touching `[lo, hi)`; largest segment first, best fit, so big segments are not starved.
    fn relocate_out_of(&self, lo: u64, hi: u64, segs: &[(u64, u64, Owner)]) -> Option<Vec<Move>> {
        let mut holes: Vec<(u64, u64)> = Vec::new();
        for (s, l) in self.free_extents() {
            for (a, b) in [(s, (s + l).min(lo)), (s.max(hi), s + l)] {
                self.push_clean_holes(a, b, &mut holes);
            }
        }
        let mut movers: Vec<(u64, u64, Owner)> = segs
            .iter()
            .filter(|s| s.0 < hi && s.0 + s.1 > lo)
            .copied()
            .collect();
        movers.sort_unstable_by_key(|m| std::cmp::Reverse(m.1));
        let mut moves = Vec::with_capacity(movers.len());
        for (from, l, owner) in movers {
            let i = holes
                .iter()
                .enumerate()
                .filter(|(_, h)| h.1 >= l)
                .min_by_key(|(_, h)| h.1)
                .map(|(i, _)| i)?;
            let (hs, hl) = holes[i];
            moves.push(Move {
                owner,
                from,
                to: hs,
                len: l,
            });
            if hl == l {
                holes.swap_remove(i);
            } else {
                holes[i] = (hs + l, hl - l);
            }
        }
        Some(moves)
    }

    /// Splits free range `[a, b)` at faulted pages into aligned holes.
    fn push_clean_holes(&self, a: u64, b: u64, out: &mut Vec<(u64, u64)>) {
        if a >= b {
            return;
        }
        let mut cur = align_up(a, self.align);
        for &bad in self.bad.range(a..b) {
            let stop = bad & !(self.align - 1);
            if stop > cur {
                out.push((cur, stop - cur));
            }
            cur = cur.max(align_up(bad + PAGE, self.align));
        }
        if b > cur {
            out.push((cur, b - cur));
        }
    }

    /// Carries out a compaction plan: each moved segment is placed at its new home, then its
    /// old home is freed. The caller updates the owners' records.
    pub fn apply_moves(&mut self, moves: &[Move]) -> Result<(), Error> {
        for m in moves {
            match self.used.get(&m.from) {
                Some(&(l, o)) if l == m.len && o == m.owner => {}
                _ => return Err(Error::NoSegment(m.from)),
            }
            self.allocate(m.to, m.len, m.owner)?;
        }
        for m in moves {
            self.release(m.from)?;
        }
        Ok(())
    }

    /// Verifies the model: free extents and segments tile the usable memory without overlap,
    /// free neighbours are coalesced, and both free-memory views agree.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invariant(m));
        if self.free.len() != self.by_size.len() {
            return bad("free views differ in length".into());
        }
        let mut blocks: Vec<(u64, u64, bool)> =
            self.free_extents().map(|(s, l)| (s, l, true)).collect();
        blocks.extend(self.segments().map(|(s, l, _)| (s, l, false)));
        blocks.sort_unstable();
        let mut at = self.reserved;
        let mut prev_free = false;
        let mut free_sum = 0;
        for (s, l, is_free) in blocks {
            if s != at {
                return bad(format!("gap or overlap at {at:#x} (next block at {s:#x})"));
            }
            if is_free {
                if prev_free {
                    return bad(format!("uncoalesced free extents at {s:#x}"));
                }
                if !self.by_size.contains(&(l, s)) {
                    return bad(format!("free extent {s:#x} missing from size index"));
                }
                free_sum += l;
            }
            prev_free = is_free;
            at = s + l;
        }
        if at != self.size {
            return bad(format!(
                "blocks end at {at:#x}, host ends at {:#x}",
                self.size
            ));
        }
        if free_sum != self.free_bytes {
            return bad(format!(
                "free bytes {} but extents sum to {free_sum}",
                self.free_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::size::GIB;

    fn host(gib: u64) -> HostMemory {
        HostMemory::new(gib * GIB, 0, GIB, &[]).unwrap()
    }

    #[test]
    fn allocate_release_coalesces() {
        let mut h = host(8);
        h.allocate(0, 2 * GIB, 1).unwrap();
        h.allocate(2 * GIB, 2 * GIB, 2).unwrap();
        h.allocate(4 * GIB, 2 * GIB, 3).unwrap();
        h.check().unwrap();
        assert_eq!(h.free_bytes(), 2 * GIB);
        h.release(0).unwrap();
        h.release(4 * GIB).unwrap();
        assert_eq!(h.free_extent_count(), 2);
        assert_eq!(h.largest_free(), 4 * GIB);
        h.release(2 * GIB).unwrap();
        assert_eq!(h.free_extent_count(), 1);
        assert_eq!(h.largest_free(), 8 * GIB);
        h.check().unwrap();
    }

    #[test]
    fn refuses_double_allocation_and_bad_release() {
        let mut h = host(4);
        h.allocate(GIB, GIB, 1).unwrap();
        assert!(h.allocate(GIB, GIB, 2).is_err());
        assert!(h.allocate(3 * GIB, 2 * GIB, 2).is_err());
        assert_eq!(h.release(0), Err(Error::NoSegment(0)));
        h.check().unwrap();
    }

    #[test]
    fn geometry_is_checked() {
        assert!(HostMemory::new(0, 0, GIB, &[]).is_err());
        assert!(HostMemory::new(GIB + 1, 0, GIB, &[]).is_err());
        assert!(HostMemory::new(GIB, GIB, GIB, &[]).is_err());
        assert!(HostMemory::new(GIB, 0, 3, &[]).is_err());
    }

    #[test]
    fn extent_policies_pick_as_named() {
        // Free: [0,1G) [2G,5G) [6G,8G): sizes 1, 3, 2.
        let mut h = host(8);
        h.allocate(GIB, GIB, 1).unwrap();
        h.allocate(5 * GIB, GIB, 2).unwrap();
        assert_eq!(h.find(GIB, ExtentPolicy::FirstFit, 0), Some((0, 0)));
        assert_eq!(
            h.find(2 * GIB, ExtentPolicy::FirstFit, 0),
            Some((2 * GIB, 0))
        );
        assert_eq!(
            h.find(2 * GIB, ExtentPolicy::BestFit, 0),
            Some((6 * GIB, 0))
        );
        assert_eq!(h.find(GIB, ExtentPolicy::WorstFit, 0), Some((2 * GIB, 0)));
        assert_eq!(h.find(4 * GIB, ExtentPolicy::FirstFit, 0), None);
    }

    #[test]
    fn faulted_pages_need_escape_filter() {
        let mut h = HostMemory::new(4 * GIB, 0, GIB, &[GIB + 5 * PAGE]).unwrap();
        // The only 4 GiB window covers the faulted page.
        assert_eq!(h.find(4 * GIB, ExtentPolicy::FirstFit, 0), None);
        assert_eq!(h.find(4 * GIB, ExtentPolicy::FirstFit, 1), Some((0, 1)));
        // A 2 GiB segment slides past it.
        assert_eq!(
            h.find(2 * GIB, ExtentPolicy::FirstFit, 0),
            Some((2 * GIB, 0))
        );
        h.allocate(2 * GIB, 2 * GIB, 1).unwrap();
        h.check().unwrap();
    }

    #[test]
    fn placeable_honours_the_escape_filter() {
        // Faulted pages in the 2nd and 6th GiB of an 8 GiB host.
        let bad = [GIB + PAGE, 5 * GIB + 7 * PAGE];
        let h = HostMemory::new(8 * GIB, 0, GIB, &bad).unwrap();
        assert_eq!(h.largest_free(), 8 * GIB);
        assert_eq!(h.placeable(), 3 * GIB, "[2G, 5G) is the longest clean run");
        assert_eq!(
            h.clone().with_escape_filter(1).placeable(),
            6 * GIB,
            "[2G, 8G) covers one"
        );
        assert_eq!(h.clone().with_escape_filter(2).placeable(), 8 * GIB);
        let all = vec![(2 * GIB, 3 * GIB), (6 * GIB, 2 * GIB), (0, GIB)];
        assert_eq!(h.largest_clean_holes(5), all);
        assert_eq!(h.largest_clean_holes(2), all[..2].to_vec());
        assert!(h.largest_clean_holes(0).is_empty());
        assert_eq!(h.find(4 * GIB, ExtentPolicy::FirstFit, 0), None);
        assert_eq!(
            h.find(3 * GIB, ExtentPolicy::FirstFit, 0),
            Some((2 * GIB, 0))
        );
        let mut h1 = h.with_escape_filter(1);
        assert_eq!(
            h1.find(6 * GIB, ExtentPolicy::BestFit, 1),
            Some((2 * GIB, 1))
        );
        h1.allocate(2 * GIB, 6 * GIB, 9).unwrap();
        assert_eq!(
            h1.placeable(),
            2 * GIB,
            "[0, 2G) covers one faulted page, as allowed"
        );
        h1.release(2 * GIB).unwrap();
        assert_eq!(h1.placeable(), 6 * GIB);
    }

    #[test]
    fn compaction_frees_a_window() {
        // 8 GiB: segments of 1 GiB at 1G, 3G, 5G leave 1 GiB holes: no 2 GiB extent.
        let mut h = host(8);
        for s in [1, 3, 5] {
            h.allocate(s * GIB, GIB, s as Owner).unwrap();
        }
        assert_eq!(h.find(3 * GIB, ExtentPolicy::FirstFit, 0), None);
        let (x, moves, cost) = h.plan_compaction(3 * GIB, 0, 8 * GIB).unwrap();
        assert_eq!(cost, GIB, "moving one segment is enough");
        assert_eq!(moves.len(), 1);
        h.apply_moves(&moves).unwrap();
        h.check().unwrap();
        assert!(h.find(3 * GIB, ExtentPolicy::FirstFit, 0).is_some());
        assert_eq!(h.bad_pages_in(x, 3 * GIB), 0);
        assert!(h
            .free_extents()
            .any(|(s, l)| s <= x && s + l >= x + 3 * GIB));
        // A zero budget refuses.
        let mut h2 = host(8);
        for s in [1, 3, 5] {
            h2.allocate(s * GIB, GIB, 0).unwrap();
        }
        assert!(h2.plan_compaction(3 * GIB, 0, 0).is_none());
    }
}
