//! `segvmm place`: trace-driven simulation of one-segment VM placement.
//!
//! A thin shell over `segment_mmu::placement`: it loads the workload, sizes the cluster,
//! runs every requested policy combination (plus the paging baseline for rejections), and
//! writes the table, JSON and SVG. Bad input exits with 2 and names the file and line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use segment_mmu::placement::{
    azure_flavors, batch, plot, results, size, synthetic, vmtable, ClusterSpec, Config, Fit,
    Report, Workload,
};

use super::{CliError, CliResult};

/// On, off, or both (run each).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
    /// One run with and one without.
    Both,
}

impl Switch {
    fn values(self) -> &'static [bool] {
        match self {
            Switch::On => &[true],
            Switch::Off => &[false],
            Switch::Both => &[false, true],
        }
    }
}

/// Input format of `--trace`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Compact Azure flavors when `--lifetimes` is given, `vmtable.csv` otherwise.
    Auto,
    /// Compact Azure 2017 flavor/lifetime-bin files (needs `--lifetimes`).
    Compact,
    /// Azure public `vmtable.csv` (11 columns).
    Vmtable,
}

/// Options of `segvmm place`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Arrivals: compact Azure trace (`v1.dev.txt`, with --lifetimes) or an Azure `vmtable.csv`.
    #[arg(
        long,
        required_unless_present = "synthetic",
        conflicts_with = "synthetic"
    )]
    pub trace: Option<PathBuf>,
    /// Lifetime bins matching --trace (`v1.dev.c2100000.txt`).
    #[arg(long, requires = "trace")]
    pub lifetimes: Option<PathBuf>,
    /// Flavor map (default: `flav_map.txt` beside --trace).
    #[arg(long, requires = "lifetimes")]
    pub flavors: Option<PathBuf>,
    /// Lifetime interval map (default: `v1.interval_map.txt` beside --trace).
    #[arg(long, requires = "lifetimes")]
    pub intervals: Option<PathBuf>,
    /// Format of --trace.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Synthetic workload: `vms=N,rate=PER_S,sizes=2G:60/4G:40,lifetime=exp:MEAN,end=S`
    /// (lifetimes: exp:MEAN, fixed:S, uniform:LO:HI, lognormal:MU:SIGMA, pareto:SCALE:SHAPE).
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Number of hosts, or `auto` to size the cluster from the workload's peak.
    #[arg(long, default_value = "auto")]
    pub hosts: String,
    /// With `--hosts auto`: peak live VM memory over usable cluster memory.
    #[arg(long, default_value_t = 0.9)]
    pub peak_utilization: f64,
    /// Physical memory per host.
    #[arg(long, default_value = "256G")]
    pub host_memory: String,
    /// Memory kept by the host kernel at the bottom of each host.
    #[arg(long, default_value = "1G")]
    pub reserved: String,
    /// Segment alignment and granularity: 2M or 1G.
    #[arg(long, default_value = "2M")]
    pub align: String,
    /// Host and extent policy: first-fit, best-fit, worst-fit, or `all` for the three.
    #[arg(long, default_value = "all")]
    pub policy: String,
    /// Extent policy inside a host, when it should differ from --policy.
    #[arg(long)]
    pub extent_policy: Option<String>,
    /// Most segments one VM may be split into when one segment does not fit.
    #[arg(long, default_value_t = 4)]
    pub max_segments: usize,
    /// Compaction of host memory when a VM does not fit in one segment.
    #[arg(long, value_enum, default_value = "off")]
    pub compaction: Switch,
    /// Most bytes one compaction may move.
    #[arg(long, default_value = "64G")]
    pub compaction_budget: String,
    /// Self-ballooning: consolidate split VMs into one segment when space frees up.
    #[arg(long, value_enum, default_value = "off")]
    pub balloon: Switch,
    /// Hard-faulted 4 KiB pages per host, at random places.
    #[arg(long, default_value_t = 0)]
    pub bad_pages: usize,
    /// Faulted pages one VM's escape filter can absorb.
    #[arg(long, default_value_t = 0)]
    pub escape_filter: u32,
    /// Fragmentation samples over the run.
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Seed for lifetimes within bins, synthetic workloads and faulted pages.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write JSON results here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn bad(e: impl std::fmt::Display) -> CliError {
    CliError::bad_input(e)
}

fn load(a: &Args) -> Result<Workload, CliError> {
    if let Some(spec) = &a.synthetic {
        let s: synthetic::Spec = spec.parse().map_err(bad)?;
        return Ok(synthetic::generate(&s, a.seed));
    }
    let trace = a
        .trace
        .as_deref()
        .ok_or_else(|| bad("give --trace or --synthetic"))?;
    match (a.format, &a.lifetimes) {
        (Format::Vmtable, Some(_)) => Err(bad("--lifetimes only applies to the compact format")),
        (Format::Compact, None) => Err(bad("the compact format needs --lifetimes")),
        (Format::Auto | Format::Compact, Some(l)) => azure_flavors::load(
            trace,
            l,
            a.flavors.as_deref(),
            a.intervals.as_deref(),
            a.seed,
        )
        .map_err(bad),
        (Format::Auto | Format::Vmtable, None) => vmtable::load(trace).map_err(bad),
    }
}

