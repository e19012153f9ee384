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
use super::{Error, Observers, Vm};
use crate::api::{ApiConfig, ApiServer};
use crate::devices::legacy::{CmosRtc, Com1, SignalPort, SignalWindow, I8042};
use crate::devices::{self, Console, IoBus, SerialDevice};
use crate::host::{self, HostInfo};
use crate::memory::GuestRam;
use crate::ptsnap::Ptsnapper;
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
    profiler: Option<crate::profile::Profiler>,
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
            profiler: None,
        }
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

    /// Builds the VM: everything up to, not including, the first guest instruction.
    pub fn build(self) -> Result<Vm, Error> {
        let VmBuilder {
            cfg,
            api,
            confine_main,
            jail,
            profiler,
        } = self;
        let started = cfg.started.unwrap_or_else(Instant::now);
        let mut t = SetupTimer::new(started);
        if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
            return Err(Error::VcpuCount(cfg.vcpus));
        }
        let info = host::probe()?;
        let mmu_mode = host::check_mode(&info, cfg.mmu)?;
        t.step("host");
        let ram = Arc::new(GuestRam::new(&cfg.memory)?);
        t.step("memory");
        let kvm = Kvm::new().map_err(host::Error::OpenKvm)?;
        let vm_fd = Arc::new(vm::create_empty(&kvm)?);
        // Dirty logging is chosen before memory slots and vCPUs exist: KVM accepts the
        // dirty ring only before the first vCPU.
        let dirty_prep = cfg
            .track_dirty
            .as_ref()
            .map(|d| dirty::prepare(&vm_fd, d))
            .transpose()?;
        vm::add_ram_and_devices(&vm_fd, &ram, cfg.track_dirty.is_some())?;
        t.step("kvm_vm");
        let fds = create_vcpus(&vm_fd, cfg.vcpus)?;
        t.step("vcpus");
        let base = fds[0].get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let (init0, cmdline, kernel_cache) = load_checked(
            cfg.payload,
            &ram,
            &info,
            (cfg.vcpus, base),
            profiler.as_ref(),
        )?;
        t.step("load");
        configure_vcpus(&kvm, &fds, &info, &init0)?;
        t.step("vcpu_state");
        let (notifier, inbox) = Notifier::new().map_err(|source| Error::Io {
            what: "eventfd",
            source,
        })?;
        let console = Arc::new(Console::new(cfg.echo_console, started));
        let n = notifier.clone();
        console.set_events(Box::new(move |e| n.console(e)));
        let (bus, com1) = legacy_devices(&vm_fd, &console, cfg.mmio.clone())?;
        t.step("devices");
        let stats = (
            StatsFd::open(&*vm_fd).ok(),
            fds.iter().map(|v| StatsFd::open(v).ok()).collect(),
        );
        let dirty = match dirty_prep {
            Some(p) => {
                let rings = p.map_rings(&vm_fd, &fds, &ram)?;
                let tracker = dirty::Tracker::start(vm_fd.clone(), ram.clone(), p, rings.clone())?;
                Some((tracker, rings))
            }
            None => None,
        };
        let api = api.map(ApiServer::bind).transpose()?;
        t.step("observers");
        if let Some(j) = &jail {
            crate::jail::enter(j)?;
            t.step("jail");
        }
        Ok(Vm {
            info,
            mmu_mode,
            ram: ram.clone(),
            _vm_fd: vm_fd,
            fds,
            handles: Vec::new(),
            bus: Arc::new(bus),
            console,
            com1,
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
            cmdline,
            started,
            setup: t.steps,
            setup_last: t.last,
            profiler,
            kernel_cache,
        })
    }
}

/// [`load_payload`], then, for a profile, the check that its System.map is the loaded
/// kernel's (a bzImage loaded as is is still compressed: the error says so).
fn load_checked(
    payload: Payload,
    ram: &GuestRam,
    info: &HostInfo,
    (vcpus, base): (u8, kvm_bindings::kvm_sregs),
    profiler: Option<&crate::profile::Profiler>,
) -> Result<(VcpuInit, Option<String>, boot::cache::Outcome), Error> {
    let as_is = matches!(&payload, Payload::Linux { bzimage, .. }
        if bzimage.resolve(&info.kvm_module) == boot::BzImageMode::AsIs);
    let loaded = load_payload(payload, ram, info, vcpus, base)?;
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
    vcpus: u8,
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
            let loaded = boot::load_kernel(ram, &kernel, initrd.as_deref(), &full, vcpus, mode)?;
            let init = VcpuInit::for_entry(loaded.entry, base);
            Ok((init, Some(full), loaded.vmlinux_cache))
        }
        Payload::TestGuest { mode } => {
            let name = std::path::Path::new("<built-in test guest>");
            let as_is = boot::BzImageMode::AsIs;
            let loaded = boot::load_image(ram, name, TEST_GUEST, None, &mode, vcpus, as_is)?;
            Ok((VcpuInit::for_entry(loaded.entry, base), None, off))
        }
        Payload::Custom(f) => Ok((f(ram, info).map_err(Error::Payload)?, None, off)),
    }
}

/// CPUID (KVM's supported set, topology per vCPU, features the host cannot run hidden),
/// FPU, LAPIC and vCPU 0's registers.
fn configure_vcpus(
    kvm: &Kvm,
    fds: &[VcpuFd],
    info: &HostInfo,
    init0: &VcpuInit,
) -> Result<(), Error> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let hide: &[_] = if info.kvm_module == "kvm_pvm" {
        cpuid::PVM_HIDDEN
    } else {
        &[]
    };
    let n = fds.len() as u8;
    for (id, v) in fds.iter().enumerate() {
        let mut c = supported.clone();
        cpuid::filter(&mut c, id as u8, n, hide);
        vcpu::configure(v, id as u8, &c, (id == 0).then_some(init0))?;
    }
    Ok(())
}

/// COM1 (irqfd on GSI 4), the RTC, the i8042, the signal port and, when given, the signal
/// MMIO window, registered on a new bus.
fn legacy_devices(
    vm_fd: &VmFd,
    console: &Arc<Console>,
    mmio: Option<Arc<dyn devices::MmioHandler>>,
) -> Result<(IoBus, Arc<Com1>), Error> {
    use crate::devices::legacy::{I8042_PORTS, SIGNAL_MMIO_BASE, SIGNAL_MMIO_SIZE, SIGNAL_PORT};
    use crate::devices::{rtc, serial};
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
        what: "eventfd",
        source,
    })?;
    vm_fd
        .register_irqfd(&irq, serial::COM1_GSI)
        .map_err(kvm_err("KVM_IRQFD"))?;
    let com1 = Arc::new(Com1(Mutex::new(SerialDevice::new(irq, console.clone()))));
    let mut bus = IoBus::default();
    let com1_len = u64::from(serial::COM1_END - serial::COM1 + 1);
    bus.pio
        .insert(u64::from(serial::COM1), com1_len, com1.clone())?;
    bus.pio
        .insert(u64::from(rtc::INDEX_PORT), 2, Arc::new(CmosRtc::default()))?;
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
    Ok((bus, com1))
}
