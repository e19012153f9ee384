//! virtio-balloon (device ID 5): inflate and deflate queues, the statistics queue and free
//! page reporting, served on the vCPU thread that notified.
//!
//! Pages the guest puts in the balloon (inflateq, 4 KiB PFNs) or reports free (reporting
//! queue, page-aligned ranges) are given back to the host with `madvise(MADV_DONTNEED)` on
//! the one mapping of guest RAM, which stays one mapping: the next guest touch faults in a
//! zeroed page. Deflated pages need nothing (they fault back in); they are counted.
//! Hugetlbfs-backed guest RAM cannot give back 4 KiB pages and is refused at build time.
//!
//! Every PFN and range is checked against guest RAM before anything is released; a buffer
//! that is short, device-writable where it must be readable, or points outside guest RAM
//! is a [`QueueError`] (the transport sets DEVICE_NEEDS_RESET) and nothing of it is
//! released: no host memory outside guest RAM is ever touched.
//!
//! The host sets the target (`num_pages`) through a [`BalloonHandle`]; the device then
//! raises a configuration-change interrupt. The driver writes `actual` back.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    Permissions,
};

use super::mmio::MmioTransport;
use super::{QueueError, VirtioDevice};

/// The driver must tell the host before using deflated pages (not offered).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// The statistics queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// The guest deflates when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Free page reporting (the reporting queue).
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;
/// Balloon PFNs are in 4 KiB units whatever the guest's page size.
pub const PFN_SHIFT: u32 = 12;
/// Bytes of one balloon page.
pub const PAGE: u64 = 1 << PFN_SHIFT;
/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of one statistic: le16 tag, le64 value.
const STAT_BYTES: usize = 10;
/// Bad requests logged per device before going quiet.
const LOG_LIMIT: u32 = 16;
/// Longest inflate/deflate buffer read (Linux sends at most 256 PFNs).
const MAX_PFN_BYTES: u32 = 64 << 10;

/// The names of the statistics tags (`VIRTIO_BALLOON_S_*`), by tag.
const STAT_NAMES: [&str; 16] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kills",
    "alloc_stalls",
    "async_scans",
    "direct_scans",
    "async_reclaims",
    "direct_reclaims",
];

/// `--balloon [size=SIZE][,stats=INTERVAL][,reporting=on|off][,deflate_on_oom=on|off]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BalloonConfig {
    /// Initial target: bytes the guest should give back (rounded down to 4 KiB pages).
    pub size: u64,
    /// How often the guest is asked for statistics (`None`: no statistics queue).
    pub stats: Option<Duration>,
    /// Offer free page reporting.
    pub reporting: bool,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        BalloonConfig {
            size: 0,
            stats: Some(Duration::from_secs(1)),
            reporting: true,
            deflate_on_oom: true,
        }
    }
}

/// A `--balloon` argument that cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum BalloonConfigError {
    /// An option that does not exist.
    #[error("--balloon: unknown option '{0}' (size=SIZE,stats=INTERVAL|off,reporting=on|off,deflate_on_oom=on|off)")]
    UnknownOption(String),
    /// A size that does not parse.
    #[error("--balloon: size '{text}'")]
    Size {
        /// The text.
        text: String,
        /// Why.
        #[source]
        source: segment_mmu::units::Error,
    },
    /// A size beyond what the 32-bit page count can say.
    #[error("--balloon: size '{0}' is more than 16 TiB")]
    TooLarge(String),
    /// An interval that does not parse.
    #[error("--balloon: stats interval '{text}'")]
    Interval {
        /// The text.
        text: String,
        /// Why.
        #[source]
        source: segment_mmu::duration::Error,
    },
    /// Neither on nor off.
    #[error("--balloon: {key}='{value}' must be on or off")]
    Switch {
        /// The option.
        key: String,
        /// The text.
        value: String,
    },
}

fn switch(key: &str, value: &str) -> Result<bool, BalloonConfigError> {
    match value {
        "on" | "1" | "true" | "" => Ok(true),
        "off" | "0" | "false" => Ok(false),
        _ => Err(BalloonConfigError::Switch {
            key: key.into(),
            value: value.into(),
        }),
    }
}

