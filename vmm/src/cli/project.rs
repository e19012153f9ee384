//! `segvmm project`.

use super::{CliError, CliResult};

/// Options of `segvmm project`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `segvmm project`.
pub fn run(_args: Args) -> CliResult {
    Err(CliError::failed("segvmm project: not implemented yet"))
}
