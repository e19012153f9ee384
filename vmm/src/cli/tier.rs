//! `segvmm tier`.

use super::{CliError, CliResult};

/// Options of `segvmm tier`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `segvmm tier`.
pub fn run(_args: Args) -> CliResult {
    Err(CliError::failed("segvmm tier: not implemented yet"))
}
