//! `segvmm`: command-line front end. The CLI only fills config structs and calls the
//! library; every error is mapped to one line on stderr and a non-zero exit code.

use clap::{Parser, Subcommand};
use segvmm::cli;

#[derive(Parser, Debug)]
#[command(
    name = "segvmm",
    version,
    about = "A KVM VMM with one-segment guest memory, and models of MMUs for virtual machines"
)]
#[command(
    after_help = "Without a subcommand, segvmm does what `segvmm run` does with its defaults: boot the built-in measurement guest on chase over 256 MiB and print its result."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a guest: a Linux kernel, or (without --kernel) the built-in measurement guest.
    Run(cli::run::Args),
    /// What this host's KVM offers: module, MMU mode, capabilities, hugepage pools, THP.
    Host(cli::host::Args),
    /// Run a matrix of workloads in the measurement guest and natively.
    Bench(cli::bench::Args),
    /// Replay an address stream through every MMU design model.
    Model(cli::model::Args),
    /// Ask a running VMM (--api-socket) for a page-table snapshot of its guest.
    Snapshot(cli::snapshot::Args),
    /// Show a guest's memory layout from a page-table snapshot.
    Layout(cli::layout::Args),
    /// Project each MMU design's cost next to measured runs.
    Project(cli::project::Args),
    /// Simulate one-segment VM placement over a datacenter trace.
    Place(cli::place::Args),
    /// Replay a hotness file through a two-tier memory model.
    Tier(cli::tier::Args),
}

fn main() {
    let cli = Cli::parse();
    // No subcommand: `segvmm run` with its defaults (the measurement guest).
    let command = cli.command.or_else(|| {
        Cli::try_parse_from(["segvmm", "run"])
            .ok()
            .and_then(|c| c.command)
    });
    let Some(command) = command else {
        eprintln!("segvmm: error: no subcommand (see segvmm --help)");
        std::process::exit(2);
    };
    let result = match command {
        Command::Run(a) => cli::run::run(a),
        Command::Host(a) => cli::host::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Model(a) => cli::model::run(a),
        Command::Snapshot(a) => cli::snapshot::run(a),
        Command::Layout(a) => cli::layout::run(a),
        Command::Project(a) => cli::project::run(a),
        Command::Place(a) => cli::place::run(a),
        Command::Tier(a) => cli::tier::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("segvmm: error: {}", e.message);
            std::process::exit(e.exit_code);
        }
    }
}
