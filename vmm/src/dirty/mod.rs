//! Dirty-page tracking on a live guest → page hotness (issue #8).
//!
//! # Methods: the dirty ring where the host has it, else the bitmap
//!
//! Every memory slot is registered with `KVM_MEM_LOG_DIRTY_PAGES` (see `vstate::vm`). How
//! the dirtied pages are read back is chosen by [`DirtyMode`] (`--dirty-mode`, default
//! `auto`) in [`prepare`], before any vCPU exists, and reported (`method`, also written
//! into the hotness file):
//!
//! * **`dirty-ring`** (`auto` when the host offers `KVM_CAP_DIRTY_LOG_RING`): KVM appends
//!   each page a vCPU dirties to that vCPU's ring, mapped from its fd; the collector
//!   harvests all rings every interval and `KVM_RESET_DIRTY_RINGS` re-protects what it took.
//!   A vCPU whose ring fills first stops with `KVM_EXIT_DIRTY_RING_FULL`; the vCPU loop then
//!   harvests its own ring and resets ([`ring::Rings::on_full`]), so nothing is lost. The
//!   cost scales with the pages dirtied, not with guest RAM (no bitmap walk).
//! * **`bitmap+manual-protect`** (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`, enabled without
//!   `KVM_DIRTY_LOG_INITIALLY_SET`): every interval and slot, `KVM_GET_DIRTY_LOG` reads the
//!   bitmap (without clearing it) and `KVM_CLEAR_DIRTY_LOG` hands the same bits back,
//!   clearing them and write-protecting just those pages again.
//! * **`bitmap`**: plain `KVM_GET_DIRTY_LOG`, which clears and re-protects a whole slot.
//!
//! A VM uses one of them: with the ring enabled KVM refuses `KVM_GET_DIRTY_LOG` (this host
//! has no `KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP`). Both give the same per-interval 4 KiB
//! dirty sets, which is all the hotness file records; `probe::bench::dirty_overhead` compares their cost.
//!
//! What is tracked is guest *writes* through KVM: the VMM's own writes (kernel loading,
//! virtio) and every read are invisible. Pages written before tracking started (the VMM's
//! prefault) are not reported.
//!
//! The sets go into a [`segment_mmu::hotness::HotnessLog`] (temperature: decayed count with
//! half-life [`DirtyConfig::half_life`] intervals; see that module for the formula and file
//! format), written to [`DirtyConfig::out`] with a heat map next to it (`.svg`).

pub mod ring;

use std::path::PathBuf;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap};
use kvm_ioctls::{VcpuFd, VmFd};
use segment_mmu::hotness::{self, HotnessLog, Summary};
use serde::Serialize;
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::memory::GuestRam;

pub(crate) const KVMIO: u32 = 0xAE;
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
    /// The collector thread could not be started.
    #[error("starting the dirty-log collector thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The collector thread could not confine itself.
    #[error("dirty-log collector thread: {0}")]
    Seccomp(#[source] crate::seccomp::Error),
    /// The collector thread panicked.
    #[error("the dirty-log collector thread panicked")]
    Panicked,
    /// The collector thread has ended.
    #[error("the dirty-log collector thread has ended")]
    Gone,
    /// The collector thread did not answer a drain in time.
    #[error("the dirty-log collector thread did not answer")]
    NoAnswer,
    /// A thread panicked holding the dirty ring's lock.
    #[error("dirty ring lock poisoned")]
    Poisoned,
    /// Building or writing the hotness outputs.
    #[error(transparent)]
    Hotness(#[from] hotness::Error),
    /// A ring size KVM or the host refuses.
    #[error("dirty ring: {0}")]
    RingSize(#[source] ring::RingSize),
    /// The dirty ring: asked for where the host has none, or an entry KVM should not give.
    #[error("dirty ring: {0}")]
    Ring(String),
}

/// How to read the dirty log (`--dirty-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DirtyMode {
    /// The ring when the host offers it, else the bitmap.
    #[default]
    Auto,
    /// The dirty ring; refused where the host has none.
    Ring,
    /// The bitmap (with manual protect when offered), even where the ring exists.
    Bitmap,
}

impl segment_mmu::named::Named for DirtyMode {
    const ALL: &'static [Self] = &[DirtyMode::Auto, DirtyMode::Ring, DirtyMode::Bitmap];
    fn name(self) -> &'static str {
        match self {
            DirtyMode::Auto => "auto",
            DirtyMode::Ring => "ring",
            DirtyMode::Bitmap => "bitmap",
        }
    }
    fn help(self) -> &'static str {
        match self {
            DirtyMode::Auto => "The ring when the host offers it, else the bitmap",
            DirtyMode::Ring => "The dirty ring; refused where the host has none",
            DirtyMode::Bitmap => {
                "The bitmap (with manual protect when offered), even where the ring exists"
            }
        }
    }
}

