//! One VM. [`VmBuilder`] turns a [`VmConfig`] into a [`Vm`] that owns guest RAM, the KVM
//! VM, its vCPUs, the devices on the bus and the observers (statistics, dirty tracking,
//! page-table captures); [`Vm::run`] starts the vCPU threads and runs one event loop
//! (`event-manager`: vCPU and console events, the API socket, stdin) until the guest ends,
//! then yields the [`RunReport`]. The loop is the only controller: it alone pauses,
//! resumes and stops vCPUs, so requests from the guest and from API clients never race.

pub mod builder;
pub mod config;
mod control;
pub mod events;
pub mod report;
mod save;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuFd, VmFd};

pub use builder::{host_cmdline_additions, VmBuilder, MAX_VCPUS, TEST_GUEST};
pub use config::{CustomLoader, LoaderError, Payload, VmConfig};
pub use report::{ExitReason, Milestone, RunReport, SetupStep};
pub use save::{SaveError, SnapshotTaken};

use crate::api::ApiServer;
use crate::devices::legacy::Com1;
use crate::devices::{Console, IoBus};
use crate::dirty::ring::Rings;
use crate::host::{HostInfo, MmuMode};
use crate::memory::GuestRam;
use crate::ptsnap::Ptsnapper;
use crate::vstate::stats::{KvmStats, StatsFd};
use crate::vstate::vcpu_thread::{self, VcpuContext, VcpuHandle};
use crate::{api, boot, dirty, host, memory, vstate};

