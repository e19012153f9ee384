//! `segvmm bench`.

use super::{CliError, CliResult};

/// Options of `segvmm bench`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `segvmm bench`.
pub fn run(_args: Args) -> CliResult {
    Err(CliError::failed("segvmm bench: not implemented yet"))
}
