//! A cache of vmlinux images decompressed on the host from bzImages
//! ([`super::BzImageMode::HostDecompress`]), keyed by the bzImage's content, so a second
//! boot of the same image reads the vmlinux instead of decompressing it again (the stock
//! kernel's 14 MB LZ4 payload: ~0.45 s here).
//!
//! * Key: XXH3-128 of the whole bzImage and its length, in hex: `<key>.vmlinux`.
//! * Entry: [`MAGIC`], the vmlinux length (u64 LE), its XXH3-64 (u64 LE), the vmlinux. An
//!   entry whose header, length or checksum does not match is ignored (and replaced).
//! * Files are created new (O_CREAT|O_EXCL|O_NOFOLLOW, 0600) under a temporary name and
//!   renamed into place, so readers see a whole entry or none; entries are opened
//!   O_NOFOLLOW, and the directory must be a real directory, not a link.
//! * Size cap: after a store, the oldest entries (by modification time) are removed until
//!   the directory's entries total at most [`DEFAULT_CAP`] bytes.
//! * The cache never fails a boot: any error means "decompress as without it".

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use twox_hash::{XxHash3_128, XxHash3_64};

use super::bzimage;

/// First bytes of an entry.
pub const MAGIC: &[u8; 8] = b"SGVMLNX1";
/// Header bytes: magic, length, checksum.
const HEADER: usize = 24;
/// The most bytes the cache keeps.
pub const DEFAULT_CAP: u64 = 512 << 20;

/// What the cache did for one load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// No cache in use (or not a host-decompressed bzImage).
    Off,
    /// The vmlinux came from the cache.
    Hit,
    /// Decompressed, then stored.
    Miss,
}

/// The directory [`extract`] uses when called through [`super::load_kernel`].
static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets (or with `None` clears) the cache directory used by kernel loads in this process.
pub fn set_dir(dir: Option<PathBuf>) {
    if let Ok(mut d) = DIR.lock() {
        *d = dir;
    }
}

/// The cache directory in use.
pub fn dir() -> Option<PathBuf> {
    DIR.lock().ok().and_then(|d| d.clone())
}

/// `$XDG_CACHE_HOME/segvmm/vmlinux`, else `$HOME/.cache/segvmm/vmlinux`.
pub fn default_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("segvmm").join("vmlinux"))
}

/// The entry's file name for `image`.
pub fn key(image: &[u8]) -> String {
    let h = XxHash3_128::oneshot(image);
    format!("{h:032x}-{:x}.vmlinux", image.len())
}

/// The vmlinux inside bzImage `image` (see [`bzimage::extract_vmlinux`]), from the cache
/// in `dir` when it holds a good entry, else decompressed and stored there.
pub fn extract(
    dir: Option<&Path>,
    image: &[u8],
    cap: u64,
) -> Result<(Vec<u8>, Outcome), bzimage::Error> {
    let Some(dir) = dir else {
        return Ok((bzimage::extract_vmlinux(image, cap)?, Outcome::Off));
    };
    let name = key(image);
    if let Some(v) = read_entry(&dir.join(&name), cap) {
        return Ok((v, Outcome::Hit));
    }
    let vmlinux = bzimage::extract_vmlinux(image, cap)?;
    let _ = store(dir, &name, &vmlinux);
    Ok((vmlinux, Outcome::Miss))
}

/// A good entry's vmlinux; `None` for a missing, foreign, truncated or corrupt one.
fn read_entry(path: &Path, cap: u64) -> Option<Vec<u8>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() < HEADER as u64 || meta.len() - HEADER as u64 > cap {
        return None;
    }
    let mut head = [0u8; HEADER];
    f.read_exact(&mut head).ok()?;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let (len, sum) = (u64_at(8), u64_at(16));
    if head[..8] != MAGIC[..] || len != meta.len() - HEADER as u64 {
        return None;
    }
    let mut v = Vec::with_capacity(usize::try_from(len).ok()?);
    f.read_to_end(&mut v).ok()?;
    (v.len() as u64 == len && XxHash3_64::oneshot(&v) == sum).then_some(v)
}

/// Writes an entry for `vmlinux` as `dir/name` (new temporary file, then rename), then
/// trims the directory to [`DEFAULT_CAP`].
fn store(dir: &Path, name: &str, vmlinux: &[u8]) -> std::io::Result<()> {
    if vmlinux.len() as u64 + HEADER as u64 > DEFAULT_CAP {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if !std::fs::symlink_metadata(dir)?.is_dir() {
        return Err(std::io::Error::other("cache directory is a link"));
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(&tmp)?;
    let mut head = Vec::with_capacity(HEADER);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(vmlinux.len() as u64).to_le_bytes());
    head.extend_from_slice(&XxHash3_64::oneshot(vmlinux).to_le_bytes());
    let written = f
        .write_all(&head)
        .and_then(|()| f.write_all(vmlinux))
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    trim(dir, DEFAULT_CAP)
}

/// Removes the oldest entries of `dir` until they total at most `cap` bytes.
fn trim(dir: &Path, cap: u64) -> std::io::Result<()> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        let meta = e.metadata()?;
        if n.ends_with(".vmlinux") && meta.is_file() {
            entries.push((meta.modified()?, meta.len(), e.path()));
        }
    }
    entries.sort();
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    for (_, len, path) in entries {
        if total <= cap {
            break;
        }
        std::fs::remove_file(path)?;
        total -= len;
    }
    Ok(())
}
