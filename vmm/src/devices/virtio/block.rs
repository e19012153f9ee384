//! virtio-blk on a raw image file: IN, OUT, FLUSH (fdatasync on the host), GET_ID and, on a
//! writable disk, DISCARD and WRITE_ZEROES (holes punched in the image, see [`discard`]); one
//! queue, served where the notify arrives (the event loop through an ioeventfd, else the
//! vCPU that wrote it). VIRTIO_RING_F_EVENT_IDX is offered unless `event_idx=off`: the
//! driver's used_event then decides which completions interrupt, and the device's
//! avail_event which requests kick. The image is locked with flock when it is opened (exclusive, shared for a read-only disk), so two VMMs cannot write one disk.
//!
//! Guest mistakes a status byte can report (a data buffer outside guest RAM or in the
//! wrong direction, a length that is not a multiple of 512, a request past the disk's end,
//! a write to a read-only disk) get VIRTIO_BLK_S_IOERR; a chain with no usable header or
//! status byte is a [`QueueError`] (the transport sets DEVICE_NEEDS_RESET). Data moves
//! through a bounce buffer with vm-memory's checked accessors: no guest address becomes a
//! host pointer.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::{QueueError, VirtioDevice};

mod discard;

/// Bytes in a sector.
pub const SECTOR: u64 = 512;
/// Entries of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of a request header (type, reserved, sector).
const HEADER: u32 = 16;
/// Bytes of the configuration space given (`virtio_blk_config` up to and including
/// `write_zeroes_may_unmap` and its padding).
const CONFIG_LEN: usize = 60;
/// Bytes moved per host call.
const CHUNK: usize = 64 << 10;
/// Bad requests logged per device (one line each) before going quiet.
const LOG_LIMIT: u32 = 16;

/// The `--disk` syntax (for messages).
const SYNTAX: &str = "PATH[,ro][,id=NAME][,event_idx=on|off]";

/// `--disk PATH[,ro][,id=NAME][,event_idx=on|off]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Read-only: writes fail with an I/O error, the lock is shared.
    pub read_only: bool,
    /// The serial GET_ID answers (at most 20 bytes; default the file name, cut to 20).
    pub id: Option<String>,
    /// Offer VIRTIO_RING_F_EVENT_IDX (notification suppression; default on).
    pub event_idx: bool,
}

/// A `--disk` argument that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskConfigError {
    /// No path before the options.
    #[error("--disk: empty path ({SYNTAX})")]
    EmptyPath,
    /// An option other than `ro`, `id=` and `event_idx=`.
    #[error("--disk: unknown option '{0}' ({SYNTAX})")]
    UnknownOption(String),
    /// `event_idx=` with another value than `on` or `off`.
    #[error("--disk: event_idx={0}: expected on or off")]
    BadEventIdx(String),
    /// An id longer than virtio-blk's 20 bytes, or empty.
    #[error("--disk: id '{0}' must be 1 to 20 bytes")]
    BadId(String),
}

impl FromStr for DiskConfig {
    type Err = DiskConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts.next().filter(|p| !p.is_empty());
        let mut cfg = DiskConfig {
            path: PathBuf::from(path.ok_or(DiskConfigError::EmptyPath)?),
            read_only: false,
            id: None,
            event_idx: true,
        };
        for opt in parts {
            if opt == "ro" {
                cfg.read_only = true;
            } else if let Some(v) = opt.strip_prefix("event_idx=") {
                cfg.event_idx = match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(DiskConfigError::BadEventIdx(v.into())),
                };
            } else if let Some(id) = opt.strip_prefix("id=") {
                if id.is_empty() || id.len() > VIRTIO_BLK_ID_BYTES as usize {
                    return Err(DiskConfigError::BadId(id.into()));
                }
                cfg.id = Some(id.into());
            } else {
                return Err(DiskConfigError::UnknownOption(opt.into()));
            }
        }
        Ok(cfg)
    }
}

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// open(2) or reading its size failed.
    #[error("--disk {}: cannot open: {source}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither a regular file nor a block device.
    #[error("--disk {}: not a regular file or block device", path.display())]
    NotAFile {
        /// The image.
        path: PathBuf,
    },
    /// Another process holds a conflicting flock.
    #[error("--disk {}: locked by another process (is another VMM using it?)", path.display())]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// flock(2) failed otherwise.
    #[error("--disk {}: cannot lock: {source}", path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Opens `cfg.path` (read-write unless read-only) and locks it without waiting.
