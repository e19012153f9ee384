//! [`VmBuilder`]: turns a [`VmConfig`] into a [`Vm`] ready to run, one step a function:
//! host checks, guest RAM, the KVM VM, vCPUs, the payload, vCPU registers, devices on the
//! bus, observers (statistics, dirty tracking) and the API socket. It only builds: nothing
//! runs the guest until [`Vm::run`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::config::{Payload, VmConfig};
use super::events::Notifier;
use super::report::SetupStep;
use super::{Error, Observers, SnapshotInfo, Vm};
use crate::api::{ApiConfig, ApiServer};
use crate::devices::legacy::{CmosRtc, Com1, SignalPort, SignalWindow, I8042};
use crate::devices::virtio::{
    self, Balloon, BalloonConfig, Block, DiskConfig, IrqFd, MmioTransport, Net, NetConfig,
    VirtioDevice, Vsock,
};
use crate::devices::{self, Console, IoBus, SerialDevice};
use crate::host::{self, HostInfo};
use crate::memory::GuestRam;
use crate::ptsnap::Ptsnapper;
use crate::snapshot::virtio::BlockSlot;
use crate::snapshot::{memfile, PayloadInfo, SnapshotState};
use crate::vstate::stats::StatsFd;
use crate::vstate::vcpu::{self, VcpuInit};
use crate::vstate::{cpuid, emulate, vm};
use crate::{boot, dirty};

/// The bare-metal test guest, assembled by build.rs from `guest-kernels/testguest`.
pub const TEST_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testguest.elf"));

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 64;

/// Times each set-up step (the report's `setup_ms`).
#[derive(Debug)]
struct SetupTimer {
    last: Instant,
    steps: Vec<SetupStep>,
}

impl SetupTimer {
    fn new(started: Instant) -> Self {
        SetupTimer {
            last: started,
            steps: Vec::new(),
        }
    }

    fn step(&mut self, step: &'static str) {
        let now = Instant::now();
        self.steps.push(SetupStep {
            step,
            ms: (now - self.last).as_secs_f64() * 1e3,
        });
        self.last = now;
    }
}

/// Builds a [`Vm`] from a [`VmConfig`].
#[derive(Debug)]
pub struct VmBuilder {
    cfg: VmConfig,
    api: Option<ApiConfig>,
    confine_main: bool,
    jail: Option<crate::jail::JailConfig>,
    describe: Option<PayloadInfo>,
    profiler: Option<crate::profile::Profiler>,
    balloon: Option<BalloonConfig>,
    ioeventfd: bool,
}