impl FromStr for BalloonConfig {
    type Err = BalloonConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cfg = BalloonConfig::default();
        for (k, v) in segment_mmu::units::pairs(s) {
            match k {
                "size" => {
                    let size = segment_mmu::units::parse_size(v).map_err(|source| {
                        BalloonConfigError::Size {
                            text: v.into(),
                            source,
                        }
                    })?;
                    if size >> PFN_SHIFT > u64::from(u32::MAX) {
                        return Err(BalloonConfigError::TooLarge(v.into()));
                    }
                    cfg.size = size;
                }
                "stats" if matches!(v, "off" | "0") => cfg.stats = None,
                "stats" => {
                    let d = segment_mmu::duration::parse(v).map_err(|source| {
                        BalloonConfigError::Interval {
                            text: v.into(),
                            source,
                        }
                    })?;
                    cfg.stats = Some(d);
                }
                "reporting" => cfg.reporting = switch(k, v)?,
                "deflate_on_oom" => cfg.deflate_on_oom = switch(k, v)?,
                _ => return Err(BalloonConfigError::UnknownOption(k.into())),
            }
        }
        Ok(cfg)
    }
}

/// What the balloon did, for the API and the run report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BalloonCounters {
    /// Pages the guest put in the balloon (inflateq).
    pub inflated_pages: u64,
    /// Pages the guest took back (deflateq).
    pub deflated_pages: u64,
    /// Bytes given back to the host for inflated pages.
    pub inflate_bytes_returned: u64,
    /// Bytes given back to the host for free pages the guest reported.
    pub reported_bytes_returned: u64,
    /// Free page reports served.
    pub reports: u64,
    /// madvise calls made.
    pub madvise_calls: u64,
    /// madvise calls that failed (the pages stayed resident).
    pub release_errors: u64,
    /// Time spent in madvise, ms.
    pub release_ms: f64,
    /// Buffers refused as malformed (each set DEVICE_NEEDS_RESET).
    pub bad_requests: u64,
}

/// Host-physically contiguous runs of guest RAM's resident pages.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Contiguity {
    /// Runs (a page that is not resident ends a run).
    pub runs: u64,
    /// Resident bytes of guest RAM.
    pub resident_bytes: u64,
}

/// The guest's latest statistics.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GuestStats {
    /// Milliseconds since the device started, when they came.
    pub at_ms: u64,
    /// Value by name (`tag_N` for a tag this VMM does not name).
    pub values: BTreeMap<String, u64>,
}

/// What the device and the host thread share.
#[derive(Debug)]
pub struct BalloonShared {
    target_pages: AtomicU32,
    actual_pages: AtomicU32,
    stats_due: AtomicBool,
    stats: Mutex<Option<GuestStats>>,
    counters: Mutex<BalloonCounters>,
    before: Mutex<Option<Result<Contiguity, String>>>,
    started: Instant,
    /// /proc/self/pagemap, opened at creation: the vCPU threads that measure contiguity
    /// before the first release may not open files (seccomp), and a jail hides /proc.
    pagemap: Result<std::fs::File, String>,
}

impl BalloonShared {
    fn contiguity(&self, mem: &GuestMemoryMmap) -> Result<Contiguity, String> {
        contiguity(mem, self.pagemap.as_ref().map_err(Clone::clone)?)
    }
}

