//! Whole-VM snapshots (not to be confused with [`crate::ptsnap`], the page-table capture):
//! every vCPU's architectural state, the in-kernel interrupt controllers, PIT and KVM
//! clock, the devices' state, and guest RAM.
//!
//! A snapshot is a directory with two files, created new inside `--snapshot-dir` (a
//! temporary name renamed into place: complete or absent):
//!
//! * `state`: a versioned envelope, [`MAGIC`], [`VERSION`] (u32 LE), four reserved bytes,
//!   the body's length (u64 LE) and its FNV-1a 64 checksum (u64 LE), then the body, a JSON
//!   [`SnapshotState`] (payload, command line, vCPU count, CPUID, memory layout and
//!   backing, every saved state);
//! * `memory`: guest RAM, byte `gpa` at file offset `gpa`, written straight from the one
//!   mapping and sparse: pages that are not resident or all zero are holes.
//!
//! The vCPU threads save their own state while paused ([`cpu::save_vcpu`], asked through
//! the vCPU state machine); restore loads it before any vCPU runs ([`cpu::restore_vcpu`]).

pub mod cpu;
pub mod memfile;
pub mod virtio;

use std::path::{Path, PathBuf};

use kvm_bindings::kvm_cpuid_entry2;
use serde::{Deserialize, Serialize};

pub use cpu::{VcpuSnapshot, VmState};
pub use memfile::MemoryMode;

/// First bytes of a state file.
pub const MAGIC: &[u8; 8] = b"SEGVMMSN";
/// Format version written and the only one read.
pub const VERSION: u32 = 1;
/// Header bytes before the JSON body.
pub const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;
/// Largest state body read (a 64-vCPU state is well under this).
pub const MAX_STATE_BYTES: u64 = 64 << 20;
/// The state file's name inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Errors of snapshots.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The call.
        what: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused to restore an MSR.
    #[error("KVM_SET_MSRS: MSR {index:#x} was refused ({set} of {total} set)")]
    Msr {
        /// The first MSR not set.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many were given.
        total: usize,
    },
    /// Not a snapshot directory.
    #[error("{path}: not a snapshot directory ({why})")]
    NotSnapshot {
        /// The directory.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
    /// The state file is not a segvmm state file.
    #[error("{path}: not a segvmm snapshot state file (bad magic)")]
    Magic {
        /// The file.
        path: PathBuf,
    },
    /// Another format version.
    #[error("{path}: snapshot format version {found}, this segvmm reads version {VERSION} only")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{path}: truncated ({have} bytes, the header says {want})")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes present.
        have: u64,
        /// Bytes expected.
        want: u64,
    },
    /// The body does not match its checksum.
    #[error("{path}: checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): the state file is corrupt")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// In the header.
        stored: u64,
        /// Over the body.
        computed: u64,
    },
    /// The body is not a state.
    #[error("{path}: bad state: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state contradicts itself or what the memory file holds.
    #[error("{0}")]
    Inconsistent(String),
    /// The memory file is shorter than the saved layout.
    #[error("{path}: memory file has {have} bytes, the saved layout needs {need}")]
    MemoryShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        have: u64,
        /// The layout's end.
        need: u64,
    },
    /// The host cannot give the saved vCPUs.
    #[error("the snapshot has {saved} vCPUs; this host gives at most {max}")]
    Vcpus {
        /// Saved count.
        saved: usize,
        /// Host limit.
        max: usize,
    },
    /// The host cannot give the saved CPUID.
    #[error("the snapshot's CPUID cannot be given by this host: {0}")]
    Cpuid(String),
    /// A memory mode and backing that do not go together.
    #[error("{0}")]
    Mode(String),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::Error),
    /// Writing into the snapshot directory.
    #[error(transparent)]
    OutDir(#[from] crate::outdir::Error),
}

/// What the guest was booted from, for the restore to name it and rebuild its devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PayloadInfo {
    /// `linux`, `test-guest`, `probe` (the measurement guest) or `custom`.
    pub kind: String,
    /// The kernel image, for `linux`.
    pub kernel: Option<String>,
    /// The command line the guest got (host additions included).
    pub cmdline: Option<String>,
    /// The measurement guest's workload (name, footprint, seed, count, guest pages).
    pub probe: Option<serde_json::Value>,
}

