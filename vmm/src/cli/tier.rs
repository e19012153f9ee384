//! `segvmm tier`: replay hotness files (from `segvmm run/bench --track-dirty`) through the
//! two-tier memory model of `segment_mmu::hotness::tier` and print the projected slowdown
//! of each placement policy at each grain. Several `--hotness` files share one fast pool.
//! Malformed files and bad options exit with 2 and name the problem.

use std::path::PathBuf;

use segment_mmu::hotness::tier::{self, FastCapacity, Params, Shares};
use segment_mmu::hotness::{plot, HotnessLog};

use super::{parse_size, CliError, CliResult};

/// How the fast pool is divided among guests.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareArg {
    /// In proportion to each guest's hot pages, every interval.
    Demand,
    /// Equal and fixed.
    Equal,
}

/// Options of `segvmm tier`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hotness file (repeat for several guests sharing one fast pool).
    #[arg(long, required = true)]
    pub hotness: Vec<PathBuf>,
    /// Fast tier: a percentage of the guests' combined written footprint (`25%`) or a size
    /// (`64M`).
    #[arg(long, default_value = "25%")]
    pub fast: String,
    /// Slow-tier latency over fast-tier latency.
    #[arg(long, default_value_t = 3.0)]
    pub latency_ratio: f64,
    /// Cost of migrating one 4 KiB page, in fast page-interval accesses.
    #[arg(long, default_value_t = 1.0)]
    pub migration_cost: f64,
    /// Temperature half-life in intervals (default: each file's).
    #[arg(long)]
    pub half_life: Option<f64>,
    /// A page is hot when its temperature is at least this (demand shares, hybrid splits).
    #[arg(long, default_value_t = 0.5)]
    pub hot_threshold: f64,
    /// Hybrid grain: a 2 MiB page stays whole when at least this fraction of it is hot.
    #[arg(long, default_value_t = 0.5)]
    pub merge_fraction: f64,
    /// Division of the fast pool among guests.
    #[arg(long, value_enum, default_value_t = ShareArg::Demand)]
    pub shares: ShareArg,
    /// Write the comparison as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a bar chart (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Parses `--fast`: `NN%` of the footprint, or a size.
pub fn parse_fast(s: &str) -> Result<FastCapacity, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("--fast '{s}': not a percentage"))?;
        if !(0.0..=100.0).contains(&v) {
            return Err(format!(
                "--fast '{s}': a percentage must be between 0 and 100"
            ));
        }
        return Ok(FastCapacity::Fraction(v / 100.0));
    }
    parse_size(t)
        .map(FastCapacity::Bytes)
        .map_err(|e| format!("--fast: {e} (or give a percentage, e.g. 25%)"))
}

/// Runs `segvmm tier`.
pub fn run(args: Args) -> CliResult {
    let fast = parse_fast(&args.fast).map_err(CliError::bad_input)?;
    let mut logs = Vec::new();
    for p in &args.hotness {
        let l = HotnessLog::read(p)
            .map_err(|e| CliError::bad_input(format!("{}: {e}", p.display())))?;
        logs.push((
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            l,
        ));
    }
    for (name, l) in &logs {
        let s = l.summary();
        println!(
            "{name}: {} intervals of {:.0} ms ({}); {} pages written ({:.1} MiB) in {} 2 MiB frames; per interval {:.1} MiB at 4 KiB vs {:.1} MiB at 2 MiB ({:.1}x)",
            s.intervals,
            s.interval_ms,
            s.method,
            s.distinct_pages_4k,
            s.distinct_pages_4k as f64 / 256.0,
            s.distinct_frames_2m,
            s.dirty_mib_4k / s.intervals.max(1) as f64,
            s.dirty_mib_2m / s.intervals.max(1) as f64,
            s.amplification_2m
        );
    }
    let params = Params {
        fast,
        latency_ratio: args.latency_ratio,
        migration_cost: args.migration_cost,
        half_life: args.half_life,
        hot_threshold: args.hot_threshold,
        merge_fraction: args.merge_fraction,
        shares: match args.shares {
            ShareArg::Demand => Shares::Demand,
            ShareArg::Equal => Shares::Equal,
        },
    };
    let guests: Vec<(String, &HotnessLog)> = logs.iter().map(|(n, l)| (n.clone(), l)).collect();
    let report = tier::simulate(&guests, &params).map_err(CliError::bad_input)?;
    print!("{}", report.table());
    if report.footprint_pages == 0 {
        println!("(no page was written in any interval: nothing to place)");
    }
    if let Some(p) = &args.json {
        let s = serde_json::to_string_pretty(&report).map_err(CliError::failed)?;
        std::fs::write(p, s)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", p.display())))?;
    }
    if let Some(p) = &args.plot {
        plot::write_tier(p, &report).map_err(CliError::failed)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_sizes() {
        assert_eq!(parse_fast("25%"), Ok(FastCapacity::Fraction(0.25)));
        assert_eq!(parse_fast("64M"), Ok(FastCapacity::Bytes(64 << 20)));
        assert!(parse_fast("150%").is_err());
        assert!(parse_fast("x%").is_err());
        assert!(parse_fast("lots").is_err());
    }
}