/// The kernel command line additions this host needs (none on hosts with VMX/SVM).
pub fn host_cmdline_additions(info: &HostInfo) -> String {
    if info.kvm_module != "kvm_pvm" {
        return String::new();
    }
    let mut s = String::from(concat!(
        "noxsave clearcpuid=cx16,popcnt,smap,ssse3,xsave,avx cryptomgr.notests no_timer_check nosoftlockup ",
        "sysctl.kernel.hung_task_timeout_secs=0 ",
        // Tracing-only initcalls that take many minutes when every ring-0 instruction is
        // emulated (measured on the Debian 6.1 kernel: ~14 min of a 25-min boot).
        "initcall_blacklist=ftrace_check_for_weak_functions,tracer_init_tracefs,init_kprobe_trace,kprobe_trace_self_tests_init"
    ));
    // The guest cannot calibrate its TSC here (it then marks it unstable and falls back to
    // jiffies); KVM knows the frequency.
    if let Some(khz) = info.tsc_khz {
        s.push_str(&format!(" tsc_early_khz={khz}"));
    }
    s
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

impl VmBuilder {
    /// A builder for `cfg`; its `api_socket`, if set, is served without a snapshot
    /// directory unless [`VmBuilder::api`] says otherwise.
    pub fn new(cfg: VmConfig) -> Self {
        let api = cfg.api_socket.clone().map(ApiConfig::new);
        VmBuilder {
            cfg,
            api,
            confine_main: false,
            jail: None,
            describe: None,
            profiler: None,
            balloon: None,
            ioeventfd: true,
        }
    }

    /// Whether queue notifications go through KVM ioeventfds where KVM offers them (the
    /// default; `--ioeventfd off` makes every QueueNotify exit to user space).
    pub fn ioeventfd(mut self, on: bool) -> Self {
        self.ioeventfd = on;
        self
    }

    /// Adds a virtio-balloon (`--balloon`), after the disks.
    pub fn balloon(mut self, cfg: BalloonConfig) -> Self {
        self.balloon = Some(cfg);
        self
    }

    /// Serves the API as `api` says.
    pub fn api(mut self, api: ApiConfig) -> Self {
        self.api = Some(api);
        self
    }

    /// Enters `jail` ([`crate::jail`]) at the end of the build, once /dev/kvm, guest RAM,
    /// files and the API socket are open: the guest runs chrooted, as the given user,
    /// without capabilities, with no_new_privs.
    pub fn jail(mut self, jail: crate::jail::JailConfig) -> Self {
        self.jail = Some(jail);
        self
    }

    /// Samples the guest's RIP while it runs into `p` (`--profile-guest`); the build
    /// checks that its System.map is the loaded kernel's.
    pub fn profile(mut self, p: crate::profile::Profiler) -> Self {
        self.profiler = Some(p);
        self
    }

    /// Confines the thread that calls [`Vm::run`] with the main thread's seccomp filter
    /// (at the process-wide level, [`crate::seccomp::set_level`]) once the vCPUs run. For
    /// a caller that only reports after the run (the CLI); the filter stays on the thread.
    pub fn confine_main_thread(mut self) -> Self {
        self.confine_main = true;
        self
    }

    /// Describes the payload in snapshots taken of this VM (the measurement guest names
    /// its workload here; others are described from their [`Payload`]).
    pub fn describe(mut self, payload: PayloadInfo) -> Self {
        self.describe = Some(payload);
        self
    }

    /// Builds the VM: everything up to, not including, the first guest instruction. With
    /// [`Payload::Snapshot`] the saved state is checked against the host first, then
    /// loaded instead of booting.
    pub fn build(self) -> Result<Vm, Error> {
        let VmBuilder {
            mut cfg,
            api,
            confine_main,
            jail,
            describe,
            profiler,
            balloon,
            ioeventfd,
        } = self;
        let started = cfg.started.unwrap_or_else(Instant::now);
        let mut t = SetupTimer::new(started);
        // Devices first: a missing or locked image is refused before anything is set up.
        let (disks, others) = open_virtio(&mut cfg, balloon.is_some())?;
        let n_virtio = disks.len() + others.len() + usize::from(balloon.is_some());
        let (info, mmu_mode, kvm) = probe_host(&cfg)?;
        t.step("host");
        let ram = Arc::new(make_ram(&cfg, &mut t)?);
        if !matches!(&cfg.payload, Payload::Snapshot(l) if l.mode == memfile::MemoryMode::Copy) {
            t.step("memory");
        }
        let (vm_fd, dirty_prep) = kvm_vm(&kvm, &cfg, &ram)?;
        t.step("kvm_vm");
        let fds = create_vcpus(&vm_fd, cfg.vcpus)?;
        t.step("vcpus");
        let (notifier, inbox, console) = console(cfg.echo_console, started)?;
        let platform = platform(cfg.vcpus, n_virtio);
        let loaded = load_state(
            &kvm,
            (&vm_fd, &fds),
            &ram,
            (&info, &platform),
            cfg.payload,
            profiler.as_ref(),
            &mut t,
        )?;
        let mut devs = legacy_devices(&vm_fd, &console, cfg.mmio.clone(), loaded.devices.as_ref())?;
        let saved = loaded.devices.as_ref().map(|d| d.virtio_blk.as_slice());
        let virtio_blk = virtio_blocks(&vm_fd, &mut devs.bus, &ram, disks, saved)?;
        let (virtio, balloon) =
            virtio_rest(&vm_fd, &mut devs.bus, &ram, (&virtio_blk, others), balloon)?;
        let virtio_notify = notify_path(&kvm, &vm_fd, &virtio, ioeventfd)?;
        t.step("devices");
        let (stats, dirty) = watch(&vm_fd, &fds, &ram, dirty_prep)?;
        let api = api.map(ApiServer::bind).transpose()?;
        t.step("observers");
        if let Some(j) = &jail {
            crate::jail::enter(j)?;
            t.step("jail");
        }
        let snap = SnapshotInfo {
            msr_index: Arc::new(msr_index(&kvm)),
            cpuid: loaded.cpuid,
            payload: describe.unwrap_or(loaded.payload),
            kvm_module: info.kvm_module.clone(),
        };
        Ok(Vm {
            info,
            mmu_mode,
            ram: ram.clone(),
            vm_fd,
            fds,
            handles: Vec::new(),
            bus: Arc::new(devs.bus),
            console,
            com1: devs.com1,
            rtc: devs.rtc,
            notifier: (notifier, inbox),
            observers: Observers {
                stats,
                dirty,
                ptsnapper: Arc::new(Ptsnapper::new(ram)),
            },
            counters: Arc::new(emulate::Counters::default()),
            api,
            stdin: cfg.stdin,
            confine_main,
            timeout: cfg.timeout,
            cmdline: loaded.cmdline,
            snap,
            last_snapshot: None,
            virtio_devices: n_virtio,
            virtio_blk,
            virtio,
            virtio_notify,
            api_paused: false,
            started,
            setup: t.steps,
            setup_last: t.last,
            profiler,
            kernel_cache: loaded.kernel_cache,
            balloon,
        })
    }
}

/// The host's KVM, checked against what `cfg` asks (MMU mode, vCPU count, and for a
/// restore the snapshot's vCPUs and CPUID) before anything is built.
fn probe_host(cfg: &VmConfig) -> Result<(HostInfo, host::MmuMode, Kvm), Error> {
    let info = host::probe()?;
    let mmu_mode = host::check_mode(&info, cfg.mmu)?;
    let kvm = Kvm::new().map_err(host::Error::OpenKvm)?;
    if let Payload::Snapshot(l) = &cfg.payload {
        check_restore(&kvm, &l.state, cfg.vcpus)?;
    }
    if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount(cfg.vcpus));
    }
    Ok((info, mmu_mode, kvm))
}

