//! Prefaulting guest RAM: `off` leaves it to the guest's first touch, `on`/`threads=N`
//! populates it at set-up with N threads in parallel (QEMU's prealloc threads), each with
//! `MADV_POPULATE_WRITE` on its own page-aligned slice, falling back to touching one byte per
//! page where the host kernel lacks it. Also measures, in the same run, what the prefault
//! throughput should be compared with: a plain memset's bandwidth on this machine.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Instant;

use serde::{Serialize, Serializer};

use super::Error;

/// Bytes written by the memset that measures memory bandwidth (or all of RAM, if smaller).
pub const MEMSET_BYTES: usize = 256 << 20;

/// Whether and how guest RAM is faulted in at set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefault {
    /// Mapped lazily: the guest's first touch of a page faults it in.
    Off,
    /// Populated at set-up with one thread per online CPU.
    On,
    /// Populated at set-up with this many threads.
    Threads(NonZeroUsize),
}

impl From<bool> for Prefault {
    fn from(on: bool) -> Self {
        if on {
            Prefault::On
        } else {
            Prefault::Off
        }
    }
}

impl fmt::Display for Prefault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefault::Off => f.write_str("off"),
            Prefault::On => f.write_str("on"),
            Prefault::Threads(n) => write!(f, "threads={n}"),
        }
    }
}

impl Serialize for Prefault {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A `--prefault` value that is not `on`, `off` or `threads=N` with a sensible N.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Neither on, off nor threads=N.
    #[error("'{0}' is not a prefault mode (on, off or threads=N)")]
    Unknown(String),
    /// N is not a number.
    #[error("threads='{0}' is not a number of threads")]
    NotANumber(String),
    /// threads=0.
    #[error("threads=0: at least one thread must populate guest RAM (use off for none)")]
    Zero,
    /// Far more threads than CPUs.
    #[error("threads={n}: more than {max} (4 per online CPU, {cpus} online) would only contend")]
    TooMany {
        /// Asked for.
        n: usize,
        /// The cap.
        max: usize,
        /// Online CPUs.
        cpus: usize,
    },
}

/// Online CPUs (at least 1).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system value and has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

impl FromStr for Prefault {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "on" => return Ok(Prefault::On),
            "off" => return Ok(Prefault::Off),
            _ => {}
        }
        let n = s
            .strip_prefix("threads=")
            .ok_or_else(|| ParseError::Unknown(s.into()))?;
        let n: usize = n.parse().map_err(|_| ParseError::NotANumber(n.into()))?;
        let cpus = online_cpus();
        let max = 4 * cpus;
        if n > max {
            return Err(ParseError::TooMany { n, max, cpus });
        }
        NonZeroUsize::new(n)
            .map(Prefault::Threads)
            .ok_or(ParseError::Zero)
    }
}

impl Prefault {
    /// Threads that populate RAM (0 when off).
    pub fn threads(self) -> usize {
        match self {
            Prefault::Off => 0,
            Prefault::On => online_cpus(),
            Prefault::Threads(n) => n.get(),
        }
    }

    /// Whether RAM is populated at set-up.
    pub fn is_on(self) -> bool {
        self != Prefault::Off
    }
}

/// What the prefault did, for the run report.
#[derive(Debug, Clone, Serialize)]
pub struct PrefaultReport {
    /// The mode asked for.
    pub mode: Prefault,
    /// Threads that populated RAM (0: off).
    pub threads: usize,
    /// Whether MADV_POPULATE_WRITE was refused and pages were touched one by one instead.
    pub touched: bool,
    /// Time spent populating, ms (0 when off).
    pub ms: f64,
    /// Populating throughput, GiB/s (None when off).
    pub gib_per_s: Option<f64>,
    /// This machine's memory bandwidth in the same run: one plain memset of already-resident
    /// memory (the first `memset_bytes` of guest RAM, which stay zero), GiB/s. None when off.
    pub memset_gib_per_s: Option<f64>,
    /// Bytes the memset wrote.
    pub memset_bytes: u64,
    /// Guest RAM resident right after set-up (mincore), bytes: all of it when prefaulted,
    /// about none when off.
    pub resident_at_start_bytes: u64,
}

impl fmt::Display for PrefaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let res = self.resident_at_start_bytes as f64 / (1 << 20) as f64;
        match (self.gib_per_s, self.memset_gib_per_s) {
            (Some(p), Some(m)) => write!(
                f,
                "prefault {} ({} threads{}): {:.1} ms, {p:.2} GiB/s; memset {m:.2} GiB/s ({} MiB); {res:.1} MiB resident at start",
                self.mode,
                self.threads,
                if self.touched { ", touching pages" } else { "" },
                self.ms,
                self.memset_bytes >> 20
            ),
            _ => write!(
                f,
                "prefault {}: guest RAM mapped lazily, {res:.1} MiB resident at start",
                self.mode
            ),
        }
    }
}

