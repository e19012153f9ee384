//! Page hotness from a VMM's dirty log: the per-interval dirty sets of a guest, per-page
//! temperature, the versioned `.hot` file that holds both, the 2 MiB view derived from the
//! 4 KiB ground truth, and (in [`tier`]) a two-tier memory model that replays the file.
//!
//! # Temperature
//!
//! Each collection interval `k` yields the set `D(k)` of 4 KiB guest pages written during
//! it. A page's temperature is an exponentially decayed count of the intervals it was
//! dirtied in:
//!
//! ```text
//! T_p(k) = λ · T_p(k−1) + d_p(k),   T_p(−1) = 0,   d_p(k) = 1 if p ∈ D(k) else 0
//! λ = 2^(−1/h)
//! ```
//!
//! `h` is the half-life in intervals (default [`DEFAULT_HALF_LIFE`] = 4): a page's
//! temperature halves after `h` intervals without writes, and a page written in every
//! interval converges to `1/(1−λ)` (≈ 6.3 for `h` = 4). The count is per interval, not per
//! write: the dirty log says *whether* a page was written in an interval, not how often, and
//! it never sees reads, so read-only hot pages have temperature 0 (the same blind spot as
//! vTMM's page-modification logging). Working in intervals rather than seconds keeps the
//! temperature of a page comparable across runs with different intervals only when `h` is
//! scaled with them; the file records both the interval and `h`.
//!
//! # 2 MiB view
//!
//! A 2 MiB frame is dirty in an interval when any of its 512 pages is; its temperature uses
//! the same formula over the derived sets. [`Summary`] compares the two: the bytes a 2 MiB
//! tracker would report against the bytes actually written (the "amplification").
//!
//! # File format, version 1 (`.hot`)
//!
//! All integers little-endian; `varint` is unsigned LEB128.
//!
//! ```text
//! magic        8 bytes  "SEGVHOT\0"
//! version      u16      1
//! page_shift   u8       12 (4 KiB pages; the only value version 1 allows)
//! reserved     u8       0
//! interval_ns  u64      nominal collection interval
//! half_life    f64      h, in intervals (> 0)
//! method_len   u8, then method_len bytes of UTF-8 (how the sets were collected)
//! n_ranges     u32, then n_ranges × (gpa u64, len u64): guest RAM, 4 KiB aligned, ascending
//! n_intervals  u32, then per interval:
//!     end_ns   u64      end of the interval since tracking started (non-decreasing)
//!     count    u32      dirty 4 KiB pages in the interval
//!     n_runs   u32      runs of consecutive dirty pages, then n_runs × (gap varint, len−1 varint)
//!                       gap = first pfn of the run − end of the previous run (first run: − 0)
//! n_temps      u32, then n_temps × (pfn-delta varint, temperature f32): every page with a
//!                       non-zero temperature after the last interval, ascending pfn
//! checksum     u64      FNV-1a 64 of every byte before it
//! ```
//!
//! Run-length encoding keeps sequential writers (a page-table fill, a stream) at a few bytes
//! per interval; random writers cost about two bytes per dirty page. Readers reject unknown
//! versions, trailing bytes, a bad checksum, pages outside the RAM ranges, counts that do not
//! match the runs and temperatures that do not match the intervals, each with an error that
//! names the problem.

pub mod plot;
pub mod tier;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::bytes::{self, fnv1a, put_varint, Reader};

/// File magic.
pub const MAGIC: [u8; 8] = *b"SEGVHOT\0";
/// The version this build writes and reads.
pub const VERSION: u16 = 1;
/// log2 of the tracking grain (4 KiB).
pub const PAGE_SHIFT: u32 = 12;
/// 4 KiB pages per 2 MiB frame.
pub const PAGES_PER_HUGE: u64 = 512;
/// Most dirty page-intervals (sum over intervals of dirty pages) a reader accepts, so that
/// a corrupt count or one long run cannot make it allocate more than 256 MiB of page numbers.
pub const MAX_PAGE_INTERVALS: u64 = 1 << 25;
/// Most guest RAM a log may describe (1 TiB): the tier model keeps state per RAM page.
pub const MAX_RAM_BYTES: u64 = 1 << 40;
/// Default temperature half-life, in intervals.
pub const DEFAULT_HALF_LIFE: f64 = 4.0;

