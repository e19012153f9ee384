//! The Linux-guest environment of the matrix: the same workloads as static binaries in a
//! Linux guest's user space, for hosts where that is meaningful.
//!
//! Contract with the initrd: its `/init` reads `segvmm.workload=`, `segvmm.footprint=`,
//! `segvmm.seed=` and `segvmm.count=` from the kernel command line, runs the workload, and
//! prints one console line
//! `SEGVMM-RESULT workload=<name> ops=<n> ns_per_op=<x> checksum=<hex> data_va=<hex>`
//! (optionally more fields, such as `init_ns=<x>`, the set-up before the timed part)
//! before powering off (or `SEGVMM-ERROR <why>` when it cannot run the request). It may time
//! with the TSC: `segvmm.tsc_khz=` carries KVM's TSC frequency when the host reports it.
//! `guest-kernels/build.sh --bench-initramfs` builds such an initrd (`linux-bench/`).
//!
//! On kvm_pvm hosts a Linux guest's user space can make system calls only through the small
//! kernel's fix-up (guest-kernels/), and every guest page fault costs milliseconds: the run
//! is still attempted, and recorded as unavailable with the reason when the host cannot run
//! guest user space.

use std::path::Path;
use std::time::Instant;

use super::output::Status;
use super::MatrixSpec;
use crate::boot::BzImageMode;
use crate::host::MmuRequest;
use crate::memory::{Backing, MemoryConfig};
use crate::probe::{Measurement, WorkloadSpec};
use crate::vm::{self, ExitReason, Payload, VmConfig};

/// Prefix of the result line on the console.
pub const RESULT_PREFIX: &str = "SEGVMM-RESULT";

/// Prefix of the line the initrd prints instead when it cannot run the request.
pub const ERROR_PREFIX: &str = "SEGVMM-ERROR";

/// Guest RAM beside the footprint: kernel, initrd, page tables.
const LINUX_OVERHEAD: u64 = 256 << 20;

/// The fields of a result line.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultLine {
    /// Workload name.
    pub workload: String,
    /// Operations.
    pub ops: u64,
    /// ns per op.
    pub ns_per_op: f64,
    /// Checksum.
    pub checksum: u64,
    /// Buffer address in the guest process.
    pub data_va: u64,
    /// Set-up before the timed part (mapping and init), when the initrd reports it.
    pub init_ns: f64,
}

fn hex(v: &str) -> Option<u64> {
    u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
}

/// Finds and parses the result line in a console log.
pub fn parse_result(log: &str) -> Option<ResultLine> {
    let line = log
        .lines()
        .find_map(|l| l.find(RESULT_PREFIX).map(|i| &l[i + RESULT_PREFIX.len()..]))?;
    let mut r = ResultLine {
        workload: String::new(),
        ops: 0,
        ns_per_op: f64::NAN,
        checksum: 0,
        data_va: 0,
        init_ns: 0.0,
    };
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        match k {
            "workload" => r.workload = v.to_string(),
            "ops" => r.ops = v.parse().ok()?,
            "ns_per_op" => r.ns_per_op = v.parse().ok()?,
            "checksum" => r.checksum = hex(v)?,
            "data_va" => r.data_va = hex(v)?,
            "init_ns" => r.init_ns = v.parse().ok()?,
            _ => {}
        }
    }
    (!r.workload.is_empty() && r.ns_per_op.is_finite()).then_some(r)
}