fn open_locked(cfg: &DiskConfig) -> Result<(File, u64), Error> {
    let path = &cfg.path;
    let open_err = |source| Error::Open {
        path: path.clone(),
        source,
    };
    let mut file = File::options()
        .read(true)
        .write(!cfg.read_only)
        .open(path)
        .map_err(open_err)?;
    let ft = file.metadata().map_err(open_err)?.file_type();
    if !ft.is_file() && !std::os::unix::fs::FileTypeExt::is_block_device(&ft) {
        return Err(Error::NotAFile { path: path.clone() });
    }
    let op = if cfg.read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock(2) takes a descriptor `file` owns and keeps open across the call, and
    // an operation constant; it reads or writes no memory of this process.
    let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Locked { path: path.clone() }
        } else {
            Error::Lock {
                path: path.clone(),
                source: e,
            }
        });
    }
    let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
    Ok((file, len))
}

/// The default serial: the image's file name, cut to 20 bytes.
fn default_id(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut id = name.unwrap_or_else(|| "segvmm-disk".into());
    while id.len() > VIRTIO_BLK_ID_BYTES as usize {
        id.pop();
    }
    id
}

/// `virtio_blk_config`: capacity, seg_max and, for a writable disk, the discard and
/// write-zeroes limits (size_max, geometry, blk_size and topology are not offered).
fn config_space(sectors: u64, read_only: bool) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, v: u32| c[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(12, u32::from(QUEUE_SIZE - 2));
    if !read_only {
        put(36, discard::MAX_SECTORS); // max_discard_sectors
        put(40, discard::MAX_SEGMENTS); // max_discard_seg
        put(44, discard::ALIGNMENT); // discard_sector_alignment
        put(48, discard::MAX_SECTORS); // max_write_zeroes_sectors
        put(52, discard::MAX_SEGMENTS); // max_write_zeroes_seg
        c[56] = 1; // write_zeroes_may_unmap
    }
    c[..8].copy_from_slice(&sectors.to_le_bytes());
    c
}

/// A virtio-blk device on an open, locked image.
#[derive(Debug)]
pub struct Block {
    file: File,
    path: PathBuf,
    read_only: bool,
    /// VIRTIO_RING_F_EVENT_IDX offered.
    event_idx: bool,
    /// Size in sectors (a partial last sector is not addressable).
    sectors: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: [u8; CONFIG_LEN],
    logged: u32,
}

