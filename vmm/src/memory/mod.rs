//! Guest RAM as ONE host mapping.
//!
//! The whole guest-physical address space, from 0 to the end of RAM, is one contiguous
//! reservation of host virtual addresses: `hva = base + gpa` for every guest-physical
//! address. RAM below the MMIO hole, the hole itself (reserved `PROT_NONE`, never backed)
//! and RAM above 4 GiB all live inside it. This is the layout a Compromis-style MMU wants:
//! one (base, limit, offset) triple describes all of the VM's memory, and whether the host
//! backs it with physically contiguous frames is then a question of page size and
//! placement, which [`report`] answers from `/proc/self/pagemap`.

pub mod prefault;
pub mod report;

use std::fmt;
use std::io;

use serde::Serialize;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

pub use prefault::{Prefault, PrefaultReport};
pub use report::MemoryReport;

/// Start of the MMIO hole below 4 GiB (the LAPIC, IOAPIC and the VMM's devices live here).
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End of the MMIO hole: RAM resumes at 4 GiB.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Errors while setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Zero bytes asked for.
    #[error("memory size is zero")]
    ZeroSize,
    /// The size is not a multiple of the backing's page size.
    #[error("memory size {size} is not a multiple of the {backing} page size ({page} bytes)")]
    Unaligned {
        /// Requested size.
        size: u64,
        /// Backing.
        backing: Backing,
        /// Its page size.
        page: u64,
    },
    /// Bigger than the host can give.
    #[error("memory size {size} bytes is larger than this host can give ({available} bytes of RAM available)")]
    TooLarge {
        /// Requested size.
        size: u64,
        /// What /proc/meminfo says is available.
        available: u64,
    },
    /// The hugetlb pool has too few free pages.
    #[error("hugetlb pool too small: {backing} backing of {size} bytes needs {need} free {page_kib} KiB pages, the pool has {free} free; grow it with `echo {suggest} > /sys/kernel/mm/hugepages/hugepages-{page_kib}kB/nr_hugepages` (as root), or pass --grow-pool")]
    PoolTooSmall {
        /// Backing.
        backing: Backing,
        /// Requested size.
        size: u64,
        /// Pages needed.
        need: u64,
        /// Free pages.
        free: u64,
        /// Page size in KiB.
        page_kib: u64,
        /// What nr_hugepages should be set to.
        suggest: u64,
    },
    /// Growing the hugetlb pool failed or fell short.
    #[error("could not grow the {page_kib} KiB hugetlb pool to {want} pages: {reason}")]
    GrowPool {
        /// Page size in KiB.
        page_kib: u64,
        /// Target number of pages.
        want: u64,
        /// What happened.
        reason: String,
    },
    /// mmap/madvise failed.
    #[error("{what} failed: {source}")]
    Os {
        /// The call.
        what: &'static str,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// vm-memory refused to describe a mapped range as a region.
    #[error("guest memory region at {gpa:#x}: {source}")]
    Region {
        /// Guest-physical start.
        gpa: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A region whose end wraps the guest-physical address space.
    #[error("guest memory region at {0:#x} wraps the address space")]
    RegionWraps(u64),
    /// vm-memory refused the set of regions (overlap, order).
    #[error("guest memory regions: {0}")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
    /// A prefault thread panicked.
    #[error("a prefault thread panicked")]
    PrefaultPanicked,
}

/// How guest RAM is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Backing {
    /// Anonymous memory in 4 KiB pages (THP explicitly disabled for the range).
    #[serde(rename = "4k")]
    Anon4k,
    /// Anonymous memory with MADV_HUGEPAGE: transparent 2 MiB pages where the host can.
    #[serde(rename = "thp")]
    Thp,
    /// hugetlbfs 2 MiB pages.
    #[serde(rename = "2m")]
    Huge2m,
    /// hugetlbfs 1 GiB pages.
    #[serde(rename = "1g")]
    Huge1g,
}

impl segment_mmu::named::Named for Backing {
    const ALL: &'static [Self] = &[
        Backing::Anon4k,
        Backing::Thp,
        Backing::Huge2m,
        Backing::Huge1g,
    ];
    fn name(self) -> &'static str {
        match self {
            Backing::Anon4k => "4k",
            Backing::Thp => "thp",
            Backing::Huge2m => "2m",
            Backing::Huge1g => "1g",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Backing::Anon4k => {
                "Anonymous memory in 4 KiB pages (THP explicitly disabled for the range)"
            }
            Backing::Thp => {
                "Anonymous memory with MADV_HUGEPAGE: transparent 2 MiB pages where the host can"
            }
            Backing::Huge2m => "hugetlbfs 2 MiB pages",
            Backing::Huge1g => "hugetlbfs 1 GiB pages",
        }
    }
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(segment_mmu::named::Named::name(*self))
    }
}

