//! The serving side: the listening socket and its clients as one `event-manager`
//! subscriber. It only turns bytes into requests and answers into bytes; the VM's loop
//! acts on the requests.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde_json::Value;
use vmm_sys_util::epoll::EventSet;

use super::protocol::{self, Request, RequestError, LINE_LIMIT};
use super::{ApiConfig, Error};
use crate::outdir::{self, OutDir, OutFile};

/// A client, by its socket's descriptor.
pub type ClientId = RawFd;

/// Most clients at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 16;
/// A client that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request line must be complete this soon after its first byte.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(5);

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    last: Instant,
    partial_since: Option<Instant>,
}

/// The API socket and its clients.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket we bound: removed at exit only if still ours.
    id: (u64, u64),
    /// The socket's directory, held open so that the socket can be removed at exit even
    /// from inside a `--jail` chroot where its path no longer resolves.
    parent: Option<std::fs::File>,
    dir: Option<Arc<OutDir>>,
    clients: HashMap<ClientId, Client>,
    queue: Vec<(ClientId, Result<Request, RequestError>)>,
    to_close: Vec<ClientId>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// Refuses a directory that other users may write to without the sticky bit (they could
/// replace the socket).
fn check_dir(path: &Path) -> Result<(), Error> {
    let dir = socket_dir(path);
    let m = std::fs::metadata(&dir).map_err(|source| Error::Bind {
        path: path.into(),
        source,
    })?;
    let mode = m.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(Error::UnsafeDir {
            path: path.into(),
            dir,
        });
    }
    Ok(())
}

/// Removes a socket at `path` that nobody serves; refuses anything else.
fn clear_stale(path: &Path) -> Result<(), Error> {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !m.file_type().is_socket() {
        return Err(Error::NotASocket { path: path.into() });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::InUse { path: path.into() }),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|source| Error::Bind {
                path: path.into(),
                source,
            })
        }
        Err(source) => Err(Error::Bind {
            path: path.into(),
            source,
        }),
    }
}

/// The uid of the peer of `s`.
fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the given length on a socket we own.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

