//! `segvmm run`: boot a Linux kernel, the measurement guest (default without --kernel) or
//! the bare-metal test guest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{parse_size, CliError, CliResult};
use crate::api::ApiConfig;
use crate::host::MmuRequest;
use crate::memory::{Backing, MemoryConfig, Prefault};
use crate::probe::{self, guest, layout::PageSize, WorkloadSpec};
use crate::vm::{Payload, RunReport, Vm, VmBuilder, VmConfig};
use workloads::kernels::Workload;

/// Which built-in guest to boot when no --kernel is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BuiltinGuest {
    /// The measurement guest: one workload in ring 3 on VMM-built page tables.
    Probe,
    /// The bare-metal test guest (long mode, serial, memory check, signal port).
    Test,
    /// The test guest, told to triple-fault (for testing the VMM's handling).
    TestTriple,
    /// The test guest, told to hang (for testing --timeout).
    TestHang,
    /// The test guest driving the first --disk through its virtio-mmio registers (its
    /// sector 0 must start with "SEGV"): exit 0 when the device behaved, else 20 + the step
    /// that failed (see guest-kernels/testguest).
    TestVirtio,
    /// The test guest inflating the first virtio device, a --balloon, to its target (from
    /// 16 MiB on) through its registers: exit 0 when the device behaved, else 30 + the
    /// step that failed (see guest-kernels/testguest).
    TestBalloon,
    /// The test guest driving the first --disk through five malformed-queue cases (a
    /// buffer outside guest RAM, a looping chain, more data than the request allows, a
    /// queue size that is not a power of two, a notify before DRIVER_OK), each followed by
    /// a reset and a good request: exit 0 when the device behaved, else 40 + the step that
    /// failed (see guest-kernels/testguest).
    TestMalformedBlk,
    /// The same cases on the TX queue of the first device, a --net.
    TestMalformedNet,
    /// The same cases on the TX queue of the first device, a --vsock.
    TestMalformedVsock,
}

impl BuiltinGuest {
    /// The test guest's command line (its first byte picks the mode); `None` for the
    /// measurement guest.
    fn test_mode(self) -> Option<&'static str> {
        Some(match self {
            BuiltinGuest::Probe => return None,
            BuiltinGuest::Test => "",
            BuiltinGuest::TestTriple => "triple",
            BuiltinGuest::TestHang => "hang",
            BuiltinGuest::TestVirtio => "virtio",
            BuiltinGuest::TestBalloon => "balloon",
            // 'm' and the device ID the guest expects.
            BuiltinGuest::TestMalformedBlk => "m2",
            BuiltinGuest::TestMalformedNet => "m1",
            BuiltinGuest::TestMalformedVsock => "m19",
        })
    }
}

