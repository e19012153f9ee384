//! `segvmm project`: joins measured runs (a `segvmm bench` results directory) with model
//! replays of the same streams over the same page tables, calibrates the linear cost model
//! of `segment_mmu::project` on them, checks it on the runs it can predict, and projects
//! the runtime of every MMU design. The work is `segvmm::probe::bench::project` (see its
//! docs for where page tables come from); the report, table and plot are
//! `segment_mmu::project::{report, plot}`. Bad results or ptsnap files exit with 2 and one
//! line naming the problem.

use std::path::PathBuf;

use segment_mmu::designs::DesignKind;
use segment_mmu::project::report::{table, MODEL};
use segment_mmu::tlb::TlbConfig;

use super::{CliError, CliResult};
pub use crate::probe::bench::project::ptsnap_file_name;
use crate::probe::bench::project::{project, Options};

/// Options of `segvmm project`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = MODEL)]
pub struct Args {
    /// A `segvmm bench --out` directory (holds results.json).
    #[arg(long)]
    pub results: PathBuf,
    /// Directory of the runs' `.ptsnap` ptsnaps (default: RESULTS/ptsnaps, RESULTS).
    #[arg(long)]
    pub ptsnaps: Option<PathBuf>,
    /// Designs to project: `all` or a comma list (native, nested, shadow, compromis,
    /// dual-direct, vmm-direct, guest-direct, enlarged-tdp, dynamic-switch). Nested is
    /// also projected with 4 KiB and 2 MiB host pages (nested-4k-host, nested-2m-host).
    #[arg(long, default_value = "all")]
    pub designs: String,
    /// TLB preset of the model: intel, amd or none.
    #[arg(long, default_value = "intel")]
    pub tlb: String,
    /// Host backing whose runs calibrate the model for the held-out check; the other
    /// backings' runs are predicted from it (runs of this backing are checked
    /// leave-one-out).
    #[arg(long, default_value = "thp")]
    pub calibrate_on: String,
    /// Accesses replayed per run (a prefix of the run's own stream).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_accesses: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the SVG plot (measured and projected bars side by side) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Runs `segvmm project`.
pub fn run(a: Args) -> CliResult {
    let designs = DesignKind::parse_list(&a.designs).map_err(CliError::bad_input)?;
    let tlb = TlbConfig::preset(&a.tlb).map_err(CliError::bad_input)?;
    if a.max_accesses == 0 {
        return Err(CliError::bad_input("--max-accesses must be at least 1"));
    }
    if let Some(d) = &a.ptsnaps {
        if !d.is_dir() {
            return Err(CliError::bad_input(format!(
                "--ptsnaps {}: not a directory",
                d.display()
            )));
        }
    }
    let p = project(&Options {
        results: a.results,
        ptsnaps: a.ptsnaps,
        designs,
        tlb,
        tlb_name: a.tlb,
        calibrate_on: a.calibrate_on,
        max_accesses: a.max_accesses,
        // Progress only on a terminal: scripts and tests get errors as their one line.
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    })
    .map_err(CliError::bad_input)?;
    print!("{}", table(&p.out, &p.columns));
    let writing = |path: &PathBuf, e: &dyn std::fmt::Display| {
        CliError::failed(format!("writing {}: {e}", path.display()))
    };
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&p.out).map_err(CliError::failed)?;
        std::fs::write(path, text).map_err(|e| writing(path, &e))?;
    }
    if let Some(path) = &a.plot {
        segment_mmu::project::plot::write_svg(path, &p.out, &p.columns)
            .map_err(|e| writing(path, &e))?;
    }
    Ok(0)
}
