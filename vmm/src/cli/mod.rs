//! One module per subcommand. Each defines `Args` (clap) and `run(Args) -> CliResult`.
//! Keeping them apart keeps `main.rs` a table and lets each command grow on its own.

pub mod bench;
pub mod host;
pub mod layout;
pub mod model;
pub mod named;
pub mod place;
pub mod project;
pub mod ptsnap;
pub mod restore;
pub mod run;
pub mod snapshot;
pub mod tier;

/// A failed command: one line of text and the process exit code.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code (2 for bad input or usage, 1 for a failure while running).
    pub exit_code: i32,
    /// One line naming the problem.
    pub message: String,
}

impl CliError {
    /// Bad input: a malformed spec, file or option. Exit code 2.
    pub fn bad_input(e: impl std::fmt::Display) -> Self {
        Self {
            exit_code: 2,
            message: e.to_string(),
        }
    }
    /// A failure while running (the guest died, the host refused). Exit code 1.
    pub fn failed(e: impl std::fmt::Display) -> Self {
        Self {
            exit_code: 1,
            message: e.to_string(),
        }
    }
}

/// What a command returns: the exit code on success (usually 0).
pub type CliResult = Result<i32, CliError>;

/// Parses a size in the one syntax of [`segment_mmu::units`] (`256M`, `2G`, `0.75G`, `4096`,
/// `0x1000`), for clap's `value_parser`.
pub fn parse_size(s: &str) -> Result<u64, segment_mmu::units::Error> {
    segment_mmu::units::parse_size(s)
}