/// `--ioeventfd on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
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
    /// Where a bzImage's payload is decompressed: `auto` decompresses on the host where the
    /// host's KVM emulates guest ring-0 code (the kernel's decompressor then costs minutes),
    /// `as-is` lets the kernel's decompressor run, `host-decompress` always on the host.
    #[arg(long, value_enum, default_value_t = crate::boot::BzImageMode::Auto)]
    pub bzimage: crate::boot::BzImageMode,
    /// Where vmlinux images decompressed on the host from bzImages are cached by content
    /// (`--bzimage host-decompress`, the default on kvm_pvm): `auto`
    /// ($XDG_CACHE_HOME/segvmm/vmlinux, else ~/.cache/segvmm/vmlinux), `off`, or a
    /// directory. At most 512 MiB; a corrupt entry is ignored and replaced.
    #[arg(long, default_value = "auto", value_name = "auto|off|DIR")]
    pub kernel_cache: String,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=-1")]
    pub cmdline: String,
    /// Guest RAM, e.g. 256M, 2G (the measurement guest sizes its RAM from --footprint).
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
    /// Fault guest RAM in at set-up: off (lazily, on the guest's first touch), on (one
    /// thread per online CPU) or threads=N. Default: off with --kernel (Linux touches a
    /// tenth of its RAM while booting), on for the built-in guests (the test guest touches
    /// every 2 MiB; the measurement guest is timed and must not take host faults, off is
    /// refused there). See the README, "Launch cost".
    #[arg(long)]
    pub prefault: Option<Prefault>,
    /// MMU mode: refused when the host cannot give it.
    #[arg(long, value_enum, default_value_t = MmuRequest::Auto)]
    pub mmu: MmuRequest,
    /// Stop the guest after this many seconds.
    #[arg(long, default_value = "1800", value_parser = segment_mmu::duration::parse)]
    pub timeout: Duration,
    /// Serve the API socket here (created 0600; see `segvmm ptsnap`).
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// With --api-socket: the only directory where API requests may write files (ptsnaps),
    /// as plain names, created new; fixed at start. Without it the API writes no files.
    #[arg(long, requires = "api_socket")]
    pub snapshot_dir: Option<PathBuf>,
    /// Seccomp filters, one per kind of thread (vCPU, event loop, stdin copier, ptsnap
    /// writer, dirty collector): `kill` ends the VMM on a call outside a thread's list,
    /// `log` allows and logs it (kernel audit log), `off` installs none.
    #[arg(long, value_enum, default_value_t = crate::seccomp::SeccompLevel::Kill)]
    pub seccomp: crate::seccomp::SeccompLevel,
    /// Once the VM is built (/dev/kvm, guest RAM, files and the API socket open), chroot
    /// here, drop every capability, become --uid/--gid and set no_new_privs (an in-process
    /// jailer). --report is opened before; --hotness-out, written at the end, is then
    /// inside DIR.
    #[arg(long, requires_all = ["uid", "gid"])]
    pub jail: Option<PathBuf>,
    /// With --jail: the user to run the guest as.
    #[arg(long, requires = "jail")]
    pub uid: Option<u32>,
    /// With --jail: the group to run the guest as (supplementary groups are cleared).
    #[arg(long, requires = "jail")]
    pub gid: Option<u32>,
    /// A virtio-blk disk on a raw image (repeatable): `PATH[,ro][,id=NAME][,event_idx=on|off]`.
    /// The image is locked (flock; shared with `ro`) for the run; a missing, unreadable or
    /// locked image is refused before the guest starts. A Linux guest is told where it is
    /// (`virtio_mmio.device=` on its command line). `event_idx=off` stops offering
    /// VIRTIO_RING_F_EVENT_IDX (notification suppression, on by default).
    #[arg(long = "disk", value_name = "PATH[,ro][,id=NAME][,event_idx=on|off]")]
    pub disks: Vec<crate::devices::virtio::DiskConfig>,
    /// A virtio-balloon (after the disks): `[size=SIZE][,stats=INTERVAL|off]
    /// [,reporting=on|off][,deflate_on_oom=on|off]`; size is the initial balloon (default
    /// 0), stats how often the guest is asked for statistics (default 1s). Set the size
    /// later with the API's `{"cmd":"balloon","size_mib":N}`. Needs a 4k or thp backing.
    #[arg(long, value_name = "[size=SIZE][,stats=T][,reporting=on]", num_args = 0..=1, default_missing_value = "")]
    pub balloon: Option<crate::devices::virtio::BalloonConfig>,
    /// A virtio-net device on a host TAP (repeatable): `tap=NAME[,mac=MAC]`. segvmm opens
    /// the TAP itself (IFF_VNET_HDR, no offloads); one it cannot open is refused before
    /// the guest starts.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub nets: Vec<crate::devices::virtio::NetConfig>,
    /// A virtio-vsock device in Firecracker's hybrid style: `cid=N,uds=PATH`. A host
    /// program connects to PATH and writes `CONNECT <port>\n` to reach a guest listener
    /// (answer `OK <hostport>\n`); guest connections to host port P go to `PATH_P`. A
    /// PATH that exists is refused before the guest starts.
    #[arg(long = "vsock", value_name = "cid=N,uds=PATH")]
    pub vsock: Option<crate::devices::virtio::VsockConfig>,
    /// How virtio queue notifications (QueueNotify writes) reach the devices: `on` through
    /// KVM ioeventfds where KVM offers them (the write stays in the kernel, the event loop
    /// serves the queue), `off` by an exit to user space each (the vCPU serves the queue;
    /// for comparison). The report's `virtio_notify` says which was used.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub ioeventfd: OnOff,
    /// Write the run report as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// With --kernel: sample the guest's RIP while it runs and write a flat profile by
    /// kernel symbol (count, percent, symbol; most samples first) to FILE, created new.
    #[arg(long, value_name = "FILE")]
    pub profile_guest: Option<PathBuf>,
    /// With --profile-guest: the kernel's System.map (default: `<kernel>.map`, else
    /// `System.map` next to the kernel).
    #[arg(long, value_name = "MAP", requires = "profile_guest")]
    pub profile_map: Option<PathBuf>,
    /// With --profile-guest: samples per second (1-5000).
    #[arg(long, value_name = "N", default_value_t = crate::profile::DEFAULT_HZ, requires = "profile_guest")]
    pub profile_hz: u32,
    /// Do not echo the guest console.
    #[arg(long)]
    pub quiet: bool,
    /// The built-in guest to boot when no --kernel is given.
    #[arg(long, value_enum, default_value_t = BuiltinGuest::Probe)]
    pub guest: BuiltinGuest,
    /// Measurement guest: the workload.
    #[arg(long, value_parser = parse_workload, default_value = "chase")]
    pub workload: Workload,
    /// Measurement guest: bytes of the workload's buffer.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub footprint: u64,
    /// Measurement guest: page size of the buffer's guest mappings.
    #[arg(long, value_enum, default_value_t = PageSize::Size4K)]
    pub guest_pages: PageSize,
    /// Measurement guest: seed of the workload's random stream.
    #[arg(long, default_value_t = probe::DEFAULT_SEED)]
    pub seed: u64,
    /// Measurement guest: operations (default: per workload, see `segvmm bench --help`).
    #[arg(long)]
    pub count: Option<u64>,
    /// Measurement guest: also run the workload natively on the host (same code, same
    /// backing) and print the slowdown.
    #[arg(long)]
    pub native: bool,
    /// Track the guest's dirty pages every INTERVAL (e.g. 100ms) through KVM's dirty log
    /// and write a hotness file (--hotness-out) with a heat map beside it (.svg).
    #[arg(long, value_parser = crate::dirty::parse_interval)]
    pub track_dirty: Option<Duration>,
    /// With --track-dirty: where to write the hotness file.
    #[arg(long, default_value = "hotness.hot")]
    pub hotness_out: PathBuf,
    /// With --track-dirty: read KVM's dirty ring (where the host has it) or the dirty
    /// bitmap; auto takes the ring when offered. The report says which was used.
    #[arg(long, value_enum, default_value_t = crate::dirty::DirtyMode::Auto)]
    pub dirty_mode: crate::dirty::DirtyMode,
    /// With the dirty ring: bytes per vCPU ring (a power of two, at least 4096; default
    /// the largest the host allows, up to 1 MiB = 64 Ki entries).
    #[arg(long)]
    pub dirty_ring_bytes: Option<u32>,
}

