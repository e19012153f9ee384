//! Page-table ptsnaps of a live guest: pause every vCPU, read CR3/CR4/EFER, let
//! `segment_mmu` follow the tables through guest memory, and write a `.ptsnap` file with
//! the guest RAM layout and its host backing (page size, host-physical contiguous runs).
//!
//! Requests come from the guest itself (the measurement guest's MMIO channel, on its own
//! vCPU thread) or from outside (`segvmm ptsnap --api-socket`, see [`crate::api`]).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use segment_mmu::mem::{GuestPhysMemory, MemError, PageStore};
use segment_mmu::paging::PagingMode;
use segment_mmu::ptsnap::{AddressSpace, Capture, CpuState, HostRun, Ptsnap, RamRange};
use serde::Serialize;

use crate::memory::report::HostRun as VmmRun;
use crate::memory::{Backing, GuestRam, MemoryReport};
use crate::outdir::OutFile;
use crate::vstate::vcpu_thread::VcpuState;

/// Errors while capturing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest is not in long mode with paging on.
    #[error("guest paging is not in 4- or 5-level long mode (CR0 {cr0:#x}, CR4 {cr4:#x}, EFER {efer:#x}); nothing to ptsnap")]
    NoLongModePaging {
        /// CR0.
        cr0: u64,
        /// CR4.
        cr4: u64,
        /// EFER.
        efer: u64,
    },
    /// No vCPU state was captured.
    #[error("no vCPU state to ptsnap")]
    NoVcpus,
    /// The tables could not be captured.
    #[error("capturing page tables: {0}")]
    Capture(#[from] segment_mmu::ptsnap::Error),
    /// Writing the file failed.
    #[error(transparent)]
    Write(#[from] crate::outdir::Error),
    /// The vCPUs could not be paused around the copy.
    #[error("pausing the vCPUs: {0}")]
    Pause(#[from] crate::vstate::vcpu_thread::Error),
}

/// What a ptsnap recorded, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct PtsnapInfo {
    /// The file written.
    pub path: String,
    /// Address spaces (distinct CR3s).
    pub spaces: usize,
    /// Page-table pages copied.
    pub table_pages: usize,
    /// File size in bytes.
    pub bytes: u64,
    /// Time from the request to the file being written, ms.
    pub ms: f64,
    /// Of that, how long the guest was stopped, ms: only the table copy happens with the
    /// vCPUs paused; the host-physical runs (pagemap), encoding and writing come after
    /// the guest has resumed.
    pub paused_ms: f64,
}

impl GuestPhysMemory for GuestRam {
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        if gpa % 8 != 0 {
            return Err(MemError::Unaligned(gpa));
        }
        if !self.contains(gpa, 8) {
            return Err(MemError::Unreadable(gpa));
        }
        // vm-memory reads an aligned u64 with one volatile load (the guest is paused
        // during ptsnaps, but KVM may still touch the memory).
        vm_memory::Bytes::read_obj(self.memory(), vm_memory::GuestAddress(gpa))
            .map_err(|_| MemError::Unreadable(gpa))
    }

    fn read_page(&self, gpa: u64, out: &mut [u64; 512]) -> Result<(), MemError> {
        if gpa % 4096 != 0 {
            return Err(MemError::Unaligned(gpa));
        }
        if !self.contains(gpa, 4096) {
            return Err(MemError::Unreadable(gpa));
        }
        let mut page = [0u8; 4096];
        vm_memory::Bytes::read_slice(self.memory(), &mut page, vm_memory::GuestAddress(gpa))
            .map_err(|_| MemError::Unreadable(gpa))?;
        for (o, b) in out.iter_mut().zip(page.chunks_exact(8)) {
            *o = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        }
        Ok(())
    }
}

/// The host page size that backs guest RAM, as measured.
fn host_page_size(report: &MemoryReport) -> u64 {
    let by = &report.bytes_by_page_size;
    let total: u64 = by.values().sum();
    let get = |k: &str| by.get(k).copied().unwrap_or(0);
    if total > 0 && get("1g") == total {
        1 << 30
    } else if (total > 0 && get("2m") == total) || report.requested_backing == Backing::Huge2m {
        2 << 20
    } else {
        4096
    }
}

/// The ptsnap's RAM ranges: layout, host mapping, host page size and contiguous runs.
pub fn ram_ranges(ram: &GuestRam, page: u64, runs: &[VmmRun]) -> Vec<RamRange> {
    ram.ranges()
        .iter()
        .map(|r| {
            let inside: Vec<HostRun> = runs
                .iter()
                .filter(|x| x.gpa >= r.gpa && x.gpa < r.end())
                .map(|x| HostRun {
                    gpa_start: x.gpa,
                    len: x.len.min(r.end() - x.gpa),
                    hpa_start: x.hpa,
                })
                .collect();
            RamRange {
                gpa_start: r.gpa,
                len: r.len,
                host_va: ram.hva(r.gpa),
                host_page_size: page,
                runs: (!inside.is_empty()).then_some(inside),
            }
        })
        .collect()
}