/// What loading the guest gave: vCPU CPUID tables, command line, payload description,
/// saved device state.
struct LoadedGuest {
    cpuid: Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>,
    cmdline: Option<String>,
    payload: PayloadInfo,
    devices: Option<crate::snapshot::DeviceState>,
    kernel_cache: boot::cache::Outcome,
}

/// Boots the payload into RAM and sets the vCPUs' boot state, or loads a snapshot's
/// vCPU and VM state.
fn load_state(
    kvm: &Kvm,
    (vm_fd, fds): (&VmFd, &[VcpuFd]),
    ram: &GuestRam,
    (info, platform): (&HostInfo, &boot::Platform),
    payload: Payload,
    profiler: Option<&crate::profile::Profiler>,
    t: &mut SetupTimer,
) -> Result<LoadedGuest, Error> {
    if let Payload::Snapshot(l) = payload {
        let s = &l.state;
        for ((fd, cpuid), st) in fds.iter().zip(&s.cpuid).zip(&s.vcpu) {
            let c = kvm_bindings::CpuId::from_entries(cpuid)
                .map_err(|_| crate::snapshot::Error::Cpuid("too many CPUID entries".into()))?;
            fd.set_cpuid2(&c).map_err(kvm_err("KVM_SET_CPUID2"))?;
            crate::snapshot::cpu::restore_vcpu(fd, st)?;
        }
        crate::snapshot::cpu::restore_vm(vm_fd, &s.vm)?;
        t.step("vcpu_state");
        return Ok(LoadedGuest {
            cpuid: s.cpuid.clone(),
            cmdline: s.payload.cmdline.clone(),
            payload: s.payload.clone(),
            devices: Some(s.devices.clone()),
            kernel_cache: boot::cache::Outcome::Off,
        });
    }
    let payload_info = describe_payload(&payload);
    let base = fds[0].get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let (init0, cmdline, kernel_cache) =
        load_checked(payload, ram, info, (platform, base), profiler)?;
    t.step("load");
    let cpuid = configure_vcpus(kvm, fds, info, &init0)?;
    t.step("vcpu_state");
    Ok(LoadedGuest {
        cpuid,
        payload: PayloadInfo {
            cmdline: cmdline.clone(),
            ..payload_info
        },
        cmdline,
        devices: None,
        kernel_cache,
    })
}

