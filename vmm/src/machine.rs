//! A whole VM run: the builder that assembles memory, KVM VM, devices and vCPUs from a
//! [`VmConfig`], runs the guest to its end, and returns a [`RunReport`] (data first: the CLI
//! prints it and writes it as JSON from the same struct).

use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::boot;
use crate::devices::{Console, ConsoleEvent, Devices, MmioHandler, SerialDevice};
use crate::host::{self, HostInfo, MmuMode, MmuRequest};
use crate::memory::{self, GuestRam, MemoryConfig, MemoryReport};
use crate::vstate::stats::{KvmStats, StatsFd};
use crate::vstate::vcpu::{self, VcpuControl, VcpuInit, VcpuStop};
use crate::vstate::{cpuid, emulate, vm};

/// The bare-metal test guest, assembled by build.rs from `guest-kernels/testguest`.
pub const TEST_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testguest.elf"));

/// Errors that stop a VM from being built (bad input or host refusal). What happens to a
/// guest once it runs is not an error but a [`ExitReason`].
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
    Vm(#[from] vm::Error),
    /// Creating a vCPU.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// A KVM call outside the above.
    #[error("{what}: {source}")]
    Kvm {
        /// Step.
        what: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

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
}

/// Fills guest memory for a custom payload and returns vCPU 0's initial registers.
pub type CustomLoader = Box<dyn FnOnce(&GuestRam, &HostInfo) -> Result<VcpuInit, String> + Send>;

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Linux { kernel, .. } => write!(f, "Linux({})", kernel.display()),
            Payload::TestGuest { mode } => write!(f, "TestGuest({mode})"),
            Payload::Custom(_) => f.write_str("Custom"),
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
    /// Serve the API socket (ptsnaps on request) at this path.
    pub api_socket: Option<PathBuf>,
    /// Track dirty pages (KVM dirty log) while the guest runs.
    pub track_dirty: Option<crate::dirty::DirtyConfig>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("memory", &self.memory)
            .field("vcpus", &self.vcpus)
            .field("payload", &self.payload)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitReason {
    /// The guest wrote a status to the signal device.
    GuestExit {
        /// Status.
        status: i32,
    },
    /// Linux powered off ("reboot: Power down").
    PowerOff,
    /// The guest asked for a reset (i8042).
    Reset,
    /// The kernel panicked.
    Panic {
        /// The panic line.
        line: String,
    },
    /// /init was started but killed at its first system call because this host's KVM does
    /// not deliver `syscall` from guest user mode (detected from the guest's fault report).
    UserSyscallsUnavailable {
        /// The guest's fault line.
        fault: String,
        /// The panic line.
        panic: String,
    },
    /// KVM_EXIT_SHUTDOWN.
    TripleFault {
        /// vCPU.
        vcpu: u8,
        /// RIP.
        rip: u64,
    },
    /// An exit the VMM does not handle.
    UnhandledExit {
        /// vCPU.
        vcpu: u8,
        /// What.
        what: String,
    },
    /// An instruction neither KVM nor the VMM can run.
    EmulationFailure {
        /// vCPU.
        vcpu: u8,
        /// What.
        what: String,
    },
    /// Ended from the API socket (`shutdown`) while the guest still ran.
    Shutdown,
    /// No end within the timeout.
    Timeout {
        /// Seconds waited.
        seconds: f64,
        /// Where each vCPU was when it was stopped.
        rips: Vec<u64>,
    },
}

impl ExitReason {
    /// Whether the guest ended as it should.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            ExitReason::GuestExit { status: 0 }
                | ExitReason::PowerOff
                | ExitReason::Reset
                | ExitReason::Shutdown
        )
    }

    /// The VMM's exit code for this outcome: 0 success, the guest's status for a non-zero
    /// guest exit, 3 guest crashed, 4 timeout, 5 host cannot run guest user space.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestExit { status } => (*status).clamp(0, 125),
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::Shutdown => 0,
            ExitReason::Timeout { .. } => 4,
            ExitReason::UserSyscallsUnavailable { .. } => 5,
            _ => 3,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestExit { status } => write!(f, "guest exited with status {status}"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest requested a reset"),
            ExitReason::Shutdown => write!(f, "shut down over the API socket"),
            ExitReason::Panic { line } => write!(f, "guest kernel panicked: {line}"),
            ExitReason::UserSyscallsUnavailable { fault, .. } => write!(
                f,
                "the guest kernel started /init, but this host's KVM does not let guest user space make system calls: the first `syscall` of /init faulted at the kernel's entry point still in user mode ({fault}); boot the small kernel (guest-kernels/, with the kvm_pvm syscall fix-up) instead"
            ),
            ExitReason::TripleFault { vcpu, rip } => write!(f, "guest triple-faulted (KVM shutdown exit) on vCPU {vcpu} at rip {rip:#x}"),
            ExitReason::UnhandledExit { vcpu, what } => write!(f, "vCPU {vcpu}: {what}"),
            ExitReason::EmulationFailure { vcpu, what } => write!(f, "vCPU {vcpu}: {what}"),
            ExitReason::Timeout { seconds, rips } => {
                let at: Vec<String> = rips.iter().enumerate().map(|(i, r)| format!("vCPU {i} at rip {r:#x}")).collect();
                write!(f, "guest did not finish within {seconds:.1} s (hang?); stopped ({})", at.join(", "))
            }
        }
    }
}