/// Table pages expected in a ptsnap of `ram_bytes` of guest RAM when nothing better is
/// known: one last-level table per 2 MiB maps all of it once with 4 KiB pages (the worst
/// case of one address space), plus room for the upper levels and a few more spaces.
pub fn expected_table_pages(ram_bytes: u64) -> usize {
    usize::try_from(ram_bytes / (2 << 20)).unwrap_or(usize::MAX / 2) + 64
}

/// Room for `pages` table pages, on transparent huge pages where the host gives them.
///
/// The copy is what keeps the guest paused, and on hosts that back fresh memory slowly
/// (this project's: a 4 KiB fault costs microseconds) faulting 8 KiB per 4 MiB of guest
/// RAM in page by page, and regrowing the store, was most of it. Only address space is
/// reserved here: what the copy does not reach is never faulted in. A larger ptsnap
/// than reserved still works (the store grows).
pub fn table_buffer(pages: usize) -> Vec<[u64; 512]> {
    const HUGE: usize = 2 << 20;
    let buf: Vec<[u64; 512]> = Vec::with_capacity(pages);
    let start = buf.as_ptr() as usize;
    let end = start + buf.capacity() * std::mem::size_of::<[u64; 512]>();
    let (a, b) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if b > a {
        // SAFETY: advice on whole 2 MiB pages inside the allocation `buf` owns and nobody
        // uses yet; MADV_HUGEPAGE only picks the page size that will back them, never
        // their contents. Failing (THP off) leaves 4 KiB pages, which is fine.
        unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE) };
    }
    buf
}

/// Captures the tables of every distinct CR3 in `states` into `buf` (see
/// [`table_buffer`]).
///
/// This is the part done with the guest stopped, and it only copies: the RAM ranges carry
/// the host mapping but not yet the host page size and runs, which [`finish_file`] adds
/// from the memory report before validating the copy, after the guest has resumed.
pub fn capture(
    ram: &GuestRam,
    states: &[VcpuState],
    buf: Vec<[u64; 512]>,
) -> Result<Capture, Error> {
    let first = states.first().ok_or(Error::NoVcpus)?;
    let (cr0, cr4, efer) = (first.sregs.cr0, first.sregs.cr4, first.sregs.efer);
    if cr0 & (1 << 31) == 0 || efer & (1 << 10) == 0 {
        return Err(Error::NoLongModePaging { cr0, cr4, efer });
    }
    let mode = if cr4 & (1 << 12) != 0 {
        PagingMode::Level5
    } else {
        PagingMode::Level4
    };
    let mut spaces: Vec<AddressSpace> = Vec::new();
    for (i, s) in states.iter().enumerate() {
        let cr3 = s.sregs.cr3 & 0x000f_ffff_ffff_f000;
        if !spaces.iter().any(|a| a.cr3 == cr3) {
            spaces.push(AddressSpace {
                cr3,
                label: format!("vcpu{i}"),
            });
        }
    }
    Ok(Ptsnap::capture_tables(
        ram,
        spaces,
        CpuState { mode, cr4, efer },
        ram_ranges(ram, 4096, &[]),
        PageStore::with_buffer(buf),
    )?)
}

/// Adds the host-physical runs to a capture made without them, validates it, encodes it
/// and writes `out`. `started` is when the request arrived, `paused_ms` how long the
/// guest was stopped.
pub fn finish_file(
    mut capture: Capture,
    report: &MemoryReport,
    out: &OutFile,
    started: Instant,
    paused_ms: f64,
) -> Result<PtsnapInfo, Error> {
    let page = host_page_size(report);
    for r in capture.ram_mut() {
        let inside: Vec<HostRun> = report
            .runs
            .iter()
            .filter(|x| x.gpa >= r.gpa_start && x.gpa < r.end())
            .map(|x| HostRun {
                gpa_start: x.gpa,
                len: x.len.min(r.end() - x.gpa),
                hpa_start: x.hpa,
            })
            .collect();
        r.runs = (!inside.is_empty()).then_some(inside);
        r.host_page_size = page;
    }
    let snap = capture.finish()?;
    let bytes = snap.to_bytes();
    out.write(&bytes)?;
    Ok(PtsnapInfo {
        path: out.display(),
        spaces: snap.spaces.len(),
        table_pages: snap.pages.len(),
        bytes: bytes.len() as u64,
        ms: started.elapsed().as_secs_f64() * 1e3,
        paused_ms,
    })
}

/// Captures and writes `path` in one go (everything while the caller keeps the guest
/// stopped); `started` is when the request arrived.
pub fn capture_to_file(
    ram: &GuestRam,
    report: &MemoryReport,
    states: &[VcpuState],
    path: &Path,
    started: Instant,
) -> Result<PtsnapInfo, Error> {
    let buf = table_buffer(expected_table_pages(ram.size()));
    let snap = capture(ram, states, buf)?;
    let paused_ms = started.elapsed().as_secs_f64() * 1e3;
    finish_file(
        snap,
        report,
        &OutFile::Path(path.into()),
        started,
        paused_ms,
    )
}

