//! `segvmm bench`: runs the matrix of workloads × backings × environments × footprints ×
//! repeats (see `probe::bench`), with a progress bar, and writes results.json,
//! results.csv, summary.md and the SVG plots into --out.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use workloads::kernels::Workload;

use super::run::parse_workload;
use super::{parse_size, CliError, CliResult};
use crate::memory::Backing;
use crate::probe::bench::{self, output, plot, MatrixSpec};
use crate::probe::layout::PageSize;
use crate::probe::DEFAULT_SEED;

/// Options of `segvmm bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Workloads: chase, gups, stream, touch, ptchurn.
    #[arg(long, value_delimiter = ',', value_parser = parse_workload, default_value = "chase,gups,stream,touch,ptchurn")]
    pub workloads: Vec<Workload>,
    /// Host backings of guest RAM (and of the native buffer).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "4k,thp,2m")]
    pub backing: Vec<Backing>,
    /// Guest page sizes of the measurement guest's buffer (1g is refused where the host
    /// does not offer pdpe1gb, and recorded as unavailable).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "4k,2m")]
    pub guest_pages: Vec<PageSize>,
    /// Footprints, e.g. 64M,1G.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "256M")]
    pub footprint: Vec<u64>,
    /// Repeats of every combination (median and spread are reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Also run the host-native twin of every workload.
    #[arg(long)]
    pub native: bool,
    /// Also run the workloads in a Linux guest: KERNEL,INITRD (see docs/measurement.md).
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub linux: Option<Vec<PathBuf>>,
    /// Seed of the workloads' random streams.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Operations per run (default: per workload).
    #[arg(long)]
    pub count: Option<u64>,
    /// Do not grow the hugetlb pools (2m/1g backings then need a pool set up beforehand).
    #[arg(long)]
    pub no_grow_pool: bool,
    /// Per-run timeout, seconds.
    #[arg(long, default_value = "600", value_parser = segment_mmu::duration::parse)]
    pub timeout: Duration,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Page-table ptsnaps (issue #6): the first repeat of every guest run asks for one
    /// once its data is touched, written to OUT/ptsnaps/ and named in results.json, for
    /// `segvmm project`.
    #[arg(long)]
    pub ptsnap: bool,
    /// Dirty tracking (issue #8): track every measurement-guest run of the matrix every
    /// INTERVAL (e.g. 100ms); each writes OUT/hotness/<run>.hot and a heat map (.svg),
    /// named in results.json (`dirty`) and summary.md. Their ns/op include the tracking.
    #[arg(long, value_parser = crate::dirty::parse_interval)]
    pub track_dirty: Option<Duration>,
    /// With --track-dirty: dirty ring or bitmap (auto: the ring where the host has it).
    #[arg(long, value_enum, default_value_t = crate::dirty::DirtyMode::Auto)]
    pub dirty_mode: crate::dirty::DirtyMode,
    /// With the dirty ring: bytes per vCPU ring (default: the host's largest, ≤ 1 MiB).
    #[arg(long)]
    pub dirty_ring_bytes: Option<u32>,
    /// With --track-dirty: after the matrix, measure what tracking costs: each workload on
    /// the first backing and guest page size with tracking off, every INTERVAL and every
    /// --dirty-intervals, with the ring and the bitmap side by side where the host has the
    /// ring; writes OUT/dirty-overhead.{md,json} and OUT/hotness/<footprint>/.
    #[arg(long)]
    pub dirty_overhead: bool,
    /// With --dirty-overhead: more intervals for the comparison.
    #[arg(long, value_delimiter = ',', value_parser = crate::dirty::parse_interval, default_value = "10ms,1s")]
    pub dirty_intervals: Vec<Duration>,
}