/// A boot milestone seen on the console.
#[derive(Debug, Clone, Serialize)]
pub struct Milestone {
    /// What was seen (the milestone's pattern).
    pub what: String,
    /// The console line from the pattern on.
    pub line: String,
    /// Milliseconds since the run started.
    pub at_ms: f64,
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Memory: what was asked, what the host gave.
    pub memory: MemoryReport,
    /// The host.
    pub host: HostInfo,
    /// The MMU mode in effect.
    pub mmu_mode: MmuMode,
    /// KVM's counters at the end.
    pub kvm_stats: KvmStats,
    /// VMM start to the first KVM_RUN, ms: the VMM's own boot cost.
    pub boot_ms: f64,
    /// First KVM_RUN to the end, ms.
    pub run_ms: f64,
    /// How it ended.
    pub exit_reason: ExitReason,
    /// Human-readable `exit_reason`.
    pub exit_message: String,
    /// Console milestones.
    pub milestones: Vec<Milestone>,
    /// Kernel command line actually used (Linux only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The VMM's own resident memory beside guest RAM (VmRSS minus guest RAM resident), bytes.
    pub vmm_rss_bytes: u64,
    /// Of that, anonymous memory (heap, stacks: RssAnon minus guest RAM); the rest is the
    /// file-backed code and data of the binary and libc (RssFile), shared between VMMs.
    pub vmm_anon_bytes: u64,
    /// Instructions the VMM completed after emulation failures: int3 and others.
    pub vmm_emulated: (u64, u64),
    /// Page-table ptsnaps taken during the run.
    pub ptsnaps: Vec<crate::ptsnap::PtsnapInfo>,
    /// Dirty-page tracking results, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<crate::dirty::DirtyReport>,
    /// The console log (not serialized).
    #[serde(skip)]
    pub console_log: String,
}

