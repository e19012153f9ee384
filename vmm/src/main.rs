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
    /// Ask a running VMM (--api-socket) for a page-table capture of its guest (--shutdown:
    /// then end its run).
    Ptsnap(cli::ptsnap::Args),
    /// Ask a running VMM (--api-socket) for a whole-VM snapshot (`snapshot create`).
    Snapshot(cli::snapshot::Args),
    /// Build a VM from a whole-VM snapshot and run it on.
    Restore(cli::restore::Args),
    /// Show a guest's memory layout from a page-table capture.
    Layout(cli::layout::Args),
    /// Project each MMU design's cost next to measured runs.
    Project(cli::project::Args),
    /// Simulate one-segment VM placement over a datacenter trace.
    Place(cli::place::Args),
    /// Replay a hotness file through a two-tier memory model.
    Tier(cli::tier::Args),
}

/// Report-printing commands end quietly when their reader goes away (`segvmm tier | head`),
/// as Unix tools do, instead of panicking in `println!` on EPIPE: Rust ignores SIGPIPE by
/// default. Commands that run a guest keep ignoring it, so that a closed console pipe
/// cannot kill the VMM before it writes its report.
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler code; it is
    // done on the main thread before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
    if matches!(
        command,
        Command::Host(_)
            | Command::Model(_)
            | Command::Layout(_)
            | Command::Project(_)
            | Command::Place(_)
            | Command::Tier(_)
    ) {
        restore_sigpipe();
    }
    let result = match command {
        Command::Run(a) => cli::run::run(a),
        Command::Host(a) => cli::host::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Model(a) => cli::model::run(a),
        Command::Ptsnap(a) => cli::ptsnap::run(a),
        Command::Snapshot(a) => cli::snapshot::run(a),
        Command::Restore(a) => cli::restore::run(a),
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
