//! Dirty-page tracking on a live guest → page hotness (issue #8).
//!
//! # Method: the dirty bitmap with manual protect, not the dirty ring
//!
//! Every memory slot is registered with `KVM_MEM_LOG_DIRTY_PAGES` (see `vstate::vm`). When
//! the host offers `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`, [`prepare`] enables it (without
//! `KVM_DIRTY_LOG_INITIALLY_SET`); a collector thread then, every interval and for every
//! slot, reads the bitmap with `KVM_GET_DIRTY_LOG` (which no longer clears it) and hands the
//! same bits back with `KVM_CLEAR_DIRTY_LOG`, which clears them and write-protects just those
//! pages again. Without the capability, plain `KVM_GET_DIRTY_LOG` (clear and re-protect the
//! whole slot in one call) is used. The report says which (`method`).
//!
//! This host's KVM also offers the dirty ring (`KVM_CAP_DIRTY_LOG_RING`), which the issue
//! prefers. It is not used, for two reasons that hold on any host: (1) a ring holds a fixed
//! number of entries per vCPU (at most 64 Ki) and when a vCPU fills it before the collector
//! harvests, KVM stops the vCPU with `KVM_EXIT_DIRTY_RING_FULL`, which the vCPU run loop
//! (another module, another owner) would have to handle by waiting for the collector; a
//! random writer over a large buffer (gups) dirties more distinct pages per 100 ms than a
//! ring holds, so the ring would add exits exactly where we measure overhead; (2) the ring
//! is per-vCPU mmap'd from vCPU file descriptors, which move into their threads before
//! `Tracker::start`. Both give the same per-interval 4 KiB dirty sets, which is all the
//! hotness file records.
//!
//! What is tracked is guest *writes* through KVM: the VMM's own writes (kernel loading,
//! virtio) and every read are invisible. Pages written before tracking started (the VMM's
//! prefault) are not reported.
//!
//! The sets go into a [`segment_mmu::hotness::HotnessLog`] (temperature: decayed count with
//! half-life [`DirtyConfig::half_life`] intervals; see that module for the formula and file
//! format), written to [`DirtyConfig::out`] with a heat map next to it (`.svg`).

pub mod overhead;

use std::path::PathBuf;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap};
use kvm_ioctls::VmFd;
use segment_mmu::hotness::{self, HotnessLog, Summary};
use serde::Serialize;
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::memory::GuestRam;

const KVMIO: u32 = 0xAE;
vmm_sys_util::ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// Shortest and longest collection interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// See [`MIN_INTERVAL`].
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Errors while tracking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad setting.
    #[error("--track-dirty: {0}")]
    Config(String),
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which step.
        what: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The collector thread could not be started or died.
    #[error("dirty-log collector thread: {0}")]
    Thread(String),
    /// Building or writing the hotness outputs.
    #[error(transparent)]
    Hotness(#[from] hotness::Error),
}

/// What to track.
#[derive(Debug, Clone)]
pub struct DirtyConfig {
    /// Collection interval.
    pub interval: Duration,
    /// Where to write the hotness file; the heat map goes next to it with `.svg`.
    pub out: Option<PathBuf>,
    /// Temperature half-life in intervals (see `segment_mmu::hotness`).
    pub half_life: f64,
}

impl DirtyConfig {
    /// Tracking every `interval`, writing to `out`, with the default half-life.
    pub fn new(interval: Duration, out: Option<PathBuf>) -> Self {
        DirtyConfig {
            interval,
            out,
            half_life: hotness::DEFAULT_HALF_LIFE,
        }
    }

    fn check(&self) -> Result<(), Error> {
        if self.interval < MIN_INTERVAL || self.interval > MAX_INTERVAL {
            return Err(Error::Config(format!(
                "interval {:?}: must be between 1 ms and 1 h",
                self.interval
            )));
        }
        if !(self.half_life.is_finite() && self.half_life > 0.0) {
            return Err(Error::Config(format!(
                "half-life {}: must be a positive number of intervals",
                self.half_life
            )));
        }
        Ok(())
    }
}

/// Parses an interval: `100ms`, `1s`, `250us`, `0.5s` (a bare number is milliseconds).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("interval '{s}': not a number (use e.g. 100ms, 1s)"))?;
    let scale = match unit.trim() {
        "" | "ms" => 1e-3,
        "s" => 1.0,
        "us" => 1e-6,
        u => {
            return Err(format!(
                "interval '{s}': unknown unit '{u}' (use us, ms or s)"
            ))
        }
    };
    let secs = v * scale;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("interval '{s}': must be positive"));
    }
    let d = Duration::from_secs_f64(secs);
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(format!("interval '{s}': must be between 1ms and 1h"));
    }
    Ok(d)
}

