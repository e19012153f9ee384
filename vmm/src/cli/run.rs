//! `segvmm run`: boot a Linux kernel, the measurement guest (default without --kernel) or
//! the bare-metal test guest.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{parse_size, CliError, CliResult};
use crate::host::MmuRequest;
use crate::machine::{self, Payload, RunReport, VmConfig};
use crate::memory::{Backing, MemoryConfig};

/// Which built-in guest to boot when no --kernel is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BuiltinGuest {
    /// The bare-metal test guest (long mode, serial, memory check, signal port).
    Test,
    /// The test guest, told to triple-fault (for testing the VMM's handling).
    TestTriple,
    /// The test guest, told to hang (for testing --timeout).
    TestHang,
}

/// Options of `segvmm run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kernel image: bzImage or ELF vmlinux (PVH entry when the ELF has the note).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (an uncompressed cpio is fastest on software-KVM hosts).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=-1")]
    pub cmdline: String,
    /// Guest RAM, e.g. 256M, 2G.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Host backing of guest RAM.
    #[arg(long, value_enum, default_value_t = Backing::Thp)]
    pub backing: Backing,
    /// Grow the hugetlb pool (root) when it is too small for --backing 2m/1g.
    #[arg(long)]
    pub grow_pool: bool,
    /// MMU mode: refused when the host cannot give it.
    #[arg(long, value_enum, default_value_t = MmuRequest::Auto)]
    pub mmu: MmuRequest,
    /// Stop the guest after this many seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub timeout: f64,
    /// Write the run report as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Do not echo the guest console.
    #[arg(long)]
    pub quiet: bool,
    /// The built-in guest to boot when no --kernel is given.
    #[arg(long, value_enum, default_value_t = BuiltinGuest::Test)]
    pub guest: BuiltinGuest,
}

/// Prints the report's summary to stderr and writes the JSON.
pub fn finish(report: &RunReport, json: Option<&PathBuf>) -> CliResult {
    eprintln!("segvmm: {}", report.memory);
    eprintln!("segvmm: host {} ({} paging); VMM set-up {:.1} ms, guest ran {:.1} ms", report.host.kvm_module, report.mmu_mode, report.boot_ms, report.run_ms);
    for m in &report.milestones {
        eprintln!("segvmm: {:>10.1} ms  {}", m.at_ms, m.what);
    }
    eprintln!("segvmm: {}", report.kvm_stats.summary());
    if report.vmm_emulated != (0, 0) {
        eprintln!("segvmm: completed by the VMM: {} int3 (#BP injected), {} other instructions", report.vmm_emulated.0, report.vmm_emulated.1);
    }
    eprintln!("segvmm: {}", report.exit_message);
    if let Some(p) = json {
        let s = serde_json::to_string_pretty(report).map_err(CliError::failed)?;
        std::fs::write(p, s).map_err(|e| CliError::failed(format!("writing {}: {e}", p.display())))?;
    }
    Ok(report.exit_reason.exit_code())
}

/// Runs `segvmm run`.
pub fn run(args: Args) -> CliResult {
    let started = Instant::now();
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        return Err(CliError::bad_input(format!("--timeout {}: must be a positive number of seconds", args.timeout)));
    }
    let payload = match &args.kernel {
        Some(k) => Payload::Linux { kernel: k.clone(), initrd: args.initrd.clone(), cmdline: args.cmdline.clone() },
        None => {
            if args.initrd.is_some() {
                return Err(CliError::bad_input("--initrd needs --kernel"));
            }
            let mode = match args.guest {
                BuiltinGuest::Test => "",
                BuiltinGuest::TestTriple => "triple",
                BuiltinGuest::TestHang => "hang",
            };
            Payload::TestGuest { mode: mode.into() }
        }
    };
    let cfg = VmConfig {
        memory: MemoryConfig { size: args.memory, backing: args.backing, grow_pool: args.grow_pool },
        vcpus: args.vcpus,
        mmu: args.mmu,
        timeout: Some(Duration::from_secs_f64(args.timeout)),
        echo_console: !args.quiet,
        stdin: args.kernel.is_some(),
        payload,
        mmio: None,
        started: Some(started),
    };
    let report = machine::run(cfg).map_err(CliError::bad_input)?;
    finish(&report, args.report.as_ref())
}
