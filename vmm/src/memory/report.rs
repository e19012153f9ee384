//! What the host really gave the guest: bytes per page size (from `/proc/self/smaps`) and
//! the host-physically contiguous runs backing guest RAM (from `/proc/self/pagemap`), i.e.
//! the number of segments a Compromis-style MMU would need for this VM.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;

use serde::Serialize;

use super::{Backing, GuestRam, PrefaultReport};

/// One host-physically contiguous run of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostRun {
    /// First guest-physical address of the run.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Host-physical address of its first byte.
    pub hpa: u64,
}

/// The memory part of a run report.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// The backing asked for.
    pub requested_backing: Backing,
    /// Guest RAM size in bytes.
    pub size: u64,
    /// Host virtual address of guest-physical 0 (hva = base + gpa).
    pub host_base: u64,
    /// Resident bytes by host page size ("4k", "2m", "1g"), read from smaps.
    pub bytes_by_page_size: BTreeMap<String, u64>,
    /// Number of host-physically contiguous runs backing guest RAM (None: unreadable).
    pub contiguous_runs: Option<u64>,
    /// Largest run, bytes.
    pub largest_run_bytes: Option<u64>,
    /// Why runs are missing, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_unavailable: Option<String>,
    /// Guest RAM counted in the process's resident set (hugetlb pages are not), bytes.
    pub rss_bytes: u64,
    /// Time spent mapping and prefaulting guest RAM, ms.
    pub setup_ms: f64,
    /// The prefault: mode, threads, throughput beside a memset's bandwidth, and what was
    /// resident right after set-up.
    pub prefault: PrefaultReport,
    /// The runs themselves (not serialized: can be millions; the ptsnap carries them).
    #[serde(skip)]
    pub runs: Vec<HostRun>,
}

fn size_key(bytes: u64) -> String {
    match bytes {
        4096 => "4k".into(),
        0x20_0000 => "2m".into(),
        0x4000_0000 => "1g".into(),
        b => format!("{}k", b / 1024),
    }
}

/// Sums smaps fields over every VMA inside [start, end).
fn smaps_bytes(start: u64, end: u64) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    let Ok(f) = File::open("/proc/self/smaps") else {
        return out;
    };
    let mut inside = false;
    let mut kernel_page = 4096u64;
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A VMA header: "start-end perms offset dev inode [path]".
            let mut it = first.split('-');
            let a = it
                .next()
                .and_then(|x| u64::from_str_radix(x, 16).ok())
                .unwrap_or(0);
            let b = it
                .next()
                .and_then(|x| u64::from_str_radix(x, 16).ok())
                .unwrap_or(0);
            inside = a >= start && b <= end;
            kernel_page = 4096;
            continue;
        }
        if !inside {
            continue;
        }
        let mut it = line.split_whitespace();
        let key = it.next().unwrap_or("");
        let kb: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let bytes = kb * 1024;
        match key {
            "KernelPageSize:" => kernel_page = bytes,
            "Rss:" => *out.entry("rss".into()).or_default() += bytes,
            "AnonHugePages:" => *out.entry("thp".into()).or_default() += bytes,
            "Private_Hugetlb:" | "Shared_Hugetlb:" if bytes > 0 => {
                *out.entry(size_key(kernel_page)).or_default() += bytes
            }
            _ => {}
        }
    }
    let rss = out.get("rss").copied().unwrap_or(0);
    let thp = out.remove("thp").unwrap_or(0);
    if thp > 0 {
        *out.entry("2m".into()).or_default() += thp;
    }
    let small = rss.saturating_sub(thp);
    if small > 0 {
        *out.entry("4k".into()).or_default() += small;
    }
    out
}

/// Reads frame numbers for every 4 KiB page of RAM and coalesces them into runs.
fn pagemap_runs(ram: &GuestRam) -> Result<Vec<HostRun>, String> {
    let f = File::open("/proc/self/pagemap")
        .map_err(|e| format!("cannot open /proc/self/pagemap: {e}"))?;
    let mut runs: Vec<HostRun> = Vec::new();
    const CHUNK: usize = 64 * 1024; // entries per read (512 KiB of pagemap)
    let mut buf = vec![0u8; CHUNK * 8];
    for r in ram.ranges() {
        let pages = r.len / 4096;
        let mut done = 0u64;
        while done < pages {
            let n = ((pages - done) as usize).min(CHUNK);
            let vpn = (ram.hva(r.gpa) >> 12) + done;
            let bytes = &mut buf[..n * 8];
            f.read_exact_at(bytes, vpn * 8)
                .map_err(|e| format!("reading /proc/self/pagemap: {e}"))?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_le_bytes(e.try_into().unwrap_or_default());
                let gpa = r.gpa + (done + i as u64) * 4096;
                if entry >> 63 == 0 {
                    return Err(if ram.prefaulted() {
                        format!("guest page at gpa {gpa:#x} is not resident (given back by a balloon, or the prefault failed; see the balloon report for runs of resident RAM)")
                    } else {
                        format!("guest page at gpa {gpa:#x} is not resident yet (guest RAM is not prefaulted)")
                    });
                }
                let pfn = entry & ((1 << 55) - 1);
                if pfn == 0 {
                    return Err(
                        "frame numbers read as zero: reading them needs root (CAP_SYS_ADMIN)"
                            .into(),
                    );
                }
                let hpa = pfn << 12;
                match runs.last_mut() {
                    Some(last) if last.gpa + last.len == gpa && last.hpa + last.len == hpa => {
                        last.len += 4096
                    }
                    _ => runs.push(HostRun {
                        gpa,
                        len: 4096,
                        hpa,
                    }),
                }
            }
            done += n as u64;
        }
    }
    Ok(runs)
}

/// Measures the report for `ram`.
pub fn measure(ram: &GuestRam) -> MemoryReport {
    let mut bytes_by_page_size = smaps_bytes(
        ram.base(),
        ram.base() + ram.ranges().last().map(|r| r.end()).unwrap_or(0),
    );
    let rss_bytes = bytes_by_page_size.remove("rss").unwrap_or(0);
    let (runs, why) = match pagemap_runs(ram) {
        Ok(r) => (r, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    MemoryReport {
        requested_backing: ram.backing(),
        size: ram.size(),
        host_base: ram.base(),
        bytes_by_page_size,
        contiguous_runs: why.is_none().then_some(runs.len() as u64),
        largest_run_bytes: runs.iter().map(|r| r.len).max(),
        runs_unavailable: why,
        rss_bytes,
        setup_ms: ram.prefault_ns() as f64 / 1e6,
        prefault: ram.prefault_report().clone(),
        runs,
    }
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pages: Vec<String> = self
            .bytes_by_page_size
            .iter()
            .map(|(k, v)| format!("{k}: {} MiB", v >> 20))
            .collect();
        write!(
            f,
            "memory: {} MiB, backing {} -> {} (set-up {:.1} ms); ",
            self.size >> 20,
            self.requested_backing,
            pages.join(", "),
            self.setup_ms
        )?;
        write!(f, "{}; ", self.prefault)?;
        match (self.contiguous_runs, &self.runs_unavailable) {
            (Some(n), _) => write!(
                f,
                "{n} host-physically contiguous runs, largest {} MiB",
                self.largest_run_bytes.unwrap_or(0) >> 20
            ),
            (None, Some(why)) => write!(f, "contiguous runs unavailable: {why}"),
            (None, None) => write!(f, "contiguous runs unavailable"),
        }
    }
}