impl ApiServer {
    /// Binds the socket as `cfg` says (mode 0600, see the module's rules).
    pub fn bind(cfg: ApiConfig) -> Result<Self, Error> {
        let path = cfg.socket;
        check_dir(&path)?;
        clear_stale(&path)?;
        let dir = cfg
            .snapshot_dir
            .map(|d| OutDir::open(&d).map(Arc::new))
            .transpose()?;
        // SAFETY: umask only changes the mode of files this process creates next; it is
        // restored right after the bind.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(&path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let err = |source| Error::Bind {
            path: path.clone(),
            source,
        };
        let listener = bound.map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let m = std::fs::symlink_metadata(&path).map_err(err)?;
        let parent = std::fs::File::open(socket_dir(&path)).ok();
        Ok(ApiServer {
            listener,
            id: (m.dev(), m.ino()),
            parent,
            path,
            dir,
            clients: HashMap::new(),
            queue: Vec::new(),
            to_close: Vec::new(),
        })
    }

    /// The snapshot directory's path, if any.
    pub fn snapshot_dir_path(&self) -> Option<String> {
        self.dir.as_ref().map(|d| d.path().display().to_string())
    }

    /// The snapshot directory (whole-VM snapshots are directories inside it).
    pub fn out_dir(&self) -> Result<Arc<OutDir>, outdir::Error> {
        self.dir.clone().ok_or(outdir::Error::NoDir)
    }

    /// A file inside the snapshot directory for a request.
    pub fn out_file(&self, name: &str) -> Result<OutFile, outdir::Error> {
        self.dir.as_ref().ok_or(outdir::Error::NoDir)?.file(name)
    }

    /// Requests received so far; closes clients past their deadlines first.
    pub fn take_requests(
        &mut self,
        now: Instant,
    ) -> Vec<(ClientId, Result<Request, RequestError>)> {
        for (id, c) in &self.clients {
            let idle = now.duration_since(c.last) > IDLE_TIMEOUT;
            let slow = c
                .partial_since
                .is_some_and(|t| now.duration_since(t) > LINE_TIMEOUT);
            if idle || slow {
                self.to_close.push(*id);
            }
        }
        std::mem::take(&mut self.queue)
    }

    /// Sends the answer to `client` (a client that cannot take it is closed).
    pub fn reply<E: std::error::Error>(&mut self, client: ClientId, r: Result<Value, E>) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        if c.stream.write_all(&protocol::answer(&r)).is_err() {
            self.to_close.push(client);
        }
    }

    /// Closes the clients marked for closing.
    pub fn close_marked(&mut self, ops: &mut EventOps) {
        for id in std::mem::take(&mut self.to_close) {
            if let Some(c) = self.clients.remove(&id) {
                let _ = ops.remove(Events::empty(&c.stream));
            }
        }
    }

    fn refuse(mut s: UnixStream, why: Refusal) {
        let _ = s.set_nonblocking(true);
        let _ = s.write_all(&protocol::answer(&Err(why)));
    }

    fn accept_all(&mut self, ops: &mut EventOps) {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        while let Ok((s, _)) = self.listener.accept() {
            match peer_uid(&s) {
                Some(uid) if uid == me || uid == 0 => {}
                _ => {
                    Self::refuse(s, Refusal::NotOwner);
                    continue;
                }
            }
            if self.clients.len() >= MAX_CLIENTS {
                Self::refuse(s, Refusal::TooMany);
                continue;
            }
            if s.set_nonblocking(true).is_err() || ops.add(Events::new(&s, EventSet::IN)).is_err() {
                continue;
            }
            let client = Client {
                stream: s,
                buf: Vec::new(),
                last: Instant::now(),
                partial_since: None,
            };
            self.clients.insert(client.stream.as_raw_fd(), client);
        }
    }

    /// Reads what `id` sent and queues its complete lines.
    fn read_client(&mut self, id: ClientId) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let mut eof = false;
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
            if c.buf.len() > LINE_LIMIT {
                break;
            }
        }
        c.last = Instant::now();
        while let Some(end) = c.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=end).collect();
            self.queue.push((id, protocol::parse(&line[..end])));
        }
        if c.buf.len() > LINE_LIMIT {
            self.queue.push((id, Err(RequestError::TooLong)));
            c.buf.clear();
            eof = true;
        }
        c.partial_since = match (c.buf.is_empty(), c.partial_since) {
            (true, _) => None,
            (false, None) => Some(c.last),
            (false, t) => t,
        };
        if eof {
            self.to_close.push(id);
        }
    }
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            eprintln!(
                "segvmm: API socket {}: cannot watch it: {e:?}",
                self.path.display()
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.listener.as_raw_fd() {
            self.accept_all(ops);
        } else {
            self.read_client(events.fd());
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        match (&self.parent, self.path.file_name()) {
            (Some(dir), Some(name)) => unlink_if_ours(dir, name, self.id),
            _ => {
                let ours = std::fs::symlink_metadata(&self.path)
                    .map(|m| (m.dev(), m.ino()) == self.id)
                    .unwrap_or(false);
                if ours {
                    let _ = std::fs::remove_file(&self.path);
                }
            }
        }
    }
}

/// The directory a socket path lives in.
fn socket_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes `name` inside `dir` if it is still the socket `id` (device, inode) we bound;
/// works after a chroot, relative to the directory's descriptor.
fn unlink_if_ours(dir: &std::fs::File, name: &std::ffi::OsStr, id: (u64, u64)) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(cname) = std::ffi::CString::new(name.as_bytes()) else {
        return;
    };
    let fd = dir.as_raw_fd();
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `fd` is an open directory we own, `cname` a NUL-terminated name, `st` a
    // writable stat buffer; AT_SYMLINK_NOFOLLOW looks at the entry itself.
    let r = unsafe {
        libc::fstatat(
            fd,
            cname.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return;
    }
    // SAFETY: fstatat succeeded, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    if (st.st_dev, st.st_ino) == id {
        // SAFETY: as above; removes one directory entry, no memory is passed but the name.
        unsafe { libc::unlinkat(fd, cname.as_ptr(), 0) };
    }
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// The peer is not the VMM's user.
    #[error("permission denied: not the VMM's user")]
    NotOwner,
    /// The client limit is reached.
    #[error("too many clients")]
    TooMany,
}