/// Takes ptsnaps of one running VM: sizes the copy buffer, copies the tables while the
/// VM keeps the vCPUs paused (the VM pauses them: it is the only one that does), then
/// finishes the file after the guest resumed. Captures the guest asked for are finished
/// by one writer thread, started on the first and fed through a bounded queue.
pub struct Ptsnapper {
    ram: Arc<GuestRam>,
    /// Measured lazily on the first request (reading pagemap takes time).
    report: Arc<OnceLock<MemoryReport>>,
    taken: Arc<Mutex<Vec<PtsnapInfo>>>,
    writer: Mutex<Option<Writer>>,
    /// Table pages of the last capture: the next one reserves room for as many.
    last_pages: AtomicUsize,
}

/// A capture whose file is still to be written.
struct Job {
    capture: Capture,
    out: OutFile,
    started: Instant,
    paused_ms: f64,
}

struct Writer {
    jobs: SyncSender<Job>,
    thread: std::thread::JoinHandle<()>,
}

/// Captures waiting for the writer thread at most (a guest asking faster waits).
const WRITER_QUEUE: usize = 4;

impl std::fmt::Debug for Ptsnapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ptsnapper").finish_non_exhaustive()
    }
}

impl Ptsnapper {
    /// A ptsnapper of `ram`.
    pub fn new(ram: Arc<GuestRam>) -> Self {
        Ptsnapper {
            ram,
            report: Default::default(),
            taken: Default::default(),
            writer: Mutex::new(None),
            last_pages: AtomicUsize::new(0),
        }
    }

    /// Room for the next capture, made before the guest is paused.
    pub fn buffer(&self) -> Vec<[u64; 512]> {
        let last = self.last_pages.load(Ordering::Relaxed);
        table_buffer(expected_table_pages(self.ram.size()).max(last + last / 8))
    }

    /// Copies the tables of `states` (the guest is paused) into `buf`.
    pub fn capture(&self, states: &[VcpuState], buf: Vec<[u64; 512]>) -> Result<Capture, Error> {
        let c = capture(&self.ram, states, buf)?;
        self.last_pages.store(c.table_pages(), Ordering::Relaxed);
        Ok(c)
    }

    fn report(&self) -> &MemoryReport {
        self.report.get_or_init(|| self.ram.report())
    }

    /// Finishes and writes a capture now (the guest already runs again) and records it.
    pub fn write_now(
        &self,
        capture: Capture,
        out: &OutFile,
        started: Instant,
        paused_ms: f64,
    ) -> Result<PtsnapInfo, Error> {
        let info = finish_file(capture, self.report(), out, started, paused_ms)?;
        if let Ok(mut t) = self.taken.lock() {
            t.push(info.clone());
        }
        Ok(info)
    }

    /// Hands a capture to the writer thread (started on first use).
    pub fn write_later(&self, capture: Capture, out: OutFile, started: Instant, paused_ms: f64) {
        let Ok(mut w) = self.writer.lock() else {
            return;
        };
        if w.is_none() {
            *w = self.start_writer();
        }
        let job = Job {
            capture,
            out,
            started,
            paused_ms,
        };
        if let Some(w) = w.as_ref() {
            if let Err(e) = w.jobs.send(job) {
                eprintln!("segvmm: ptsnap {}: writer thread gone", e.0.out.display());
            }
        }
    }

    fn start_writer(&self) -> Option<Writer> {
        let (tx, rx) = sync_channel::<Job>(WRITER_QUEUE);
        let (ram, report, taken) = (self.ram.clone(), self.report.clone(), self.taken.clone());
        let thread = std::thread::Builder::new()
            .name("ptsnap-writer".into())
            .spawn(move || {
                crate::seccomp::install_or_warn(crate::seccomp::ThreadKind::PtsnapWriter);
                for job in rx {
                    let report = report.get_or_init(|| ram.report());
                    match finish_file(job.capture, report, &job.out, job.started, job.paused_ms) {
                        Ok(info) => {
                            if let Ok(mut t) = taken.lock() {
                                t.push(info);
                            }
                        }
                        Err(e) => eprintln!("segvmm: ptsnap {}: {e}", job.out.display()),
                    }
                }
            });
        match thread {
            Ok(thread) => Some(Writer { jobs: tx, thread }),
            Err(e) => {
                eprintln!("segvmm: cannot start the ptsnap writer thread: {e}");
                None
            }
        }
    }

    /// Ptsnaps taken so far; waits for the writer to finish what it was given.
    pub fn taken(&self) -> Vec<PtsnapInfo> {
        let w = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(Writer { jobs, thread }) = w {
            drop(jobs);
            let _ = thread.join();
        }
        self.taken.lock().map(|t| t.clone()).unwrap_or_default()
    }
}
