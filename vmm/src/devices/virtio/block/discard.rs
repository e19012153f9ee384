//! virtio-blk DISCARD and WRITE_ZEROES: each request carries up to [`MAX_SEGMENTS`]
//! `virtio_blk_discard_write_zeroes` segments (sector, sector count, flags) in
//! device-readable buffers. Both punch a hole in the image (`fallocate(PUNCH_HOLE |
//! KEEP_SIZE)`): the host gets the space back and the range reads as zeros, which is what
//! WRITE_ZEROES promises (with or without its UNMAP flag) and more than DISCARD, a hint,
//! needs. Where the file system cannot punch holes, DISCARD does nothing and still
//! succeeds, and WRITE_ZEROES writes zeros.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::SECTOR;

/// Segments one request may carry (`max_discard_seg`, `max_write_zeroes_seg`).
pub const MAX_SEGMENTS: u32 = 16;
/// Sectors one request may cover (`max_discard_sectors`, `max_write_zeroes_sectors`):
/// 1 GiB.
pub const MAX_SECTORS: u32 = 1 << 21;
/// The discard granularity offered, in sectors (4 KiB: a host page, the smallest hole).
pub const ALIGNMENT: u32 = 8;
/// Bytes of one segment.
const SEGMENT: u32 = 16;
/// Bytes of zeros written per call where holes cannot be punched.
const ZERO_CHUNK: usize = 64 << 10;

/// DISCARD or WRITE_ZEROES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// VIRTIO_BLK_T_DISCARD.
    Discard,
    /// VIRTIO_BLK_T_WRITE_ZEROES.
    WriteZeroes,
}

/// One range to discard or zero, checked against the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    offset: u64,
    len: u64,
}

/// Reads and checks the segments in `data`: the status code for a bad request, else the
/// byte ranges.
fn segments(
    kind: Kind,
    data: &[Descriptor],
    mem: &GuestMemoryMmap,
    disk_sectors: u64,
) -> Result<Vec<Range>, (u32, &'static str)> {
    let ioerr = |what| (VIRTIO_BLK_S_IOERR, what);
    let mut raw = Vec::new();
    for d in data {
        if d.is_write_only() {
            return Err(ioerr("segment buffer is device-writable"));
        }
        let total = raw.len() as u64 + u64::from(d.len());
        if total > u64::from(MAX_SEGMENTS * SEGMENT) {
            return Err(ioerr("more segments than max_discard_seg"));
        }
        let mut b = vec![0u8; d.len() as usize];
        mem.read_slice(&mut b, d.addr())
            .map_err(|_| ioerr("segment buffer outside guest RAM"))?;
        raw.extend_from_slice(&b);
    }
    if raw.is_empty() || raw.len() % SEGMENT as usize != 0 {
        return Err(ioerr("segment buffers are not whole 16-byte segments"));
    }
    raw.chunks_exact(SEGMENT as usize)
        .map(|s| range(kind, s, disk_sectors))
        .collect()
}

/// One 16-byte segment as a byte range of the disk.
fn range(kind: Kind, s: &[u8], disk_sectors: u64) -> Result<Range, (u32, &'static str)> {
    let le64 = |b: &[u8]| b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x));
    let (sector, count, flags) = (le64(&s[..8]), le64(&s[8..12]), le64(&s[12..16]));
    let unmap = u64::from(VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let allowed = if kind == Kind::WriteZeroes { unmap } else { 0 };
    if flags & !allowed != 0 {
        return Err((VIRTIO_BLK_S_UNSUPP, "segment flags not supported"));
    }
    if count > u64::from(MAX_SECTORS) {
        return Err((
            VIRTIO_BLK_S_IOERR,
            "segment larger than max_discard_sectors",
        ));
    }
    match sector.checked_add(count) {
        Some(end) if end <= disk_sectors => Ok(Range {
            offset: sector * SECTOR,
            len: count * SECTOR,
        }),
        _ => Err((VIRTIO_BLK_S_IOERR, "segment past the end of the disk")),
    }
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)` over `r`.
fn punch(file: &File, r: Range) -> std::io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (off, len) = (r.offset as libc::off_t, r.len as libc::off_t);
    // SAFETY: fallocate(2) on a descriptor `file` owns and keeps open; it reads or writes
    // no memory of this process.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Zeros written over `r` (where a hole cannot be punched).
fn write_zeros(file: &File, r: Range) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut done = 0u64;
    while done < r.len {
        let n = (r.len - done).min(ZERO_CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], r.offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Whether punching failed only because the file or file system cannot punch holes.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV)
    )
}

/// Serves a DISCARD or WRITE_ZEROES request on `file`: its status, or a status and why
/// it failed (for the device's log).
pub fn execute(
    file: &File,
    kind: Kind,
    data: &[Descriptor],
    mem: &GuestMemoryMmap,
    disk_sectors: u64,
) -> Result<u32, (u32, String)> {
    let ranges = segments(kind, data, mem, disk_sectors).map_err(|(c, w)| (c, w.into()))?;
    for r in ranges.into_iter().filter(|r| r.len > 0) {
        let done = match punch(file, r) {
            Err(e) if unsupported(&e) && kind == Kind::Discard => Ok(()),
            Err(e) if unsupported(&e) => write_zeros(file, r),
            other => other,
        };
        done.map_err(|e| {
            (
                VIRTIO_BLK_S_IOERR,
                format!("{kind:?} at byte {}: {e}", r.offset),
            )
        })?;
    }
    Ok(VIRTIO_BLK_S_OK)
}
