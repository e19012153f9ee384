//! The memory file: guest RAM written straight from the one mapping (byte `gpa` at file
//! offset `gpa`), sparse, and read back by copy or mapped privately.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::Error;
use crate::memory::{Backing, GuestRam, MemoryConfig};

const PAGE: usize = 4096;
/// Pages looked at per mincore call.
const CHUNK_PAGES: usize = 512;

/// How a restore fills guest RAM from the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryMode {
    /// Read the file into fresh memory of the chosen backing.
    Copy,
    /// Map the file privately over the one mapping: pages load on first touch.
    Map,
}

impl segment_mmu::named::Named for MemoryMode {
    const ALL: &'static [Self] = &[MemoryMode::Copy, MemoryMode::Map];
    fn name(self) -> &'static str {
        match self {
            MemoryMode::Copy => "copy",
            MemoryMode::Map => "map",
        }
    }
    fn help(self) -> &'static str {
        match self {
            MemoryMode::Copy => "read the memory file into fresh memory of the backing",
            MemoryMode::Map => "map the memory file privately (4k): pages load on first touch",
        }
    }
}

impl std::fmt::Display for MemoryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(segment_mmu::named::Named::name(*self))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.into(),
        source,
    }
}

/// Whether the 4 KiB page at `p` is all zero.
///
/// # Safety
/// `p` must be 4 KiB aligned and point to 4 KiB of readable memory.
unsafe fn zero_page(p: *const u8) -> bool {
    // SAFETY: the caller guarantees an aligned, readable page; u64 reads of it are in
    // bounds and aligned.
    let words = unsafe { std::slice::from_raw_parts(p.cast::<u64>(), PAGE / 8) };
    words.iter().all(|&w| w == 0)
}

/// A new memory file at `path` (O_EXCL|O_NOFOLLOW, mode 0600) as long as guest RAM's
/// guest-physical span, all holes.
fn create_sized(ram: &GuestRam, path: &Path) -> Result<File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(path))?;
    let end = ram.ranges().last().map_or(0, |r| r.end());
    f.set_len(end).map_err(io(path))?;
    Ok(f)
}

/// Writes guest RAM into a new file at `path` (created O_EXCL|O_NOFOLLOW), sparse: pages
/// that are not resident (mincore) or all zero are left as holes. Every vCPU must be
/// paused. Returns the file, not yet synced (the caller syncs it once the guest runs
/// again), and the bytes of data written.
pub fn write(ram: &GuestRam, path: &Path) -> Result<(File, u64), Error> {
    let f = create_sized(ram, path)?;
    let mut data = 0;
    for r in ram.ranges() {
        let mut off = 0usize;
        let len = r.len as usize;
        while off < len {
            let n = (len - off).min(CHUNK_PAGES * PAGE);
            data += write_chunk(ram, &f, r.gpa + off as u64, n, path)?;
            off += n;
        }
    }
    Ok((f, data))
}