impl Args {
    /// The dirty-tracking settings asked for, if any.
    fn dirty(&self) -> Option<crate::dirty::DirtyConfig> {
        self.track_dirty.map(|i| {
            crate::dirty::DirtyConfig::new(i, Some(self.hotness_out.clone()))
                .with_mode(self.dirty_mode)
                .with_ring_bytes(self.dirty_ring_bytes)
        })
    }
}

/// Parses a workload name.
pub fn parse_workload(s: &str) -> Result<Workload, String> {
    Workload::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
        format!("unknown workload '{s}' (one of {})", names.join(", "))
    })
}

/// Prints the report's summary to stderr; the exit code.
pub fn finish(report: &RunReport) -> CliResult {
    eprintln!("segvmm: {}", report.memory);
    eprintln!(
        "segvmm: host {} ({} paging); VMM set-up {:.1} ms, guest ran {:.1} ms, VMM resident memory beside guest RAM {:.1} MiB ({:.1} MiB anonymous, the rest file-backed code: the binary and libc)",
        report.host.kvm_module,
        report.mmu_mode,
        report.boot_ms,
        report.run_ms,
        report.vmm_rss_bytes as f64 / (1 << 20) as f64,
        report.vmm_anon_bytes as f64 / (1 << 20) as f64
    );
    for m in &report.milestones {
        eprintln!("segvmm: {:>10.1} ms  {}", m.at_ms, m.what);
    }
    eprintln!("segvmm: {}", report.kvm_stats.summary());
    if let Some(d) = &report.dirty {
        eprintln!("segvmm: {d}");
    }
    if let Some(b) = &report.balloon {
        eprintln!("segvmm: {b}");
    }
    if let Some(n) = report.virtio_notify {
        eprintln!("segvmm: virtio queue notifications: {n}");
    }
    if report.vmm_emulated != (0, 0) {
        eprintln!(
            "segvmm: completed by the VMM: {} int3 (#BP injected), {} other instructions",
            report.vmm_emulated.0, report.vmm_emulated.1
        );
    }
    if let Some(p) = &report.profile {
        eprintln!(
            "segvmm: guest profile: {} samples at {} Hz, top {} -> {}",
            p.samples,
            p.hz,
            p.top.as_deref().unwrap_or("-"),
            p.path.display()
        );
    }
    eprintln!("segvmm: {}", report.exit_message);
    Ok(report.exit_reason.exit_code())
}

