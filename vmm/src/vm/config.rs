//! What a VM is made of: guest RAM, vCPUs, the payload to boot, the MMU mode, and how it
//! is watched (console, dirty tracking). Plain data: [`super::VmBuilder`] turns it into a
//! running [`super::Vm`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::boot;
use crate::devices::virtio::DiskConfig;
use crate::devices::MmioHandler;
use crate::host::{HostInfo, MmuRequest};
use crate::memory::{GuestRam, MemoryConfig};
use crate::vstate::vcpu::VcpuInit;

/// What to boot.
pub enum Payload {
    /// A Linux kernel (bzImage or ELF; PVH when it has the note).
    Linux {
        /// Kernel image.
        kernel: PathBuf,
        /// Initial ramdisk.
        initrd: Option<PathBuf>,
        /// Command line (the host's workarounds are appended on hosts that need them).
        cmdline: String,
        /// Where a bzImage is decompressed.
        bzimage: boot::BzImageMode,
    },
    /// The built-in bare-metal test guest; `mode` is its command line ("", "triple", "hang").
    TestGuest {
        /// Failure mode.
        mode: String,
    },
    /// Anything else: a closure that fills guest memory and returns vCPU 0's registers
    /// (the measurement guest uses this).
    Custom(CustomLoader),
    /// A saved VM ([`crate::snapshot`]): guest RAM, vCPUs, interrupt controllers and
    /// devices come from the snapshot instead of a boot. `memory.size` and `vcpus` of the
    /// [`VmConfig`] must cover the saved ones (the restore command takes them from it).
    Snapshot(Box<crate::snapshot::Loaded>),
}

/// Fills guest memory for a custom payload and returns vCPU 0's initial registers.
pub type CustomLoader =
    Box<dyn FnOnce(&GuestRam, &HostInfo) -> Result<VcpuInit, LoaderError> + Send>;

/// Why a custom loader failed: its own error, kept as the source.
pub type LoaderError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Linux { kernel, .. } => write!(f, "Linux({})", kernel.display()),
            Payload::TestGuest { mode } => write!(f, "TestGuest({mode})"),
            Payload::Custom(_) => f.write_str("Custom"),
            Payload::Snapshot(l) => write!(f, "Snapshot({})", l.dir.display()),
        }
    }
}

/// Everything a run needs.
pub struct VmConfig {
    /// Guest RAM.
    pub memory: MemoryConfig,
    /// vCPUs.
    pub vcpus: u8,
    /// MMU mode asked for.
    pub mmu: MmuRequest,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Echo the guest console to stdout.
    pub echo_console: bool,
    /// Forward stdin to the serial port.
    pub stdin: bool,
    /// What to boot.
    pub payload: Payload,
    /// The device behind the signal MMIO window.
    pub mmio: Option<Arc<dyn MmioHandler>>,
    /// When the run started (for set-up timing); `None` = now.
    pub started: Option<Instant>,
    /// Serve the API socket at this path (see [`crate::api`]).
    pub api_socket: Option<PathBuf>,
    /// Track dirty pages (KVM dirty log) while the guest runs.
    pub track_dirty: Option<crate::dirty::DirtyConfig>,
    /// virtio-blk disks (`--disk`), opened and locked first thing at build time.
    pub disks: Vec<DiskConfig>,
    /// virtio-net devices (`--net`), their TAPs opened at build time.
    pub nets: Vec<crate::devices::virtio::NetConfig>,
    /// The virtio-vsock device (`--vsock`), its socket bound at build time.
    pub vsock: Option<crate::devices::virtio::VsockConfig>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("memory", &self.memory)
            .field("vcpus", &self.vcpus)
            .field("payload", &self.payload)
            .field("timeout", &self.timeout)
            .field("disks", &self.disks)
            .field("nets", &self.nets)
            .field("vsock", &self.vsock)
            .finish()
    }
}