impl std::fmt::Display for DirtyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(segment_mmu::named::Named::name(*self))
    }
}

/// The method a VM ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Per-vCPU rings of this many bytes each.
    Ring {
        /// Bytes per vCPU ring.
        bytes: u32,
    },
    /// Bitmap, `KVM_CLEAR_DIRTY_LOG` re-protecting what was read.
    BitmapManual,
    /// Bitmap, `KVM_GET_DIRTY_LOG` clearing whole slots.
    Bitmap,
}

impl Method {
    /// The name reports and hotness files carry.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ring { .. } => "dirty-ring",
            Method::BitmapManual => "bitmap+manual-protect",
            Method::Bitmap => "bitmap",
        }
    }
}

/// What the host offers for dirty logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostDirty {
    /// `KVM_CHECK_EXTENSION(KVM_CAP_DIRTY_LOG_RING)`: the largest ring in bytes, 0 = none.
    pub ring_max_bytes: u32,
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` with `MANUAL_PROTECT_ENABLE`.
    pub manual_protect: bool,
}

impl HostDirty {
    /// Asks KVM (a VM fd answers for this VM; `/dev/kvm` for the host).
    pub fn probe(check: impl Fn(libc::c_ulong) -> i32) -> HostDirty {
        let ring = check(libc::c_ulong::from(kvm_bindings::KVM_CAP_DIRTY_LOG_RING));
        let manual = check(libc::c_ulong::from(
            kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ));
        HostDirty {
            ring_max_bytes: u32::try_from(ring).unwrap_or(0),
            manual_protect: manual > 0
                && (manual as u32) & kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE != 0,
        }
    }

    /// This host's offer, from `/dev/kvm` (no VM needed); `None` without KVM.
    pub fn of_host() -> Option<HostDirty> {
        let kvm = kvm_ioctls::Kvm::new().ok()?;
        Some(HostDirty::probe(|c| kvm.check_extension_raw(c)))
    }

    /// Whether the dirty ring can be used.
    pub fn has_ring(&self) -> bool {
        self.ring_max_bytes >= ring::MIN_RING_BYTES
    }
}

/// Picks the method for `cfg` on a host offering `host`, with a sentence saying why.
pub fn choose(cfg: &DirtyConfig, host: HostDirty) -> Result<(Method, String), Error> {
    let bitmap = if host.manual_protect {
        Method::BitmapManual
    } else {
        Method::Bitmap
    };
    let ring = |why: &str| -> Result<(Method, String), Error> {
        let bytes = cfg
            .ring_bytes
            .unwrap_or(ring::DEFAULT_RING_BYTES.min(host.ring_max_bytes));
        ring::check_bytes(bytes, host.ring_max_bytes).map_err(Error::RingSize)?;
        Ok((
            Method::Ring { bytes },
            format!(
                "{why}: the host offers KVM_CAP_DIRTY_LOG_RING (up to {} bytes per vCPU); rings of {} entries per vCPU, a vCPU whose ring fills exits (KVM_EXIT_DIRTY_RING_FULL) and harvests it itself",
                host.ring_max_bytes,
                bytes / ring::ENTRY_BYTES
            ),
        ))
    };
    let bitmap_note = |why: &str| {
        if host.manual_protect {
            format!("{why}: bitmap read with KVM_GET_DIRTY_LOG, re-protected page by page with KVM_CLEAR_DIRTY_LOG (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)")
        } else {
            format!("{why}: bitmap read and cleared per slot with KVM_GET_DIRTY_LOG (no manual protect on this host)")
        }
    };
    match cfg.mode {
        DirtyMode::Ring if !host.has_ring() => Err(Error::Ring(
            "--dirty-mode ring: this host's KVM does not offer KVM_CAP_DIRTY_LOG_RING (use auto or bitmap)".into(),
        )),
        DirtyMode::Ring => ring("asked for the ring"),
        DirtyMode::Auto if host.has_ring() => ring("auto"),
        DirtyMode::Auto => Ok((bitmap, bitmap_note("auto, no dirty ring on this host"))),
        DirtyMode::Bitmap => {
            if cfg.ring_bytes.is_some() {
                return Err(Error::Config(
                    "a ring size was given with --dirty-mode bitmap".into(),
                ));
            }
            Ok((bitmap, bitmap_note("asked for the bitmap")))
        }
    }
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
    /// Ring or bitmap.
    pub mode: DirtyMode,
    /// Dirty ring bytes per vCPU (`None`: [`ring::DEFAULT_RING_BYTES`] or the host's
    /// maximum); small rings force `KVM_EXIT_DIRTY_RING_FULL` (tests do).
    pub ring_bytes: Option<u32>,
}

impl DirtyConfig {
    /// Tracking every `interval`, writing to `out`, with the default half-life.
    pub fn new(interval: Duration, out: Option<PathBuf>) -> Self {
        DirtyConfig {
            interval,
            out,
            half_life: hotness::DEFAULT_HALF_LIFE,
            mode: DirtyMode::Auto,
            ring_bytes: None,
        }
    }

    /// The same with `mode`.
    pub fn with_mode(self, mode: DirtyMode) -> Self {
        DirtyConfig { mode, ..self }
    }

    /// The same with rings of `bytes` per vCPU.
    pub fn with_ring_bytes(self, bytes: Option<u32>) -> Self {
        DirtyConfig {
            ring_bytes: bytes,
            ..self
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
pub fn parse_interval(s: &str) -> Result<Duration, segment_mmu::duration::Error> {
    segment_mmu::duration::parse_in(s, 1e-3, MIN_INTERVAL, MAX_INTERVAL)
}

/// What tracking found, for the run report (`"dirty"`).
#[derive(Debug, Clone, Serialize)]
pub struct DirtyReport {
    /// "dirty-ring", "bitmap+manual-protect" or "bitmap".
    pub method: String,
    /// The mode asked for (`auto`, `ring`, `bitmap`).
    pub mode: DirtyMode,
    /// Why this method.
    pub method_note: String,
    /// Ring entries per vCPU (ring only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_entries: Option<u32>,
    /// `KVM_EXIT_DIRTY_RING_FULL` exits the vCPU threads handled (ring only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_full_exits: Option<u64>,
    /// Ring entries harvested in all (ring only; ≥ the pages of all intervals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_harvested: Option<u64>,
    /// Intervals collected (the last one is cut short by the guest's end).
    pub intervals: u64,
    /// Intervals collected but not kept: the log reached
    /// `segment_mmu::hotness::MAX_PAGE_INTERVALS` dirty page-intervals (the file stays
    /// readable and memory bounded on a long run).
    pub intervals_dropped: u64,
    /// Nominal interval, ms.
    pub interval_ms: f64,
    /// Mean time of one collection (bitmap: get + clear of all slots; ring: harvest of all
    /// rings + reset), µs.
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
        if let (Some(entries), Some(full)) = (self.ring_entries, self.ring_full_exits) {
            write!(f, "; rings of {entries} entries, {full} ring-full exits")?;
        }
        if let (Some(h), Some(m)) = (&self.hotness_file, &self.heatmap) {
            write!(f, "; wrote {} and {}", h.display(), m.display())?;
        }
        Ok(())
    }
}

/// The tracking a VM was prepared for by [`prepare`]: settings, method and why.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The settings.
    pub cfg: DirtyConfig,
    /// The method enabled on the VM.
    pub method: Method,
    /// Why this method (for the report).
    pub note: String,
}

fn enable_cap(vm: &VmFd, cap: u32, arg: u64, what: &'static str) -> Result<(), Error> {
    let mut c = kvm_enable_cap {
        cap,
        ..Default::default()
    };
    c.args[0] = arg;
    vm.enable_cap(&c)
        .map_err(|source| Error::Kvm { what, source })
}

/// Called after the VM is created and before any vCPU exists (KVM refuses the ring once a
/// vCPU does): checks the settings, picks the method ([`choose`]) and enables it: the dirty
/// ring with its size, or manual dirty-log protection. With `auto`, a ring KVM refuses
/// falls back to the bitmap and the note says why.
pub fn prepare(vm: &VmFd, cfg: &DirtyConfig) -> Result<Prepared, Error> {
    cfg.check()?;
    let host = HostDirty::probe(|c| vm.check_extension_raw(c));
    let (mut method, mut note) = choose(cfg, host)?;
    if let Method::Ring { bytes } = method {
        let r = enable_cap(
            vm,
            kvm_bindings::KVM_CAP_DIRTY_LOG_RING,
            u64::from(bytes),
            "KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING)",
        );
        match r {
            Ok(()) => {}
            Err(e) if cfg.mode == DirtyMode::Auto => {
                let fallback = DirtyConfig {
                    mode: DirtyMode::Bitmap,
                    ring_bytes: None,
                    ..cfg.clone()
                };
                (method, note) = choose(&fallback, host)?;
                note = format!("auto: the ring was refused ({e}); {note}");
            }
            Err(e) => return Err(e),
        }
    }
    if method == Method::BitmapManual {
        enable_cap(
            vm,
            kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            u64::from(kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE),
            "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)",
        )?;
    }
    Ok(Prepared {
        cfg: cfg.clone(),
        method,
        note,
    })
}

/// The memory slots as `vstate::vm` registers them: slot id = index of the RAM range;
/// (first guest-physical address, bytes).
fn slots_of(ram: &GuestRam) -> Vec<(u64, u64)> {
    ram.ranges().iter().map(|r| (r.gpa, r.len)).collect()
}

impl Prepared {
    /// Once the vCPUs exist: maps their rings (ring method; `None` for the bitmap). The
    /// vCPU threads get the result for `KVM_EXIT_DIRTY_RING_FULL`, the tracker for its
    /// interval cuts; drop every copy before the vCPU fds.
    pub fn map_rings(
        &self,
        vm: &Arc<VmFd>,
        vcpus: &[VcpuFd],
        ram: &GuestRam,
    ) -> Result<Option<Arc<ring::Rings>>, Error> {
        match self.method {
            Method::Ring { bytes } => Ok(Some(Arc::new(ring::Rings::map(
                vm.clone(),
                vcpus,
                bytes,
                &slots_of(ram),
            )?))),
            _ => Ok(None),
        }
    }
}

/// Where the collector reads dirtied pages from.
#[derive(Debug)]
enum Source {
    /// Per slot (id, first gpa, bytes); with or without manual protect.
    Bitmap {
        slots: Vec<(u32, u64, u64)>,
        manual: bool,
    },
    /// The vCPUs' rings.
    Ring(Arc<ring::Rings>),
}

/// The collector's state: what it has gathered so far.
#[derive(Debug)]
struct Collector {
    vm: Arc<VmFd>,
    /// Guest RAM, for the pages the VMM wrote itself (emulated instructions).
    ram: Arc<GuestRam>,
    source: Source,
    start: Instant,
    log: HotnessLog,
    /// Collections made, their summed and largest duration.
    collect_n: u64,
    collect_sum_ns: u64,
    collect_max_ns: u64,
    /// Dirty page-intervals held in `log`, capped at [`hotness::MAX_PAGE_INTERVALS`] so the
    /// log stays bounded (and readable back) however long the guest runs.
    held: u64,
    /// Intervals not kept because the cap was reached.
    dropped: u64,
    /// Pages (frame numbers) dirtied since the last [`Tracker::drain`]: what a diff
    /// snapshot writes. At most one entry per RAM page.
    since: std::collections::BTreeSet<u64>,
}

impl Collector {
    /// One collection: every page dirtied since the last one.
    fn collect(&mut self) -> Result<(), Error> {
        let t0 = Instant::now();
        let mut pages = match &self.source {
            Source::Ring(r) => r.collect()?,
            Source::Bitmap { slots, manual } => collect_bitmap(&self.vm, slots, *manual)?,
        };
        // KVM logs only what the vCPUs wrote; add what the VMM wrote for the guest.
        pages.extend(self.ram.take_vmm_dirty());
        self.since.extend(pages.iter().copied());
        let took = t0.elapsed().as_nanos() as u64;
        self.collect_n += 1;
        self.collect_sum_ns = self.collect_sum_ns.saturating_add(took);
        self.collect_max_ns = self.collect_max_ns.max(took);
        let end = self.start.elapsed().as_nanos() as u64;
        let n = pages.len() as u64;
        if self.dropped > 0 || self.held.saturating_add(n) > hotness::MAX_PAGE_INTERVALS {
            self.dropped += 1;
            return Ok(());
        }
        self.held += n;
        self.log.push_interval(end, pages)?;
        Ok(())
    }
}

/// Every slot's dirty bits since the last call, as page frame numbers; with `manual`, the
/// pages found are cleared and re-protected (without it `KVM_GET_DIRTY_LOG` did that).
fn collect_bitmap(vm: &VmFd, slots: &[(u32, u64, u64)], manual: bool) -> Result<Vec<u64>, Error> {
    let mut pages = Vec::new();
    for &(slot, gpa, len) in slots {
        let mut bitmap = vm
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
        if manual && pages.len() > before {
            clear_dirty_log(vm, slot, len, &mut bitmap)?;
        }
    }
    Ok(pages)
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

/// What the VMM asks of the collector thread.
#[derive(Debug)]
enum Msg {
    /// Stop and hand the collector back.
    Stop,
    /// Collect now and answer every page dirtied since the last drain (then forget them).
    Drain(Sender<Result<Vec<u64>, Error>>),
}

/// A running tracker.
#[derive(Debug)]
pub struct Tracker {
    stop: Sender<Msg>,
    thread: JoinHandle<Result<Collector, Error>>,
    prepared: Prepared,
}

impl Tracker {
    /// Starts collecting (the vCPUs are about to run): spawns the collector thread. The
    /// first collection discards what was dirtied before (VMM loading does not show, but
    /// the log may hold pages from memslot set-up). `rings` is what
    /// [`Prepared::map_rings`] gave.
    pub fn start(
        vm: Arc<VmFd>,
        ram: Arc<GuestRam>,
        prepared: Prepared,
        rings: Option<Arc<ring::Rings>>,
    ) -> Result<Tracker, Error> {
        let cfg = &prepared.cfg;
        cfg.check()?;
        let source = match (prepared.method, rings) {
            (Method::Ring { .. }, Some(r)) => Source::Ring(r),
            (Method::Ring { .. }, None) => {
                return Err(Error::Ring("the rings were not mapped".into()))
            }
            (m, _) => Source::Bitmap {
                slots: slots_of(&ram)
                    .into_iter()
                    .enumerate()
                    .map(|(i, (gpa, len))| (i as u32, gpa, len))
                    .collect(),
                manual: m == Method::BitmapManual,
            },
        };
        let log = HotnessLog::new(
            cfg.interval.as_nanos() as u64,
            cfg.half_life,
            prepared.method.name(),
            slots_of(&ram),
        )?;
        let mut c = Collector {
            vm,
            ram: ram.clone(),
            source,
            start: Instant::now(),
            log,
            collect_n: 0,
            collect_sum_ns: 0,
            collect_max_ns: 0,
            held: 0,
            dropped: 0,
            since: Default::default(),
        };
        // Drain anything logged before the guest runs, then restart the clock.
        c.collect()?;
        c.log.intervals.clear();
        c.since.clear();
        (c.collect_n, c.collect_sum_ns, c.collect_max_ns, c.held) = (0, 0, 0, 0);
        c.start = Instant::now();
        let (stop, rx) = channel::<Msg>();
        let interval = cfg.interval;
        let thread = std::thread::Builder::new()
            .name("dirty-log".into())
            .spawn(move || {
                crate::seccomp::install(crate::seccomp::ThreadKind::DirtyCollector)
                    .map_err(Error::Seccomp)?;
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
                        Ok(Msg::Drain(answer)) => {
                            let r = c
                                .collect()
                                .map(|()| std::mem::take(&mut c.since).into_iter().collect());
                            let _ = answer.send(r);
                        }
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(c),
                    }
                }
            })
            .map_err(Error::Spawn)?;
        Ok(Tracker {
            stop,
            thread,
            prepared,
        })
    }

    /// Every page (frame number) the guest or the VMM dirtied since the tracker started
    /// or since the last drain, collected now (call it with every vCPU paused: a diff
    /// snapshot writes these pages).
    pub fn drain(&self) -> Result<Vec<u64>, Error> {
        let (tx, rx) = channel();
        self.stop.send(Msg::Drain(tx)).map_err(|_| Error::Gone)?;
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .map_err(|_| Error::NoAnswer)?
    }

    /// Stops collecting (call it once the vCPUs have stopped), does a final collection
    /// and writes the hotness file and heat map when an output path was given. Releases
    /// the tracker's hold on the rings.
    pub fn finish(self) -> Result<DirtyReport, Error> {
        let _ = self.stop.send(Msg::Stop);
        let mut c = self.thread.join().map_err(|_| Error::Panicked)??;
        c.collect()?;
        let cfg = &self.prepared.cfg;
        let (mut hotness_file, mut heatmap) = (None, None);
        if let Some(out) = &cfg.out {
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
        let ring = match &c.source {
            Source::Ring(r) => Some((r.entries(), r.full_exits(), r.harvested())),
            Source::Bitmap { .. } => None,
        };
        let n = c.collect_n.max(1) as f64;
        Ok(DirtyReport {
            method: c.log.method.clone(),
            mode: cfg.mode,
            method_note: self.prepared.note.clone(),
            ring_entries: ring.map(|r| r.0),
            ring_full_exits: ring.map(|r| r.1),
            ring_harvested: ring.map(|r| r.2),
            intervals: c.log.intervals.len() as u64,
            intervals_dropped: c.dropped,
            interval_ms: cfg.interval.as_secs_f64() * 1e3,
            collect_mean_us: c.collect_sum_ns as f64 / n / 1e3,
            collect_max_us: c.collect_max_ns as f64 / 1e3,
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

    #[test]
    fn method_choice() {
        let cfg = DirtyConfig::new(Duration::from_millis(10), None);
        let ring_host = HostDirty {
            ring_max_bytes: 1 << 20,
            manual_protect: true,
        };
        let bare = HostDirty {
            ring_max_bytes: 0,
            manual_protect: false,
        };
        let pick = |c: &DirtyConfig, h| choose(c, h).map(|(m, _)| m);
        // auto: the ring where offered (the largest KVM allows by default), else the bitmap.
        assert_eq!(
            pick(&cfg, ring_host).unwrap(),
            Method::Ring { bytes: 1 << 20 }
        );
        assert_eq!(pick(&cfg, bare).unwrap(), Method::Bitmap);
        let small = HostDirty {
            ring_max_bytes: 65536,
            ..ring_host
        };
        assert_eq!(pick(&cfg, small).unwrap(), Method::Ring { bytes: 65536 });
        // Forced modes.
        let bitmap = cfg.clone().with_mode(DirtyMode::Bitmap);
        assert_eq!(pick(&bitmap, ring_host).unwrap(), Method::BitmapManual);
        let ring = cfg.clone().with_mode(DirtyMode::Ring);
        assert!(matches!(pick(&ring, bare), Err(Error::Ring(_))));
        // Ring sizes are checked.
        let tiny = ring.clone().with_ring_bytes(Some(4096));
        assert_eq!(
            pick(&tiny, ring_host).unwrap(),
            Method::Ring { bytes: 4096 }
        );
        assert!(pick(&ring.clone().with_ring_bytes(Some(5000)), ring_host).is_err());
        assert!(pick(&ring.with_ring_bytes(Some(2 << 20)), ring_host).is_err());
        assert!(pick(&bitmap.with_ring_bytes(Some(4096)), ring_host).is_err());
        // The note says why.
        let (_, note) = choose(&cfg, ring_host).unwrap();
        assert!(
            note.starts_with("auto") && note.contains("65536 entries"),
            "{note}"
        );
    }
}