/// Guest RAM as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Bytes of RAM.
    pub size: u64,
    /// RAM ranges (guest-physical start, length); the memory file holds byte `gpa` at
    /// offset `gpa`.
    pub ranges: Vec<(u64, u64)>,
    /// The backing it ran on (`4k`, `thp`, `2m`, `1g`).
    pub backing: String,
    /// The memory file's length (the end of the last range).
    pub file_len: u64,
    /// Bytes of data written (the rest are holes).
    pub data_bytes: u64,
    /// A diff snapshot: the snapshot (a sibling directory's name) whose memory this one's
    /// `memory` file updates; only the pages in `pages` are in it.
    #[serde(default)]
    pub diff_of: Option<String>,
    /// A diff snapshot's pages (frame numbers), dirtied since `diff_of` was taken.
    #[serde(default)]
    pub pages: Vec<u64>,
}

pub use crate::devices::serial::SerialSnapshot;

/// Device state. The CMOS RTC reads the host's clock and keeps only its index register;
/// the i8042 and the signal port hold none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// COM1.
    pub serial: SerialSnapshot,
    /// The RTC's index register.
    pub rtc_index: u8,
    /// virtio-blk disks, in slot order (absent in older state files: none).
    #[serde(default)]
    pub virtio_blk: Vec<virtio::BlockSnapshot>,
}

/// Everything in a state file.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// The segvmm version that wrote it.
    pub segvmm: String,
    /// The host's KVM module when it was taken (`kvm_pvm` here).
    pub kvm_module: String,
    /// What was booted.
    pub payload: PayloadInfo,
    /// vCPU count.
    pub vcpus: usize,
    /// Each vCPU's CPUID as set with KVM_SET_CPUID2.
    pub cpuid: Vec<Vec<kvm_cpuid_entry2>>,
    /// Guest RAM.
    pub memory: MemoryInfo,
    /// Each vCPU's state.
    pub vcpu: Vec<VcpuSnapshot>,
    /// VM-wide state.
    pub vm: VmState,
    /// Device state.
    pub devices: DeviceState,
    /// State KVM would not give on this host (saved without it).
    pub unsupported: Vec<String>,
}

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl SnapshotState {
    /// The state file's bytes: header and JSON body.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let body = serde_json::to_vec(self)?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&fnv1a(&body).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses a state file's bytes (`path` for messages).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, Error> {
        let p = || path.to_path_buf();
        let word = |at: usize| -> u64 {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(a)
        };
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(Error::Magic { path: p() });
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[8..12]);
        let found = u32::from_le_bytes(v);
        if found != VERSION {
            return Err(Error::Version { path: p(), found });
        }
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated {
                path: p(),
                have: bytes.len() as u64,
                want: HEADER_LEN as u64,
            });
        }
        let len = word(16);
        let want = len.saturating_add(HEADER_LEN as u64);
        if (bytes.len() as u64) != want {
            return Err(Error::Truncated {
                path: p(),
                have: bytes.len() as u64,
                want,
            });
        }
        let body = &bytes[HEADER_LEN..];
        let (stored, computed) = (word(24), fnv1a(body));
        if stored != computed {
            return Err(Error::Checksum {
                path: p(),
                stored,
                computed,
            });
        }
        serde_json::from_slice(body).map_err(|source| Error::Json { path: p(), source })
    }

    /// Checks that the parts agree with each other.
    fn check(&self) -> Result<(), Error> {
        let bad = |s: String| Err(Error::Inconsistent(format!("inconsistent snapshot: {s}")));
        if self.vcpus == 0 || self.vcpu.len() != self.vcpus || self.cpuid.len() != self.vcpus {
            return bad(format!(
                "{} vCPUs, {} vCPU states, {} CPUID tables",
                self.vcpus,
                self.vcpu.len(),
                self.cpuid.len()
            ));
        }
        let ranges = crate::memory::ram_layout(self.memory.size);
        let saved: Vec<(u64, u64)> = ranges.iter().map(|r| (r.gpa, r.len)).collect();
        if saved != self.memory.ranges || self.memory.size == 0 {
            return bad(format!(
                "memory ranges {:?} are not the layout of {} bytes",
                self.memory.ranges, self.memory.size
            ));
        }
        let end = ranges.last().map_or(0, |r| r.end());
        if self.memory.file_len != end {
            return bad(format!(
                "memory file length {} is not the layout's end {end}",
                self.memory.file_len
            ));
        }
        Ok(())
    }
}