impl Backing {
    /// The page size the size must be a multiple of.
    pub fn page_size(self) -> u64 {
        match self {
            Backing::Anon4k | Backing::Thp => 4 * KIB,
            Backing::Huge2m => 2 * MIB,
            Backing::Huge1g => GIB,
        }
    }

    /// The page size the guest should end up on (what a perfect host would give).
    pub fn intended_page_size(self) -> u64 {
        match self {
            Backing::Anon4k => 4 * KIB,
            Backing::Thp | Backing::Huge2m => 2 * MIB,
            Backing::Huge1g => GIB,
        }
    }

    fn hugetlb_flags(self) -> Option<libc::c_int> {
        match self {
            Backing::Huge2m => Some(libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT)),
            Backing::Huge1g => Some(libc::MAP_HUGETLB | (30 << libc::MAP_HUGE_SHIFT)),
            _ => None,
        }
    }
}

/// One range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RamRange {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

impl RamRange {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.gpa + self.len
    }
}

/// Splits `size` bytes of RAM around the MMIO hole.
pub fn ram_layout(size: u64) -> Vec<RamRange> {
    if size <= MMIO_HOLE_START {
        vec![RamRange { gpa: 0, len: size }]
    } else {
        vec![
            RamRange {
                gpa: 0,
                len: MMIO_HOLE_START,
            },
            RamRange {
                gpa: MMIO_HOLE_END,
                len: size - MMIO_HOLE_START,
            },
        ]
    }
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Bytes of guest RAM.
    pub size: u64,
    /// Host backing.
    pub backing: Backing,
    /// Grow the hugetlb pool (as root) when it is too small.
    pub grow_pool: bool,
    /// Fault every page in at set-up ([`Prefault::On`], [`Prefault::Threads`]: in parallel),
    /// so the guest never takes a host fault and the report shows what the host really gave
    /// (every measurement does). [`Prefault::Off`] leaves guest RAM unpopulated
    /// (`MAP_NORESERVE` for anonymous backings, no size check against available memory;
    /// hugetlb pages are still reserved at mmap): pages the guest never touches cost no
    /// host memory and set-up does not grow with RAM, which is also what lets a 16 GiB
    /// guest whose tables map all of its RAM run on a smaller host (the ptsnap scale
    /// benchmark); the host-physical runs are then unknown until everything is touched.
    pub prefault: Prefault,
}

/// Guest RAM: one reservation, RAM ranges mapped inside it, and the vm-memory view of it.
#[derive(Debug)]
pub struct GuestRam {
    base: *mut u8,
    span: usize,
    ranges: Vec<RamRange>,
    backing: Backing,
    mem: GuestMemoryMmap,
    prefault_ns: u64,
    prefault: PrefaultReport,
    /// Pages (frame numbers) the VMM itself wrote on the guest's behalf (emulated
    /// instructions) since the dirty log last took them: KVM's dirty log sees only writes
    /// made through the vCPUs. At most one entry per RAM page.
    vmm_dirty: std::sync::Mutex<std::collections::BTreeSet<u64>>,
}

// SAFETY: the raw pointer is the base of a mapping this struct owns for its whole life;
// vm-memory's accessors use volatile, bounds-checked operations and KVM accesses the memory
// concurrently by design, as with every VMM's guest memory.
unsafe impl Send for GuestRam {}
// SAFETY: see `Send`: shared access goes through vm-memory's volatile accessors.
unsafe impl Sync for GuestRam {}

/// Bytes of memory the host has available (MemAvailable), if known.
pub fn host_available_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * KIB)
}

fn hugetlb_pool_path(page: u64) -> String {
    format!("/sys/kernel/mm/hugepages/hugepages-{}kB", page / KIB)
}