/// Runs `segvmm bench`.
pub fn run(args: Args) -> CliResult {
    if args.repeat == 0 {
        return Err(CliError::bad_input("--repeat must be at least 1"));
    }
    let linux = match args.linux.as_deref() {
        None => None,
        Some([k, i]) => Some((k.clone(), i.clone())),
        Some(_) => return Err(CliError::bad_input("--linux takes KERNEL,INITRD")),
    };
    let spec = MatrixSpec {
        workloads: args.workloads.clone(),
        backings: args.backing.clone(),
        guest_pages: args.guest_pages.clone(),
        footprints: args.footprint.clone(),
        repeat: args.repeat,
        native: args.native,
        linux,
        seed: args.seed,
        count: args.count,
        grow_pool: !args.no_grow_pool,
        timeout: args.timeout,
        track_dirty: args.track_dirty.map(|interval| bench::MatrixDirty {
            interval,
            mode: args.dirty_mode,
            ring_bytes: args.dirty_ring_bytes,
            out: args.out.clone(),
        }),
    };
    if args.track_dirty.is_none() && args.dirty_overhead {
        return Err(CliError::bad_input("--dirty-overhead needs --track-dirty"));
    }
    let host = crate::host::probe().map_err(CliError::failed)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::failed(format!("creating {}: {e}", args.out.display())))?;
    if args.track_dirty.is_some() {
        let d = args.out.join("hotness");
        std::fs::create_dir_all(&d)
            .map_err(|e| CliError::failed(format!("creating {}: {e}", d.display())))?;
    }
    if args.ptsnap {
        let d = args.out.join("ptsnaps");
        std::fs::create_dir_all(&d)
            .map_err(|e| CliError::failed(format!("creating {}: {e}", d.display())))?;
    }
    let cells = bench::expand(&spec);
    if cells.is_empty() {
        return Err(CliError::bad_input("the matrix is empty"));
    }
    let load_before = output::load_average();
    let bar = ProgressBar::new(cells.len() as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta}] {msg}")
    {
        bar.set_style(style);
    }
    let mut rows = Vec::with_capacity(cells.len());
    for cell in &cells {
        bar.set_message(format!(
            "{} {} backing {} {} MiB #{}",
            cell.workload.name(),
            cell.environment,
            cell.backing,
            cell.footprint >> 20,
            cell.repeat + 1
        ));
        let snap_name = match cell.environment {
            bench::Environment::Guest(_) if args.ptsnap && cell.repeat == 0 => Some(format!(
                "ptsnaps/{}",
                super::project::ptsnap_file_name(
                    cell.workload.name(),
                    &cell.environment.to_string(),
                    &cell.backing.to_string(),
                    cell.footprint
                )
            )),
            _ => None,
        };
        let snap_file = snap_name.as_ref().map(|n| args.out.join(n));
        let row = bench::run_cell_with_ptsnap(
            cell,
            &spec,
            &host,
            snap_file.as_deref().zip(snap_name.as_deref()),
        );
        if let (Some(ms), Some(name)) = (row.ptsnap_ms, &row.ptsnap) {
            bar.println(format!(
                "segvmm: ptsnap {name}: guest paused {:.1} ms, file written after {ms:.1} ms",
                row.ptsnap_paused_ms.unwrap_or(f64::NAN)
            ));
        }
        if let Some(why) = &row.reason {
            bar.println(format!(
                "segvmm: {} {} backing {}: {}: {why}",
                row.workload,
                row.environment,
                row.backing,
                row.status.as_str()
            ));
        }
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let summary = output::summarize(&rows);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let load_average = [load_before, output::load_average()];
    if let [Some(a), Some(b)] = &load_average {
        eprintln!("segvmm: host load average (1/5/15 min) {a} before, {b} after the matrix");
    }
    let results = output::Results {
        host: &host,
        command,
        load_average,
        rows: &rows,
        summary: &summary,
    };
    let out = |f: &str| args.out.join(f);
    output::write_json(&out("results.json"), &results).map_err(CliError::failed)?;
    output::write_csv(&out("results.csv"), &rows, &host).map_err(CliError::failed)?;
    output::write_markdown(&out("summary.md"), &summary, &host).map_err(CliError::failed)?;
    let dirty_md = output::dirty_markdown(&rows);
    if let Some(md) = &dirty_md {
        use std::io::Write as _;
        let p = out("summary.md");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(md.as_bytes()))
            .map_err(|e| CliError::failed(format!("writing {}: {e}", p.display())))?;
    }
    plot::write_ns_per_op(&out("ns_per_op.svg"), &summary).map_err(CliError::failed)?;
    let mut written = vec!["results.json", "results.csv", "summary.md", "ns_per_op.svg"];
    match plot::write_slowdown(&out("slowdown.svg"), &summary) {
        Ok(()) => written.push("slowdown.svg"),
        Err(plot::Error::Empty) => {}
        Err(e) => return Err(CliError::failed(e)),
    }
    print!("{}", output::markdown(&summary, &host));
    if let Some(md) = &dirty_md {
        print!("{md}");
        written.push("hotness/");
    }
    if let (Some(t), true) = (args.track_dirty, args.dirty_overhead) {
        let mut intervals: Vec<Duration> = std::iter::once(t)
            .chain(args.dirty_intervals.iter().copied())
            .collect();
        intervals.sort();
        intervals.dedup();
        let pass = crate::dirty::overhead::PassSpec {
            workloads: args.workloads.clone(),
            footprints: args.footprint.clone(),
            backing: args.backing.first().copied().unwrap_or(Backing::Thp),
            guest_pages: args
                .guest_pages
                .first()
                .copied()
                .unwrap_or(PageSize::Size4K),
            seed: args.seed,
            count: args.count,
            grow_pool: !args.no_grow_pool,
            timeout: args.timeout,
            intervals,
            modes: crate::dirty::overhead::modes_for(args.dirty_mode),
            ring_bytes: args.dirty_ring_bytes,
            repeats: args.repeat as usize,
            out: args.out.clone(),
        };
        let rows = crate::dirty::overhead::run_pass(&pass).map_err(CliError::failed)?;
        print!("{}", crate::dirty::overhead::markdown(&rows));
        written.extend(["dirty-overhead.md", "dirty-overhead.json"]);
    }
    let failed = rows
        .iter()
        .filter(|r| r.status == output::Status::Failed)
        .count();
    let unavailable = rows
        .iter()
        .filter(|r| r.status == output::Status::Unavailable)
        .count();
    eprintln!(
        "segvmm: {} runs: {} measured, {failed} failed, {unavailable} unavailable; wrote {} in {}",
        rows.len(),
        rows.len() - failed - unavailable,
        written.join(", "),
        args.out.display()
    );
    Ok(if failed > 0 { 1 } else { 0 })
}
