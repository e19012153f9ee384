//! A stream as a hotness log, so the tier model (`hotness::tier`) can replay synthetic
//! skewed workloads as it replays a guest's dirty log.
//!
//! The stream is cut into intervals of `interval` accesses; an interval's set is the
//! 4 KiB pages it touched (reads and writes: the tier model charges a page once per
//! interval it is used, the dirty log's granularity). Pages are numbered from the
//! stream's base: page `p` is `(va - base) / 4096`, inside one RAM range of `footprint`
//! bytes. Interval `i` ends at `i + 1` ns (time is nominal).

use super::{AddressStream, Error};
use crate::hotness::HotnessLog;

/// Builds the log of `stream` over `[base, base + footprint)`; accesses outside are
/// dropped. `half_life` is the log's temperature half-life, in intervals. With `init`,
/// a first interval writes every page in address order, as the workloads do when they
/// initialise their buffer (the measurement guest's GUPS and chase both do): first-touch
/// placement then reflects allocation order, not hotness.
pub fn hotness_log(
    stream: &mut dyn AddressStream,
    base: u64,
    footprint: u64,
    interval: u64,
    half_life: f64,
    init: bool,
) -> Result<HotnessLog, Error> {
    if interval == 0 {
        return Err(Error::Spec("hotness interval must be > 0 accesses".into()));
    }
    let len = footprint.div_ceil(4096) * 4096;
    let mut log = HotnessLog::new(1, half_life, "stream", vec![(0, len)])
        .map_err(|e| Error::Spec(e.to_string()))?;
    let mut pages = Vec::new();
    let (mut in_interval, mut end) = (0u64, 0u64);
    if init {
        end += 1;
        log.push_interval(end, (0..len >> 12).collect())
            .map_err(|e| Error::Spec(e.to_string()))?;
    }
    let mut buf = Vec::with_capacity(8192);
    loop {
        buf.clear();
        stream.fill(&mut buf, 8192)?;
        if buf.is_empty() {
            break;
        }
        for e in buf.iter().filter(|e| e.is_access()) {
            if let Some(off) = e.va.checked_sub(base).filter(|&o| o < len) {
                pages.push(off >> 12);
            }
            in_interval += 1;
            if in_interval == interval {
                end += 1;
                log.push_interval(end, std::mem::take(&mut pages))
                    .map_err(|e| Error::Spec(e.to_string()))?;
                in_interval = 0;
            }
        }
    }
    if in_interval > 0 {
        log.push_interval(end + 1, pages)
            .map_err(|e| Error::Spec(e.to_string()))?;
    }
    Ok(log)
}
