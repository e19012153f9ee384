//! How a run ended and what it measured: one struct that the CLI prints as text and
//! writes as JSON.

use serde::Serialize;

use crate::host::{HostInfo, MmuMode};
use crate::memory::MemoryReport;
use crate::vstate::stats::KvmStats;

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
            // A status the shell cannot carry (negative, > 125) is still a failure: 125.
            ExitReason::GuestExit { status } => match *status {
                0 => 0,
                s @ 1..=125 => s,
                _ => 125,
            },
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

/// One step of the VMM's set-up and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct SetupStep {
    /// The step: host, memory, kvm_vm, vcpus, load, vcpu_state, devices, observers, threads.
    pub step: &'static str,
    /// Milliseconds.
    pub ms: f64,
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
    /// `boot_ms` by set-up step, in order.
    pub setup_ms: Vec<SetupStep>,
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
    /// The guest profile written, when asked for (`--profile-guest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::ProfileSummary>,
    /// Whether a host-decompressed bzImage's vmlinux came from the cache (`hit`), was
    /// decompressed and stored (`miss`), or no cache was used (`off`); the `load` step of
    /// `setup_ms` includes it.
    pub kernel_cache: crate::boot::cache::Outcome,
    /// What the balloon did (`--balloon`): bytes given back, pages, contiguity before/after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<crate::devices::virtio::balloon::BalloonReport>,
    /// How virtio queue notifications reached the devices: `ioeventfd` or `exit` (absent
    /// without virtio devices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtio_notify: Option<crate::devices::virtio::NotifyPath>,
}
