//! Files the VMM writes on request (API clients, a guest): only inside a directory fixed
//! when the VMM starts (`--snapshot-dir`), under a plain relative name, created new
//! (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600) as a hidden temporary and renamed into place
//! without replacing anything, so a file appears complete or not at all and no existing
//! file or link target is ever touched.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of output files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory cannot be used.
    #[error("snapshot directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A name that is not one plain path component.
    #[error("'{name}' is not a plain file name inside the snapshot directory (no '/', '..', control characters; 1-255 bytes)")]
    BadName {
        /// The name as given.
        name: String,
    },
    /// The target exists already.
    #[error("{path} exists already: output files are never replaced")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No snapshot directory was given at start.
    #[error("this VMM was started without --snapshot-dir: it writes no files on request")]
    NoDir,
}

/// The directory, opened once at start (O_DIRECTORY|O_NOFOLLOW): later renames of its
/// path do not redirect writes.
#[derive(Debug)]
pub struct OutDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Where a file goes.
#[derive(Debug, Clone)]
pub enum OutFile {
    /// A path the VMM's own configuration chose (a bench's results directory): trusted,
    /// written in place.
    Path(PathBuf),
    /// A name inside the output directory, asked for from outside: created new.
    InDir {
        /// The directory.
        dir: Arc<OutDir>,
        /// The checked name.
        name: String,
    },
}

fn cstr(s: &str) -> Result<CString, std::io::Error> {
    CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

impl OutDir {
    /// Opens `path`, which must be an existing directory (not a link to one).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let err = |source| Error::Dir {
            path: path.into(),
            source,
        };
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: a NUL-terminated path; the returned fd is checked and owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(OutDir {
            fd,
            path: path.into(),
        })
    }

    /// The directory's path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that `name` is one plain component.
    pub fn check_name(name: &str) -> Result<(), Error> {
        let bad = name.is_empty()
            || name.len() > 255
            || name == "."
            || name == ".."
            || name.starts_with('.')
            || name.contains('/')
            || name.chars().any(char::is_control);
        if bad {
            return Err(Error::BadName { name: name.into() });
        }
        Ok(())
    }

    /// A target inside this directory.
    pub fn file(self: &Arc<Self>, name: &str) -> Result<OutFile, Error> {
        Self::check_name(name)?;
        Ok(OutFile::InDir {
            dir: self.clone(),
            name: name.into(),
        })
    }

    fn tmp_name(name: &str) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(".{name}.{}.{n}.tmp", std::process::id())
    }

    /// Renames `tmp` to `name` unless `name` exists (RENAME_NOREPLACE).
    fn publish(&self, tmp: &str, name: &str) -> Result<(), Error> {
        let (t, n) = (cstr(tmp), cstr(name));
        let (t, n) = match (t, n) {
            (Ok(t), Ok(n)) => (t, n),
            _ => return Err(Error::BadName { name: name.into() }),
        };
        let fd = self.fd.as_raw_fd();
        // SAFETY: renameat2 on NUL-terminated names relative to our directory fd.
        let r = unsafe { libc::renameat2(fd, t.as_ptr(), fd, n.as_ptr(), libc::RENAME_NOREPLACE) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Err(Error::Exists {
                path: self.path.join(name),
            });
        }
        Err(Error::Write {
            path: self.path.join(name),
            source: e,
        })
    }

    fn unlink(&self, tmp: &str, flags: libc::c_int) {
        if let Ok(t) = cstr(tmp) {
            // SAFETY: unlinkat of our own temporary, relative to our directory fd.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), t.as_ptr(), flags) };
        }
    }

    /// Creates `name` with `bytes`, complete or not at all.
    pub fn create_file(&self, name: &str, bytes: &[u8]) -> Result<u64, Error> {
        Self::check_name(name)?;
        if self.exists(name) {
            return Err(Error::Exists {
                path: self.path.join(name),
            });
        }
        let tmp = Self::tmp_name(name);
        let r = self
            .write_tmp(&tmp, bytes)
            .and_then(|()| self.publish(&tmp, name));
        if r.is_err() {
            self.unlink(&tmp, 0);
        }
        r.map(|()| bytes.len() as u64)
    }

    fn exists(&self, name: &str) -> bool {
        let Ok(n) = cstr(name) else { return false };
        // SAFETY: a stat-less existence check relative to our directory fd.
        unsafe {
            libc::faccessat(
                self.fd.as_raw_fd(),
                n.as_ptr(),
                libc::F_OK,
                libc::AT_SYMLINK_NOFOLLOW,
            ) == 0
        }
    }

    fn write_tmp(&self, tmp: &str, bytes: &[u8]) -> Result<(), Error> {
        let werr = |source| Error::Write {
            path: self.path.join(tmp),
            source,
        };
        let t = cstr(tmp).map_err(werr)?;
        let flags =
            libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC;
        // SAFETY: openat on a NUL-terminated name relative to our directory fd; the
        // descriptor is checked and owned below.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), t.as_ptr(), flags, 0o600) };
        if fd < 0 {
            return Err(werr(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.write_all(bytes)
            .and_then(|()| f.sync_data())
            .map_err(werr)
    }

    /// Creates directory `name` filled by `fill` (given the temporary directory's path),
    /// complete or not at all: the whole-VM snapshot layout.
    pub fn create_dir(
        &self,
        name: &str,
        fill: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<PathBuf, Error> {
        Self::check_name(name)?;
        if self.exists(name) {
            return Err(Error::Exists {
                path: self.path.join(name),
            });
        }
        let tmp = Self::tmp_name(name);
        let t = cstr(&tmp).map_err(|source| Error::Write {
            path: self.path.join(&tmp),
            source,
        })?;
        // SAFETY: mkdirat of a NUL-terminated name relative to our directory fd.
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), t.as_ptr(), 0o700) } != 0 {
            return Err(Error::Write {
                path: self.path.join(&tmp),
                source: std::io::Error::last_os_error(),
            });
        }
        let tmp_path = self.proc_path(&tmp);
        let r = fill(&tmp_path).and_then(|()| self.publish(&tmp, name));
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp_path);
        }
        r.map(|()| self.path.join(name))
    }

    /// A path to `name` through our directory fd (immune to renames of the directory).
    fn proc_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }
}

