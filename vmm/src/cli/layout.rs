//! `segvmm layout`.

use super::{CliError, CliResult};

/// Options of `segvmm layout`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `segvmm layout`.
pub fn run(_args: Args) -> CliResult {
    Err(CliError::failed("segvmm layout: not implemented yet"))
}
