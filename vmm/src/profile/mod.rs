//! `segvmm run --profile-guest FILE`: a flat profile of a Linux guest by kernel symbol,
//! sampled from the VMM.
//!
//! The event loop arms a timer at `--profile-hz`; on each tick it sends every running
//! vCPU a sample request, which kicks the vCPU out of KVM_RUN (signal + immediate_exit, as
//! for a pause). The vCPU thread reads its RIP (KVM_GET_REGS), counts it and runs on: no
//! pause, nothing else changes. Counts go straight into one counter per symbol of the
//! kernel's System.map ([`symbols`]), so memory is bounded by the map whatever the run's
//! length. At the end the profile is written, sorted by count, to a file that was created
//! new (O_CREAT|O_EXCL|O_NOFOLLOW) before the guest started.
//!
//! On a host whose KVM emulates every guest ring-0 instruction at about the same cost,
//! wall-clock samples of RIP are proportional to the instructions executed there.
//!
//! Bad input is refused before the guest starts ([`Profiler::prepare`],
//! [`Profiler::check_loaded`]): a rate of 0 or above [`MAX_HZ`], a path that exists or
//! cannot be created, a map that is missing, malformed, or whose `linux_banner` is not
//! where the loaded kernel has its "Linux version " string.

pub mod symbols;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use symbols::SymbolMap;

/// The default sampling rate (Hz); prime, so it does not beat with the guest's timer.
pub const DEFAULT_HZ: u32 = 997;
/// The highest rate accepted: each sample costs an exit and an ioctl (~15-30 µs here).
pub const MAX_HZ: u32 = 5000;
/// `__START_KERNEL_map`: x86-64 kernel text is mapped at this plus its physical address.
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// Where the upper (kernel) half of the address space starts.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
/// What `linux_banner` starts with.
const BANNER: &[u8] = b"Linux version ";