/// Errors reading, writing or validating hotness data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The first 8 bytes are not the magic.
    #[error("not a hotness file: magic is {0:?}, expected \"SEGVHOT\\0\"")]
    BadMagic(String),
    /// A version this build does not read.
    #[error("hotness file version {0} is not supported (this build reads version {VERSION})")]
    Version(u16),
    /// The file ends early.
    #[error("hotness file truncated while reading {0}")]
    Truncated(&'static str),
    /// The checksum does not match the contents.
    #[error("hotness file checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): the file is corrupted")]
    Checksum {
        /// In the file.
        stored: u64,
        /// Over the contents.
        computed: u64,
    },
    /// Drawing a plot.
    #[error(transparent)]
    Plot(#[from] crate::plot::Error),
    /// Contents that cannot be right.
    #[error("malformed hotness file: {0}")]
    Malformed(String),
    /// A bad argument to the API (not file contents).
    #[error("{0}")]
    Invalid(String),
    /// RAM ranges given to the API that cannot be right.
    #[error(transparent)]
    InvalidRanges(RangeError),
    /// RAM ranges in a file that cannot be right.
    #[error("malformed hotness file: {0}")]
    MalformedRanges(#[source] RangeError),
}

/// Guest RAM ranges that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Empty or not 4 KiB aligned.
    #[error("RAM range {index} ({gpa:#x}, {len:#x}) is empty or not 4 KiB aligned")]
    Unaligned {
        /// Which range.
        index: usize,
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Its end wraps.
    #[error("RAM range {0} overflows")]
    Overflows(usize),
    /// Not above the previous one.
    #[error("RAM range {index} ({gpa:#x}) overlaps or precedes range {}", index - 1)]
    Overlaps {
        /// Which range.
        index: usize,
        /// Start.
        gpa: u64,
    },
    /// More RAM than [`MAX_RAM_BYTES`].
    #[error("RAM ranges hold {0} bytes, more than the {MAX_RAM_BYTES}-byte cap (MAX_RAM_BYTES)")]
    TooLarge(u64),
}

/// One collection interval: the 4 KiB pages written during it.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// End of the interval, ns since tracking started.
    pub end_ns: u64,
    /// Dirty page frame numbers (gpa >> 12), ascending, no duplicates.
    pub pages: Vec<u64>,
}

/// A guest's dirty history: what the `.hot` file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HotnessLog {
    /// Nominal interval, ns.
    pub interval_ns: u64,
    /// Temperature half-life, intervals.
    pub half_life: f64,
    /// How the sets were collected (e.g. "bitmap+manual-protect").
    pub method: String,
    /// Guest RAM ranges (gpa, len), 4 KiB aligned, ascending, disjoint.
    pub ranges: Vec<(u64, u64)>,
    /// The intervals, in time order.
    pub intervals: Vec<Interval>,
}

/// The decay factor per interval for half-life `h` intervals: `λ = 2^(−1/h)`.
pub fn decay(half_life: f64) -> f64 {
    (-1.0 / half_life).exp2()
}

fn check_half_life(h: f64) -> Result<(), Error> {
    if h.is_finite() && h > 0.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "temperature half-life {h}: must be a positive number of intervals"
        )))
    }
}

impl HotnessLog {
    /// An empty log for a guest with RAM `ranges`.
    pub fn new(
        interval_ns: u64,
        half_life: f64,
        method: &str,
        ranges: Vec<(u64, u64)>,
    ) -> Result<Self, Error> {
        check_half_life(half_life)?;
        if method.len() > 255 {
            return Err(Error::Invalid("method name longer than 255 bytes".into()));
        }
        check_ranges(&ranges).map_err(Error::InvalidRanges)?;
        Ok(Self {
            interval_ns,
            half_life,
            method: method.into(),
            ranges,
            intervals: Vec::new(),
        })
    }