/// Most diff snapshots stacked on one full snapshot.
pub const MAX_DIFF_CHAIN: usize = 64;

/// A diff snapshot's memory, applied over its parent's.
#[derive(Debug)]
pub struct DiffLayer {
    /// Its memory file's path.
    pub path: PathBuf,
    /// The memory file, open.
    pub file: std::fs::File,
    /// The pages it holds (frame numbers).
    pub pages: Vec<u64>,
}

/// A snapshot read from its directory and checked, ready for [`crate::vm::VmBuilder`].
#[derive(Debug)]
pub struct Loaded {
    /// The directory.
    pub dir: PathBuf,
    /// Its state.
    pub state: SnapshotState,
    /// The full snapshot's memory file (this one's, or the base of its diff chain).
    pub memory: std::fs::File,
    /// Its path.
    pub memory_path: PathBuf,
    /// Diff snapshots' memory to apply over it, oldest first (empty for a full one).
    pub diffs: Vec<DiffLayer>,
    /// How guest RAM is filled from it.
    pub mode: MemoryMode,
}

/// Reads and checks the snapshot in `dir`: the state file's envelope and consistency, and
/// that the memory file is as long as the layout; for a diff snapshot, every snapshot of
/// its chain down to the full one (siblings of `dir`). Nothing is mapped or run.
pub fn load(dir: &Path, mode: MemoryMode) -> Result<Loaded, Error> {
    let (state, memory, memory_path) = load_one(dir)?;
    let mut diffs = Vec::new();
    let mut at = (dir.to_path_buf(), state.memory.diff_of.clone());
    let (mut base_file, mut base_path) = (memory, memory_path);
    let mut pages = state.memory.pages.clone();
    while let Some(parent) = at.1.take() {
        crate::outdir::OutDir::check_name(&parent)?;
        if diffs.len() >= MAX_DIFF_CHAIN {
            return Err(Error::Inconsistent(format!(
                "{}: more than {MAX_DIFF_CHAIN} diff snapshots in its chain",
                dir.display()
            )));
        }
        diffs.push(DiffLayer {
            path: base_path,
            file: base_file,
            pages: std::mem::take(&mut pages),
        });
        let pdir = at.0.parent().unwrap_or(Path::new(".")).join(&parent);
        let (pstate, pfile, ppath) = load_one(&pdir)?;
        if pstate.memory.ranges != state.memory.ranges {
            return Err(Error::Inconsistent(format!(
                "{}: its memory layout differs from the diff snapshot {}",
                pdir.display(),
                dir.display()
            )));
        }
        (base_file, base_path, pages) = (pfile, ppath, pstate.memory.pages);
        at = (pdir, pstate.memory.diff_of);
    }
    diffs.reverse();
    Ok(Loaded {
        dir: dir.into(),
        state,
        memory: base_file,
        memory_path: base_path,
        diffs,
        mode,
    })
}

/// One snapshot directory: its checked state and its open memory file.
fn load_one(dir: &Path) -> Result<(SnapshotState, std::fs::File, PathBuf), Error> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| Error::Io {
        path: dir.into(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::NotSnapshot {
            path: dir.into(),
            why: "not a directory".into(),
        });
    }
    let state_path = dir.join(STATE_FILE);
    let bytes = read_bounded(&state_path)?;
    let state = SnapshotState::decode(&state_path, &bytes)?;
    state.check()?;
    let mem_path = dir.join(MEMORY_FILE);
    let memory = open_nofollow(&mem_path)?;
    let have = memory
        .metadata()
        .map_err(|source| Error::Io {
            path: mem_path.clone(),
            source,
        })?
        .len();
    if have < state.memory.file_len {
        return Err(Error::MemoryShort {
            path: mem_path,
            have,
            need: state.memory.file_len,
        });
    }
    Ok((state, memory, mem_path))
}

fn open_nofollow(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
}

