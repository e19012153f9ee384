//! `segvmm snapshot`: ask a running VMM (started with `--api-socket`) for a page-table
//! snapshot of its guest, and optionally to end the run afterwards.

use std::path::PathBuf;

use super::{CliError, CliResult};

/// Options of `segvmm snapshot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VMM's API socket.
    #[arg(long)]
    pub api_socket: PathBuf,
    /// Where the VMM writes the `.ptsnap` file.
    #[arg(long, required_unless_present = "shutdown")]
    pub out: Option<PathBuf>,
    /// Then end the VMM's run (API `shutdown`: exit reason `shutdown`, exit code 0), for
    /// a guest that waits to be snapshotted; alone, without --out, only ends the run.
    #[arg(long)]
    pub shutdown: bool,
}

/// Runs `segvmm snapshot`.
pub fn run(args: Args) -> CliResult {
    if let Some(out) = &args.out {
        snapshot(&args.api_socket, out)?;
    }
    if args.shutdown {
        let reply = crate::api::request(&args.api_socket, "shutdown").map_err(CliError::failed)?;
        if reply != "ok" {
            return Err(CliError::failed(format!(
                "shutdown failed: {}",
                reply.trim_start_matches("error ")
            )));
        }
        println!("shut down");
    }
    Ok(0)
}

/// Asks for one snapshot into `out` and prints what the VMM answered.
fn snapshot(socket: &std::path::Path, out: &std::path::Path) -> Result<(), CliError> {
    // The VMM writes the file itself: give it an absolute path.
    let out = std::path::absolute(out)
        .map_err(|e| CliError::bad_input(format!("--out {}: {e}", out.display())))?;
    let reply = crate::api::request(socket, &format!("snapshot {}", out.display()))
        .map_err(CliError::failed)?;
    match reply.strip_prefix("ok ") {
        Some(rest) => {
            let f: Vec<&str> = rest.split_whitespace().collect();
            println!(
                "snapshot {}: {} bytes, {} page-table pages, {} ms ({} ms with the guest paused)",
                f.first().unwrap_or(&""),
                f.get(1).unwrap_or(&"?"),
                f.get(2).unwrap_or(&"?"),
                f.get(3).unwrap_or(&"?"),
                f.get(4).unwrap_or(&"?")
            );
            Ok(())
        }
        None => Err(CliError::failed(format!(
            "snapshot failed: {}",
            reply.trim_start_matches("error ")
        ))),
    }
}