    /// Appends an interval; `pages` may be in any order and hold duplicates.
    pub fn push_interval(&mut self, end_ns: u64, mut pages: Vec<u64>) -> Result<(), Error> {
        pages.sort_unstable();
        pages.dedup();
        if let Some(prev) = self.intervals.last() {
            if end_ns < prev.end_ns {
                return Err(Error::Invalid(format!(
                    "interval ending at {end_ns} ns is before the previous one ({} ns)",
                    prev.end_ns
                )));
            }
        }
        if let Some(&p) = pages.iter().find(|&&p| !self.contains_pfn(p)) {
            return Err(Error::Invalid(format!(
                "page {:#x} is outside guest RAM",
                p << PAGE_SHIFT
            )));
        }
        self.intervals.push(Interval { end_ns, pages });
        Ok(())
    }

    /// Whether page `pfn` is guest RAM.
    pub fn contains_pfn(&self, pfn: u64) -> bool {
        let a = pfn
            .checked_shl(PAGE_SHIFT)
            .filter(|a| a >> PAGE_SHIFT == pfn);
        a.is_some_and(|a| self.ranges.iter().any(|&(g, l)| a >= g && a < g + l))
    }

    /// Guest RAM in 4 KiB pages.
    pub fn ram_pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.1 >> PAGE_SHIFT).sum()
    }

    /// Temperatures after the last interval: every page with `T > 0`, ascending pfn.
    pub fn temperatures(&self) -> Vec<(u64, f64)> {
        temperatures_of(
            self.intervals.iter().map(|i| i.pages.as_slice()),
            self.intervals.len(),
            self.half_life,
        )
    }

    /// The 2 MiB view: per interval, the dirty 2 MiB frame numbers (gpa >> 21), ascending.
    pub fn huge_sets(&self) -> Vec<Vec<u64>> {
        self.intervals.iter().map(|i| huge_set(&i.pages)).collect()
    }

    /// Temperatures of 2 MiB frames after the last interval (same formula, derived sets).
    pub fn huge_temperatures(&self) -> Vec<(u64, f64)> {
        let sets = self.huge_sets();
        temperatures_of(
            sets.iter().map(|s| s.as_slice()),
            sets.len(),
            self.half_life,
        )
    }

    /// Every page dirtied at least once, ascending.
    pub fn footprint(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .intervals
            .iter()
            .flat_map(|i| i.pages.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Counts and the 4 KiB / 2 MiB comparison.
    pub fn summary(&self) -> Summary {
        let n = self.intervals.len();
        let per4: Vec<u64> = self
            .intervals
            .iter()
            .map(|i| i.pages.len() as u64)
            .collect();
        let huge = self.huge_sets();
        let per2: Vec<u64> = huge.iter().map(|s| s.len() as u64).collect();
        let total4: u64 = per4.iter().sum();
        let total2: u64 = per2.iter().sum();
        let mut frames: Vec<u64> = huge.into_iter().flatten().collect();
        frames.sort_unstable();
        frames.dedup();
        let temps = self.temperatures();
        let mut hottest: Vec<(u64, f64)> = temps.clone();
        hottest.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hottest.truncate(5);
        Summary {
            intervals: n as u64,
            interval_ms: self.interval_ns as f64 / 1e6,
            half_life_intervals: self.half_life,
            method: self.method.clone(),
            distinct_pages_4k: self.footprint().len() as u64,
            distinct_frames_2m: frames.len() as u64,
            dirty_page_intervals_4k: total4,
            dirty_frame_intervals_2m: total2,
            max_dirty_per_interval_4k: per4.iter().copied().max().unwrap_or(0),
            mean_dirty_per_interval_4k: if n == 0 {
                0.0
            } else {
                total4 as f64 / n as f64
            },
            dirty_mib_4k: total4 as f64 * 4096.0 / (1 << 20) as f64,
            dirty_mib_2m: total2 as f64 * 2.0,
            amplification_2m: if total4 == 0 {
                0.0
            } else {
                (total2 * PAGES_PER_HUGE) as f64 / total4 as f64
            },
            hottest: hottest
                .into_iter()
                .map(|(p, t)| HotPage {
                    gpa: p << PAGE_SHIFT,
                    temperature: t,
                })
                .collect(),
        }
    }

    /// Encodes the log as a version-1 file (temperatures computed here).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            64 + self
                .intervals
                .iter()
                .map(|i| 16 + i.pages.len() * 2)
                .sum::<usize>(),
        );
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(PAGE_SHIFT as u8);
        b.push(0);
        b.extend_from_slice(&self.interval_ns.to_le_bytes());
        b.extend_from_slice(&self.half_life.to_le_bytes());
        let m = &self.method.as_bytes()[..self.method.len().min(255)];
        b.push(m.len() as u8);
        b.extend_from_slice(m);
        b.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for &(g, l) in &self.ranges {
            b.extend_from_slice(&g.to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
        }
        b.extend_from_slice(&(self.intervals.len() as u32).to_le_bytes());
        for i in &self.intervals {
            b.extend_from_slice(&i.end_ns.to_le_bytes());
            b.extend_from_slice(&(i.pages.len() as u32).to_le_bytes());
            let runs = runs_of(&i.pages);
            b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
            let mut end = 0u64;
            for (start, len) in runs {
                put_varint(&mut b, start - end);
                put_varint(&mut b, len - 1);
                end = start + len;
            }
        }
        let temps = self.temperatures();
        b.extend_from_slice(&(temps.len() as u32).to_le_bytes());
        let mut prev = 0u64;
        for (p, t) in temps {
            put_varint(&mut b, p - prev);
            prev = p;
            b.extend_from_slice(&(t as f32).to_le_bytes());
        }
        let sum = fnv1a(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decodes and validates a file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let (body, stored) = split_header(bytes)?;
        let computed = fnv1a(body);
        let mut r = Reader::new(body, 10);
        let mut log = decode_header(&mut r)?;
        let ram_pages: u64 = log.ranges.iter().map(|r| r.1 >> PAGE_SHIFT).sum();
        let ni = r.u32("interval count")? as usize;
        if ni > r.left() / 16 {
            return Err(Error::Truncated("intervals"));
        }
        log.intervals = Vec::with_capacity(ni);
        let mut total = 0u64;
        for k in 0..ni {
            let interval = decode_interval(&mut r, &log, k, ram_pages, &mut total)?;
            log.intervals.push(interval);
        }
        let stored_t = decode_temperatures(&mut r)?;
        if r.left() != 0 {
            return Err(Error::Malformed(format!(
                "{} unexpected bytes after the temperatures",
                r.left()
            )));
        }
        if stored != computed {
            return Err(Error::Checksum { stored, computed });
        }
        check_temperatures(&log, &stored_t)?;
        Ok(log)
    }

    /// Writes the file.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, self.encode()).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads and validates a file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let b = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::decode(&b)
    }
}

