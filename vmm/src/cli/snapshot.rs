//! `segvmm snapshot create`: ask a running VMM (started with `--api-socket` and
//! `--snapshot-dir`) for a whole-VM snapshot into a new directory, and optionally to end
//! its run afterwards.

use std::path::PathBuf;

use super::{CliError, CliResult};
use crate::api::{self, Request};

/// Options of `segvmm snapshot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `segvmm snapshot` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Pause the guest, save the whole VM into a new directory, resume (or end the run
    /// with --shutdown).
    Create(CreateArgs),
}

/// Options of `segvmm snapshot create`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The VMM's API socket.
    #[arg(long)]
    pub api_socket: PathBuf,
    /// The snapshot directory to create: a new plain name inside the VMM's
    /// --snapshot-dir.
    #[arg(long)]
    pub out: String,
    /// Then end the VMM's run (exit reason `shutdown`, exit code 0).
    #[arg(long)]
    pub shutdown: bool,
    /// A diff snapshot: only the pages dirtied since this run's previous snapshot (the
    /// VMM must run with --track-dirty); `restore` applies it over that one.
    #[arg(long)]
    pub diff: bool,
}

/// Runs `segvmm snapshot`.
pub fn run(args: Args) -> CliResult {
    let Command::Create(a) = args.command;
    let req = Request::SnapshotCreate {
        dir: a.out.clone(),
        diff: a.diff,
    };
    let r = api::request(&a.api_socket, &req).map_err(|e| match e {
        api::Error::Refused(_) => CliError::bad_input(e),
        e => CliError::failed(e),
    })?;
    println!(
        "snapshot {}: {} vCPUs, {:.1} of {:.1} MiB of RAM written, guest paused {:.1} ms (state {:.1} ms, memory {:.1} ms), {:.1} ms in all (with the sync to disk)",
        r["path"].as_str().unwrap_or("?"),
        r["vcpus"],
        r["memory_data_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        r["memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        r["paused_ms"].as_f64().unwrap_or(f64::NAN),
        r["state_ms"].as_f64().unwrap_or(f64::NAN),
        r["memory_ms"].as_f64().unwrap_or(f64::NAN),
        r["total_ms"].as_f64().unwrap_or(f64::NAN),
    );
    if let Some(u) = r["unsupported"].as_array().filter(|u| !u.is_empty()) {
        eprintln!("segvmm: not saved (KVM refused): {u:?}");
    }
    if a.shutdown {
        api::request(&a.api_socket, &Request::Shutdown {}).map_err(CliError::failed)?;
        println!("shut down");
    }
    Ok(0)
}