/// Boots `kernel` + `initrd` with the workload on the command line and reads its result;
/// `tsc_khz` (KVM's TSC frequency) lets the guest time with user-mode `rdtsc` instead of
/// a clock system call, which costs milliseconds on kvm_pvm hosts.
pub fn run(
    work: &WorkloadSpec,
    backing: Backing,
    kernel: &Path,
    initrd: &Path,
    spec: &MatrixSpec,
    tsc_khz: Option<u32>,
) -> Result<Measurement, (Status, String)> {
    let mut cmdline = format!(
        "console=ttyS0 reboot=k panic=-1 segvmm.workload={} segvmm.footprint={} segvmm.seed={} segvmm.count={}",
        work.workload.name(),
        work.footprint,
        work.seed,
        work.count()
    );
    if let Some(khz) = tsc_khz {
        cmdline.push_str(&format!(" segvmm.tsc_khz={khz}"));
    }
    let cfg = VmConfig {
        memory: MemoryConfig {
            size: work.footprint + LINUX_OVERHEAD,
            backing,
            grow_pool: spec.grow_pool,
            prefault: crate::memory::Prefault::On,
        },
        vcpus: 1,
        mmu: MmuRequest::Auto,
        timeout: Some(spec.timeout),
        echo_console: false,
        stdin: false,
        payload: Payload::Linux {
            kernel: kernel.into(),
            initrd: Some(initrd.into()),
            cmdline,
            bzimage: BzImageMode::Auto,
        },
        mmio: None,
        started: Some(Instant::now()),
        api_socket: None,
        track_dirty: None,
        disks: Vec::new(),
        nets: Vec::new(),
        vsock: None,
    };
    let report = vm::run(cfg).map_err(|e| match e {
        vm::Error::Memory(_) | vm::Error::Host(_) => (Status::Unavailable, e.to_string()),
        e => (Status::Failed, e.to_string()),
    })?;
    if let ExitReason::UserSyscallsUnavailable { .. } = report.exit_reason {
        return Err((Status::Unavailable, report.exit_message));
    }
    let Some(r) = parse_result(&report.console_log) else {
        if let Some(why) = report.console_log.lines().find_map(|l| {
            l.find(ERROR_PREFIX)
                .map(|i| l[i + ERROR_PREFIX.len()..].trim())
        }) {
            return Err((Status::Failed, format!("the guest's /init: {why}")));
        }
        // A clean power-off without a result: the initrd does not carry the workloads.
        if report.exit_reason.is_success() {
            return Err((
                Status::Unavailable,
                format!("the guest booted and powered off, but its /init printed no {RESULT_PREFIX} line: this initrd does not carry the workloads (see docs/measurement.md)"),
            ));
        }
        return Err((
            Status::Failed,
            format!(
                "no {RESULT_PREFIX} line on the console; {}",
                report.exit_message
            ),
        ));
    };
    Ok(Measurement {
        workload: r.workload,
        environment: "linux".into(),
        backing,
        guest_pages: None,
        footprint: work.footprint,
        seed: work.seed,
        data_va: r.data_va,
        ops: r.ops,
        elapsed_ns: r.ns_per_op * r.ops as f64,
        wall_ns: report.run_ms * 1e6,
        tsc_khz: report.host.tsc_khz,
        ns_per_op: r.ns_per_op,
        checksum: r.checksum,
        init_ns: r.init_ns,
        kvm_exits: Some(report.kvm_stats.get("exits")),
        shadow_page_faults: Some(report.kvm_stats.get("pf_fixed")),
        contiguous_runs: report.memory.contiguous_runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line() {
        let log = "[    1.0] Run /init\nfoo SEGVMM-RESULT workload=gups ops=100 ns_per_op=12.5 checksum=0xff data_va=0x7f00\nreboot: Power down\n";
        let r = parse_result(log).unwrap();
        assert_eq!(
            r,
            ResultLine {
                workload: "gups".into(),
                ops: 100,
                ns_per_op: 12.5,
                checksum: 255,
                data_va: 0x7f00,
                init_ns: 0.0,
            }
        );
        let r = parse_result("SEGVMM-RESULT workload=chase ops=1 ns_per_op=2 checksum=0 data_va=0 init_ns=1500 mmap_ns=9").unwrap();
        assert_eq!(r.init_ns, 1500.0);
        assert_eq!(parse_result("nothing here"), None);
        assert_eq!(parse_result("SEGVMM-RESULT ops=x"), None);
        assert_eq!(parse_result("SEGVMM-RESULT ops=1"), None);
    }
}