/// Guest RAM: fresh, or filled from a snapshot's memory file (copy mode: the copy is
/// timed apart, as the `memory_copy` step).
fn make_ram(cfg: &VmConfig, t: &mut SetupTimer) -> Result<GuestRam, Error> {
    let Payload::Snapshot(l) = &cfg.payload else {
        return Ok(GuestRam::new(&cfg.memory)?);
    };
    let ranges = &l.state.memory.ranges;
    let ram = if l.mode == memfile::MemoryMode::Map {
        memfile::restore_ram(&cfg.memory, &l.memory, &l.memory_path, l.mode, ranges)?
    } else {
        let ram = GuestRam::new(&cfg.memory)?;
        t.step("memory");
        memfile::fill(&ram, &l.memory, &l.memory_path, ranges)?;
        ram
    };
    for d in &l.diffs {
        memfile::apply_diff(&ram, d)?;
    }
    if l.mode == memfile::MemoryMode::Copy {
        t.step("memory_copy");
    }
    Ok(ram)
}

/// What a snapshot needs of the host, checked before anything is built: the vCPU count,
/// the CPUID, and RAM that covers the saved layout.
fn check_restore(kvm: &Kvm, s: &SnapshotState, vcpus: u8) -> Result<(), Error> {
    let max = kvm.get_max_vcpus().min(usize::from(MAX_VCPUS));
    if s.vcpus > max || s.vcpus != usize::from(vcpus) {
        return Err(crate::snapshot::Error::Vcpus {
            saved: s.vcpus,
            max,
        }
        .into());
    }
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    for c in &s.cpuid {
        crate::snapshot::check_cpuid(c, supported.as_slice())?;
    }
    Ok(())
}

/// KVM_GET_MSR_INDEX_LIST (empty where refused), for snapshots.
fn msr_index(kvm: &Kvm) -> Vec<u32> {
    kvm.get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default()
}

/// How a snapshot names `payload`.
fn describe_payload(payload: &Payload) -> PayloadInfo {
    match payload {
        Payload::Linux { kernel, .. } => PayloadInfo {
            kind: "linux".into(),
            kernel: Some(kernel.display().to_string()),
            ..Default::default()
        },
        Payload::TestGuest { mode } => PayloadInfo {
            kind: "test-guest".into(),
            cmdline: Some(mode.clone()),
            ..Default::default()
        },
        Payload::Custom(_) | Payload::Snapshot(_) => PayloadInfo {
            kind: "custom".into(),
            ..Default::default()
        },
    }
}

/// The VM's wake-up channel and the console that posts to it.
fn console(
    echo: bool,
    started: Instant,
) -> Result<(Notifier, super::events::Inbox, Arc<Console>), Error> {
    let (notifier, inbox) = Notifier::new().map_err(|source| Error::Io {
        what: "eventfd",
        source,
    })?;
    let console = Arc::new(Console::new(echo, started));
    let n = notifier.clone();
    console.set_events(Box::new(move |e| n.console(e)));
    Ok((notifier, inbox, console))
}

/// The VM's and vCPUs' statistics, and dirty tracking when it was prepared.
type Watch = (
    (Option<StatsFd>, Vec<Option<StatsFd>>),
    Option<(dirty::Tracker, Option<Arc<crate::dirty::ring::Rings>>)>,
);

fn watch(
    vm_fd: &Arc<VmFd>,
    fds: &[VcpuFd],
    ram: &Arc<GuestRam>,
    dirty_prep: Option<dirty::Prepared>,
) -> Result<Watch, Error> {
    let stats = (
        StatsFd::open(&**vm_fd).ok(),
        fds.iter().map(|v| StatsFd::open(v).ok()).collect(),
    );
    let dirty = match dirty_prep {
        Some(p) => {
            let rings = p.map_rings(vm_fd, fds, ram)?;
            let tracker = dirty::Tracker::start(vm_fd.clone(), ram.clone(), p, rings.clone())?;
            Some((tracker, rings))
        }
        None => None,
    };
    Ok((stats, dirty))
}

/// [`load_payload`], then, for a profile, the check that its System.map is the loaded
/// kernel's (a bzImage loaded as is is still compressed: the error says so).
fn load_checked(
    payload: Payload,
    ram: &GuestRam,
    info: &HostInfo,
    (platform, base): (&boot::Platform, kvm_bindings::kvm_sregs),
    profiler: Option<&crate::profile::Profiler>,
) -> Result<(VcpuInit, Option<String>, boot::cache::Outcome), Error> {
    let as_is = matches!(&payload, Payload::Linux { bzimage, .. }
        if bzimage.resolve(&info.kvm_module) == boot::BzImageMode::AsIs);
    let loaded = load_payload(payload, ram, info, platform, base)?;
    if let Some(p) = profiler {
        p.check_loaded(|gpa, buf| read_guest(ram, gpa, buf), as_is)?;
    }
    Ok(loaded)
}