impl BalloonShared {
    fn counters(&self) -> std::sync::MutexGuard<'_, BalloonCounters> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The balloon's report (API answer and the run report's `balloon` section).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BalloonReport {
    /// Target balloon size set by the host, bytes.
    pub target_bytes: u64,
    /// Balloon size the driver last reported (`actual`), bytes.
    pub actual_bytes: u64,
    /// Bytes given back to the host (inflate + reporting).
    pub returned_bytes: u64,
    /// Counters.
    #[serde(flatten)]
    pub counters: BalloonCounters,
    /// Contiguous runs of resident guest RAM right before the first page was given back.
    pub contiguity_before: Option<Contiguity>,
    /// The same now.
    pub contiguity_after: Option<Contiguity>,
    /// Why a contiguity count is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contiguity_unavailable: Option<String>,
    /// The guest's latest statistics.
    pub stats: Option<GuestStats>,
}

impl std::fmt::Display for BalloonReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let c = &self.counters;
        write!(
            f,
            "balloon: target {:.1} MiB, actual {:.1} MiB; {:.1} MiB given back to the host ({} pages inflated, {} deflated, {:.1} MiB from {} free page reports; {} madvise calls, {:.1} ms)",
            mib(self.target_bytes),
            mib(self.actual_bytes),
            mib(self.returned_bytes),
            c.inflated_pages,
            c.deflated_pages,
            mib(c.reported_bytes_returned),
            c.reports,
            c.madvise_calls,
            c.release_ms
        )?;
        match (self.contiguity_before, self.contiguity_after) {
            (Some(b), Some(a)) => write!(
                f,
                "; host-physically contiguous runs of resident guest RAM {} -> {} ({:.1} -> {:.1} MiB resident)",
                b.runs,
                a.runs,
                mib(b.resident_bytes),
                mib(a.resident_bytes)
            ),
            (None, Some(a)) => write!(f, "; {} contiguous runs of resident guest RAM", a.runs),
            _ => Ok(()),
        }
    }
}

/// The host's side of a balloon: set the target, read what happened.
#[derive(Clone)]
pub struct BalloonHandle {
    shared: Arc<BalloonShared>,
    transport: Arc<MmioTransport>,
    mem: Arc<dyn super::GuestMemoryView>,
    stats_queue: Option<u32>,
    stats_every: Option<Duration>,
}

/// A target the balloon cannot take.
#[derive(Debug, thiserror::Error)]
#[error("balloon size {size_mib} MiB is more than guest RAM ({ram_mib} MiB)")]
pub struct TargetError {
    /// Asked.
    pub size_mib: u64,
    /// Guest RAM.
    pub ram_mib: u64,
}

impl std::fmt::Debug for BalloonHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalloonHandle")
            .field("shared", &self.shared)
            .field("stats_queue", &self.stats_queue)
            .finish_non_exhaustive()
    }
}

impl BalloonHandle {
    /// Sets the balloon's target to `bytes` (4 KiB pages) and tells the driver.
    pub fn set_target(&self, bytes: u64) -> Result<(), TargetError> {
        let ram: u64 = self.mem.memory().iter().map(|r| r.len()).sum();
        let pages = u32::try_from(bytes >> PFN_SHIFT)
            .ok()
            .filter(|_| bytes <= ram);
        let Some(pages) = pages else {
            return Err(TargetError {
                size_mib: bytes >> 20,
                ram_mib: ram >> 20,
            });
        };
        self.shared.target_pages.store(pages, Ordering::SeqCst);
        self.transport.config_changed();
        Ok(())
    }

    /// Asks the guest for fresh statistics (returns the stats buffer it left with us).
    pub fn request_stats(&self) {
        if let Some(q) = self.stats_queue {
            self.shared.stats_due.store(true, Ordering::SeqCst);
            self.transport.kick(q);
        }
    }

    /// The balloon's transport.
    pub fn transport(&self) -> &Arc<MmioTransport> {
        &self.transport
    }

    /// How often statistics are wanted.
    pub fn stats_interval(&self) -> Option<Duration> {
        self.stats_every
    }

    /// What the balloon did so far, with the contiguity of guest RAM now.
    pub fn report(&self) -> BalloonReport {
        let counters = self.shared.counters().clone();
        let before = self
            .shared
            .before
            .lock()
            .ok()
            .and_then(|b| b.clone())
            .transpose();
        let after = self.shared.contiguity(self.mem.memory());
        let why = before.as_ref().err().or(after.as_ref().err()).cloned();
        BalloonReport {
            target_bytes: u64::from(self.shared.target_pages.load(Ordering::SeqCst)) * PAGE,
            actual_bytes: u64::from(self.shared.actual_pages.load(Ordering::SeqCst)) * PAGE,
            returned_bytes: counters.inflate_bytes_returned + counters.reported_bytes_returned,
            counters,
            contiguity_before: before.ok().flatten(),
            contiguity_after: after.ok(),
            contiguity_unavailable: why,
            stats: self.shared.stats.lock().ok().and_then(|s| s.clone()),
        }
    }
}

