//! A whole `segvmm bench` invocation behind the CLI: the output directories, the matrix
//! run cell by cell (progress reported to an observer, so the CLI can draw a bar), the
//! files written from its rows, and the optional dirty-tracking overhead pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::dirty_overhead::{self, OverheadRow, PassSpec};
use super::output::{self, Row, Status, Summary};
use super::{plot, Cell, Environment, MatrixSpec};
use crate::host::HostInfo;
use crate::memory::Backing;
use crate::probe::layout::PageSize;

/// Why a bench invocation stopped (a failed run is a row, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An output directory could not be created.
    #[error("creating {path}: {source}")]
    Create {
        /// Directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Writing results.
    #[error(transparent)]
    Output(#[from] output::Error),
    /// Drawing a plot.
    #[error(transparent)]
    Plot(#[from] segment_mmu::plot::Error),
    /// The overhead pass.
    #[error(transparent)]
    Overhead(#[from] dirty_overhead::Error),
}

/// What the matrix reports to its observer as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A cell starts (one line describing it).
    Start(String),
    /// Something worth a line of its own (a ptsnap taken, a run that failed).
    Note(String),
    /// A cell is done.
    Done(&'a Row),
}

/// Creates `out` and the subdirectories the runs write into.
pub fn create_dirs(out: &Path, hotness: bool, ptsnaps: bool) -> Result<(), Error> {
    let mk = |d: PathBuf| {
        std::fs::create_dir_all(&d).map_err(|source| Error::Create {
            path: d.display().to_string(),
            source,
        })
    };
    mk(out.to_path_buf())?;
    if hotness {
        mk(out.join("hotness"))?;
    }
    if ptsnaps {
        mk(out.join("ptsnaps"))?;
    }
    Ok(())
}

/// The ptsnap of `cell` relative to the output directory, when the matrix takes one
/// (first repeat of every measurement-guest run).
fn ptsnap_name(cell: &Cell) -> Option<String> {
    match cell.environment {
        Environment::Guest(_) if cell.repeat == 0 => Some(format!(
            "ptsnaps/{}",
            super::project::ptsnap_file_name(
                cell.workload.name(),
                &cell.environment.to_string(),
                &cell.backing.to_string(),
                cell.footprint
            )
        )),
        _ => None,
    }
}

/// Runs every cell in order, with ptsnaps into `out/ptsnaps/` when `ptsnaps` is set.
pub fn run(
    cells: &[Cell],
    spec: &MatrixSpec,
    host: &HostInfo,
    out: &Path,
    ptsnaps: bool,
    on: &mut dyn FnMut(Event),
) -> Vec<Row> {
    let mut rows = Vec::with_capacity(cells.len());
    for cell in cells {
        on(Event::Start(format!(
            "{} {} backing {} {} MiB #{}",
            cell.workload.name(),
            cell.environment,
            cell.backing,
            cell.footprint >> 20,
            cell.repeat + 1
        )));
        let snap_name = ptsnap_name(cell).filter(|_| ptsnaps);
        let snap_file = snap_name.as_ref().map(|n| out.join(n));
        let row = super::run_cell_with_ptsnap(
            cell,
            spec,
            host,
            snap_file.as_deref().zip(snap_name.as_deref()),
        );
        if let (Some(ms), Some(name)) = (row.ptsnap_ms, &row.ptsnap) {
            on(Event::Note(format!(
                "segvmm: ptsnap {name}: guest paused {:.1} ms, file written after {ms:.1} ms",
                row.ptsnap_paused_ms.unwrap_or(f64::NAN)
            )));
        }
        if let Some(why) = &row.reason {
            on(Event::Note(format!(
                "segvmm: {} {} backing {}: {}: {why}",
                row.workload,
                row.environment,
                row.backing,
                row.status.as_str()
            )));
        }
        on(Event::Done(&row));
        rows.push(row);
    }
    rows
}

/// What [`write_reports`] wrote and what the CLI prints.
#[derive(Debug)]
pub struct Reports {
    /// Per-cell medians and spreads.
    pub summary: Vec<Summary>,
    /// The summary table (stdout).
    pub markdown: String,
    /// The dirty-tracking table, when runs were tracked (stdout, and in summary.md).
    pub dirty_markdown: Option<String>,
    /// The files written, relative to the output directory.
    pub written: Vec<&'static str>,
}

/// Writes results.json, results.csv, summary.md and the plots into `out`.
pub fn write_reports(
    out: &Path,
    host: &HostInfo,
    rows: &[Row],
    command: String,
    load_average: [Option<String>; 2],
) -> Result<Reports, Error> {
    let summary = output::summarize(rows);
    let results = output::Results {
        host,
        command,
        load_average,
        rows,
        summary: &summary,
    };
    let file = |f: &str| out.join(f);
    output::write_json(&file("results.json"), &results)?;
    output::write_csv(&file("results.csv"), rows, host)?;
    output::write_markdown(&file("summary.md"), &summary, host)?;
    let dirty_markdown = output::dirty_markdown(rows);
    if let Some(md) = &dirty_markdown {
        output::append(&file("summary.md"), md)?;
    }
    plot::write_ns_per_op(&file("ns_per_op.svg"), &summary)?;
    let mut written = vec!["results.json", "results.csv", "summary.md", "ns_per_op.svg"];
    match plot::write_slowdown(&file("slowdown.svg"), &summary) {
        Ok(()) => written.push("slowdown.svg"),
        Err(segment_mmu::plot::Error::Empty(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if dirty_markdown.is_some() {
        written.push("hotness/");
    }
    Ok(Reports {
        markdown: output::markdown(&summary, host),
        summary,
        dirty_markdown,
        written,
    })
}

/// The dirty-tracking overhead pass after a matrix: its workloads and footprints on the
/// first backing and guest page size, tracking off and every interval (`interval` and
/// `more`), `repeat` times, into `out`.
pub fn overhead_pass(
    spec: &MatrixSpec,
    dirty: &super::MatrixDirty,
    more: &[Duration],
    out: &Path,
) -> Result<Vec<OverheadRow>, Error> {
    let mut intervals: Vec<Duration> = std::iter::once(dirty.interval)
        .chain(more.iter().copied())
        .collect();
    intervals.sort();
    intervals.dedup();
    let pass = PassSpec {
        workloads: spec.workloads.clone(),
        footprints: spec.footprints.clone(),
        backing: spec.backings.first().copied().unwrap_or(Backing::Thp),
        guest_pages: spec
            .guest_pages
            .first()
            .copied()
            .unwrap_or(PageSize::Size4K),
        seed: spec.seed,
        count: spec.count,
        grow_pool: spec.grow_pool,
        timeout: spec.timeout,
        intervals,
        modes: dirty_overhead::modes_for(dirty.mode),
        ring_bytes: dirty.ring_bytes,
        repeats: spec.repeat as usize,
        out: out.to_path_buf(),
    };
    Ok(dirty_overhead::run_pass(&pass)?)
}

/// Runs that failed and runs the host could not offer.
pub fn failed_and_unavailable(rows: &[Row]) -> (usize, usize) {
    let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
    (count(Status::Failed), count(Status::Unavailable))
}