/// Reads guest-physical `gpa..gpa + buf.len()` into `buf`; false outside guest RAM.
fn read_guest(ram: &GuestRam, gpa: u64, buf: &mut [u8]) -> bool {
    use vm_memory::{Bytes, GuestAddress};
    ram.memory().read_slice(buf, GuestAddress(gpa)).is_ok()
}

fn create_vcpus(vm_fd: &VmFd, n: u8) -> Result<Vec<VcpuFd>, Error> {
    (0..n)
        .map(|id| {
            vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))
        })
        .collect()
}

/// Loads the guest into RAM; returns vCPU 0's registers, the command line used and what
/// the vmlinux cache did.
fn load_payload(
    payload: Payload,
    ram: &GuestRam,
    info: &HostInfo,
    platform: &boot::Platform,
    base: kvm_bindings::kvm_sregs,
) -> Result<(VcpuInit, Option<String>, boot::cache::Outcome), Error> {
    let off = boot::cache::Outcome::Off;
    match payload {
        Payload::Linux {
            kernel,
            initrd,
            cmdline,
            bzimage,
        } => {
            let extra = host_cmdline_additions(info);
            let full = if extra.is_empty() {
                cmdline
            } else {
                format!("{cmdline} {extra}")
            };
            let mode = bzimage.resolve(&info.kvm_module);
            let loaded = boot::load_kernel(ram, &kernel, initrd.as_deref(), &full, platform, mode)?;
            let init = VcpuInit::for_entry(loaded.entry, base);
            Ok((init, Some(full), loaded.vmlinux_cache))
        }
        Payload::TestGuest { mode } => {
            let name = std::path::Path::new("<built-in test guest>");
            let as_is = boot::BzImageMode::AsIs;
            let loaded = boot::load_image(ram, name, TEST_GUEST, None, &mode, platform, as_is)?;
            Ok((VcpuInit::for_entry(loaded.entry, base), None, off))
        }
        Payload::Custom(f) => Ok((f(ram, info).map_err(Error::Payload)?, None, off)),
        // Handled by `load_state` before this is called.
        Payload::Snapshot(_) => Err(Error::Payload("a snapshot is not booted".into())),
    }
}

/// CPUID (KVM's supported set, topology per vCPU, features the host cannot run hidden),
/// FPU, LAPIC and vCPU 0's registers.
fn configure_vcpus(
    kvm: &Kvm,
    fds: &[VcpuFd],
    info: &HostInfo,
    init0: &VcpuInit,
) -> Result<Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>, Error> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let hide: &[_] = if info.kvm_module == "kvm_pvm" {
        cpuid::PVM_HIDDEN
    } else {
        &[]
    };
    let n = fds.len() as u8;
    let mut tables = Vec::with_capacity(fds.len());
    for (id, v) in fds.iter().enumerate() {
        let mut c = supported.clone();
        cpuid::filter(&mut c, id as u8, n, hide);
        vcpu::configure(v, id as u8, &c, (id == 0).then_some(init0))?;
        tables.push(c.as_slice().to_vec());
    }
    Ok(tables)
}

/// The legacy devices on their bus.
struct LegacyDevices {
    bus: IoBus,
    com1: Arc<Com1>,
    rtc: Arc<CmosRtc>,
}