/// A hot page in a [`Summary`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HotPage {
    /// Guest-physical address.
    pub gpa: u64,
    /// Temperature after the last interval.
    pub temperature: f64,
}

/// What a log holds, in numbers (goes into run reports).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Intervals collected.
    pub intervals: u64,
    /// Nominal interval, ms.
    pub interval_ms: f64,
    /// Temperature half-life, intervals.
    pub half_life_intervals: f64,
    /// Collection method.
    pub method: String,
    /// Distinct 4 KiB pages dirtied.
    pub distinct_pages_4k: u64,
    /// Distinct 2 MiB frames dirtied.
    pub distinct_frames_2m: u64,
    /// Sum over intervals of dirty 4 KiB pages.
    pub dirty_page_intervals_4k: u64,
    /// Sum over intervals of dirty 2 MiB frames.
    pub dirty_frame_intervals_2m: u64,
    /// Most 4 KiB pages dirtied in one interval.
    pub max_dirty_per_interval_4k: u64,
    /// Mean 4 KiB pages dirtied per interval.
    pub mean_dirty_per_interval_4k: f64,
    /// MiB reported dirty at 4 KiB grain, summed over intervals.
    pub dirty_mib_4k: f64,
    /// MiB reported dirty at 2 MiB grain, summed over intervals.
    pub dirty_mib_2m: f64,
    /// `dirty_mib_2m / dirty_mib_4k`: how much a 2 MiB tracker overstates.
    pub amplification_2m: f64,
    /// The five hottest pages.
    pub hottest: Vec<HotPage>,
}