/// Errors that stop a VM from being built or run (bad input, host refusal, a broken
/// host call). What happens to a guest once it runs is not an error but an
/// [`ExitReason`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host cannot give what was asked.
    #[error(transparent)]
    Host(#[from] host::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// Loading the guest.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// Creating the VM.
    #[error(transparent)]
    Vm(#[from] vstate::vm::Error),
    /// Setting up a vCPU.
    #[error(transparent)]
    Vcpu(#[from] vstate::vcpu::Error),
    /// Driving vCPU threads.
    #[error(transparent)]
    VcpuThread(#[from] vcpu_thread::Error),
    /// Registering a device.
    #[error("device bus: {0}")]
    Bus(#[from] crate::devices::bus::Error),
    /// Dirty tracking.
    #[error(transparent)]
    Dirty(#[from] dirty::Error),
    /// The API socket.
    #[error(transparent)]
    Api(#[from] api::Error),
    /// A seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
    /// Entering the jail.
    #[error(transparent)]
    Jail(#[from] crate::jail::Error),
    /// A `--disk` image cannot be used.
    #[error(transparent)]
    Disk(#[from] crate::devices::virtio::block::Error),
    /// A `--net` TAP cannot be opened.
    #[error(transparent)]
    Net(#[from] crate::devices::virtio::net::Error),
    /// A `--vsock` socket cannot be made.
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::Error),
    /// A virtio transport.
    #[error(transparent)]
    Virtio(#[from] crate::devices::virtio::mmio::Error),
    /// Saved virtio-blk state that does not fit the reopened disks (snapshot restore).
    #[error(transparent)]
    VirtioRestore(#[from] crate::snapshot::virtio::RestoreError),
    /// `--balloon` on guest RAM that cannot give back 4 KiB pages.
    #[error("--balloon: guest RAM on {0} pages cannot give back the balloon's 4 KiB pages; use --backing 4k or thp")]
    BalloonBacking(crate::memory::Backing),
    /// More virtio devices than interrupt lines for them.
    #[error("{0} virtio devices: at most {max}", max = crate::devices::virtio::MAX_VIRTIO_DEVICES)]
    TooManyDevices(usize),
    /// `--vcpus` out of range.
    #[error("--vcpus {0}: must be between 1 and {MAX_VCPUS}")]
    VcpuCount(u8),
    /// A custom payload's loader failed.
    #[error("loading the guest: {0}")]
    Payload(#[source] LoaderError),
    /// A KVM call outside the above.
    #[error("{what}: {source}")]
    Kvm {
        /// Step.
        what: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A host call outside the above.
    #[error("{what}: {source}")]
    Io {
        /// Step.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot could not be loaded.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// A saved serial state was refused.
    #[error(transparent)]
    Serial(#[from] crate::devices::serial::BadSerialState),
    /// The event loop failed.
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    /// The guest profile.
    #[error(transparent)]
    Profile(#[from] crate::profile::Error),
}

/// What watches the VM.
struct Observers {
    /// KVM's binary statistics: the VM's and each vCPU's.
    stats: (Option<StatsFd>, Vec<Option<StatsFd>>),
    /// Dirty tracking and its rings, when asked for.
    dirty: Option<(dirty::Tracker, Option<Arc<Rings>>)>,
    /// Page-table captures.
    ptsnapper: Arc<Ptsnapper>,
}

/// What a snapshot of this VM records beside the live state.
#[derive(Debug)]
struct SnapshotInfo {
    /// KVM_GET_MSR_INDEX_LIST: the MSRs each vCPU saves.
    msr_index: Arc<Vec<u32>>,
    /// Each vCPU's CPUID.
    cpuid: Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>,
    /// What was booted.
    payload: crate::snapshot::PayloadInfo,
    /// The host's KVM module.
    kvm_module: String,
}

/// A built VM, ready to run (see the module's documentation).
pub struct Vm {
    info: HostInfo,
    mmu_mode: MmuMode,
    ram: Arc<GuestRam>,
    /// Kept open for the VM's lifetime (vCPU fds, irqfds and slots hang off it); VM-wide
    /// state is saved through it.
    vm_fd: Arc<VmFd>,
    /// vCPU fds until their threads start.
    fds: Vec<VcpuFd>,
    handles: Vec<VcpuHandle>,
    bus: Arc<IoBus>,
    console: Arc<Console>,
    com1: Arc<Com1>,
    rtc: Arc<crate::devices::legacy::CmosRtc>,
    notifier: (events::Notifier, events::Inbox),
    observers: Observers,
    counters: Arc<vstate::emulate::Counters>,
    api: Option<ApiServer>,
    stdin: bool,
    /// Confine the calling thread (the event loop) with the main filter once the vCPUs
    /// run: only for a caller that ends after the run (the CLI), not a test harness.
    confine_main: bool,
    timeout: Option<Duration>,
    cmdline: Option<String>,
    snap: SnapshotInfo,
    /// The name of this run's last snapshot (what a diff snapshot updates).
    last_snapshot: Option<String>,
    /// virtio devices on the bus (snapshots refuse those other than virtio-blk until
    /// they save their state).
    virtio_devices: usize,
    /// The virtio-blk disks and their transports (saved by snapshots).
    virtio_blk: Vec<crate::snapshot::virtio::BlockSlot>,
    /// The virtio transports (the event loop serves their host descriptors).
    virtio: Vec<Arc<crate::devices::virtio::MmioTransport>>,
    /// How their queue notifications arrive (`None` without virtio devices).
    virtio_notify: Option<crate::devices::virtio::NotifyPath>,
    /// Paused through the API: a snapshot leaves it paused.
    api_paused: bool,
    started: Instant,
    setup: Vec<SetupStep>,
    setup_last: Instant,
    /// The guest profile being taken (`--profile-guest`).
    profiler: Option<crate::profile::Profiler>,
    /// What the vmlinux cache did for this boot.
    kernel_cache: boot::cache::Outcome,
    /// The balloon (`--balloon`): its target and report, reached from the event loop.
    balloon: Option<crate::devices::virtio::BalloonHandle>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.fds.len().max(self.handles.len()))
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

/// Builds the VM from `cfg`, runs it to its end and reports.
pub fn run(cfg: VmConfig) -> Result<RunReport, Error> {
    VmBuilder::new(cfg).build()?.run()
}

impl Vm {
    /// Guest RAM (a restored measurement guest's device reads its results from it).
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The device bus (for reports and tests).
    pub fn bus(&self) -> &IoBus {
        &self.bus
    }

    /// Starts every vCPU thread: the guest runs from here on.
    fn start_vcpus(&mut self) -> Result<(), Error> {
        let rings = self.observers.dirty.as_ref().and_then(|d| d.1.clone());
        let hooks = Arc::new(events::VmHooks {
            notifier: self.notifier.0.clone(),
            rings,
        });
        for (id, fd) in std::mem::take(&mut self.fds).into_iter().enumerate() {
            let ctx = VcpuContext {
                ram: self.ram.clone(),
                bus: self.bus.clone(),
                counters: self.counters.clone(),
                hooks: hooks.clone(),
                samples: self
                    .profiler
                    .as_ref()
                    .map(crate::profile::Profiler::samples),
            };
            self.handles.push(vcpu_thread::spawn(id, fd, ctx)?);
        }
        let now = Instant::now();
        self.setup.push(SetupStep {
            step: "threads",
            ms: (now - self.setup_last).as_secs_f64() * 1e3,
        });
        self.setup_last = now;
        Ok(())
    }

    /// Runs the guest to its end and reports.
    pub fn run(mut self) -> Result<RunReport, Error> {
        self.start_vcpus()?;
        let boot_ms = (self.setup_last - self.started).as_secs_f64() * 1e3;
        let run_start = self.setup_last;
        let confine = self.confine_main;
        let lp = control::Loop::new(&mut self)?;
        if confine {
            crate::seccomp::install(crate::seccomp::ThreadKind::Main)?;
        }
        let outcome = lp.run(run_start);
        let (exit_reason, milestones) = outcome?;
        let run_ms = run_start.elapsed().as_secs_f64() * 1e3;
        self.finish(exit_reason, milestones, boot_ms, run_ms)
    }

    /// Stops the vCPUs, collects the observers and writes the report.
    fn finish(
        mut self,
        exit_reason: ExitReason,
        milestones: Vec<Milestone>,
        boot_ms: f64,
        run_ms: f64,
    ) -> Result<RunReport, Error> {
        let read = |s: &Option<StatsFd>| s.as_ref().and_then(|s| s.read().ok()).unwrap_or_default();
        let kvm_stats = KvmStats::new(
            read(&self.observers.stats.0),
            self.observers.stats.1.iter().map(read).collect(),
        );
        let memory = self.ram.report();
        let vmm_rss_bytes = proc_status_kb("VmRSS:").saturating_sub(memory.rss_bytes);
        let vmm_anon_bytes = proc_status_kb("RssAnon:").saturating_sub(memory.rss_bytes);
        // Stop the vCPU threads; their fds come back and close only after the dirty
        // tracker's last collection and the rings' unmapping.
        let fds: Vec<VcpuFd> = self
            .handles
            .drain(..)
            .filter_map(VcpuHandle::finish)
            .collect();
        let dirty = match self.observers.dirty.take() {
            Some((tracker, rings)) => {
                drop(rings);
                Some(tracker.finish()?)
            }
            None => None,
        };
        drop(fds);
        let profile = self.profiler.take().map(|p| p.finish()).transpose()?;
        Ok(RunReport {
            memory,
            host: self.info.clone(),
            mmu_mode: self.mmu_mode,
            kvm_stats,
            boot_ms,
            run_ms,
            setup_ms: std::mem::take(&mut self.setup),
            exit_message: exit_reason.to_string(),
            exit_reason,
            milestones,
            cmdline: self.cmdline.take(),
            vmm_emulated: (
                self.counters
                    .int3
                    .load(std::sync::atomic::Ordering::Relaxed),
                self.counters
                    .other
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            dirty,
            ptsnaps: self.observers.ptsnapper.taken(),
            vmm_rss_bytes,
            vmm_anon_bytes,
            console_log: self.console.log(),
            profile,
            kernel_cache: self.kernel_cache,
            balloon: self.balloon.as_ref().map(|b| b.report()),
            virtio_notify: self.virtio_notify,
        })
    }
}

/// A `/proc/self/status` field given in kB, in bytes (0 when unreadable).
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
