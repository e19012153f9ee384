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
use crate::probe::bench::matrix::{self, Event};
use crate::probe::bench::{self, dirty_overhead, output, MatrixSpec};
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
    let spec = spec(&args)?;
    let host = crate::host::probe().map_err(CliError::failed)?;
    matrix::create_dirs(&args.out, args.track_dirty.is_some(), args.ptsnap)
        .map_err(CliError::failed)?;
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
    let rows = matrix::run(
        &cells,
        &spec,
        &host,
        &args.out,
        args.ptsnap,
        &mut |e| match e {
            Event::Start(m) => bar.set_message(m),
            Event::Note(m) => bar.println(m),
            Event::Done(_) => bar.inc(1),
        },
    );
    bar.finish_and_clear();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let load_average = [load_before, output::load_average()];
    if let [Some(a), Some(b)] = &load_average {
        eprintln!("segvmm: host load average (1/5/15 min) {a} before, {b} after the matrix");
    }
    let reports = matrix::write_reports(&args.out, &host, &rows, command, load_average)
        .map_err(CliError::failed)?;
    let mut written = reports.written;
    print!("{}", reports.markdown);
    if let Some(md) = &reports.dirty_markdown {
        print!("{md}");
    }
    if let (Some(d), true) = (&spec.track_dirty, args.dirty_overhead) {
        let rows = matrix::overhead_pass(&spec, d, &args.dirty_intervals, &args.out)
            .map_err(CliError::failed)?;
        print!("{}", dirty_overhead::markdown(&rows));
        written.extend(["dirty-overhead.md", "dirty-overhead.json"]);
    }
    let (failed, unavailable) = matrix::failed_and_unavailable(&rows);
    eprintln!(
        "segvmm: {} runs: {} measured, {failed} failed, {unavailable} unavailable; wrote {} in {}",
        rows.len(),
        rows.len() - failed - unavailable,
        written.join(", "),
        args.out.display()
    );
    Ok(if failed > 0 { 1 } else { 0 })
}

/// The matrix the arguments describe, checked.
fn spec(args: &Args) -> Result<MatrixSpec, CliError> {
    if args.repeat == 0 {
        return Err(CliError::bad_input("--repeat must be at least 1"));
    }
    let linux = match args.linux.as_deref() {
        None => None,
        Some([k, i]) => Some((k.clone(), i.clone())),
        Some(_) => return Err(CliError::bad_input("--linux takes KERNEL,INITRD")),
    };
    if args.track_dirty.is_none() && args.dirty_overhead {
        return Err(CliError::bad_input("--dirty-overhead needs --track-dirty"));
    }
    Ok(MatrixSpec {
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
    })
}