/// What a queue index is for, once features are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// The virtio-balloon device.
#[derive(Debug)]
pub struct Balloon {
    shared: Arc<BalloonShared>,
    offered: u64,
    acked: u64,
    queue_sizes: Vec<u16>,
    /// The statistics buffer the driver left with us (head index).
    stats_head: Option<u16>,
    stats_every: Option<Duration>,
    logged: u32,
}

impl Balloon {
    /// A balloon as `cfg` says.
    pub fn new(cfg: &BalloonConfig) -> Self {
        let mut offered = 1u64 << VIRTIO_BALLOON_F_STATS_VQ;
        if cfg.stats.is_none() {
            offered = 0;
        }
        if cfg.reporting {
            offered |= 1 << VIRTIO_BALLOON_F_REPORTING;
        }
        if cfg.deflate_on_oom {
            offered |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        let target = u32::try_from(cfg.size >> PFN_SHIFT).unwrap_or(u32::MAX);
        let shared = Arc::new(BalloonShared {
            target_pages: AtomicU32::new(target),
            actual_pages: AtomicU32::new(0),
            stats_due: AtomicBool::new(false),
            stats: Mutex::new(None),
            counters: Mutex::new(BalloonCounters::default()),
            before: Mutex::new(None),
            started: Instant::now(),
            pagemap: std::fs::File::open("/proc/self/pagemap")
                .map_err(|e| format!("cannot open /proc/self/pagemap: {e}")),
        });
        let mut b = Balloon {
            shared,
            offered,
            acked: offered,
            queue_sizes: Vec::new(),
            stats_head: None,
            stats_every: cfg.stats,
            logged: 0,
        };
        b.queue_sizes = vec![QUEUE_SIZE; b.roles().len()];
        b
    }

    /// Puts the balloon behind a new virtio-mmio transport reaching guest RAM through
    /// `mem` and signalling `irq`; the transport (for the bus) and the host's handle.
    pub fn into_transport(
        self,
        mem: Arc<dyn super::GuestMemoryView>,
        irq: super::SharedInterrupt,
    ) -> Result<(Arc<MmioTransport>, BalloonHandle), super::mmio::Error> {
        let stats_queue = self
            .roles()
            .iter()
            .position(|&r| r == Role::Stats)
            .and_then(|i| u32::try_from(i).ok());
        let shared = self.shared.clone();
        let stats_every = self.stats_every.filter(|_| stats_queue.is_some());
        let transport = Arc::new(MmioTransport::new(Box::new(self), mem.clone(), irq)?);
        Ok((
            transport.clone(),
            BalloonHandle {
                shared,
                transport,
                mem,
                stats_queue,
                stats_every,
            },
        ))
    }

    /// The queues, in order, for the negotiated features (Linux numbers only the queues
    /// that exist: with reporting but no statistics, reporting is queue 2).
    fn roles(&self) -> Vec<Role> {
        let mut r = vec![Role::Inflate, Role::Deflate];
        if self.acked & (1 << VIRTIO_BALLOON_F_STATS_VQ) != 0 {
            r.push(Role::Stats);
        }
        if self.acked & (1 << VIRTIO_BALLOON_F_REPORTING) != 0 {
            r.push(Role::Reporting);
        }
        r
    }

    fn log_bad(&mut self, what: &str) {
        self.logged = self.logged.saturating_add(1);
        if self.logged <= LOG_LIMIT {
            let more = if self.logged == LOG_LIMIT {
                " (further bad requests not logged)"
            } else {
                ""
            };
            eprintln!("segvmm: virtio-balloon: {what}{more}");
        }
    }

    /// Records the contiguity of guest RAM once, before the first page is given back.
    fn note_before(&self, mem: &GuestMemoryMmap) {
        if let Ok(mut b) = self.shared.before.lock() {
            if b.is_none() {
                *b = Some(self.shared.contiguity(mem));
            }
        }
    }

    /// Gives `ranges` (guest-physical, page-aligned, checked inside RAM) back to the host;
    /// the bytes released.
    fn release(&mut self, ranges: &[(u64, u64)], mem: &GuestMemoryMmap) -> u64 {
        self.note_before(mem);
        let t = Instant::now();
        let (mut done, mut calls, mut errors) = (0u64, 0u64, 0u64);
        for &(gpa, len) in ranges {
            calls += 1;
            match madvise_dontneed(mem, gpa, len) {
                Ok(()) => done += len,
                Err(e) => {
                    errors += 1;
                    self.log_bad(&format!(
                        "madvise(MADV_DONTNEED) of gpa {gpa:#x}+{len:#x}: {e}"
                    ));
                }
            }
        }
        let mut c = self.shared.counters();
        c.madvise_calls += calls;
        c.release_errors += errors;
        c.release_ms += t.elapsed().as_secs_f64() * 1e3;
        done
    }
}

/// The descriptors of a chain that ends properly (no loop, no escape from the table).
fn chain_descriptors(
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Vec<Descriptor>, QueueError> {
    let head = chain.head_index();
    let descs: Vec<Descriptor> = chain.collect();
    if descs.last().is_none_or(|d| d.has_next()) {
        return Err(QueueError::BadChain { head });
    }
    Ok(descs)
}

/// Whether `[gpa, gpa + len)` lies inside one region of guest RAM.
fn in_one_region(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> bool {
    let Some(r) = mem.find_region(GuestAddress(gpa)) else {
        return false;
    };
    let end = r.start_addr().0.checked_add(r.len());
    gpa.checked_add(len).zip(end).is_some_and(|(e, re)| e <= re)
}

/// Sorted, merged page ranges from 4 KiB PFNs, each checked inside one region of RAM.
fn pfn_ranges(pfns: &mut [u32], mem: &GuestMemoryMmap) -> Result<Vec<(u64, u64)>, u32> {
    pfns.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &pfn in pfns.iter() {
        let gpa = u64::from(pfn) << PFN_SHIFT;
        if !in_one_region(mem, gpa, PAGE) {
            return Err(pfn);
        }
        match out.last_mut() {
            Some((g, l)) if *g + *l == gpa && in_one_region(mem, *g, *l + PAGE) => *l += PAGE,
            Some((g, l)) if *g + *l > gpa => {} // a repeated PFN
            _ => out.push((gpa, PAGE)),
        }
    }
    Ok(out)
}

/// `madvise(MADV_DONTNEED)` on the host pages behind `[gpa, gpa + len)`, which the caller
/// checked lies in one region of guest RAM.
fn madvise_dontneed(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> std::io::Result<()> {
    if !in_one_region(mem, gpa, len) {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let hva = mem
        .get_host_address(GuestAddress(gpa))
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: `[hva, hva + len)` is inside one region of guest RAM (checked above: the
    // region holds the whole range and get_host_address maps its start), a private mapping
    // this process owns for the VM's lifetime. DONTNEED only drops pages there; the guest
    // (and vm-memory) see zero pages on the next access, which is what ballooning means.
    let r = unsafe { libc::madvise(hva.cast(), len, libc::MADV_DONTNEED) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Host-physically contiguous runs of the resident pages of guest RAM, from `pagemap`
/// (this process's /proc/self/pagemap; frame numbers need CAP_SYS_ADMIN).
pub fn contiguity(mem: &GuestMemoryMmap, f: &std::fs::File) -> Result<Contiguity, String> {
    let mut c = Contiguity::default();
    let mut last: Option<(u64, u64)> = None; // (hva, pfn) of the previous resident page
    let mut buf = vec![0u8; 8 * 4096];
    for r in mem.iter() {
        let base = r
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| format!("guest RAM region: {e}"))? as u64;
        let pages = r.len() / PAGE;
        let mut done = 0u64;
        while done < pages {
            let n = (pages - done).min(4096) as usize;
            let vpn = (base >> PFN_SHIFT) + done;
            let bytes = &mut buf[..n * 8];
            f.read_exact_at(bytes, vpn * 8)
                .map_err(|e| format!("reading /proc/self/pagemap: {e}"))?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_le_bytes(e.try_into().unwrap_or_default());
                let vpn = vpn + i as u64;
                if entry >> 63 == 0 {
                    continue;
                }
                let pfn = entry & ((1 << 55) - 1);
                if pfn == 0 {
                    return Err("frame numbers read as zero (needs CAP_SYS_ADMIN)".into());
                }
                c.resident_bytes += PAGE;
                if last != Some((vpn.wrapping_sub(1), pfn.wrapping_sub(1))) {
                    c.runs += 1;
                }
                last = Some((vpn, pfn));
            }
            done += n as u64;
        }
    }
    Ok(c)
}

/// Parses a statistics buffer: 10-byte tag/value pairs.
fn parse_stats(bytes: &[u8], at_ms: u64) -> GuestStats {
    let mut values = BTreeMap::new();
    for s in bytes.chunks_exact(STAT_BYTES) {
        let tag = u16::from_le_bytes([s[0], s[1]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&s[2..]);
        let name = STAT_NAMES
            .get(usize::from(tag))
            .map_or_else(|| format!("tag_{tag}"), |n| (*n).to_string());
        values.insert(name, u64::from_le_bytes(v));
    }
    GuestStats { at_ms, values }
}

impl Balloon {
    /// Reads the PFN array of an inflate or deflate buffer and checks it against RAM.
    fn read_pfns(
        &mut self,
        head: u16,
        descs: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Result<Vec<(u64, u64)>, QueueError> {
        let bad = |what| QueueError::BadRequest { head, what };
        let mut raw = Vec::new();
        for d in descs {
            if d.is_write_only() {
                return Err(bad("PFN buffer is device-writable"));
            }
            if d.len() % 4 != 0 || raw.len() + d.len() as usize > MAX_PFN_BYTES as usize {
                return Err(bad("PFN buffer length is not a multiple of 4 or too long"));
            }
            let start = raw.len();
            raw.resize(start + d.len() as usize, 0);
            mem.read_slice(&mut raw[start..], d.addr())
                .map_err(|_| bad("PFN buffer outside guest RAM"))?;
        }
        let mut pfns: Vec<u32> = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        pfn_ranges(&mut pfns, mem).map_err(|pfn| {
            self.log_bad(&format!("PFN {pfn:#x} is outside guest RAM"));
            bad("a PFN is outside guest RAM")
        })
    }

    /// One inflate or deflate buffer.
    fn serve_pfns(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        inflate: bool,
    ) -> Result<(), QueueError> {
        let head = chain.head_index();
        let descs = chain_descriptors(chain)?;
        let ranges = self.read_pfns(head, &descs, mem)?;
        let pages: u64 = ranges.iter().map(|r| r.1 / PAGE).sum();
        if inflate {
            let bytes = self.release(&ranges, mem);
            let mut c = self.shared.counters();
            c.inflated_pages += pages;
            c.inflate_bytes_returned += bytes;
        } else {
            self.shared.counters().deflated_pages += pages;
        }
        Ok(())
    }

    /// One free page report: every buffer is a page-aligned range of free guest RAM.
    fn serve_report(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), QueueError> {
        let head = chain.head_index();
        let descs = chain_descriptors(chain)?;
        let bad = |what| QueueError::BadRequest { head, what };
        let mut ranges = Vec::with_capacity(descs.len());
        for d in &descs {
            let (gpa, len) = (d.addr().0, u64::from(d.len()));
            if gpa % PAGE != 0 || len % PAGE != 0 || len == 0 {
                return Err(bad("reported range is not whole pages"));
            }
            if !in_one_region(mem, gpa, len) {
                self.log_bad(&format!(
                    "reported range {gpa:#x}+{len:#x} leaves guest RAM"
                ));
                return Err(bad("reported range outside guest RAM"));
            }
            ranges.push((gpa, len));
        }
        let bytes = self.release(&ranges, mem);
        let mut c = self.shared.counters();
        c.reports += 1;
        c.reported_bytes_returned += bytes;
        Ok(())
    }

    /// A statistics buffer: parsed and kept (not returned until fresh ones are wanted).
    fn take_stats(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), QueueError> {
        let head = chain.head_index();
        let descs = chain_descriptors(chain)?;
        let bad = |what| QueueError::BadRequest { head, what };
        let mut raw = Vec::new();
        for d in &descs {
            let n = d.len() as usize;
            if d.is_write_only() || raw.len() + n > STAT_BYTES * 64 {
                return Err(bad("statistics buffer is device-writable or too long"));
            }
            if !GuestMemory::check_range(mem, d.addr(), n, Permissions::Read) {
                return Err(bad("statistics buffer outside guest RAM"));
            }
            let start = raw.len();
            raw.resize(start + n, 0);
            mem.read_slice(&mut raw[start..], d.addr())
                .map_err(|_| bad("statistics buffer outside guest RAM"))?;
        }
        let at_ms = self.shared.started.elapsed().as_millis() as u64;
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = Some(parse_stats(&raw, at_ms));
        }
        self.stats_head = Some(head);
        Ok(())
    }

    /// The statistics queue: keep new buffers; hand the kept one back when stats are due.
    fn serve_stats(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(chain) = queue.iter(mem).map_err(QueueError::Ring)?.next() {
            if let Some(old) = self.stats_head.take() {
                // A second buffer while we hold one: give the old one back.
                queue.add_used(mem, old, 0).map_err(QueueError::Used)?;
                used = true;
            }
            self.take_stats(chain, mem)?;
        }
        if self.shared.stats_due.swap(false, Ordering::SeqCst) {
            if let Some(head) = self.stats_head.take() {
                queue.add_used(mem, head, 0).map_err(QueueError::Used)?;
                used = true;
            }
        }
        Ok(used)
    }
}

impl VirtioDevice for Balloon {
    fn name(&self) -> &'static str {
        "virtio-balloon"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 8];
        let target = self.shared.target_pages.load(Ordering::SeqCst);
        let actual = self.shared.actual_pages.load(Ordering::SeqCst);
        cfg[..4].copy_from_slice(&target.to_le_bytes());
        cfg[4..].copy_from_slice(&actual.to_le_bytes());
        data.fill(0);
        let start = (offset as usize).min(cfg.len());
        let n = (cfg.len() - start).min(data.len());
        data[..n].copy_from_slice(&cfg[start..start + n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        match (offset, <[u8; 4]>::try_from(data)) {
            (4, Ok(b)) => self
                .shared
                .actual_pages
                .store(u32::from_le_bytes(b), Ordering::SeqCst),
            _ => self.log_bad(&format!(
                "{}-byte config write at {offset:#x} ignored (only `actual`, 4 bytes at 4)",
                data.len()
            )),
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let role = self.roles().get(index).copied();
        if role == Some(Role::Stats) {
            let r = self.serve_stats(queue, mem);
            if r.is_err() {
                self.shared.counters().bad_requests += 1;
            }
            return r;
        }
        let mut used = false;
        while let Some(chain) = queue.iter(mem).map_err(QueueError::Ring)?.next() {
            let head = chain.head_index();
            let r = match role {
                Some(Role::Inflate) => self.serve_pfns(chain, mem, true),
                Some(Role::Deflate) => self.serve_pfns(chain, mem, false),
                Some(Role::Reporting) => self.serve_report(chain, mem),
                Some(Role::Stats) | None => Ok(()),
            };
            if r.is_err() {
                self.shared.counters().bad_requests += 1;
            }
            r?;
            queue.add_used(mem, head, 0).map_err(QueueError::Used)?;
            used = true;
        }
        Ok(used)
    }

    fn early_notify_ok(&self) -> bool {
        true
    }

    fn reset(&mut self) {
        self.acked = self.offered;
        self.stats_head = None;
        self.shared.actual_pages.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[path = "balloon_tests.rs"]
mod tests;