/// COM1 (irqfd on GSI 4), the RTC, the i8042, the signal port and, when given, the signal
/// MMIO window, registered on a new bus; in `saved`'s state when restoring.
fn legacy_devices(
    vm_fd: &VmFd,
    console: &Arc<Console>,
    mmio: Option<Arc<dyn devices::MmioHandler>>,
    saved: Option<&crate::snapshot::DeviceState>,
) -> Result<LegacyDevices, Error> {
    use crate::devices::legacy::{I8042_PORTS, SIGNAL_MMIO_BASE, SIGNAL_MMIO_SIZE, SIGNAL_PORT};
    use crate::devices::{rtc, serial};
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
        what: "eventfd",
        source,
    })?;
    vm_fd
        .register_irqfd(&irq, serial::COM1_GSI)
        .map_err(kvm_err("KVM_IRQFD"))?;
    let uart = match saved {
        Some(d) => SerialDevice::from_state(irq, console.clone(), &d.serial)?,
        None => SerialDevice::new(irq, console.clone()),
    };
    let com1 = Arc::new(Com1(Mutex::new(uart)));
    let mut clock = crate::devices::rtc::Rtc::default();
    if let Some(d) = saved {
        clock.write(rtc::INDEX_PORT, d.rtc_index);
    }
    let cmos = Arc::new(CmosRtc(Mutex::new(clock)));
    let mut bus = IoBus::default();
    let com1_len = u64::from(serial::COM1_END - serial::COM1 + 1);
    bus.pio
        .insert(u64::from(serial::COM1), com1_len, com1.clone())?;
    bus.pio
        .insert(u64::from(rtc::INDEX_PORT), 2, cmos.clone())?;
    let (data, cmd) = I8042_PORTS;
    let i8042 = |command_port| Arc::new(I8042 { command_port });
    bus.pio.insert(u64::from(data), 1, i8042(false))?;
    bus.pio.insert(u64::from(cmd), 1, i8042(true))?;
    bus.pio
        .insert(u64::from(SIGNAL_PORT), 1, Arc::new(SignalPort))?;
    if let Some(h) = mmio {
        bus.mmio.insert(
            SIGNAL_MMIO_BASE,
            SIGNAL_MMIO_SIZE,
            Arc::new(SignalWindow(h)),
        )?;
    }
    Ok(LegacyDevices {
        bus,
        com1,
        rtc: cmos,
    })
}

/// Opens and locks every `--disk` image.
fn open_disks(disks: &[DiskConfig]) -> Result<Vec<Block>, Error> {
    if disks.len() > virtio::MAX_VIRTIO_DEVICES {
        return Err(Error::TooManyDevices(disks.len()));
    }
    Ok(disks.iter().map(Block::open).collect::<Result<_, _>>()?)
}

/// Opens every `--net` TAP (`before` devices come first).
fn open_nets(nets: &[NetConfig], before: usize) -> Result<Vec<Box<dyn VirtioDevice>>, Error> {
    if before + nets.len() > virtio::MAX_VIRTIO_DEVICES {
        return Err(Error::TooManyDevices(before + nets.len()));
    }
    nets.iter()
        .enumerate()
        .map(|(i, n)| Ok(Box::new(Net::open(n, i)?) as Box<dyn VirtioDevice>))
        .collect()
}

/// The KVM VM with RAM and the in-kernel devices; dirty logging is chosen before memory
/// slots and vCPUs exist (KVM accepts the dirty ring only before the first vCPU).
fn kvm_vm(
    kvm: &Kvm,
    cfg: &VmConfig,
    ram: &Arc<GuestRam>,
) -> Result<(Arc<VmFd>, Option<dirty::Prepared>), Error> {
    let vm_fd = Arc::new(vm::create_empty(kvm)?);
    let dirty_prep = cfg
        .track_dirty
        .as_ref()
        .map(|d| dirty::prepare(&vm_fd, d))
        .transpose()?;
    vm::add_ram_and_devices(&vm_fd, ram, cfg.track_dirty.is_some())?;
    Ok((vm_fd, dirty_prep))
}

/// Opens every virtio device of `cfg` (disks first, then nets and vsock; a balloon, when
/// `balloon`, comes last) and announces them all to a Linux guest.
#[allow(clippy::type_complexity)]
fn open_virtio(
    cfg: &mut VmConfig,
    balloon: bool,
) -> Result<(Vec<(Block, DiskConfig)>, Vec<Box<dyn VirtioDevice>>), Error> {
    if balloon && cfg.memory.backing.page_size() > 4096 {
        return Err(Error::BalloonBacking(cfg.memory.backing));
    }
    let disks = take_disks(cfg)?;
    let mut others = open_nets(&cfg.nets, disks.len())?;
    if let Some(v) = &cfg.vsock {
        others.push(Box::new(Vsock::open(v)?));
    }
    let n = disks.len() + others.len() + usize::from(balloon);
    if n > virtio::MAX_VIRTIO_DEVICES {
        return Err(Error::TooManyDevices(n));
    }
    announce_virtio(&mut cfg.payload, n);
    Ok((disks, others))
}