/// Errors of the guest profiler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sampling rate outside 1..=MAX_HZ.
    #[error("--profile-hz {0}: must be 1 to {MAX_HZ} samples per second")]
    Rate(u32),
    /// No map given and none found next to the kernel.
    #[error(
        "--profile-guest: no System.map next to the kernel ({tried}); give one with --profile-map"
    )]
    NoMap {
        /// The paths looked at.
        tried: String,
    },
    /// --profile-guest without a Linux kernel.
    #[error("--profile-guest needs --kernel (it symbolizes with the kernel's System.map)")]
    NoKernel,
    /// The map cannot be used.
    #[error(transparent)]
    Map(#[from] symbols::Error),
    /// The output file cannot be created.
    #[error("--profile-guest {path}: cannot create it (it must not exist; links are not followed): {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The map is not the loaded kernel's.
    #[error("System.map {map} does not match the kernel: no \"Linux version\" string at its linux_banner ({banner:#x}) in the loaded kernel{hint}")]
    Mismatch {
        /// The map.
        map: PathBuf,
        /// linux_banner's address in the map.
        banner: u64,
        /// Why the check may not apply.
        hint: &'static str,
    },
    /// Writing the profile failed.
    #[error("writing the guest profile {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What `segvmm run` asks for.
#[derive(Debug, Clone)]
pub struct ProfileConfig {
    /// Where the profile goes (created new).
    pub out: PathBuf,
    /// The kernel's System.map (`None`: next to the kernel).
    pub map: Option<PathBuf>,
    /// Samples per second.
    pub hz: u32,
}

/// The maps looked for next to `kernel`: `<kernel>.map`, then `System.map` in its directory.
pub fn default_maps(kernel: &Path) -> Vec<PathBuf> {
    let mut with_ext = kernel.as_os_str().to_owned();
    with_ext.push(".map");
    let dir = kernel.parent().unwrap_or(Path::new("."));
    vec![PathBuf::from(with_ext), dir.join("System.map")]
}

/// The sample counters: one per symbol of the map, one for addresses in the kernel half
/// outside any text symbol, one for the lower half (user space, early boot at physical
/// addresses), one for a vCPU that KVM holds halted or not yet started.
#[derive(Debug)]
pub struct Samples {
    map: SymbolMap,
    counts: Vec<AtomicU64>,
    kernel_other: AtomicU64,
    lower_half: AtomicU64,
    not_running: AtomicU64,
}

impl Samples {
    /// Counters for the symbols of `map`.
    pub fn new(map: SymbolMap) -> Self {
        let counts = map.symbols().iter().map(|_| AtomicU64::new(0)).collect();
        Samples {
            map,
            counts,
            kernel_other: AtomicU64::new(0),
            lower_half: AtomicU64::new(0),
            not_running: AtomicU64::new(0),
        }
    }

    /// Counts one sample at `rip`.
    pub fn record(&self, rip: u64) {
        let c = if rip < KERNEL_HALF {
            &self.lower_half
        } else {
            match self.map.lookup(rip).and_then(|i| self.counts.get(i)) {
                Some(c) => c,
                None => &self.kernel_other,
            }
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one sample of a vCPU that was not running guest code (halted, waiting for
    /// an interrupt, or an application processor not started yet).
    pub fn record_not_running(&self) {
        self.not_running.fetch_add(1, Ordering::Relaxed);
    }

    /// The profile, most samples first: (count, name), zero counts left out.
    pub fn rows(&self) -> Vec<(u64, String)> {
        let mut rows: Vec<(u64, String)> = self
            .counts
            .iter()
            .zip(self.map.symbols())
            .map(|(c, s)| (c.load(Ordering::Relaxed), s.name.clone()))
            .filter(|(c, _)| *c > 0)
            .collect();
        for (c, name) in [
            (&self.kernel_other, "[kernel, not in a text symbol]"),
            (&self.lower_half, "[lower half: user space or early boot]"),
            (&self.not_running, "[vCPU halted or not started]"),
        ] {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                rows.push((n, name.to_string()));
            }
        }
        rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        rows
    }

    /// The flat profile as text: a `#` header, then `count percent symbol` per line.
    pub fn render(&self, header: &str) -> String {
        let rows = self.rows();
        let total: u64 = rows.iter().map(|r| r.0).sum();
        let mut s = format!("{header}# samples: {total}\n# count  percent  symbol\n");
        for (n, name) in rows {
            let pct = if total == 0 {
                0.0
            } else {
                n as f64 * 100.0 / total as f64
            };
            s.push_str(&format!("{n:>8} {pct:>7.2}% {name}\n"));
        }
        s
    }
}

/// A profile being taken: the counters, the output file created at start, the settings.
#[derive(Debug)]
pub struct Profiler {
    samples: Arc<Samples>,
    out: File,
    out_path: PathBuf,
    map_path: PathBuf,
    hz: u32,
}

/// What a finished profile reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProfileSummary {
    /// The profile file.
    pub path: PathBuf,
    /// The map used.
    pub map: PathBuf,
    /// Samples per second asked for.
    pub hz: u32,
    /// Samples taken.
    pub samples: u64,
    /// The symbol with the most samples, if any.
    pub top: Option<String>,
}

impl Profiler {
    /// Checks `cfg` for a run of `kernel` and creates the output file: everything that
    /// can be refused before the VM is built.
    pub fn prepare(cfg: &ProfileConfig, kernel: Option<&Path>) -> Result<Self, Error> {
        if cfg.hz == 0 || cfg.hz > MAX_HZ {
            return Err(Error::Rate(cfg.hz));
        }
        let kernel = kernel.ok_or(Error::NoKernel)?;
        let map_path = match &cfg.map {
            Some(m) => m.clone(),
            None => {
                let tried = default_maps(kernel);
                tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
                    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
                    Error::NoMap {
                        tried: list.join(", "),
                    }
                })?
            }
        };
        let map = SymbolMap::load(&map_path)?;
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o644)
            .open(&cfg.out)
            .map_err(|source| Error::Create {
                path: cfg.out.clone(),
                source,
            })?;
        Ok(Profiler {
            samples: Arc::new(Samples::new(map)),
            out,
            out_path: cfg.out.clone(),
            map_path,
            hz: cfg.hz,
        })
    }

    /// Checks, once the kernel is in guest RAM, that the map is this kernel's: its
    /// `linux_banner` must hold "Linux version " at the physical address the kernel's
    /// text mapping gives it. `read` reads guest-physical memory. On a mismatch the output
    /// file is removed again.
    pub fn check_loaded(
        &self,
        read: impl Fn(u64, &mut [u8]) -> bool,
        self_decompressing: bool,
    ) -> Result<(), Error> {
        let banner = self.samples.map.address_of("linux_banner").unwrap_or(0);
        let mut buf = [0u8; BANNER.len()];
        let ok = banner
            .checked_sub(START_KERNEL_MAP)
            .is_some_and(|gpa| read(gpa, &mut buf) && buf == BANNER);
        if ok {
            return Ok(());
        }
        let _ = std::fs::remove_file(&self.out_path);
        Err(Error::Mismatch {
            map: self.map_path.clone(),
            banner,
            hint: if self_decompressing {
                " (with --bzimage as-is the kernel is still compressed: profile with --bzimage host-decompress)"
            } else {
                ""
            },
        })
    }

    /// The counters the vCPU threads record into.
    pub fn samples(&self) -> Arc<Samples> {
        self.samples.clone()
    }

    /// The sampling period.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 / u64::from(self.hz.max(1)))
    }

    /// Writes the profile and says what it holds.
    pub fn finish(mut self) -> Result<ProfileSummary, Error> {
        let header = format!(
            "# segvmm guest profile: RIP sampled at {} Hz, symbols from {}\n",
            self.hz,
            self.map_path.display()
        );
        let text = self.samples.render(&header);
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|source| Error::Write {
                path: self.out_path.clone(),
                source,
            })?;
        let rows = self.samples.rows();
        Ok(ProfileSummary {
            path: self.out_path,
            map: self.map_path,
            hz: self.hz,
            samples: rows.iter().map(|r| r.0).sum(),
            top: rows.first().map(|r| r.1.clone()),
        })
    }
}