/// One chunk of [`write`]: resident non-zero pages, written as runs.
fn write_chunk(ram: &GuestRam, f: &File, gpa: u64, len: usize, path: &Path) -> Result<u64, Error> {
    let base = ram.hva(gpa) as *mut u8;
    let pages = len.div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: [base, base+len) is inside the guest RAM mapping (a RAM range), page
    // aligned; `vec` has one byte per page.
    let r = unsafe { libc::mincore(base.cast(), len, vec.as_mut_ptr()) };
    if r != 0 {
        return Err(io(path)(std::io::Error::last_os_error()));
    }
    let mut written = 0u64;
    let mut run: Option<usize> = None;
    for i in 0..=pages {
        let resident = vec.get(i).is_some_and(|v| v & 1 == 1);
        // SAFETY: a resident page i < pages lies inside the chunk checked above, aligned
        // and mapped.
        let keep = resident && !unsafe { zero_page(base.add(i * PAGE)) };
        match (keep, run) {
            (true, None) => run = Some(i),
            (false, Some(s)) => {
                // SAFETY: pages s..i of the chunk, mapped and readable; every vCPU is
                // paused, so nothing writes them meanwhile.
                let bytes =
                    unsafe { std::slice::from_raw_parts(base.add(s * PAGE), (i - s) * PAGE) };
                f.write_all_at(bytes, gpa + (s * PAGE) as u64)
                    .map_err(io(path))?;
                written += bytes.len() as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Writes the 4 KiB pages `pages` (frame numbers, sorted) of guest RAM into a new file
/// at `path`, at their guest-physical offsets (a diff snapshot: zero pages are written
/// too, they may have been cleared since). Every vCPU must be paused. Returns the file,
/// not yet synced, and the bytes written.
pub fn write_pages(ram: &GuestRam, path: &Path, pages: &[u64]) -> Result<(File, u64), Error> {
    let f = create_sized(ram, path)?;
    let mut written = 0;
    for &pfn in pages {
        let gpa = pfn.saturating_mul(PAGE as u64);
        if !ram.contains(gpa, PAGE as u64) {
            continue;
        }
        // SAFETY: one RAM page inside the mapping (checked above); every vCPU is paused.
        let bytes = unsafe { std::slice::from_raw_parts(ram.hva(gpa) as *const u8, PAGE) };
        f.write_all_at(bytes, gpa).map_err(io(path))?;
        written += PAGE as u64;
    }
    Ok((f, written))
}

/// Applies a diff snapshot's pages over guest RAM (before any vCPU runs).
pub fn apply_diff(ram: &GuestRam, layer: &super::DiffLayer) -> Result<(), Error> {
    for &pfn in &layer.pages {
        let gpa = pfn.saturating_mul(PAGE as u64);
        if !ram.contains(gpa, PAGE as u64) {
            return Err(Error::Inconsistent(format!(
                "{}: page {pfn:#x} lies outside guest RAM",
                layer.path.display()
            )));
        }
        // SAFETY: one RAM page inside the mapping (checked above); no vCPU runs yet.
        let dst = unsafe { std::slice::from_raw_parts_mut(ram.hva(gpa) as *mut u8, PAGE) };
        layer
            .file
            .read_exact_at(dst, gpa)
            .map_err(io(&layer.path))?;
    }
    Ok(())
}

/// Guest RAM for a restore: fresh memory of `cfg`'s backing filled from `file`
/// ([`MemoryMode::Copy`]), or `file` mapped privately ([`MemoryMode::Map`], 4 KiB only).
/// `saved` is the saved RAM's (gpa, len) ranges.
pub fn restore_ram(
    cfg: &MemoryConfig,
    file: &File,
    path: &Path,
    mode: MemoryMode,
    saved: &[(u64, u64)],
) -> Result<GuestRam, Error> {
    match mode {
        MemoryMode::Map => {
            if cfg.backing != Backing::Anon4k {
                return Err(Error::Mode(format!(
                    "--memory-mode map maps the memory file in 4 KiB pages: --backing {} is not available with it (use --memory-mode copy)",
                    cfg.backing
                )));
            }
            Ok(GuestRam::from_file(cfg, file)?)
        }
        MemoryMode::Copy => {
            let ram = GuestRam::new(cfg)?;
            fill(&ram, file, path, saved)?;
            Ok(ram)
        }
    }
}

/// Copies the saved ranges' data from `file` into `ram` (fresh, zero memory).
pub fn fill(ram: &GuestRam, file: &File, path: &Path, saved: &[(u64, u64)]) -> Result<(), Error> {
    for &(gpa, len) in saved {
        if !ram.contains(gpa, len) {
            return Err(Error::Inconsistent(format!(
                "saved RAM range {gpa:#x}+{len:#x} lies outside the restored VM's RAM"
            )));
        }
        copy_range(ram, file, path, gpa, len)?;
    }
    Ok(())
}

/// Reads the data extents of `[gpa, gpa+len)` of `file` into guest RAM (holes skipped:
/// fresh memory is zero).
fn copy_range(ram: &GuestRam, file: &File, path: &Path, gpa: u64, len: u64) -> Result<(), Error> {
    let end = gpa + len;
    let mut at = gpa;
    while at < end {
        let Some(data) = seek(file, at, libc::SEEK_DATA).filter(|&d| d < end) else {
            break;
        };
        let hole = seek(file, data, libc::SEEK_HOLE).unwrap_or(end).min(end);
        let n = (hole - data) as usize;
        // SAFETY: [data, hole) lies inside a saved RAM range, which lies inside this VM's
        // RAM (the restore's layout covers the saved one); no vCPU runs yet.
        let dst = unsafe { std::slice::from_raw_parts_mut(ram.hva(data) as *mut u8, n) };
        file.read_exact_at(dst, data).map_err(io(path))?;
        at = hole;
    }
    Ok(())
}

/// lseek(SEEK_DATA/SEEK_HOLE); None at the end of the data (ENXIO) or on error.
fn seek(file: &File, at: u64, whence: libc::c_int) -> Option<u64> {
    let off = libc::off_t::try_from(at).ok()?;
    // SAFETY: lseek on an fd we own; it only moves the file offset, which no one else uses.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    u64::try_from(r).ok()
}
