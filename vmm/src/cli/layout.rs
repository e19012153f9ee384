//! `segvmm layout` (the work is `segment_mmu::layout`): a guest's memory layout from a page-table capture, for VMM developers
//! testing memory layouts: RAM ranges and their host mapping, page sizes, host-physically
//! contiguous runs, and how much one segment would cover on each side of translation
//! (guest-physical → host-physical for a Compromis/VMM direct segment, guest-virtual →
//! guest-physical for a guest direct segment).

use std::path::PathBuf;

use segment_mmu::layout::{layout, text};
use segment_mmu::ptsnap::Ptsnap;

use super::{CliError, CliResult};

/// Options of `segvmm layout`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A `.ptsnap` file (from `segvmm ptsnap`, `segvmm bench --ptsnap`, or the models).
    #[arg(long)]
    pub ptsnap: PathBuf,
    /// Also write the layout as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// How many of the largest mapped ranges to list per address space.
    #[arg(long, default_value_t = 8)]
    pub top: usize,
}

/// Runs `segvmm layout`.
pub fn run(args: Args) -> CliResult {
    let name = args.ptsnap.display().to_string();
    let bad = |e: &dyn std::fmt::Display| CliError::bad_input(format!("{name}: {e}"));
    let bytes = std::fs::read(&args.ptsnap).map_err(|e| bad(&e))?;
    let snap = Ptsnap::from_bytes(&bytes).map_err(|e| bad(&e))?;
    let (l, tops) = layout(&snap, args.top).map_err(|e| bad(&e))?;
    print!("{}", text(&name, &l, &tops));
    if let Some(p) = &args.json {
        let s = serde_json::to_string_pretty(&l).map_err(CliError::failed)?;
        std::fs::write(p, s)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", p.display())))?;
    }
    Ok(0)
}
