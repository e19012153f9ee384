//! `segvmm ptsnap`: ask a running VMM (started with `--api-socket` and `--snapshot-dir`)
//! for a page-table capture of its guest, and optionally to end the run afterwards.

use std::path::{Path, PathBuf};

use super::{CliError, CliResult};
use crate::api::{self, Request};

/// Options of `segvmm ptsnap`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VMM's API socket.
    #[arg(long)]
    pub api_socket: PathBuf,
    /// The `.ptsnap` file: a name inside the VMM's --snapshot-dir, or a path into it.
    #[arg(long, required_unless_present = "shutdown")]
    pub out: Option<PathBuf>,
    /// Then end the VMM's run (API `shutdown`: exit reason `shutdown`, exit code 0), for
    /// a guest that waits to be captured; alone, without --out, only ends the run.
    #[arg(long)]
    pub shutdown: bool,
}

/// Runs `segvmm ptsnap`.
pub fn run(args: Args) -> CliResult {
    if let Some(out) = &args.out {
        ptsnap(&args.api_socket, out)?;
    }
    if args.shutdown {
        api::request(&args.api_socket, &Request::Shutdown {}).map_err(CliError::failed)?;
        println!("shut down");
    }
    Ok(0)
}

/// The name to send for `out`: a plain name as it is; a path must lie in the VMM's
/// snapshot directory (asked with `ping`).
fn name_in_dir(socket: &Path, out: &Path) -> Result<String, CliError> {
    let plain = out.components().count() == 1;
    if plain {
        return Ok(out.display().to_string());
    }
    let pong = api::request(socket, &Request::Ping {}).map_err(CliError::failed)?;
    let dir = pong["snapshot_dir"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| {
            CliError::bad_input("the VMM was started without --snapshot-dir: it writes no files")
        })?;
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let parent = out.parent().map(canon);
    match (parent, out.file_name()) {
        (Some(p), Some(name)) if p == canon(&dir) => Ok(name.to_string_lossy().into_owned()),
        _ => Err(CliError::bad_input(format!(
            "--out {}: must be a name inside the VMM's snapshot directory {}",
            out.display(),
            dir.display()
        ))),
    }
}

/// A request the VMM refused (a bad name, an existing file) is bad input (exit 2); not
/// reaching it is a failure (exit 1).
fn refused_is_bad_input(e: api::Error) -> CliError {
    match e {
        api::Error::Refused(_) => CliError::bad_input(e),
        e => CliError::failed(e),
    }
}

/// Asks for one capture into `out` and prints what the VMM answered.
fn ptsnap(socket: &Path, out: &Path) -> Result<(), CliError> {
    let file = name_in_dir(socket, out)?;
    let a = api::request(socket, &Request::Ptsnap { file }).map_err(refused_is_bad_input)?;
    println!(
        "ptsnap {}: {} bytes, {} page-table pages, {:.3} ms ({:.3} ms with the guest paused)",
        a["path"].as_str().unwrap_or("?"),
        a["bytes"],
        a["table_pages"],
        a["ms"].as_f64().unwrap_or(f64::NAN),
        a["paused_ms"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(())
}