/// Events the run loop waits for.
enum Event {
    Vcpu(u8, VcpuStop),
    Console(ConsoleEvent),
    /// The API socket's `shutdown`.
    Shutdown,
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

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Builds the VM from `cfg`, runs it to its end and reports.
pub fn run(cfg: VmConfig) -> Result<RunReport, Error> {
    let started = cfg.started.unwrap_or_else(Instant::now);
    if cfg.vcpus == 0 || cfg.vcpus > 64 {
        return Err(Error::Config(format!(
            "--vcpus {}: must be between 1 and 64",
            cfg.vcpus
        )));
    }
    let info = host::probe()?;
    let mmu_mode = host::check_mode(&info, cfg.mmu)?;
    let ram = Arc::new(GuestRam::new(&cfg.memory)?);
    let pvm = info.kvm_module == "kvm_pvm";

    // Load the guest.
    let mut cmdline_used = None;
    let kvm = Kvm::new().map_err(host::Error::OpenKvm)?;
    let vm_fd = Arc::new(vm::create_empty(&kvm)?);
    // Dirty logging is chosen and enabled before memory slots and vCPUs exist: KVM accepts
    // the dirty ring only before the first vCPU.
    let dirty_prep = match &cfg.track_dirty {
        Some(d) => {
            Some(crate::dirty::prepare(&vm_fd, d).map_err(|e| Error::Config(e.to_string()))?)
        }
        None => None,
    };
    vm::add_ram_and_devices(&vm_fd, &ram, cfg.track_dirty.is_some())?;
    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        vcpus.push(
            vm_fd
                .create_vcpu(u64::from(id))
                .map_err(|source| Error::Kvm {
                    what: "KVM_CREATE_VCPU",
                    source,
                })?,
        );
    }
    let base_sregs = vcpus[0].get_sregs().map_err(|source| Error::Kvm {
        what: "KVM_GET_SREGS",
        source,
    })?;
    let init0 = match cfg.payload {
        Payload::Linux {
            kernel,
            initrd,
            cmdline,
            bzimage,
        } => {
            let extra = host_cmdline_additions(&info);
            let full = if extra.is_empty() {
                cmdline
            } else {
                format!("{cmdline} {extra}")
            };
            let loaded = boot::load_kernel(
                &ram,
                &kernel,
                initrd.as_deref(),
                &full,
                cfg.vcpus,
                bzimage.resolve(&info.kvm_module),
            )?;
            cmdline_used = Some(full);
            VcpuInit::for_entry(loaded.entry, base_sregs)
        }
        Payload::TestGuest { mode } => {
            let loaded = boot::load_image(
                &ram,
                std::path::Path::new("<built-in test guest>"),
                TEST_GUEST,
                None,
                &mode,
                cfg.vcpus,
                boot::BzImageMode::AsIs,
            )?;
            VcpuInit::for_entry(loaded.entry, base_sregs)
        }
        Payload::Custom(f) => f(&ram, &info).map_err(Error::Config)?,
    };
    // CPUID: KVM's supported set, topology per vCPU, features the host cannot run hidden.
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| Error::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let hide: &[_] = if pvm { cpuid::PVM_HIDDEN } else { &[] };
    for (id, v) in vcpus.iter().enumerate() {
        let mut c = supported.clone();
        cpuid::filter(&mut c, id as u8, cfg.vcpus, hide);
        vcpu::configure(v, id as u8, &c, (id == 0).then_some(&init0))?;
    }