/// Free pages in the hugetlb pool of `page` bytes.
pub fn hugetlb_free(page: u64) -> u64 {
    std::fs::read_to_string(format!("{}/free_hugepages", hugetlb_pool_path(page)))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Grows the hugetlb pool of `page`-byte pages so that at least `free_wanted` are free.
/// Needs root. Returns the number of free pages afterwards; the kernel may give fewer than
/// asked (on this host the 1 GiB pool stops at about two pages), which is reported as an
/// error naming what it got.
pub fn grow_hugetlb_pool(page: u64, free_wanted: u64) -> Result<u64, Error> {
    let dir = hugetlb_pool_path(page);
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(format!("{dir}/{f}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let free = read("free_hugepages");
    if free >= free_wanted {
        return Ok(free);
    }
    let want = read("nr_hugepages") + (free_wanted - free);
    let err = |reason: String| Error::GrowPool {
        page_kib: page / KIB,
        want,
        reason,
    };
    std::fs::write(format!("{dir}/nr_hugepages"), want.to_string())
        .map_err(|e| err(format!("writing {dir}/nr_hugepages: {e}")))?;
    let got = read("free_hugepages");
    if got < free_wanted {
        return Err(err(format!("the kernel gave only {} pages in total, {got} free (host memory too fragmented for this page size)", read("nr_hugepages"))));
    }
    Ok(got)
}

fn os_err(what: &'static str) -> Error {
    Error::Os {
        what,
        source: io::Error::last_os_error(),
    }
}

/// Refuses sizes the backing or the host cannot give, before anything is mapped: zero,
/// unaligned, more than available (when prefaulting), more than the hugetlb pool holds.
fn check(cfg: &MemoryConfig) -> Result<(), Error> {
    let size = cfg.size;
    if size == 0 {
        return Err(Error::ZeroSize);
    }
    let page = cfg.backing.page_size();
    if size % page != 0 {
        return Err(Error::Unaligned {
            size,
            backing: cfg.backing,
            page,
        });
    }
    if let Some(avail) = host_available_bytes().filter(|_| cfg.prefault.is_on()) {
        if size > avail {
            return Err(Error::TooLarge {
                size,
                available: avail,
            });
        }
    }
    if cfg.backing.hugetlb_flags().is_none() {
        return Ok(());
    }
    let need = size / page;
    let mut free = hugetlb_free(page);
    if free < need && cfg.grow_pool {
        free = grow_hugetlb_pool(page, need)?;
    }
    if free < need {
        let total: u64 =
            std::fs::read_to_string(format!("{}/nr_hugepages", hugetlb_pool_path(page)))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
        return Err(Error::PoolTooSmall {
            backing: cfg.backing,
            size,
            need,
            free,
            page_kib: page / KIB,
            suggest: total + (need - free),
        });
    }
    Ok(())
}

/// Reserves `span` bytes of address space, PROT_NONE, with a 1 GiB-aligned base so that any
/// backing's pages line up with guest-physical page boundaries (a 2 MiB guest page must sit
/// on one 2 MiB host page).
fn reserve(span: usize) -> Result<*mut u8, Error> {
    let align = GIB as usize;
    // SAFETY: a fresh anonymous PROT_NONE reservation; no existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span + align,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(os_err("mmap (reserve guest address range)"));
    }
    let raw_addr = raw as usize;
    let base_addr = (raw_addr + align - 1) & !(align - 1);
    // SAFETY: trimming the unaligned head and the tail of our own reservation.
    unsafe {
        if base_addr > raw_addr {
            libc::munmap(raw, base_addr - raw_addr);
        }
        let tail = raw_addr + span + align - (base_addr + span);
        if tail > 0 {
            libc::munmap((base_addr + span) as *mut libc::c_void, tail);
        }
    }
    Ok(base_addr as *mut u8)
}

impl GuestRam {
    /// Reserves the address range, maps every RAM range with the backing, prefaults it as
    /// [`MemoryConfig::prefault`] says, and builds the vm-memory view.
    pub fn new(cfg: &MemoryConfig) -> Result<Self, Error> {
        Self::build(cfg, None)
    }

    /// Guest RAM mapped privately from `file` (byte `gpa` at file offset `gpa`): pages load
    /// lazily on the guest's first touch and writes stay private to this VM (a snapshot's
    /// `map` restore, as Firecracker's file backend). 4 KiB pages only; nothing is
    /// prefaulted whatever `cfg.prefault` says.
    pub fn from_file(cfg: &MemoryConfig, file: &std::fs::File) -> Result<Self, Error> {
        use std::os::fd::AsFd;
        let cfg = MemoryConfig {
            backing: Backing::Anon4k,
            prefault: Prefault::Off,
            ..cfg.clone()
        };
        Self::build(&cfg, Some(file.as_fd()))
    }

    fn build(cfg: &MemoryConfig, file: Option<std::os::fd::BorrowedFd<'_>>) -> Result<Self, Error> {
        check(cfg)?;
        let ranges = ram_layout(cfg.size);
        let span = ranges.last().map(|r| r.end()).unwrap_or(0) as usize;
        let base = reserve(span)?;
        let mut ram = GuestRam {
            vmm_dirty: Default::default(),
            base,
            span,
            ranges: ranges.clone(),
            backing: cfg.backing,
            mem: GuestMemoryMmap::default(),
            prefault_ns: 0,
            prefault: PrefaultReport {
                mode: cfg.prefault,
                threads: 0,
                touched: false,
                ms: 0.0,
                gib_per_s: None,
                memset_gib_per_s: None,
                memset_bytes: 0,
                resident_at_start_bytes: 0,
            },
        };
        let t0 = std::time::Instant::now();
        let mut regions = Vec::new();
        for r in &ranges {
            let flags = match file {
                Some(fd) => ram.map_file_range(r, fd)?,
                None => ram.map_range(r)?,
            };
            // SAFETY: [base+gpa, base+gpa+len) was just mapped read-write by map_range and
            // stays mapped until `self` is dropped, which outlives `mem`.
            let region = unsafe {
                MmapRegion::build_raw(
                    base.add(r.gpa as usize),
                    r.len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                )
            }
            .map_err(|source| Error::Region { gpa: r.gpa, source })?;
            regions.push(
                GuestRegionMmap::new(region, GuestAddress(r.gpa))
                    .ok_or(Error::RegionWraps(r.gpa))?,
            );
        }
        ram.populate(cfg.prefault)?;
        ram.prefault_ns = t0.elapsed().as_nanos() as u64;
        ram.measure_start()?;
        ram.mem = GuestMemoryMmap::from_regions(regions).map_err(Error::Regions)?;
        Ok(ram)
    }

    /// Maps one RAM range of `fd` privately over the reservation (file offset = gpa).
    fn map_file_range(
        &self,
        r: &RamRange,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<libc::c_int, Error> {
        use std::os::fd::AsRawFd;
        let addr = self.hva(r.gpa) as *mut libc::c_void;
        let flags = libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE;
        let off = libc::off_t::try_from(r.gpa).map_err(|_| Error::RegionWraps(r.gpa))?;
        // SAFETY: MAP_FIXED over our own PROT_NONE reservation, inside [base, base+span),
        // from a file the caller keeps open for the call (the mapping holds its own ref).
        let p = unsafe {
            libc::mmap(
                addr,
                r.len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_err("mmap (guest RAM from the snapshot's memory file)"));
        }
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(addr, r.len as usize, libc::MADV_NOHUGEPAGE) };
        Ok(flags)
    }

    /// Maps one RAM range over the reservation with the backing (populated later, by
    /// [`GuestRam::populate`]).
    fn map_range(&self, r: &RamRange) -> Result<libc::c_int, Error> {
        let addr = self.hva(r.gpa) as *mut libc::c_void;
        let len = r.len as usize;
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
        if let Some(h) = self.backing.hugetlb_flags() {
            // Hugetlb reserves the pages at mmap time (no SIGBUS later, and mmap fails now
            // if the pool cannot give them); the pages are faulted in by `populate`, in
            // parallel, rather than by MAP_POPULATE in this one thread.
            flags |= h;
        } else if !self.prefault.mode.is_on() {
            // Lazy RAM: untouched pages must not count against the host's commit limit.
            flags |= libc::MAP_NORESERVE;
        }
        // SAFETY: MAP_FIXED over our own PROT_NONE reservation, inside [base, base+span).
        let p = unsafe { libc::mmap(addr, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(os_err("mmap (guest RAM)"));
        }
        let advice = match self.backing {
            // Explicit, so a THP=always host still gives 4 KiB pages for this backing.
            Backing::Anon4k => libc::MADV_NOHUGEPAGE,
            Backing::Thp => libc::MADV_HUGEPAGE,
            Backing::Huge2m | Backing::Huge1g => return Ok(flags),
        };
        // SAFETY: advice on our own mapping, before any page of it is faulted in.
        if unsafe { libc::madvise(addr, len, advice) } != 0 {
            return Err(os_err("madvise(MADV_HUGEPAGE/MADV_NOHUGEPAGE)"));
        }
        Ok(flags)
    }

    /// Faults every RAM range in with the mode's threads (nothing when off), each thread on
    /// a slice aligned to the page size the backing should end up on.
    fn populate(&mut self, mode: Prefault) -> Result<(), Error> {
        let threads = mode.threads();
        if threads == 0 {
            return Ok(());
        }
        let align = self.backing.intended_page_size().max(2 * MIB) as usize;
        let step = self.backing.page_size() as usize;
        let t = std::time::Instant::now();
        for r in &self.ranges {
            let (addr, len) = (self.hva(r.gpa) as usize, r.len as usize);
            self.prefault.touched |= prefault::populate(addr, len, align, step, threads)?;
        }
        let secs = t.elapsed().as_secs_f64();
        self.prefault.threads = threads;
        self.prefault.ms = secs * 1e3;
        self.prefault.gib_per_s = Some(prefault::gib_per_s(self.size(), secs));
        Ok(())
    }

    /// Counts what is resident right after set-up and, when RAM was populated with an
    /// explicit thread count (`threads=N`, the launch benchmark's mode), measures memory
    /// bandwidth with a memset of (still zero) guest RAM: up to 256 MiB written, which
    /// plain `on` (every built-in guest's default) does not pay for.
    fn measure_start(&mut self) -> Result<(), Error> {
        let mut resident = 0;
        for r in &self.ranges {
            resident += prefault::resident_bytes(self.hva(r.gpa) as usize, r.len as usize)?;
        }
        self.prefault.resident_at_start_bytes = resident;
        if matches!(self.prefault.mode, Prefault::Threads(_)) {
            let first = self.ranges[0];
            let len = (first.len as usize).min(prefault::MEMSET_BYTES);
            let bw = prefault::memset_gib_per_s(self.hva(first.gpa) as usize, len);
            self.prefault.memset_gib_per_s = Some(bw);
            self.prefault.memset_bytes = len as u64;
        }
        Ok(())
    }

    /// The host virtual address of guest-physical `gpa` (valid for RAM, and for the hole
    /// as an address even though nothing is mapped there).
    pub fn hva(&self, gpa: u64) -> u64 {
        self.base as u64 + gpa
    }

    /// Base of the one mapping.
    pub fn base(&self) -> u64 {
        self.base as u64
    }

    /// RAM ranges.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// Total RAM bytes.
    pub fn size(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// The backing that was asked for.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The vm-memory view, for loaders and devices.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Whether guest RAM was faulted in at set-up ([`MemoryConfig::prefault`]).
    pub fn prefaulted(&self) -> bool {
        self.prefault.mode.is_on()
    }

    /// What the prefault did and what was resident at start.
    pub fn prefault_report(&self) -> &PrefaultReport {
        &self.prefault
    }

    /// Time spent mapping and prefaulting, in nanoseconds.
    pub fn prefault_ns(&self) -> u64 {
        self.prefault_ns
    }

    /// Reads what the host really gave: bytes per page size and contiguous runs.
    pub fn report(&self) -> MemoryReport {
        report::measure(self)
    }

    /// Whether `gpa..gpa+len` lies inside RAM.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.ranges
            .iter()
            .any(|r| gpa >= r.gpa && gpa.checked_add(len).is_some_and(|e| e <= r.end()))
    }

    /// Writes `data` at `gpa` on the guest's behalf (an emulated instruction) and records
    /// the pages as dirty for the dirty log. `false` if the bytes are not all RAM.
    pub fn write_for_guest(&self, gpa: u64, data: &[u8]) -> bool {
        use vm_memory::Bytes;
        if !self.contains(gpa, data.len() as u64) {
            return false;
        }
        if self.mem.write_slice(data, GuestAddress(gpa)).is_err() {
            return false;
        }
        self.mark_dirty(gpa, data.len() as u64);
        true
    }

    /// Records `[gpa, gpa + len)` as written by the VMM.
    fn mark_dirty(&self, gpa: u64, len: u64) {
        let last = gpa.saturating_add(len.max(1) - 1) >> 12;
        if let Ok(mut set) = self.vmm_dirty.lock() {
            set.extend((gpa >> 12)..=last);
        }
    }

    /// Takes the pages the VMM wrote since the last call (frame numbers, ascending).
    pub fn take_vmm_dirty(&self) -> Vec<u64> {
        match self.vmm_dirty.lock() {
            Ok(mut set) => std::mem::take(&mut *set).into_iter().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The one place guest RAM is touched through a raw host pointer: an atomic 16-byte
    /// compare-and-exchange (`lock cmpxchg16b` completed for the guest), which vm-memory
    /// has no operation for. `gpa` must be 16-byte aligned and RAM. Returns (swapped, the
    /// value found); the page is recorded as dirty.
    pub fn cmpxchg16b(&self, gpa: u64, old: [u64; 2], new: [u64; 2]) -> Option<(bool, [u64; 2])> {
        if gpa % 16 != 0 || !self.contains(gpa, 16) {
            return None;
        }
        let slice =
            vm_memory::GuestMemoryBackend::get_slice(&self.mem, GuestAddress(gpa), 16).ok()?;
        let guard = slice.ptr_guard_mut();
        let p = guard.as_ptr();
        let (ok, lo, hi) = host_cmpxchg16b(p, old, new);
        self.mark_dirty(gpa, 16);
        Some((ok, [lo, hi]))
    }
}

/// `lock cmpxchg16b` on 16 bytes at `p`.
fn host_cmpxchg16b(p: *mut u8, old: [u64; 2], new: [u64; 2]) -> (bool, u64, u64) {
    let (mut lo, mut hi) = (old[0], old[1]);
    let ok: u8;
    // SAFETY: `p` points at 16 bytes, 16-byte aligned, of mapped guest RAM (checked by
    // `GuestRam::cmpxchg16b` through vm-memory's slice); cmpxchg16b is available on every
    // x86-64 host KVM runs on. rbx is reserved by LLVM, so it is swapped through a scratch
    // register.
    unsafe {
        std::arch::asm!(
            "xchg {b}, rbx",
            "lock cmpxchg16b [{p}]",
            "sete {ok}",
            "xchg {b}, rbx",
            p = in(reg) p,
            b = inout(reg) new[0] => _,
            ok = out(reg_byte) ok,
            inout("rax") lo,
            inout("rdx") hi,
            in("rcx") new[1],
        );
    }
    (ok != 0, lo, hi)
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the reservation this struct created; vm-memory's raw
        // regions do not unmap (they were built with build_raw) and are dropped with self.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.span) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn layout_splits_around_hole() {
        assert_eq!(
            ram_layout(256 * MIB),
            vec![RamRange {
                gpa: 0,
                len: 256 * MIB
            }]
        );
        let l = ram_layout(4 * GIB);
        assert_eq!(
            l[0],
            RamRange {
                gpa: 0,
                len: MMIO_HOLE_START
            }
        );
        assert_eq!(
            l[1],
            RamRange {
                gpa: MMIO_HOLE_END,
                len: GIB
            }
        );
    }

    #[test]
    fn bad_sizes_are_refused() {
        let cfg = |size, backing| MemoryConfig {
            size,
            backing,
            grow_pool: false,
            prefault: Prefault::On,
        };
        assert!(matches!(
            GuestRam::new(&cfg(0, Backing::Thp)),
            Err(Error::ZeroSize)
        ));
        assert!(matches!(
            GuestRam::new(&cfg(4097, Backing::Anon4k)),
            Err(Error::Unaligned { .. })
        ));
        assert!(matches!(
            GuestRam::new(&cfg(3 * MIB, Backing::Huge2m)),
            Err(Error::Unaligned { .. })
        ));
        assert!(matches!(
            GuestRam::new(&cfg(1 << 50, Backing::Anon4k)),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn one_mapping_hva_is_base_plus_gpa() {
        let ram = GuestRam::new(&MemoryConfig {
            size: 8 * MIB,
            backing: Backing::Anon4k,
            grow_pool: false,
            prefault: Prefault::On,
        })
        .unwrap();
        ram.memory()
            .write_obj(0xdead_beef_u64, GuestAddress(0x1000))
            .unwrap();
        // SAFETY: 0x1000..0x1008 is inside the 8 MiB of RAM just mapped.
        let v = unsafe { std::ptr::read_volatile(ram.hva(0x1000) as *const u64) };
        assert_eq!(v, 0xdead_beef);
        assert_eq!(ram.base() % GIB, 0);
        assert!(ram.contains(0, 8 * MIB) && !ram.contains(8 * MIB - 4, 8));
        let r = ram.report();
        assert_eq!(r.bytes_by_page_size.values().sum::<u64>(), 8 * MIB);
    }
}