/// The 2 MiB frames (pfn >> 9) of sorted 4 KiB `pages`, ascending.
pub fn huge_set(pages: &[u64]) -> Vec<u64> {
    let mut v: Vec<u64> = pages.iter().map(|p| p >> 9).collect();
    v.dedup();
    v
}

/// Temperatures after `n` intervals of `sets`, for keys with `T > 0`, ascending key.
pub fn temperatures_of<'a>(
    sets: impl Iterator<Item = &'a [u64]>,
    n: usize,
    half_life: f64,
) -> Vec<(u64, f64)> {
    let lambda = decay(half_life);
    // key → (temperature as of `last` interval, last interval)
    let mut t: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
    for (k, set) in sets.enumerate() {
        for &p in set {
            let e = t.entry(p).or_insert((0.0, k));
            e.0 = e.0 * lambda.powi((k - e.1) as i32) + 1.0;
            e.1 = k;
        }
    }
    let last = n.saturating_sub(1);
    t.into_iter()
        .map(|(p, (v, k))| (p, v * lambda.powi((last - k) as i32)))
        .filter(|&(_, v)| v > 0.0)
        .collect()
}

fn check_ranges(r: &[(u64, u64)]) -> Result<(), RangeError> {
    let mut end = 0u64;
    for (index, &(gpa, len)) in r.iter().enumerate() {
        if gpa % 4096 != 0 || len % 4096 != 0 || len == 0 {
            return Err(RangeError::Unaligned { index, gpa, len });
        }
        let e = gpa.checked_add(len).ok_or(RangeError::Overflows(index))?;
        if index > 0 && gpa < end {
            return Err(RangeError::Overlaps { index, gpa });
        }
        end = e;
    }
    let total = r.iter().fold(0u64, |a, &(_, l)| a.saturating_add(l));
    if total > MAX_RAM_BYTES {
        return Err(RangeError::TooLarge(total));
    }
    Ok(())
}

