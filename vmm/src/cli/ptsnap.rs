//! `segvmm ptsnap`: ask a running VMM (started with `--api-socket`) for a page-table
//! ptsnap of its guest, and optionally to end the run afterwards.

use std::path::PathBuf;

use super::{CliError, CliResult};

/// Options of `segvmm ptsnap`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VMM's API socket.
    #[arg(long)]
    pub api_socket: PathBuf,
    /// Where the VMM writes the `.ptsnap` file.
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

/// Asks for one ptsnap into `out` and prints what the VMM answered.
fn ptsnap(socket: &std::path::Path, out: &std::path::Path) -> Result<(), CliError> {
    // The VMM writes the file itself: give it an absolute path.
    let out = std::path::absolute(out)
        .map_err(|e| CliError::bad_input(format!("--out {}: {e}", out.display())))?;
    let reply = crate::api::request(socket, &format!("ptsnap {}", out.display()))
        .map_err(CliError::failed)?;
    match reply.strip_prefix("ok ") {
        Some(rest) => {
            let f: Vec<&str> = rest.split_whitespace().collect();
            println!(
                "ptsnap {}: {} bytes, {} page-table pages, {} ms ({} ms with the guest paused)",
                f.first().unwrap_or(&""),
                f.get(1).unwrap_or(&"?"),
                f.get(2).unwrap_or(&"?"),
                f.get(3).unwrap_or(&"?"),
                f.get(4).unwrap_or(&"?")
            );
            Ok(())
        }
        None => Err(CliError::failed(format!(
            "ptsnap failed: {}",
            reply.trim_start_matches("error ")
        ))),
    }
}