fn parse_size(what: &str, v: &str) -> Result<u64, CliError> {
    size::parse_size(v).map_err(|e| bad(format!("--{what}: {e}")))
}

/// Runs `segvmm place`.
pub fn run(a: Args) -> CliResult {
    let host_memory = parse_size("host-memory", &a.host_memory)?;
    let reserved = parse_size("reserved", &a.reserved)?;
    let align = parse_size("align", &a.align)?;
    let compaction_budget = parse_size("compaction-budget", &a.compaction_budget)?;
    if !align.is_power_of_two() || align < 4096 {
        return Err(bad(
            "--align must be a power of two of at least 4K (2M or 1G)",
        ));
    }
    if a.max_segments == 0 {
        return Err(bad("--max-segments must be at least 1"));
    }
    let fits: Vec<Fit> = if a.policy == "all" {
        Fit::ALL.to_vec()
    } else {
        vec![a.policy.parse().map_err(bad)?]
    };
    let extent: Option<Fit> = a
        .extent_policy
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(bad)?;

    let loaded = Instant::now();
    let w = load(&a)?;
    let load_s = loaded.elapsed().as_secs_f64();
    let mut spec = ClusterSpec {
        hosts: 1,
        host_memory,
        reserved,
        align,
        bad_pages_per_host: a.bad_pages,
        seed: a.seed,
    };
    let auto = a.hosts == "auto";
    spec.hosts = if auto {
        spec.auto_hosts(&w, a.peak_utilization).map_err(bad)?
    } else {
        a.hosts
            .parse()
            .map_err(|_| bad(format!("--hosts {:?}: expected a count or `auto`", a.hosts)))?
    };
    if spec.hosts == 0 {
        return Err(bad("--hosts must be at least 1"));
    }
    let peak = w.peak_live_memory(align);
    println!(
        "workload: {} ({} VMs, {:.1} days, peak live memory {}) parsed in {load_s:.2} s",
        w.source,
        w.vms.len(),
        (w.end - w.start) as f64 / 86400.0,
        size::format_size(peak)
    );
    println!(
        "cluster: {} hosts x {} ({} reserved, {} alignment){}; peak demand = {:.3} of usable memory",
        spec.hosts,
        size::format_size(host_memory),
        size::format_size(reserved),
        size::format_size(align),
        if auto { " sized by --hosts auto" } else { "" },
        peak as f64 / (spec.hosts as f64 * spec.usable_per_host() as f64)
    );

    let base = Config {
        max_segments: a.max_segments,
        compaction_budget,
        escape_filter: a.escape_filter,
        samples: a.samples,
        ..Config::default()
    };
    let runs = batch::configs(
        &fits,
        extent,
        a.compaction.values(),
        a.balloon.values(),
        &base,
    );
    let reports = run_batch(&w, &spec, runs)?;

    print!("{}", results::table(&reports));
    let seg: Vec<Report> = reports
        .iter()
        .filter(|r| r.policy != "paging")
        .cloned()
        .collect();
    if let Some(p) = &a.json {
        write_json(p, &w, &spec, auto, &seg, &reports)?;
    }
    if let Some(p) = &a.plot {
        plot::write_svg(p, &seg).map_err(CliError::failed)?;
    }
    Ok(0)
}

/// Runs the batch with a progress bar on stderr for runs longer than a second.
fn run_batch(w: &Workload, spec: &ClusterSpec, runs: Vec<Config>) -> Result<Vec<Report>, CliError> {
    let events_per_run = w.vms.len() as u64 * 2;
    let bar = ProgressBar::with_draw_target(
        Some(events_per_run * runs.len() as u64),
        ProgressDrawTarget::hidden(),
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut shown = false;
    let nruns = runs.len();
    let reports = batch::run_all(w, spec, runs, &mut |i, done| {
        bar.set_message(format!("run {} of {nruns}", i + 1));
        // Only runs longer than a second get a bar, and only on a terminal.
        if !shown && started.elapsed().as_secs_f64() > 1.0 {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            shown = true;
        }
        bar.set_position(i as u64 * events_per_run + done);
    })
    .map_err(|e| match e {
        batch::Error::Setup(_) => bad(e),
        e => CliError::failed(e),
    })?;
    bar.finish_and_clear();

    Ok(reports)
}

/// Writes the batch's JSON report (`segment_mmu::placement::batch::json`) to `p`.
fn write_json(
    p: &Path,
    w: &Workload,
    spec: &ClusterSpec,
    auto: bool,
    seg: &[Report],
    all: &[Report],
) -> Result<(), CliError> {
    let v = batch::json(w, spec, auto, seg, all).map_err(CliError::failed)?;
    let text = serde_json::to_string_pretty(&v).map_err(CliError::failed)?;
    std::fs::write(p, text).map_err(|e| CliError::failed(format!("{}: {e}", p.display())))
}