/// Opens and locks every `--disk` image of `cfg`, each with its configuration.
fn take_disks(cfg: &VmConfig) -> Result<Vec<(Block, DiskConfig)>, Error> {
    let disks = open_disks(&cfg.disks)?;
    Ok(disks.into_iter().zip(cfg.disks.iter().cloned()).collect())
}

/// The boot tables' view of the VM: `cpus` vCPUs and the windows of its `n` virtio-mmio
/// devices (for the DSDT).
fn platform(cpus: u8, n: usize) -> boot::Platform {
    let window = |(base, gsi): (u64, u32)| {
        Some(boot::VirtioMmio {
            base: u32::try_from(base).ok()?,
            size: u32::try_from(virtio::VIRTIO_MMIO_SIZE).ok()?,
            gsi,
        })
    };
    boot::Platform {
        cpus,
        virtio: (0..n).filter_map(virtio::slot).filter_map(window).collect(),
    }
}

/// Tells a Linux guest where its `n` virtio-mmio devices are (`virtio_mmio.device=`).
fn announce_virtio(payload: &mut Payload, n: usize) {
    if let Payload::Linux { cmdline, .. } = payload {
        for entry in (0..n).filter_map(virtio::cmdline_entry) {
            cmdline.push(' ');
            cmdline.push_str(&entry);
        }
    }
}

/// Each device behind a virtio-mmio transport at its slot on the MMIO bus, its interrupt an
/// irqfd on its IOAPIC pin (the in-kernel irqchip always exists here, see
/// [`vm::add_ram_and_devices`]); the transports, for the event loop. `first` is the slot
/// of the first one.
fn virtio_devices(
    vm_fd: &VmFd,
    bus: &mut IoBus,
    ram: &Arc<GuestRam>,
    devices: Vec<Box<dyn VirtioDevice>>,
    first: usize,
) -> Result<Vec<Arc<MmioTransport>>, Error> {
    let mut transports = Vec::with_capacity(devices.len());
    for (i, device) in devices.into_iter().enumerate() {
        let (base, irq) = virtio_slot_irq(vm_fd, first + i)?;
        let mem: Arc<dyn virtio::GuestMemoryView> = ram.clone();
        let t = Arc::new(MmioTransport::new(device, mem, irq)?);
        bus.mmio.insert(base, virtio::VIRTIO_MMIO_SIZE, t.clone())?;
        transports.push(t);
    }
    Ok(transports)
}

/// The virtio devices after the disks (`blk`), then the balloon; every transport in slot
/// order, and the balloon's handle.
fn virtio_rest(
    vm_fd: &VmFd,
    bus: &mut IoBus,
    ram: &Arc<GuestRam>,
    (blk, others): (&[BlockSlot], Vec<Box<dyn VirtioDevice>>),
    balloon: Option<BalloonConfig>,
) -> Result<(Vec<Arc<MmioTransport>>, Option<virtio::BalloonHandle>), Error> {
    let mut virtio: Vec<_> = blk.iter().map(|b| b.transport.clone()).collect();
    let first = virtio.len();
    virtio.extend(virtio_devices(vm_fd, bus, ram, others, first)?);
    let balloon = balloon
        .map(|b| balloon_device(vm_fd, bus, ram, virtio.len(), &b))
        .transpose()?;
    virtio.extend(balloon.as_ref().map(|b| b.transport().clone()));
    Ok((virtio, balloon))
}

/// Each disk behind a virtio-mmio transport in the first slots, with its configuration.
/// For a restore, `saved` (the snapshot's disks) is checked against them and loaded into
/// the transports.
fn virtio_blocks(
    vm_fd: &VmFd,
    bus: &mut IoBus,
    ram: &Arc<GuestRam>,
    disks: Vec<(Block, DiskConfig)>,
    saved: Option<&[crate::snapshot::virtio::BlockSnapshot]>,
) -> Result<Vec<BlockSlot>, Error> {
    let mut slots = Vec::with_capacity(disks.len());
    for (i, (disk, cfg)) in disks.into_iter().enumerate() {
        let sectors = disk.sectors();
        let (base, irq) = virtio_slot_irq(vm_fd, i)?;
        let mem: Arc<dyn virtio::GuestMemoryView> = ram.clone();
        let t = Arc::new(MmioTransport::new(Box::new(disk), mem, irq)?);
        bus.mmio.insert(base, virtio::VIRTIO_MMIO_SIZE, t.clone())?;
        slots.push(BlockSlot {
            cfg,
            sectors,
            transport: t,
        });
    }
    if let Some(saved) = saved {
        crate::snapshot::virtio::restore_blocks(saved, &slots)?;
    }
    Ok(slots)
}