impl OutFile {
    /// For messages.
    pub fn display(&self) -> String {
        match self {
            OutFile::Path(p) => p.display().to_string(),
            OutFile::InDir { dir, name } => dir.path.join(name).display().to_string(),
        }
    }

    /// Writes `bytes` (see the module's rules for files inside the directory).
    pub fn write(&self, bytes: &[u8]) -> Result<u64, Error> {
        match self {
            OutFile::Path(p) => std::fs::write(p, bytes)
                .map(|()| bytes.len() as u64)
                .map_err(|source| Error::Write {
                    path: p.clone(),
                    source,
                }),
            OutFile::InDir { dir, name } => dir.create_file(name, bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_plain_components() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "a\nshutdown",
        ] {
            assert!(OutDir::check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["x.ptsnap", "snap-1", "a b"] {
            OutDir::check_name(good).unwrap();
        }
        assert!(OutDir::check_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn files_are_created_new_and_never_through_links() {
        let d = tempfile::tempdir().unwrap();
        let dir = Arc::new(OutDir::open(d.path()).unwrap());
        assert_eq!(dir.create_file("a", b"one").unwrap(), 3);
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"one");
        assert!(matches!(
            dir.create_file("a", b"two"),
            Err(Error::Exists { .. })
        ));
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"one");
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("link")).unwrap();
        assert!(dir.create_file("link", b"evil").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        // No temporary is left behind.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        // A link as the directory itself is refused.
        std::os::unix::fs::symlink(d.path(), d.path().join("dirlink")).unwrap();
        assert!(OutDir::open(&d.path().join("dirlink")).is_err());
    }

    #[test]
    fn directories_appear_complete_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let dir = OutDir::open(d.path()).unwrap();
        let made = dir
            .create_dir("snap", |p| {
                std::fs::write(p.join("state.json"), b"{}").map_err(|source| Error::Write {
                    path: p.into(),
                    source,
                })
            })
            .unwrap();
        assert!(made.join("state.json").exists());
        let r = dir.create_dir("broken", |p| {
            Err(Error::Write {
                path: p.into(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            })
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
