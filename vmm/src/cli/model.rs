//! `segvmm model`.

use super::{CliError, CliResult};

/// Options of `segvmm model`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `segvmm model`.
pub fn run(_args: Args) -> CliResult {
    Err(CliError::failed("segvmm model: not implemented yet"))
}