/// What tracking found, for the run report (`"dirty"`).
#[derive(Debug, Clone, Serialize)]
pub struct DirtyReport {
    /// "bitmap+manual-protect" or "bitmap".
    pub method: String,
    /// Why not the dirty ring.
    pub method_note: String,
    /// Intervals collected (the last one is cut short by the guest's end).
    pub intervals: u64,
    /// Nominal interval, ms.
    pub interval_ms: f64,
    /// Mean time of one collection (all slots: get + clear), µs.
    pub collect_mean_us: f64,
    /// Longest collection, µs.
    pub collect_max_us: f64,
    /// Hotness file written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hotness_file: Option<PathBuf>,
    /// Heat map written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<PathBuf>,
    /// The counts, 4 KiB against 2 MiB.
    pub summary: Summary,
}

impl std::fmt::Display for DirtyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.summary;
        write!(
            f,
            "dirty tracking ({}, every {:.0} ms): {} intervals, {} pages written ({:.1} MiB) in {} 2 MiB frames; {:.1} MiB dirty at 4 KiB grain vs {:.1} MiB at 2 MiB ({:.1}x); collection {:.0} us mean, {:.0} us max",
            self.method,
            self.interval_ms,
            self.intervals,
            s.distinct_pages_4k,
            s.distinct_pages_4k as f64 / 256.0,
            s.distinct_frames_2m,
            s.dirty_mib_4k,
            s.dirty_mib_2m,
            s.amplification_2m,
            self.collect_mean_us,
            self.collect_max_us
        )?;
        if let (Some(h), Some(m)) = (&self.hotness_file, &self.heatmap) {
            write!(f, "; wrote {} and {}", h.display(), m.display())?;
        }
        Ok(())
    }
}

const RING_NOTE: &str = "dirty ring not used: a full per-vCPU ring stops the vCPU (KVM_EXIT_DIRTY_RING_FULL) until the collector harvests it, and random writers dirty more pages per interval than a ring holds; the bitmap gives the same 4 KiB sets";

fn manual_protect_offered(vm: &VmFd) -> bool {
    let flags = vm.check_extension_raw(libc::c_ulong::from(
        kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    ));
    flags > 0 && (flags as u32) & kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE != 0
}

/// Called after the VM is created and before any vCPU exists: checks the settings and
/// enables manual dirty-log protection when the host offers it.
pub fn prepare(vm: &VmFd, cfg: &DirtyConfig) -> Result<(), Error> {
    cfg.check()?;
    if manual_protect_offered(vm) {
        let mut cap = kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            ..Default::default()
        };
        cap.args[0] = u64::from(kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
        vm.enable_cap(&cap).map_err(|source| Error::Kvm {
            what: "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)",
            source,
        })?;
    }
    Ok(())
}

/// The collector's state: what it has gathered so far.
#[derive(Debug)]
struct Collector {
    vm: Arc<VmFd>,
    /// (slot, first gpa, bytes)
    slots: Vec<(u32, u64, u64)>,
    manual: bool,
    start: Instant,
    log: HotnessLog,
    collect_ns: Vec<u64>,
}

impl Collector {
    /// One collection: every slot's dirty bits since the last one.
    fn collect(&mut self) -> Result<(), Error> {
        let t0 = Instant::now();
        let mut pages = Vec::new();
        for &(slot, gpa, len) in &self.slots {
            let mut bitmap = self
                .vm
                .get_dirty_log(slot, len as usize)
                .map_err(|source| Error::Kvm {
                    what: "KVM_GET_DIRTY_LOG",
                    source,
                })?;
            let before = pages.len();
            let first = gpa >> hotness::PAGE_SHIFT;
            for (w, &word) in bitmap.iter().enumerate() {
                let mut b = word;
                while b != 0 {
                    let bit = u64::from(b.trailing_zeros());
                    pages.push(first + w as u64 * 64 + bit);
                    b &= b - 1;
                }
            }
            if self.manual && pages.len() > before {
                clear_dirty_log(&self.vm, slot, len, &mut bitmap)?;
            }
        }
        self.collect_ns.push(t0.elapsed().as_nanos() as u64);
        let end = self.start.elapsed().as_nanos() as u64;
        self.log.push_interval(end, pages)?;
        Ok(())
    }
}

