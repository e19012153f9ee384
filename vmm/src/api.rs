//! The API socket (`segvmm run --api-socket PATH`): a Unix stream socket taking one text
//! command per line, as a small, dependency-free cousin of Firecracker's API. Commands:
//!
//! * `ptsnap <file>`: pause every vCPU, write a `.ptsnap` page-table capture, resume.
//!   Answers `ok <file> <bytes> <table-pages> <ms> <paused-ms>` or `error <message>`.
//! * `shutdown`: ends the run as if the guest had powered off (Cloud Hypervisor's
//!   `vm.shutdown`): answers `ok`, then the VMM stops every vCPU and reports the exit reason
//!   `shutdown` (exit code 0). For guests that wait to be captured and would otherwise
//!   run on until their own end or the timeout.
//! * `ping`: answers `ok`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ptsnap::PtsnapService;

/// Errors of the API socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be bound.
    #[error("API socket {path}: {source}")]
    Bind {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to a VMM's socket failed.
    #[error("API socket {path}: {why}")]
    Client {
        /// Path.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// What the API socket acts on: the VM's ptsnap service and a way to end its run.
pub struct Api {
    /// Takes the ptsnaps.
    pub ptsnaps: Arc<PtsnapService>,
    /// Asks the VMM's run loop to end the run (`shutdown`); it returns at once.
    pub shutdown: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("ptsnaps", &self.ptsnaps)
            .finish_non_exhaustive()
    }
}

fn handle(stream: UnixStream, api: &Api) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next()) {
            (Some("ping"), None) => "ok".to_string(),
            (Some("shutdown"), None) => {
                (api.shutdown)();
                "ok".to_string()
            }
            (Some("ptsnap"), Some(file)) => match api.ptsnaps.ptsnap(Path::new(file)) {
                Ok(i) => format!(
                    "ok {} {} {} {:.3} {:.3}",
                    i.path, i.bytes, i.table_pages, i.ms, i.paused_ms
                ),
                Err(e) => format!("error {e}"),
            },
            _ => {
                format!("error unknown command '{line}' (commands: ping, ptsnap <file>, shutdown)")
            }
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

/// Serves `path` in a background thread until the process ends.
pub fn serve(path: &Path, api: Api) -> Result<(), Error> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
        path: path.into(),
        source,
    })?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for s in listener.incoming().map_while(Result::ok) {
                handle(s, &api);
            }
        })
        .map_err(|source| Error::Bind {
            path: path.into(),
            source,
        })?;
    Ok(())
}

/// Sends one command to a VMM's API socket and returns its answer line.
pub fn request(path: &Path, command: &str) -> Result<String, Error> {
    let err = |why: String| Error::Client {
        path: path.into(),
        why,
    };
    let mut s = UnixStream::connect(path).map_err(|e| {
        err(format!(
            "cannot connect ({e}); is a VMM running with --api-socket?"
        ))
    })?;
    writeln!(s, "{command}").map_err(|e| err(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| err(e.to_string()))?;
    Ok(line.trim_end().to_string())
}