/// Creates the report file (before the VM runs, so that a path that cannot be written is
/// refused up front, and so that a `--jail`ed run can still write it from the chroot).
fn open_report(p: &Path) -> Result<std::fs::File, CliError> {
    std::fs::File::create(p)
        .map_err(|e| CliError::bad_input(format!("--report {}: {e}", p.display())))
}

/// Writes `report` as JSON into the file opened for `p`.
fn write_report(report: &RunReport, p: &Path, mut f: std::fs::File) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(report).map_err(CliError::failed)?;
    std::io::Write::write_all(&mut f, s.as_bytes())
        .map_err(|e| CliError::failed(format!("writing {}: {e}", p.display())))
}

/// The API socket asked for, if any.
fn api_config(args: &Args) -> Option<ApiConfig> {
    args.api_socket.as_ref().map(|socket| ApiConfig {
        socket: socket.clone(),
        snapshot_dir: args.snapshot_dir.clone(),
    })
}

/// Chooses the vmlinux cache directory from `--kernel-cache`.
fn set_kernel_cache(arg: &str) -> Result<(), CliError> {
    crate::boot::cache::set_dir(match arg {
        "off" => None,
        "auto" => crate::boot::cache::default_dir(),
        "" => {
            return Err(CliError::bad_input(
                "--kernel-cache: give auto, off or a directory",
            ))
        }
        dir => Some(PathBuf::from(dir)),
    });
    Ok(())
}

/// The guest profiler asked for with `--profile-guest`, checked and its file created.
fn profiler(args: &Args) -> Result<Option<crate::profile::Profiler>, CliError> {
    let Some(out) = &args.profile_guest else {
        return Ok(None);
    };
    let cfg = crate::profile::ProfileConfig {
        out: out.clone(),
        map: args.profile_map.clone(),
        hz: args.profile_hz,
    };
    crate::profile::Profiler::prepare(&cfg, args.kernel.as_deref())
        .map(Some)
        .map_err(CliError::bad_input)
}

