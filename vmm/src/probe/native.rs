//! The host-native twin: the same workload code (`workloads::kernels`) run by the segvmm
//! process itself over a buffer with the same layout and the same host backing, timed the
//! same way (TSC at KVM's TSC frequency, cross-checked by the process clock), so that a
//! guest run can be compared with it op for op.

use std::time::Instant;

use workloads::kernels::{self, PageChurn, Workload};

use super::{Measurement, WorkloadSpec};
use crate::memory::{self, Backing};

/// Errors of a native run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request makes no sense.
    #[error("{0}")]
    BadSpec(String),
    /// The host cannot give this backing.
    #[error("unavailable on this host: {0}")]
    Unavailable(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// Which.
        what: &'static str,
        /// errno.
        #[source]
        source: std::io::Error,
    },
}

const MIB2: u64 = 2 << 20;
const GIB: u64 = 1 << 30;

/// An anonymous buffer with a given backing, unmapped on drop.
#[derive(Debug)]
pub struct HostBuffer {
    map: *mut libc::c_void,
    map_len: usize,
    data: *mut u64,
    len: usize,
}

fn os(what: &'static str) -> Error {
    Error::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

impl HostBuffer {
    /// Maps `bytes` with `backing`; `populate` faults every page in first (so that only
    /// `touch`, which measures first touch, sees the host's page faults).
    pub fn new(
        bytes: u64,
        backing: Backing,
        populate: bool,
        grow_pool: bool,
    ) -> Result<Self, Error> {
        if bytes == 0 || bytes % 4096 != 0 {
            return Err(Error::BadSpec(format!(
                "footprint {bytes}: must be a non-zero multiple of 4096"
            )));
        }
        let (page, huge_flags) = match backing {
            Backing::Anon4k => (4096, 0),
            Backing::Thp => (MIB2, 0),
            Backing::Huge2m => (MIB2, libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT)),
            Backing::Huge1g => (GIB, libc::MAP_HUGETLB | (30 << libc::MAP_HUGE_SHIFT)),
        };
        let len = bytes.div_ceil(page) * page;
        if huge_flags != 0 {
            let want = len / page;
            if memory::hugetlb_free(page) < want {
                if !grow_pool {
                    return Err(Error::Unavailable(format!(
                        "{} hugetlb pool has {} free pages, {want} needed (use --grow-pool as root)",
                        backing,
                        memory::hugetlb_free(page)
                    )));
                }
                memory::grow_hugetlb_pool(page, want)
                    .map_err(|e| Error::Unavailable(e.to_string()))?;
            }
        }
        // THP wants 2 MiB alignment: over-map and align inside.
        let map_len = if backing == Backing::Thp {
            len + MIB2
        } else {
            len
        } as usize;
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | huge_flags;
        if populate && huge_flags != 0 {
            flags |= libc::MAP_POPULATE;
        }
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(if huge_flags != 0 {
                Error::Unavailable(format!(
                    "mmap of {len} bytes of {backing} hugetlb memory failed: {}",
                    std::io::Error::last_os_error()
                ))
            } else {
                os("mmap")
            });
        }
        let start = if backing == Backing::Thp {
            (map as u64).div_ceil(MIB2) * MIB2
        } else {
            map as u64
        };
        let buf = HostBuffer {
            map,
            map_len,
            data: start as *mut u64,
            len: (bytes / 8) as usize,
        };
        let advice = match backing {
            Backing::Anon4k => Some(libc::MADV_NOHUGEPAGE),
            Backing::Thp => Some(libc::MADV_HUGEPAGE),
            _ => None,
        };
        if let Some(a) = advice {
            // SAFETY: advice on our own mapping.
            if unsafe { libc::madvise(start as *mut libc::c_void, len as usize, a) } != 0 {
                return Err(os("madvise"));
            }
        }
        if populate && huge_flags == 0 {
            // SAFETY: populating our own writable mapping.
            if unsafe {
                libc::madvise(
                    start as *mut libc::c_void,
                    len as usize,
                    libc::MADV_POPULATE_WRITE,
                )
            } != 0
            {
                return Err(os("madvise(MADV_POPULATE_WRITE)"));
            }
        }
        Ok(buf)
    }

    /// The buffer as words.
    pub fn words(&mut self) -> &mut [u64] {
        // SAFETY: `data` points at `len` words inside our own live read-write mapping,
        // exclusively borrowed through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }

    /// Virtual address of the first byte.
    pub fn addr(&self) -> u64 {
        self.data as u64
    }

    /// Host-physically contiguous runs backing the buffer (needs root to read frames).
    pub fn contiguous_runs(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open("/proc/self/pagemap").ok()?;
        let pages = (self.len * 8).div_ceil(4096);
        let mut buf = vec![0u8; pages * 8];
        f.read_exact_at(&mut buf, (self.addr() >> 12) * 8).ok()?;
        let mut runs = 0u64;
        let mut prev: Option<u64> = None;
        for e in buf.chunks_exact(8) {
            let entry = u64::from_le_bytes(e.try_into().ok()?);
            let pfn = entry & ((1 << 55) - 1);
            if entry >> 63 == 0 || pfn == 0 {
                return None;
            }
            if prev != Some(pfn.wrapping_sub(1)) {
                runs += 1;
            }
            prev = Some(pfn);
        }
        Some(runs)
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this buffer created.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// The TSC, ordered after earlier instructions.
fn tsc() -> u64 {
    // SAFETY: lfence and rdtsc have no memory effects and exist on every x86-64 CPU.
    unsafe {
        std::arch::x86_64::_mm_lfence();
        std::arch::x86_64::_rdtsc()
    }
}

/// ptchurn natively: each cycle maps a fresh anonymous page, touches it (a host page
/// fault), and unmaps it (a host page-table update and TLB flush).
struct NativeChurn {
    page: usize,
    slots: usize,
    mapped: Vec<*mut libc::c_void>,
}

impl PageChurn for NativeChurn {
    fn slots(&self) -> usize {
        self.slots
    }
    fn map(&mut self, slot: usize) -> bool {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        self.mapped[slot] = p;
        true
    }
    fn touch(&mut self, slot: usize, value: u64) -> u64 {
        let p = self.mapped[slot] as *mut u64;
        // SAFETY: `p` is the page just mapped read-write by `map` for this slot.
        unsafe {
            std::ptr::write_volatile(p, value);
            std::ptr::read_volatile(p)
        }
    }
    fn unmap(&mut self, slot: usize) {
        // SAFETY: unmapping the page `map` created for this slot, exactly once.
        unsafe { libc::munmap(self.mapped[slot], self.page) };
        self.mapped[slot] = std::ptr::null_mut();
    }
}

/// Runs `spec` natively over a buffer with `backing`; `tsc_khz` is KVM's TSC frequency.
pub fn run(
    spec: &WorkloadSpec,
    backing: Backing,
    grow_pool: bool,
    tsc_khz: Option<u32>,
) -> Result<Measurement, Error> {
    let w = spec.workload;
    let count = spec.count();
    let (ops, checksum, t0, t1, w0, w1, init_ticks, data_va, runs);
    let begin = tsc();
    if w == Workload::PtChurn {
        // Slots are 4 KiB pages (the kernel picks the backing of each fresh mapping).
        let mut churn = NativeChurn {
            page: 4096,
            slots: (spec.footprint / 4096).max(1) as usize,
            mapped: Vec::new(),
        };
        churn.mapped = vec![std::ptr::null_mut(); churn.slots];
        (w0, t0) = (Instant::now(), tsc());
        let (done, sum) = kernels::ptchurn_run(&mut churn, count);
        (t1, w1) = (tsc(), Instant::now());
        (ops, checksum, init_ticks, data_va, runs) = (done, sum, t0 - begin, 0, None);
    } else {
        let mut buf = HostBuffer::new(spec.footprint, backing, w != Workload::Touch, grow_pool)?;
        let words = buf.words();
        match w {
            Workload::Chase => {
                if kernels::chase_elems(words.len()) == 0 {
                    return Err(Error::BadSpec("footprint too small for chase".into()));
                }
                kernels::chase_init(words, spec.seed);
                (w0, t0) = (Instant::now(), tsc());
                checksum = kernels::chase_run(words, count);
                (t1, w1) = (tsc(), Instant::now());
                ops = count;
            }
            Workload::Gups => {
                kernels::gups_init(words);
                (w0, t0) = (Instant::now(), tsc());
                checksum = kernels::gups_run(words, spec.seed, count);
                (t1, w1) = (tsc(), Instant::now());
                ops = count;
            }
            Workload::Stream => {
                let n = kernels::stream_elems(words.len()) as u64;
                if n == 0 {
                    return Err(Error::BadSpec("footprint too small for stream".into()));
                }
                kernels::stream_init(words);
                let passes = count.div_ceil(n).max(1);
                (w0, t0) = (Instant::now(), tsc());
                ops = kernels::stream_run(words, passes);
                (t1, w1) = (tsc(), Instant::now());
                checksum = kernels::stream_checksum(words);
            }
            _ => {
                let words = kernels::touch_prefix(words, count);
                (w0, t0) = (Instant::now(), tsc());
                ops = kernels::touch_run(words);
                (t1, w1) = (tsc(), Instant::now());
                checksum = kernels::touch_checksum(words);
            }
        }
        init_ticks = t0 - begin;
        data_va = buf.addr();
        runs = buf.contiguous_runs();
    }
    let wall_ns = w1.duration_since(w0).as_secs_f64() * 1e9;
    let (elapsed_ns, ns_per_op) = Measurement::timing(t1.wrapping_sub(t0), wall_ns, tsc_khz, ops);
    Ok(Measurement {
        workload: w.name().into(),
        environment: "native".into(),
        backing,
        guest_pages: None,
        footprint: spec.footprint,
        seed: spec.seed,
        data_va,
        ops,
        elapsed_ns,
        wall_ns,
        tsc_khz,
        ns_per_op,
        checksum,
        init_ns: Measurement::timing(init_ticks, 0.0, tsc_khz, 1).0,
        kvm_exits: None,
        shadow_page_faults: None,
        contiguous_runs: runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(w: Workload) -> WorkloadSpec {
        WorkloadSpec {
            workload: w,
            footprint: 1 << 20,
            seed: 7,
            count: Some(5000),
        }
    }

    #[test]
    fn every_workload_runs_natively() {
        for w in Workload::ALL {
            let m = run(&spec(w), Backing::Anon4k, false, Some(1_000_000)).unwrap();
            assert!(m.ops > 0, "{w:?}");
            assert!(m.ns_per_op > 0.0, "{w:?}");
        }
    }

    #[test]
    fn checksums_are_those_of_the_kernels() {
        let m = run(&spec(Workload::Chase), Backing::Thp, false, None).unwrap();
        let mut v = vec![0u64; (1 << 20) / 8];
        kernels::chase_init(&mut v, 7);
        assert_eq!(m.checksum, kernels::chase_run(&v, 5000));
        let t = run(&spec(Workload::Touch), Backing::Anon4k, false, None).unwrap();
        assert_eq!((t.ops, t.checksum), (256, 256 * 257 / 2));
        let p = run(&spec(Workload::PtChurn), Backing::Anon4k, false, None).unwrap();
        assert_eq!((p.ops, p.checksum), (5000, 5000 * 4999 / 2));
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            HostBuffer::new(0, Backing::Anon4k, true, false),
            Err(Error::BadSpec(_))
        ));
        assert!(matches!(
            HostBuffer::new(100, Backing::Anon4k, true, false),
            Err(Error::BadSpec(_))
        ));
    }
}