    // Devices.
    let console = Arc::new(Console::new(cfg.echo_console, started));
    let irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Config(format!("eventfd: {e}")))?;
    vm_fd
        .register_irqfd(&irq, crate::devices::serial::COM1_GSI)
        .map_err(|source| Error::Kvm {
            what: "KVM_IRQFD",
            source,
        })?;
    let devices = Arc::new(Devices {
        serial: Mutex::new(SerialDevice::new(irq, console.clone())),
        rtc: Mutex::new(crate::devices::rtc::Rtc::default()),
        console: console.clone(),
        mmio: cfg.mmio.clone(),
        ptsnaps: std::sync::OnceLock::new(),
    });
    let (tx, rx) = channel::<Event>();
    {
        let tx = Mutex::new(tx.clone());
        console.set_events(Box::new(move |e| {
            if let Ok(t) = tx.lock() {
                let _ = t.send(Event::Console(e));
            }
        }));
    }
    if cfg.stdin {
        spawn_stdin(devices.clone());
    }

    // Statistics descriptors, opened before the vCPUs move to their threads.
    let vm_stats = StatsFd::open(&*vm_fd).ok();
    let vcpu_stats: Vec<Option<StatsFd>> = vcpus.iter().map(|v| StatsFd::open(v).ok()).collect();

    // An empty handler for the kick signal: it only makes KVM_RUN return EINTR.
    let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler);
    let ctl = Arc::new(VcpuControl::new(cfg.vcpus as usize));
    let counters = Arc::new(emulate::Counters::default());
    let boot_ms = started.elapsed().as_secs_f64() * 1e3;
    // Dirty rings are mapped from the vCPU fds, before the fds move into their threads.
    let (tracker, rings) = match dirty_prep {
        Some(p) => {
            let rings = p
                .map_rings(&vm_fd, &vcpus, &ram)
                .map_err(|e| Error::Config(e.to_string()))?;
            let t = crate::dirty::Tracker::start(vm_fd.clone(), ram.clone(), p, rings.clone())
                .map_err(|e| Error::Config(e.to_string()))?;
            (Some(t), rings)
        }
        None => (None, None),
    };
    // The ptsnap service exists before any vCPU runs: a guest may ask for a ptsnap
    // at its very first instructions. Its kick reaches the vCPU threads through their
    // ids, filled in once they are spawned (a kick before that has nobody to interrupt).
    let pthread_ids: Arc<std::sync::OnceLock<Vec<libc::pthread_t>>> = Arc::default();
    let ids = pthread_ids.clone();
    let service = Arc::new(crate::ptsnap::PtsnapService::new(
        ram.clone(),
        ctl.clone(),
        cfg.vcpus as usize,
        Box::new(move || {
            for t in ids.get().into_iter().flatten() {
                // SAFETY: signalling our own vCPU threads with the kick signal, whose
                // handler does nothing; a thread that already ended is not signalled
                // because the service is only used while the VM runs.
                unsafe { libc::pthread_kill(*t, kick_signal()) };
            }
        }),
    ));
    let _ = devices.ptsnaps.set(service.clone());
    let run_start = Instant::now();
    let mut threads = Vec::new();
    let last_rips = Arc::new(Mutex::new(vec![0u64; cfg.vcpus as usize]));
    for (id, mut v) in vcpus.into_iter().enumerate() {
        let (ram, devices, ctl, counters, tx): (Arc<GuestRam>, _, _, _, Sender<Event>) = (
            ram.clone(),
            devices.clone(),
            ctl.clone(),
            counters.clone(),
            tx.clone(),
        );
        let last_rips = last_rips.clone();
        let rings = rings.clone();
        let h = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let why = vcpu::run_loop(
                    id,
                    &mut v,
                    &ram,
                    &devices,
                    &ctl,
                    &counters,
                    rings.as_deref(),
                );
                if why != VcpuStop::Stopped {
                    let _ = tx.send(Event::Vcpu(id as u8, why));
                }
                if let (Ok(r), Ok(mut l)) = (v.get_regs(), last_rips.lock()) {
                    l[id] = r.rip;
                }
                // The fd goes back to the VMM, which closes it after the tracker has
                // unmapped its dirty ring; this thread's hold on the rings ends here.
                drop(rings);
                v
            })
            .map_err(|e| Error::Config(format!("spawning vCPU thread: {e}")))?;
        threads.push(h);
    }
    // The API socket's end of the channel, kept only when it is served (the run loop's
    // "all vCPU threads ended" check needs every other sender gone).
    let api_tx = cfg.api_socket.as_ref().map(|_| tx);
    let _ = pthread_ids.set(threads.iter().map(|h| h.as_pthread_t()).collect());
    if let (Some(p), Some(tx)) = (&cfg.api_socket, api_tx) {
        let tx = Mutex::new(tx);
        let api = crate::api::Api {
            ptsnaps: service.clone(),
            shutdown: Box::new(move || {
                if let Ok(t) = tx.lock() {
                    let _ = t.send(Event::Shutdown);
                }
            }),
        };
        crate::api::serve(p, api).map_err(|e| Error::Config(e.to_string()))?;
    }

    // Wait for the end.
    let deadline = cfg.timeout.map(|t| run_start + t);
    let mut milestones = Vec::new();
    let mut user_fault: Option<String> = None;
    let exit_reason = loop {
        let ev = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    break ExitReason::Timeout {
                        seconds: cfg.timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0),
                        rips: Vec::new(),
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    break ExitReason::UnhandledExit {
                        vcpu: 0,
                        what: "all vCPU threads ended".into(),
                    }
                }
            },
            None => match rx.recv() {
                Ok(e) => e,
                Err(_) => {
                    break ExitReason::UnhandledExit {
                        vcpu: 0,
                        what: "all vCPU threads ended".into(),
                    }
                }
            },
        };
        match ev {
            Event::Console(ConsoleEvent::Milestone { what, line, at_ms }) => {
                milestones.push(Milestone {
                    what: what.into(),
                    line,
                    at_ms,
                })
            }
            Event::Console(ConsoleEvent::UserFaultAtKernelIp(l)) => user_fault = Some(l),
            Event::Console(ConsoleEvent::PowerOff) => break ExitReason::PowerOff,
            Event::Shutdown => break ExitReason::Shutdown,
            Event::Console(ConsoleEvent::Panic(line)) => {
                let started_init = milestones.iter().any(|m| m.what.starts_with("Run /init"));
                break match (
                    &user_fault,
                    started_init && line.contains("Attempted to kill init"),
                ) {
                    (Some(fault), true) => ExitReason::UserSyscallsUnavailable {
                        fault: fault.clone(),
                        panic: line,
                    },
                    _ => ExitReason::Panic { line },
                };
            }
            Event::Vcpu(id, s) => {
                break match s {
                    VcpuStop::GuestExit(status) => ExitReason::GuestExit { status },
                    VcpuStop::Reset => ExitReason::Reset,
                    VcpuStop::TripleFault { rip } => ExitReason::TripleFault { vcpu: id, rip },
                    VcpuStop::Unhandled(what) => ExitReason::UnhandledExit { vcpu: id, what },
                    VcpuStop::EmulationFailure(what) => {
                        ExitReason::EmulationFailure { vcpu: id, what }
                    }
                    VcpuStop::Stopped => ExitReason::UnhandledExit {
                        vcpu: id,
                        what: "stopped".into(),
                    },
                }
            }
        }
    };
    let run_ms = run_start.elapsed().as_secs_f64() * 1e3;
    let read = |s: &Option<StatsFd>| s.as_ref().and_then(|s| s.read().ok()).unwrap_or_default();
    let kvm_stats = KvmStats::new(read(&vm_stats), vcpu_stats.iter().map(read).collect());
    let memory = ram.report();
    let vmm_rss_bytes = proc_status_kb("VmRSS:").saturating_sub(memory.rss_bytes);
    let vmm_anon_bytes = proc_status_kb("RssAnon:").saturating_sub(memory.rss_bytes);

    // Stop the vCPUs: raise the flag, kick each thread until it leaves KVM_RUN.
    ctl.request_stop();
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut vcpu_fds = Vec::new();
    for h in threads {
        while !h.is_finished() && Instant::now() < give_up {
            // SAFETY: signalling a live thread of ours with the kick signal, whose handler
            // does nothing; it only makes KVM_RUN return EINTR.
            unsafe { libc::pthread_kill(h.as_pthread_t(), kick_signal()) };
            std::thread::sleep(Duration::from_millis(2));
        }
        if h.is_finished() {
            if let Ok(v) = h.join() {
                vcpu_fds.push(v);
            }
        }
    }
    // The last collection sees everything the stopped vCPUs wrote; then the rings are
    // unmapped (tracker and our copy dropped) before their vCPU fds close.
    drop(rings);
    let dirty = match tracker {
        Some(t) => Some(t.finish().map_err(|e| Error::Config(e.to_string()))?),
        None => None,
    };
    drop(vcpu_fds);
    let mut exit_reason = exit_reason;
    if let ExitReason::Timeout { rips, .. } = &mut exit_reason {
        *rips = last_rips.lock().map(|l| l.clone()).unwrap_or_default();
    }
    Ok(RunReport {
        memory,
        host: info,
        mmu_mode,
        kvm_stats,
        boot_ms,
        run_ms,
        exit_message: exit_reason.to_string(),
        exit_reason,
        milestones,
        cmdline: cmdline_used,
        vmm_emulated: (
            counters.int3.load(Ordering::Relaxed),
            counters.other.load(Ordering::Relaxed),
        ),
        dirty,
        ptsnaps: service.taken(),
        vmm_rss_bytes,
        vmm_anon_bytes,
        console_log: console.log(),
    })
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

/// Forwards stdin to the serial port until EOF.
fn spawn_stdin(devices: Arc<Devices>) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut off = 0;
                while off < n {
                    let put = devices
                        .serial
                        .lock()
                        .map(|mut s| s.input(&buf[off..n]))
                        .unwrap_or(n);
                    off += put;
                    if put == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
}
