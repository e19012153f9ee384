//! `segvmm restore --from DIR`: build a VM from a whole-VM snapshot and run it on. Every
//! check (state file, memory file, vCPU count, CPUID, backing) is made before any vCPU
//! runs; bad input is one line and exit code 2.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CliError, CliResult};
use crate::api::ApiConfig;
use crate::host::MmuRequest;
use crate::memory::{Backing, MemoryConfig, Prefault};
use crate::probe::device::ProbeDevice;
use crate::snapshot::{self, MemoryMode};
use crate::vm::{Payload, VmBuilder, VmConfig};

/// Options of `segvmm restore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The snapshot directory (made by `segvmm snapshot create`).
    #[arg(long)]
    pub from: PathBuf,
    /// Host backing of guest RAM (default: the saved one with copy, 4k with map).
    #[arg(long, value_enum)]
    pub backing: Option<Backing>,
    /// copy: read the memory file into fresh memory of the backing; map: map it
    /// privately, pages load on first touch (4 KiB pages only).
    #[arg(long, value_enum, default_value_t = MemoryMode::Copy)]
    pub memory_mode: MemoryMode,
    /// Grow the hugetlb pool (root) when it is too small for --backing 2m/1g.
    #[arg(long)]
    pub grow_pool: bool,
    /// Write the run report as JSON (with the restore's own figures).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Serve the API socket here.
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// With --api-socket: the directory where API requests may write (new snapshots).
    #[arg(long, requires = "api_socket")]
    pub snapshot_dir: Option<PathBuf>,
    /// Stop the guest after this many seconds.
    #[arg(long, default_value = "1800", value_parser = segment_mmu::duration::parse)]
    pub timeout: Duration,
    /// Seccomp filters (as `segvmm run`).
    #[arg(long, value_enum, default_value_t = crate::seccomp::SeccompLevel::Kill)]
    pub seccomp: crate::seccomp::SeccompLevel,
    /// Do not echo the guest console.
    #[arg(long)]
    pub quiet: bool,
    /// Virtio queue notifications through KVM ioeventfds (as `segvmm run`).
    #[arg(long, value_enum, default_value_t = super::run::OnOff::On)]
    pub ioeventfd: super::run::OnOff,
}

/// The measurement guest's result after a restore: its results page.
#[derive(Debug, serde::Serialize)]
struct RestoredResult {
    status: u64,
    ops: u64,
    checksum: u64,
}

fn probe_result(device: &ProbeDevice) -> Option<RestoredResult> {
    use workloads::protocol::{RESULTS_MAGIC, RES_CHECKSUM, RES_MAGIC, RES_OPS, RES_STATUS};
    let o = device.outcome();
    let r = o
        .results
        .filter(|r| r[RES_MAGIC] == RESULTS_MAGIC && !o.fault)?;
    Some(RestoredResult {
        status: r[RES_STATUS],
        ops: r[RES_OPS],
        checksum: r[RES_CHECKSUM],
    })
}

/// Runs `segvmm restore`.
pub fn run(args: Args) -> CliResult {
    crate::seccomp::set_level(args.seccomp);
    let started = Instant::now();
    let loaded = snapshot::load(&args.from, args.memory_mode).map_err(CliError::bad_input)?;
    let s = &loaded.state;
    let backing = args.backing.unwrap_or(match args.memory_mode {
        MemoryMode::Map => Backing::Anon4k,
        MemoryMode::Copy => saved_backing(&s.memory.backing),
    });
    let page = backing.page_size();
    let size = s.memory.size.div_ceil(page).saturating_mul(page);
    let vcpus = u8::try_from(s.vcpus).unwrap_or(u8::MAX);
    let probe = s.payload.kind == "probe";
    let device = probe.then(|| Arc::new(ProbeDevice::new(None)));
    let stdin = s.payload.kind == "linux";
    // The saved disks reopened (same flock rules; missing, locked or resized: exit 2).
    let disks = s
        .devices
        .virtio_blk
        .iter()
        .map(|b| b.disk_config())
        .collect();
    let cfg = VmConfig {
        memory: MemoryConfig {
            size,
            backing,
            grow_pool: args.grow_pool,
            prefault: Prefault::from(probe),
        },
        vcpus,
        mmu: MmuRequest::Auto,
        timeout: Some(args.timeout),
        echo_console: !args.quiet,
        stdin,
        payload: Payload::Snapshot(Box::new(loaded)),
        mmio: device
            .clone()
            .map(|d| d as Arc<dyn crate::devices::MmioHandler>),
        started: Some(started),
        api_socket: args.api_socket.clone(),
        track_dirty: None,
        disks,
        nets: Vec::new(),
        vsock: None,
    };
    let mut builder = VmBuilder::new(cfg)
        .confine_main_thread()
        .ioeventfd(args.ioeventfd == super::run::OnOff::On);
    if let Some(socket) = &args.api_socket {
        builder = builder.api(ApiConfig {
            socket: socket.clone(),
            snapshot_dir: args.snapshot_dir.clone(),
        });
    }
    let vm = builder.build().map_err(CliError::bad_input)?;
    if let Some(d) = &device {
        d.attach(vm.ram().memory().clone());
    }
    let report = vm.run().map_err(CliError::failed)?;
    let result = device.as_deref().and_then(probe_result);
    if let Some(r) = &result {
        println!(
            "restored measurement guest: status {}, {} ops, checksum {:#x}",
            r.status, r.ops, r.checksum
        );
    }
    let code = super::run::finish(&report)?;
    if let Some(p) = &args.report {
        let json = serde_json::json!({
            "restore": {
                "from": args.from.display().to_string(),
                "memory_mode": args.memory_mode,
                "backing": backing,
            },
            "result": result,
            "run": report,
        });
        let text = serde_json::to_string_pretty(&json).map_err(CliError::failed)?;
        std::fs::write(p, text)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", p.display())))?;
    }
    Ok(code)
}

/// The backing a snapshot was taken on (thp when unknown).
fn saved_backing(name: &str) -> Backing {
    match name {
        "4k" => Backing::Anon4k,
        "2m" => Backing::Huge2m,
        "1g" => Backing::Huge1g,
        _ => Backing::Thp,
    }
}