/// Runs `segvmm run`.
pub fn run(args: Args) -> CliResult {
    crate::seccomp::set_level(args.seccomp);
    let started = Instant::now();
    set_kernel_cache(&args.kernel_cache)?;
    let profiler = profiler(&args)?;
    let payload = match &args.kernel {
        Some(k) => Payload::Linux {
            kernel: k.clone(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
            bzimage: args.bzimage,
        },
        None => {
            if args.initrd.is_some() {
                return Err(CliError::bad_input("--initrd needs --kernel"));
            }
            let Some(mode) = args.guest.test_mode() else {
                return run_probe(&args);
            };
            Payload::TestGuest { mode: mode.into() }
        }
    };
    let cfg = VmConfig {
        memory: MemoryConfig {
            size: args.memory,
            backing: args.backing,
            grow_pool: args.grow_pool,
            prefault: args
                .prefault
                .unwrap_or(Prefault::from(args.kernel.is_none())),
        },
        vcpus: args.vcpus,
        mmu: args.mmu,
        timeout: Some(args.timeout),
        echo_console: !args.quiet,
        stdin: args.kernel.is_some(),
        payload,
        mmio: None,
        started: Some(started),
        api_socket: args.api_socket.clone(),
        track_dirty: args.dirty(),
        disks: args.disks.clone(),
        nets: args.nets.clone(),
        vsock: args.vsock.clone(),
    };
    let report_file = args
        .report
        .as_ref()
        .map(|p| open_report(p).map(|f| (p, f)))
        .transpose()?;
    let report = builder(cfg, &args, profiler)
        .build()
        .and_then(Vm::run)
        .map_err(CliError::bad_input)?;
    let code = finish(&report)?;
    if let Some((p, f)) = report_file {
        write_report(&report, p, f)?;
    }
    Ok(code)
}

/// The builder for `cfg` with the options of `args`.
fn builder(cfg: VmConfig, args: &Args, profiler: Option<crate::profile::Profiler>) -> VmBuilder {
    let mut builder = VmBuilder::new(cfg)
        .confine_main_thread()
        .ioeventfd(args.ioeventfd == OnOff::On);
    if let Some(api) = api_config(args) {
        builder = builder.api(api);
    }
    if let Some(p) = profiler {
        builder = builder.profile(p);
    }
    if let Some(b) = &args.balloon {
        builder = builder.balloon(b.clone());
    }
    if let (Some(dir), Some(uid), Some(gid)) = (&args.jail, args.uid, args.gid) {
        builder = builder.jail(crate::jail::JailConfig {
            dir: dir.clone(),
            uid,
            gid,
        });
    }
    builder
}

/// Boots the measurement guest on one workload and prints its result (stdout), then the
/// memory report and KVM counters (stderr).
fn run_probe(args: &Args) -> CliResult {
    let refused = |what: &str| {
        CliError::bad_input(format!(
            "{what} is not served for the measurement guest; use --guest test or --kernel"
        ))
    };
    if args.jail.is_some() {
        return Err(CliError::bad_input(
            "--jail is not served for the measurement guest (its native twin and report need the host); use --guest test or --kernel",
        ));
    }
    if !args.disks.is_empty() {
        return Err(refused("--disk"));
    }
    if args.balloon.is_some() {
        return Err(refused("--balloon"));
    }
    crate::host::require_mode(args.mmu).map_err(CliError::bad_input)?;
    let spec = guest::GuestSpec {
        work: WorkloadSpec {
            workload: args.workload,
            footprint: args.footprint,
            seed: args.seed,
            count: args.count,
        },
        guest_pages: args.guest_pages,
    };
    let opts = guest::GuestOptions {
        backing: args.backing,
        grow_pool: args.grow_pool,
        timeout: args.timeout,
        ptsnap: None,
        track_dirty: args.dirty(),
    };
    let prefault = match args.prefault {
        Some(Prefault::Off) => return Err(CliError::bad_input("--prefault off: the measurement guest is timed and must not take host faults; use on or threads=N")),
        p => p.unwrap_or(Prefault::On),
    };
    let run =
        guest::run_with_api(spec, &opts, prefault, api_config(args)).map_err(|e| match e {
            guest::Error::BadSpec(_) | guest::Error::Unavailable(_) => CliError::bad_input(e),
            e => CliError::failed(e),
        })?;
    match &run.measurement {
        Ok(m) => println!("{m}"),
        Err(e) => eprintln!("segvmm: measurement guest failed: {e}"),
    }
    if args.native {
        let n = probe::native::run(
            &spec.work,
            args.backing,
            args.grow_pool,
            run.report.host.tsc_khz,
        )
        .map_err(CliError::failed)?;
        println!("{n}");
        if let Ok(m) = &run.measurement {
            let same = if m.checksum == n.checksum {
                "same checksum"
            } else {
                "CHECKSUMS DIFFER"
            };
            println!("guest/native: {:.2}x ({same})", m.ns_per_op / n.ns_per_op);
        }
    }
    let code = finish(&run.report)?;
    if let Some(p) = &args.report {
        let json = serde_json::json!({ "measurement": run.measurement.as_ref().ok(), "error": run.measurement.as_ref().err().map(ToString::to_string), "run": run.report });
        let s = serde_json::to_string_pretty(&json).map_err(CliError::failed)?;
        std::fs::write(p, s)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", p.display())))?;
    }
    Ok(if run.measurement.is_err() && code == 0 {
        3
    } else {
        code
    })
}
