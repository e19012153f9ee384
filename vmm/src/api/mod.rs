//! The API socket (`--api-socket PATH`), a small cousin of Firecracker's: JSON lines on a
//! Unix stream socket ([`protocol`]), served on the VM's event loop ([`server`]), spoken
//! by `segvmm ptsnap` and tests ([`client`]). Safe by construction: the socket is created
//! 0600 in a directory others cannot tamper with, replaces only a stale socket, admits
//! only peers of the VMM's own user (or root), bounds every client (line length, idle
//! time, number of clients), and writes files only inside the `--snapshot-dir` fixed at
//! start ([`crate::outdir`]).

pub mod client;
pub mod protocol;
pub mod server;

use std::path::PathBuf;

pub use client::request;
pub use protocol::{Request, RequestError};
pub use server::{ApiServer, ClientId};

/// Errors of the API socket, served or spoken to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Others could replace the socket.
    #[error("API socket {path}: its directory {dir} is writable by other users and not sticky; put the socket in a private directory")]
    UnsafeDir {
        /// The socket.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("API socket {path}: the path exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The socket.
        path: PathBuf,
    },
    /// A live VMM serves the path already.
    #[error("API socket {path}: another VMM is serving it")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Binding or preparing the socket failed.
    #[error("API socket {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot directory.
    #[error(transparent)]
    OutDir(#[from] crate::outdir::Error),
    /// A client could not reach the VMM.
    #[error("API socket {path}: cannot connect ({source}); is a VMM running with --api-socket?")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the VMM failed.
    #[error("API socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VMM answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The VMM's answer is not an answer.
    #[error("API socket {path}: unexpected answer {line:?}")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// What came.
        line: String,
    },
}

/// How to serve the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The socket's path.
    pub socket: PathBuf,
    /// Where requested files may be written (none: no files on request).
    pub snapshot_dir: Option<PathBuf>,
}

impl ApiConfig {
    /// Serves `socket` without a snapshot directory.
    pub fn new(socket: PathBuf) -> Self {
        ApiConfig {
            socket,
            snapshot_dir: None,
        }
    }
}