/// Why moving a buffer failed.
#[derive(Debug, thiserror::Error)]
enum MoveError {
    /// The host file.
    #[error("image I/O: {0}")]
    Image(#[source] std::io::Error),
    /// Guest RAM (checked before, so only a bug gets here).
    #[error("guest memory: {0}")]
    Guest(#[source] vm_memory::GuestMemoryError),
}

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Disk to guest (VIRTIO_BLK_T_IN).
    In,
    /// Guest to disk (VIRTIO_BLK_T_OUT).
    Out,
}

impl Block {
    /// Opens and locks the image `cfg` names; refused when missing, unreadable or locked.
    pub fn open(cfg: &DiskConfig) -> Result<Self, Error> {
        let (file, len) = open_locked(cfg)?;
        let sectors = len / SECTOR;
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let name = cfg.id.clone().unwrap_or_else(|| default_id(&cfg.path));
        let n = name.len().min(id.len());
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        let config = config_space(sectors, cfg.read_only);
        Ok(Block {
            file,
            path: cfg.path.clone(),
            read_only: cfg.read_only,
            event_idx: cfg.event_idx,
            sectors,
            id,
            config,
            logged: 0,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    fn log_bad(&mut self, what: &str) {
        self.logged = self.logged.saturating_add(1);
        if self.logged <= LOG_LIMIT {
            eprintln!(
                "segvmm: virtio-blk {}: {what}{}",
                self.path.display(),
                if self.logged == LOG_LIMIT {
                    " (further bad requests not logged)"
                } else {
                    ""
                }
            );
        }
    }

    /// Serves every available chain; whether any was used.
    fn serve_available(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        loop {
            let chain = queue.iter(mem).map_err(QueueError::Ring)?.next();
            let Some(chain) = chain else {
                return Ok(used);
            };
            let head = chain.head_index();
            let len = self.serve(chain, mem)?;
            queue.add_used(mem, head, len).map_err(QueueError::Used)?;
            used = true;
        }
    }

    /// Serves one chain; the bytes written into guest buffers (status byte included).
    fn serve(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, QueueError> {
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.collect();
        // The iterator stops after queue-size descriptors, at an index past the table or
        // at an unreadable descriptor: a last descriptor that still has NEXT is one of them.
        if descs.last().is_none_or(|d| d.has_next()) {
            return Err(QueueError::BadChain { head });
        }
        let bad = |what| QueueError::BadRequest { head, what };
        let (hdr, rest) = descs.split_first().ok_or(bad("empty chain"))?;
        let (status, data) = rest.split_last().ok_or(bad("no status descriptor"))?;
        if hdr.is_write_only() || hdr.len() < HEADER {
            return Err(bad("header descriptor is short or device-writable"));
        }
        let mut h = [0u8; HEADER as usize];
        mem.read_slice(&mut h, hdr.addr())
            .map_err(|_| bad("header outside guest RAM"))?;
        if !status.is_write_only() || status.len() < 1 {
            return Err(bad("status descriptor is empty or driver-only"));
        }
        if !mem.check_range(status.addr(), 1, Permissions::Write) {
            return Err(bad("status byte outside guest RAM"));
        }
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&h[8..]);
        let (code, written) = self.execute(kind, u64::from_le_bytes(sector), data, mem);
        mem.write_obj(code as u8, status.addr())
            .map_err(|_| bad("status byte outside guest RAM"))?;
        Ok(written.saturating_add(1))
    }

    /// Runs a request; its status and the data bytes written to the guest.
    fn execute(
        &mut self,
        kind: u32,
        sector: u64,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> (u32, u32) {
        match kind {
            VIRTIO_BLK_T_IN => self.transfer(Dir::In, sector, data, mem),
            VIRTIO_BLK_T_OUT if self.read_only => {
                self.log_bad("write to a read-only disk");
                (VIRTIO_BLK_S_IOERR, 0)
            }
            VIRTIO_BLK_T_OUT => self.transfer(Dir::Out, sector, data, mem),
            VIRTIO_BLK_T_FLUSH => match self.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => {
                    self.log_bad(&format!("fdatasync: {e}"));
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            VIRTIO_BLK_T_GET_ID => self.get_id(data, mem),
            VIRTIO_BLK_T_DISCARD => self.discard(discard::Kind::Discard, data, mem),
            VIRTIO_BLK_T_WRITE_ZEROES => self.discard(discard::Kind::WriteZeroes, data, mem),
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    /// DISCARD or WRITE_ZEROES (refused on a read-only disk, which does not offer them).
    fn discard(
        &mut self,
        kind: discard::Kind,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> (u32, u32) {
        if self.read_only {
            self.log_bad(&format!("{kind:?} on a read-only disk"));
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        match discard::execute(&self.file, kind, data, mem, self.sectors) {
            Ok(code) => (code, 0),
            Err((code, what)) => {
                self.log_bad(&format!("{kind:?}: {what}"));
                (code, 0)
            }
        }
    }

    /// GET_ID: the serial into the guest's buffers (at most 20 bytes, zero-padded).
    fn get_id(&mut self, data: &[Descriptor], mem: &GuestMemoryMmap) -> (u32, u32) {
        let mut left: &[u8] = &self.id;
        let mut written = 0u32;
        for d in data {
            let n = left.len().min(d.len() as usize);
            if !d.is_write_only() || mem.write_slice(&left[..n], d.addr()).is_err() {
                self.log_bad("GET_ID buffer is driver-only or outside guest RAM");
                return (VIRTIO_BLK_S_IOERR, written);
            }
            left = &left[n..];
            written += n as u32;
        }
        (VIRTIO_BLK_S_OK, written)
    }

    /// Checks a data transfer: directions, guest RAM, whole sectors, the disk's end. The
    /// total length.
    fn check_transfer(
        &self,
        dir: Dir,
        sector: u64,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Result<u64, &'static str> {
        let mut total = 0u64;
        for d in data {
            if d.is_write_only() != (dir == Dir::In) {
                return Err("data buffer in the wrong direction");
            }
            let perm = match dir {
                Dir::In => Permissions::Write,
                Dir::Out => Permissions::Read,
            };
            if !mem.check_range(d.addr(), d.len() as usize, perm) {
                return Err("data buffer outside guest RAM");
            }
            total += u64::from(d.len());
        }
        if total % SECTOR != 0 {
            return Err("data length is not a multiple of 512");
        }
        let end = sector
            .checked_add(total / SECTOR)
            .filter(|&e| e <= self.sectors);
        end.map(|_| total).ok_or("request past the end of the disk")
    }

    /// IN or OUT; the status and the bytes written to the guest.
    fn transfer(
        &mut self,
        dir: Dir,
        sector: u64,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> (u32, u32) {
        let total = match self.check_transfer(dir, sector, data, mem) {
            Ok(t) => t,
            Err(what) => {
                self.log_bad(&format!("{what} (sector {sector})"));
                return (VIRTIO_BLK_S_IOERR, 0);
            }
        };
        let mut buf = vec![0u8; CHUNK];
        let mut off = sector * SECTOR;
        for d in data {
            if let Err(e) = self.move_buffer(dir, d, off, &mut buf, mem) {
                self.log_bad(&format!("{e} (sector {sector})"));
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            off += u64::from(d.len());
        }
        let written = if dir == Dir::In { total as u32 } else { 0 };
        (VIRTIO_BLK_S_OK, written)
    }

    /// Moves one guest buffer to or from the image at byte `off`, a chunk at a time.
    fn move_buffer(
        &self,
        dir: Dir,
        d: &Descriptor,
        off: u64,
        buf: &mut [u8],
        mem: &GuestMemoryMmap,
    ) -> Result<(), MoveError> {
        let mut done = 0u64;
        let len = u64::from(d.len());
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            let gpa = GuestAddress(d.addr().0 + done);
            let chunk = &mut buf[..n];
            match dir {
                Dir::In => {
                    self.file
                        .read_exact_at(chunk, off + done)
                        .map_err(MoveError::Image)?;
                    mem.write_slice(chunk, gpa).map_err(MoveError::Guest)?;
                }
                Dir::Out => {
                    mem.read_slice(chunk, gpa).map_err(MoveError::Guest)?;
                    self.file
                        .write_all_at(chunk, off + done)
                        .map_err(MoveError::Image)?;
                }
            }
            done += n as u64;
        }
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let rw = match self.read_only {
            true => 1 << VIRTIO_BLK_F_RO,
            false => (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES),
        };
        let event_idx = if self.event_idx {
            1 << VIRTIO_RING_F_EVENT_IDX
        } else {
            0
        };
        (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX) | rw | event_idx
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let start = (offset as usize).min(self.config.len());
        let src = &self.config[start..];
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        // Kicks off while serving (the used ring's NO_NOTIFY flag; with EVENT_IDX the
        // avail_event left behind already suppresses them), on again once the ring looks
        // empty (NO_NOTIFY cleared, or avail_event = the next entry), and served again if
        // the driver added a request in between.
        let mut used = false;
        loop {
            queue.disable_notification(mem).map_err(QueueError::Ring)?;
            used |= self.serve_available(queue, mem)?;
            if !queue.enable_notification(mem).map_err(QueueError::Ring)? {
                return Ok(used);
            }
        }
    }
}