/// Slot `i`'s MMIO base and its interrupt: an irqfd on the slot's IOAPIC pin.
fn virtio_slot_irq(vm_fd: &VmFd, i: usize) -> Result<(u64, virtio::SharedInterrupt), Error> {
    let (base, gsi) = virtio::slot(i).ok_or(Error::TooManyDevices(i + 1))?;
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
        what: "eventfd",
        source,
    })?;
    vm_fd
        .register_irqfd(&irq, gsi)
        .map_err(kvm_err("KVM_IRQFD"))?;
    Ok((base, Arc::new(IrqFd(irq))))
}

/// How the guest's queue notifications will arrive: through KVM ioeventfds, registered
/// here for every queue of every transport (slot order), when `want` and KVM offers them;
/// else by exits. `None` without virtio devices.
fn notify_path(
    kvm: &Kvm,
    vm_fd: &VmFd,
    transports: &[Arc<MmioTransport>],
    want: bool,
) -> Result<Option<virtio::NotifyPath>, Error> {
    if transports.is_empty() {
        return Ok(None);
    }
    if !want || !kvm.check_extension(kvm_ioctls::Cap::Ioeventfd) {
        return Ok(Some(virtio::NotifyPath::Exit));
    }
    for (i, t) in transports.iter().enumerate() {
        let (base, _) = virtio::slot(i).ok_or(Error::TooManyDevices(i + 1))?;
        t.set_notify_fds(notify_fds(vm_fd, base, t.queue_count())?);
    }
    Ok(Some(virtio::NotifyPath::Ioeventfd))
}

/// `queues` eventfds registered as ioeventfds on the QueueNotify register of the window
/// at `base`: 4-byte writes of the queue's index.
fn notify_fds(vm_fd: &VmFd, base: u64, queues: usize) -> Result<Vec<EventFd>, Error> {
    let reg = base + u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY);
    let addr = kvm_ioctls::IoEventAddress::Mmio(reg);
    (0u32..)
        .take(queues)
        .map(|q| {
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
                what: "eventfd",
                source,
            })?;
            vm_fd
                .register_ioevent(&fd, &addr, q)
                .map_err(kvm_err("KVM_IOEVENTFD"))?;
            Ok(fd)
        })
        .collect()
}

/// The balloon behind a transport at slot `i`; the handle the event loop keeps.
fn balloon_device(
    vm_fd: &VmFd,
    bus: &mut IoBus,
    ram: &Arc<GuestRam>,
    i: usize,
    cfg: &BalloonConfig,
) -> Result<virtio::BalloonHandle, Error> {
    let (base, irq) = virtio_slot_irq(vm_fd, i)?;
    let mem: Arc<dyn virtio::GuestMemoryView> = ram.clone();
    let (t, handle) = Balloon::new(cfg).into_transport(mem, irq)?;
    bus.mmio.insert(base, virtio::VIRTIO_MMIO_SIZE, t)?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_guests_are_told_where_their_virtio_devices_are() {
        let mut p = Payload::Linux {
            kernel: "k".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            bzimage: boot::BzImageMode::Auto,
        };
        announce_virtio(&mut p, 2);
        let Payload::Linux { cmdline, .. } = &p else {
            unreachable!()
        };
        assert_eq!(
            cmdline,
            "console=ttyS0 virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=4K@0xd0002000:6"
        );
        let mut t = Payload::TestGuest {
            mode: String::new(),
        };
        announce_virtio(&mut t, 1);
        assert!(matches!(t, Payload::TestGuest { mode } if mode.is_empty()));
        assert_eq!(virtio::slot(7), Some((0xd000_8000, 15)));
        assert_eq!(virtio::slot(virtio::MAX_VIRTIO_DEVICES), None);
        let many = vec!["x".parse::<DiskConfig>().unwrap(); virtio::MAX_VIRTIO_DEVICES + 1];
        assert!(matches!(open_disks(&many), Err(Error::TooManyDevices(9))));
    }
}
