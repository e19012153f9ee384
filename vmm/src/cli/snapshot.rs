//! `segvmm snapshot`: ask a running VMM (started with `--api-socket`) for a page-table
//! snapshot of its guest.

use std::path::PathBuf;

use super::{CliError, CliResult};

/// Options of `segvmm snapshot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VMM's API socket.
    #[arg(long)]
    pub api_socket: PathBuf,
    /// Where the VMM writes the `.ptsnap` file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `segvmm snapshot`.
pub fn run(args: Args) -> CliResult {
    // The VMM writes the file itself: give it an absolute path.
    let out = std::path::absolute(&args.out)
        .map_err(|e| CliError::bad_input(format!("--out {}: {e}", args.out.display())))?;
    let reply = crate::api::request(&args.api_socket, &format!("snapshot {}", out.display()))
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
            Ok(0)
        }
        None => Err(CliError::failed(format!(
            "snapshot failed: {}",
            reply.trim_start_matches("error ")
        ))),
    }
}