/// Reads a state file of at most [`MAX_STATE_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let f = open_nofollow(path)?;
    let mut bytes = Vec::new();
    f.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(Error::Inconsistent(format!(
            "{}: larger than {MAX_STATE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Leaves whose feature bits must all be offered by the host: (leaf, index).
const FEATURE_LEAVES: [(u32, u32); 3] = [(1, 0), (7, 0), (0x8000_0001, 0)];

/// Checks that the host's supported CPUID gives every feature the snapshot's vCPU 0 had
/// (leaves 1, 7.0 and 0x8000_0001; the bits segvmm itself sets, hypervisor and HTT, are
/// exempt) and the same vendor.
pub fn check_cpuid(saved: &[kvm_cpuid_entry2], host: &[kvm_cpuid_entry2]) -> Result<(), Error> {
    let find = |t: &[kvm_cpuid_entry2], leaf: u32, index: u32| {
        t.iter()
            .find(|e| e.function == leaf && e.index == index)
            .copied()
    };
    let vendor = |e: Option<kvm_cpuid_entry2>| e.map(|e| (e.ebx, e.edx, e.ecx));
    if vendor(find(saved, 0, 0)) != vendor(find(host, 0, 0)) {
        return Err(Error::Cpuid("another CPU vendor".into()));
    }
    for (leaf, index) in FEATURE_LEAVES {
        let Some(s) = find(saved, leaf, index) else {
            continue;
        };
        let h = find(host, leaf, index).unwrap_or_default();
        // Leaf 1 EBX holds APIC id, counts and CLFLUSH size, not features; so does
        // 0x8000_0001 EBX (brand id).
        let exempt_ebx = if leaf == 7 { 0 } else { u32::MAX };
        let exempt_ecx = if leaf == 1 { 1 << 31 } else { 0 };
        let exempt_edx = if leaf == 1 { 1 << 28 } else { 0 };
        for (name, sv, hv, exempt) in [
            ("ebx", s.ebx, h.ebx, exempt_ebx),
            ("ecx", s.ecx, h.ecx, exempt_ecx),
            ("edx", s.edx, h.edx, exempt_edx),
        ] {
            let missing = sv & !hv & !exempt;
            if missing != 0 {
                return Err(Error::Cpuid(format!(
                    "leaf {leaf:#x}.{index} {name} bits {missing:#x} are not offered"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SnapshotState {
        SnapshotState {
            segvmm: "t".into(),
            kvm_module: "kvm".into(),
            payload: PayloadInfo::default(),
            vcpus: 1,
            cpuid: vec![vec![]],
            memory: MemoryInfo {
                size: 1 << 20,
                ranges: vec![(0, 1 << 20)],
                backing: "4k".into(),
                file_len: 1 << 20,
                data_bytes: 0,
                diff_of: None,
                pages: vec![],
            },
            vcpu: vec![VcpuSnapshot::default()],
            vm: VmState::default(),
            devices: DeviceState::default(),
            unsupported: vec![],
        }
    }

    #[test]
    fn envelope_round_trips_and_rejects_damage() {
        let p = Path::new("s");
        let bytes = state().encode().unwrap();
        let back = SnapshotState::decode(p, &bytes).unwrap();
        back.check().unwrap();
        assert_eq!(back.memory, state().memory);
        assert!(matches!(
            SnapshotState::decode(p, &bytes[..bytes.len() - 1]),
            Err(Error::Truncated { .. })
        ));
        let mut v = bytes.clone();
        v[8] = 9;
        assert!(matches!(
            SnapshotState::decode(p, &v),
            Err(Error::Version { found: 9, .. })
        ));
        let mut c = bytes.clone();
        let last = c.len() - 2;
        c[last] ^= 1;
        assert!(matches!(
            SnapshotState::decode(p, &c),
            Err(Error::Checksum { .. })
        ));
        assert!(matches!(
            SnapshotState::decode(p, b"nonsense"),
            Err(Error::Magic { .. })
        ));
    }

    #[test]
    fn cpuid_check_names_missing_bits() {
        let e = |function, ebx| kvm_cpuid_entry2 {
            function,
            ebx,
            ..Default::default()
        };
        let host = [e(0, 1), e(7, 0b01)];
        check_cpuid(&[e(0, 1), e(7, 0b01)], &host).unwrap();
        let err = check_cpuid(&[e(0, 1), e(7, 0b11)], &host).unwrap_err();
        assert!(err.to_string().contains("leaf 0x7.0 ebx bits 0x2"), "{err}");
        assert!(check_cpuid(&[e(0, 2)], &host).is_err());
    }
}