/// Runs (start, len) of consecutive values in sorted, deduplicated `pages`.
fn runs_of(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((s, l)) if *s + *l == p => *l += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

impl From<bytes::Error> for Error {
    fn from(e: bytes::Error) -> Self {
        match e {
            bytes::Error::Truncated { what, .. } => Error::Truncated(what),
            bytes::Error::Varint { what, .. } => {
                Error::Malformed(format!("{what}: varint overflows 64 bits"))
            }
        }
    }
}

/// Checks magic and version; returns the body (without the checksum) and the stored sum.
fn split_header(bytes: &[u8]) -> Result<(&[u8], u64), Error> {
    if bytes.len() < 8 {
        return Err(Error::Truncated("magic"));
    }
    if bytes[..8] != MAGIC {
        return Err(Error::BadMagic(
            String::from_utf8_lossy(&bytes[..8]).into_owned(),
        ));
    }
    if bytes.len() < 10 {
        return Err(Error::Truncated("version"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(Error::Version(version));
    }
    if bytes.len() < 18 {
        return Err(Error::Truncated("header"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 8);
    let stored = Reader::new(tail, 0).u64("checksum")?;
    Ok((body, stored))
}

/// Page shift, interval, half-life, method and RAM ranges; no intervals yet.
fn decode_header(r: &mut Reader) -> Result<HotnessLog, Error> {
    let shift = r.u8("page shift")?;
    if u32::from(shift) != PAGE_SHIFT {
        return Err(Error::Malformed(format!(
            "page shift {shift}: version 1 tracks 4 KiB pages (12)"
        )));
    }
    r.u8("reserved byte")?;
    let interval_ns = r.u64("interval")?;
    let half_life = f64::from_bits(r.u64("half-life")?);
    check_half_life(half_life).map_err(|e| Error::Malformed(e.to_string()))?;
    let mlen = r.u8("method length")? as usize;
    let method = std::str::from_utf8(r.bytes(mlen, "method")?)
        .map_err(|_| Error::Malformed("method name is not UTF-8".into()))?
        .to_owned();
    let nr = r.u32("range count")? as usize;
    if nr > r.left() / 16 {
        return Err(Error::Truncated("RAM ranges"));
    }
    let mut ranges = Vec::with_capacity(nr);
    for _ in 0..nr {
        ranges.push((r.u64("range address")?, r.u64("range length")?));
    }
    check_ranges(&ranges).map_err(Error::MalformedRanges)?;
    Ok(HotnessLog {
        interval_ns,
        half_life,
        method,
        ranges,
        intervals: Vec::new(),
    })
}

/// Interval `k`: its end time, dirty count and runs of dirty pages, checked against `log`
/// (RAM ranges and the previous intervals) and the running `total`.
fn decode_interval(
    r: &mut Reader,
    log: &HotnessLog,
    k: usize,
    ram_pages: u64,
    total: &mut u64,
) -> Result<Interval, Error> {
    let end_ns = r.u64("interval end")?;
    let count = u64::from(r.u32("dirty count")?);
    let nruns = r.u32("run count")? as usize;
    if count > ram_pages {
        return Err(Error::Malformed(format!(
            "interval {k}: {count} dirty pages but guest RAM has {ram_pages}"
        )));
    }
    if nruns as u64 > count || nruns > r.left() / 2 {
        return Err(Error::Malformed(format!(
            "interval {k}: {nruns} runs for {count} dirty pages"
        )));
    }
    *total = total.saturating_add(count);
    if *total > MAX_PAGE_INTERVALS {
        return Err(Error::Malformed(format!(
            "more than {MAX_PAGE_INTERVALS} dirty page-intervals (the cap MAX_PAGE_INTERVALS): too large to replay in memory"
        )));
    }
    let pages = decode_runs(r, k, count, nruns)?;
    if let Some(p) = pages.iter().find(|&&p| !log.contains_pfn(p)) {
        return Err(Error::Malformed(format!(
            "interval {k}: page {:#x} is outside guest RAM",
            p << PAGE_SHIFT
        )));
    }
    if let Some(prev) = log.intervals.last() {
        if end_ns < prev.end_ns {
            return Err(Error::Malformed(format!(
                "interval {k} ends at {end_ns} ns, before interval {} ({} ns)",
                k - 1,
                prev.end_ns
            )));
        }
    }
    Ok(Interval { end_ns, pages })
}

/// The `nruns` runs of interval `k`, which must hold exactly `count` pages.
fn decode_runs(r: &mut Reader, k: usize, count: u64, nruns: usize) -> Result<Vec<u64>, Error> {
    let mut pages = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut end = 0u64;
    for j in 0..nruns {
        let gap = r.varint("run gap")?;
        let len = r.varint("run length")?.checked_add(1);
        let start = end.checked_add(gap);
        let (Some(start), Some(len)) = (start, len) else {
            return Err(Error::Malformed(format!("interval {k}: run {j} overflows")));
        };
        if j > 0 && gap == 0 {
            return Err(Error::Malformed(format!(
                "interval {k}: run {j} touches the previous one (not canonical)"
            )));
        }
        if (pages.len() as u64).saturating_add(len) > count {
            return Err(Error::Malformed(format!(
                "interval {k}: runs hold more than the {count} pages stated"
            )));
        }
        end = start
            .checked_add(len)
            .ok_or_else(|| Error::Malformed(format!("interval {k}: run {j} overflows")))?;
        pages.extend(start..end);
    }
    if pages.len() as u64 != count {
        return Err(Error::Malformed(format!(
            "interval {k}: states {count} dirty pages, runs hold {}",
            pages.len()
        )));
    }
    Ok(pages)
}

/// The stored (page, temperature) list.
fn decode_temperatures(r: &mut Reader) -> Result<Vec<(u64, f32)>, Error> {
    let nt = r.u32("temperature count")? as usize;
    if nt > r.left() / 5 {
        return Err(Error::Truncated("temperatures"));
    }
    let mut stored_t = Vec::with_capacity(nt);
    let mut prev = 0u64;
    for j in 0..nt {
        let d = r.varint("temperature page")?;
        if j > 0 && d == 0 {
            return Err(Error::Malformed("temperature list repeats a page".into()));
        }
        prev = prev
            .checked_add(d)
            .ok_or_else(|| Error::Malformed("temperature page overflows".into()))?;
        stored_t.push((prev, r.f32("temperature")?));
    }
    Ok(stored_t)
}

/// The stored temperatures must be those the intervals give.
fn check_temperatures(log: &HotnessLog, stored_t: &[(u64, f32)]) -> Result<(), Error> {
    let want = log.temperatures();
    if want.len() != stored_t.len() {
        return Err(Error::Malformed(format!(
            "{} temperatures stored, the intervals give {}",
            stored_t.len(),
            want.len()
        )));
    }
    for (&(p, t), &(q, u)) in want.iter().zip(stored_t) {
        if p != q || !u.is_finite() || (t - f64::from(u)).abs() > 1e-3 * t.max(1.0) {
            return Err(Error::Malformed(format!(
                "temperature of page {:#x} is {u}, the intervals give {t:.4}",
                q << PAGE_SHIFT
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HotnessLog {
        let mut l = HotnessLog::new(100_000_000, 2.0, "test", vec![(0, 16 << 20)]).unwrap();
        l.push_interval(100, vec![5, 3, 4, 4, 700, 1000]).unwrap();
        l.push_interval(200, vec![]).unwrap();
        l.push_interval(300, vec![3, 4095]).unwrap();
        l
    }

    #[test]
    fn round_trip() {
        let l = sample();
        let b = l.encode();
        assert_eq!(HotnessLog::decode(&b).unwrap(), l);
        assert_eq!(l.intervals[0].pages, vec![3, 4, 5, 700, 1000]);
    }

    #[test]
    fn temperature_formula() {
        // h = 2 → λ = 1/√2. Page 3: dirty in intervals 0 and 2 → λ² + 1 = 1.5.
        let l = sample();
        let t: BTreeMap<u64, f64> = l.temperatures().into_iter().collect();
        assert!((t[&3] - 1.5).abs() < 1e-12);
        assert!((t[&5] - 0.5).abs() < 1e-12);
        assert!((t[&4095] - 1.0).abs() < 1e-12);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn huge_view() {
        let l = sample();
        assert_eq!(l.huge_sets(), vec![vec![0, 1], vec![], vec![0, 7]]);
        let s = l.summary();
        assert_eq!(s.distinct_pages_4k, 6);
        assert_eq!(s.distinct_frames_2m, 3);
        assert_eq!(s.dirty_frame_intervals_2m, 4);
        assert!((s.amplification_2m - 4.0 * 512.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn rejects_bad_input() {
        let mut l = sample();
        assert!(l.push_interval(50, vec![]).is_err());
        assert!(l.push_interval(400, vec![1 << 40]).is_err());
        assert!(HotnessLog::new(1, 0.0, "x", vec![]).is_err());
        assert!(HotnessLog::new(1, 1.0, "x", vec![(0, 100)]).is_err());
        let b = sample().encode();
        for cut in [0, 5, 9, 17, 40, b.len() - 1] {
            assert!(HotnessLog::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[8] = 9;
        assert!(matches!(HotnessLog::decode(&bad), Err(Error::Version(9))));
        let mut bad = b.clone();
        let n = bad.len();
        bad[n - 12] ^= 1;
        assert!(matches!(
            HotnessLog::decode(&bad),
            Err(Error::Checksum { .. }) | Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(Reader::new(&b, 0).varint("v").unwrap(), v);
        }
    }
}