fn os_err(what: &'static str) -> Error {
    Error::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Populates `[addr, addr+len)` with MADV_POPULATE_WRITE; where the kernel does not know
/// it (EINVAL), touches one byte every `step` bytes. Returns whether it touched.
fn populate_slice(addr: usize, len: usize, step: usize) -> Result<bool, Error> {
    // SAFETY: advice on a slice of guest RAM, mapped read-write by the caller.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
    if r == 0 {
        return Ok(false);
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(os_err("madvise(MADV_POPULATE_WRITE)"));
    }
    for off in (0..len).step_by(step) {
        // SAFETY: inside the read-write mapping; a zero byte over fresh zeroed memory.
        unsafe { std::ptr::write_volatile((addr + off) as *mut u8, 0) };
    }
    Ok(true)
}

/// Populates `[addr, addr+len)` with up to `threads` threads, each on a slice aligned to
/// `align` (the backing's page size or more); touching steps `step` bytes. Returns whether
/// any thread had to touch pages.
pub(super) fn populate(
    addr: usize,
    len: usize,
    align: usize,
    step: usize,
    threads: usize,
) -> Result<bool, Error> {
    let per = len.div_ceil(threads.max(1)).div_ceil(align) * align;
    if threads <= 1 || per >= len {
        return populate_slice(addr, len, step);
    }
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..len)
            .step_by(per)
            .map(|off| s.spawn(move || populate_slice(addr + off, per.min(len - off), step)))
            .collect();
        let mut touched = false;
        for w in workers {
            touched |= w.join().map_err(|_| Error::PrefaultPanicked)??;
        }
        Ok(touched)
    })
}

/// Writes zeros over `len` bytes at `addr` (resident, zero memory) and returns GiB/s.
pub(super) fn memset_gib_per_s(addr: usize, len: usize) -> f64 {
    let t = Instant::now();
    // SAFETY: `len` bytes of resident read-write guest RAM that still hold zeros; writing
    // zeros leaves them as they were.
    unsafe { std::ptr::write_bytes(addr as *mut u8, 0, len) };
    std::hint::black_box(addr);
    gib_per_s(len as u64, t.elapsed().as_secs_f64())
}

/// Bytes per second as GiB/s (0 for no time).
pub(super) fn gib_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / (1u64 << 30) as f64
    } else {
        0.0
    }
}

/// Bytes of `[addr, addr+len)` resident (mincore, counted in 4 KiB pages).
pub(super) fn resident_bytes(addr: usize, len: usize) -> Result<u64, Error> {
    const CHUNK: usize = 16 * 1024;
    let mut vec = vec![0u8; CHUNK];
    let pages = len / 4096;
    let mut resident = 0u64;
    for first in (0..pages).step_by(CHUNK) {
        let n = CHUNK.min(pages - first);
        // SAFETY: asks about n pages of our own mapping; the kernel writes n bytes to vec.
        let r = unsafe {
            libc::mincore(
                (addr + first * 4096) as *mut libc::c_void,
                n * 4096,
                vec.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(os_err("mincore (guest RAM)"));
        }
        resident += vec[..n].iter().filter(|b| *b & 1 != 0).count() as u64 * 4096;
    }
    Ok(resident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_refuses_bad_threads() {
        assert_eq!("on".parse::<Prefault>(), Ok(Prefault::On));
        assert_eq!("off".parse::<Prefault>(), Ok(Prefault::Off));
        assert_eq!(
            "threads=1".parse::<Prefault>().map(Prefault::threads),
            Ok(1)
        );
        assert_eq!("threads=0".parse::<Prefault>(), Err(ParseError::Zero));
        assert!(matches!(
            "threads=x".parse::<Prefault>(),
            Err(ParseError::NotANumber(_))
        ));
        assert!(matches!(
            "maybe".parse::<Prefault>(),
            Err(ParseError::Unknown(_))
        ));
        let too_many = format!("threads={}", 4 * online_cpus() + 1);
        assert!(matches!(
            too_many.parse::<Prefault>(),
            Err(ParseError::TooMany { .. })
        ));
        assert_eq!(
            Prefault::Threads(NonZeroUsize::MIN).to_string(),
            "threads=1"
        );
    }
}