/// Clears (and re-protects) the pages set in `bitmap` in slot `slot` of `len` bytes.
fn clear_dirty_log(vm: &VmFd, slot: u32, len: u64, bitmap: &mut [u64]) -> Result<(), Error> {
    let num_pages = u32::try_from(len >> hotness::PAGE_SHIFT)
        .map_err(|_| Error::Config(format!("slot {slot}: too large to clear in one call")))?;
    let arg = kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page: 0,
        __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
            dirty_bitmap: bitmap.as_mut_ptr().cast(),
        },
    };
    // SAFETY: `vm` is a live VM fd with manual dirty-log protection enabled; `arg` names a
    // slot we registered, starting at page 0 (64-aligned) and covering the whole slot, and
    // its bitmap pointer holds at least one bit per page of the slot (`bitmap` came from
    // KVM_GET_DIRTY_LOG for the same slot size) and lives across the call.
    let r = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &arg) };
    if r < 0 {
        return Err(Error::Kvm {
            what: "KVM_CLEAR_DIRTY_LOG",
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(())
}

/// A running tracker.
#[derive(Debug)]
pub struct Tracker {
    stop: Sender<()>,
    thread: JoinHandle<Result<Collector, Error>>,
    cfg: DirtyConfig,
}

impl Tracker {
    /// Starts collecting (the vCPUs are about to run): spawns the collector thread. The
    /// first collection discards what was dirtied before (VMM loading does not show, but
    /// the bitmap may hold pages from memslot set-up).
    pub fn start(vm: Arc<VmFd>, ram: Arc<GuestRam>, cfg: DirtyConfig) -> Result<Tracker, Error> {
        cfg.check()?;
        let manual = manual_protect_offered(&vm);
        let method = if manual {
            "bitmap+manual-protect"
        } else {
            "bitmap"
        };
        let ranges: Vec<(u64, u64)> = ram.ranges().iter().map(|r| (r.gpa, r.len)).collect();
        let slots = ram
            .ranges()
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u32, r.gpa, r.len))
            .collect();
        let log = HotnessLog::new(
            cfg.interval.as_nanos() as u64,
            cfg.half_life,
            method,
            ranges,
        )?;
        let mut c = Collector {
            vm,
            slots,
            manual,
            start: Instant::now(),
            log,
            collect_ns: Vec::new(),
        };
        // Drain anything logged before the guest runs, then restart the clock.
        c.collect()?;
        c.log.intervals.clear();
        c.collect_ns.clear();
        c.start = Instant::now();
        let (stop, rx) = channel::<()>();
        let interval = cfg.interval;
        let thread = std::thread::Builder::new()
            .name("dirty-log".into())
            .spawn(move || {
                let mut next = Instant::now() + interval;
                loop {
                    match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Err(RecvTimeoutError::Timeout) => {
                            c.collect()?;
                            next += interval;
                            // Fell behind (a slow collection): skip missed ticks, no bursts.
                            let now = Instant::now();
                            if next < now {
                                next = now + interval;
                            }
                        }
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(c),
                    }
                }
            })
            .map_err(|e| Error::Thread(e.to_string()))?;
        Ok(Tracker { stop, thread, cfg })
    }

    /// Stops collecting (the guest has ended), does a final collection and writes the
    /// hotness file and heat map when an output path was given.
    pub fn finish(self) -> Result<DirtyReport, Error> {
        let _ = self.stop.send(());
        let mut c = self
            .thread
            .join()
            .map_err(|_| Error::Thread("panicked".into()))??;
        c.collect()?;
        let (mut hotness_file, mut heatmap) = (None, None);
        if let Some(out) = &self.cfg.out {
            c.log.write(out)?;
            let svg = out.with_extension("svg");
            let title = out
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            hotness::plot::write_heatmap(&svg, &c.log, &title)?;
            hotness_file = Some(out.clone());
            heatmap = Some(svg);
        }
        let n = c.collect_ns.len().max(1) as f64;
        Ok(DirtyReport {
            method: c.log.method.clone(),
            method_note: RING_NOTE.into(),
            intervals: c.log.intervals.len() as u64,
            interval_ms: self.cfg.interval.as_secs_f64() * 1e3,
            collect_mean_us: c.collect_ns.iter().sum::<u64>() as f64 / n / 1e3,
            collect_max_us: c.collect_ns.iter().copied().max().unwrap_or(0) as f64 / 1e3,
            hotness_file,
            heatmap,
            summary: c.log.summary(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("20"), Ok(Duration::from_millis(20)));
        assert!(parse_interval("10us").is_err());
        assert!(parse_interval("-1s").is_err());
        assert!(parse_interval("5h").is_err());
        assert!(parse_interval("fast").is_err());
    }

    #[test]
    fn config_checked() {
        assert!(DirtyConfig::new(Duration::from_micros(10), None)
            .check()
            .is_err());
        assert!(DirtyConfig {
            half_life: 0.0,
            ..DirtyConfig::new(Duration::from_millis(10), None)
        }
        .check()
        .is_err());
        assert!(DirtyConfig::new(Duration::from_millis(10), None)
            .check()
            .is_ok());
    }
}
