//! virtio-net on a host TAP device (`--net tap=NAME[,mac=MAC]`): queue 0 receives, queue 1
//! transmits; only VIRTIO_NET_F_MAC is offered (no offloads, no mergeable buffers).
//!
//! The TAP is opened by segvmm with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte
//! vnet header (`virtio_net_hdr_v1`), non-blocking, so each TAP read or write is exactly one
//! guest buffer: the header and the frame. TX is served on the vCPU that notified: each
//! chain is gathered (vm-memory's checked reads, no guest address becomes a host pointer)
//! and written to the TAP with one write. RX runs when the TAP is readable (the event
//! loop, edge-triggered, through [`super::VirtioDevice::host_event`]) and when the guest
//! adds receive buffers (its notify): frames are read into the guest's buffers until the
//! TAP is empty or the buffers run out; a frame that found no buffer waits for the next.
//!
//! A chain that is too short for the header, longer than a maximal frame, or outside guest
//! RAM is dropped with a log line (a NIC drops what it cannot carry); a chain that loops is
//! a [`QueueError`] (DEVICE_NEEDS_RESET).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::str::FromStr;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;

use super::{HostFd, QueueError, VirtioDevice};

/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of `virtio_net_hdr_v1` (VERSION_1 is always negotiated).
pub const HDR_LEN: usize = 12;
/// The largest frame without offloads: a 64 KiB IP packet plus Ethernet and VLAN headers
/// (65562 bytes, as in Linux's and Firecracker's virtio-net).
pub const MAX_FRAME: usize = 65562;
/// The receive queue.
const RXQ: usize = 0;
/// The transmit queue.
const TXQ: usize = 1;
/// Bad chains logged per device before going quiet.
const LOG_LIMIT: u32 = 16;
/// Linux's IFNAMSIZ less the terminating NUL.
const IFNAME_MAX: usize = 15;

/// `--net tap=NAME[,mac=MAC]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP interface (created if missing, which needs CAP_NET_ADMIN).
    pub tap: String,
    /// The guest's MAC (default 52:54:00:12:34:5X, X the device's index).
    pub mac: Option<[u8; 6]>,
}

/// A `--net` argument that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetConfigError {
    /// No `tap=`.
    #[error("--net: tap=NAME is required (tap=NAME[,mac=MAC])")]
    NoTap,
    /// A name Linux would refuse.
    #[error("--net: tap name '{0}' must be 1 to 15 bytes without '/', ':' or spaces")]
    BadName(String),
    /// A MAC that is not six hex pairs.
    #[error("--net: mac '{0}' is not of the form 52:54:00:12:34:56")]
    BadMac(String),
    /// Something else.
    #[error("--net: unknown option '{0}' (tap=NAME[,mac=MAC])")]
    UnknownOption(String),
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut tap, mut mac) = (None, None);
        for opt in s.split(',') {
            if let Some(name) = opt.strip_prefix("tap=") {
                let bad = name.is_empty()
                    || name.len() > IFNAME_MAX
                    || name.contains(['/', ':', ' ', '\0']);
                if bad {
                    return Err(NetConfigError::BadName(name.into()));
                }
                tap = Some(name.to_string());
            } else if let Some(m) = opt.strip_prefix("mac=") {
                mac = Some(parse_mac(m).ok_or_else(|| NetConfigError::BadMac(m.into()))?);
            } else {
                return Err(NetConfigError::UnknownOption(opt.into()));
            }
        }
        Ok(NetConfig {
            tap: tap.ok_or(NetConfigError::NoTap)?,
            mac,
        })
    }
}

/// Errors opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/net/tun cannot be opened.
    #[error("--net tap={tap}: cannot open /dev/net/tun: {source}")]
    OpenTun {
        /// The interface.
        tap: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TUNSETIFF or TUNSETVNETHDRSZ refused (no CAP_NET_ADMIN, a name in use by a
    /// non-TAP interface, ...).
    #[error("--net tap={tap}: {what}: {source} (does the TAP exist and may this user use it?)")]
    Ioctl {
        /// The interface.
        tap: String,
        /// Which call.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The name does not fit `ifr_name`.
    #[error("--net tap={0}: name longer than 15 bytes")]
    NameTooLong(String),
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the union is 24 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (creating if needed) TAP `name`, non-blocking, with a 12-byte vnet header.
pub fn open_tap(name: &str) -> Result<File, Error> {
    if name.len() > IFNAME_MAX {
        return Err(Error::NameTooLong(name.into()));
    }
    let file = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|source| Error::OpenTun {
            tap: name.into(),
            source,
        })?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let ioctl_err = |what| Error::Ioctl {
        tap: name.into(),
        what,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: TUNSETIFF reads (and writes back) one `struct ifreq`; `req` is a live,
    // properly sized and aligned ifreq, and `file` is an open /dev/net/tun descriptor.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(ioctl_err("TUNSETIFF"));
    }
    let size: libc::c_int = HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at `size`.
    if unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNSETVNETHDRSZ,
            &size as *const libc::c_int,
        )
    } < 0
    {
        return Err(ioctl_err("TUNSETVNETHDRSZ"));
    }
    Ok(file)
}

/// A virtio-net device on an open TAP (or any non-blocking packet descriptor that reads
/// and writes one vnet header plus frame per call, such as a SOCK_SEQPACKET socket).
#[derive(Debug)]
pub struct Net {
    tap: File,
    mac: [u8; 6],
    /// A frame read from the TAP that found no receive buffer yet (its length).
    pending: Option<usize>,
    buf: Vec<u8>,
    logged: u32,
    /// Frames received into the guest and sent from it, and frames dropped.
    pub counters: NetCounters,
}

/// What the device moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Frames written to the TAP.
    pub tx_frames: u64,
    /// Frames dropped (bad chains, buffers too small, TAP full).
    pub dropped: u64,
}

impl Net {
    /// Opens the TAP `cfg` names; `index` picks the default MAC.
    pub fn open(cfg: &NetConfig, index: usize) -> Result<Self, Error> {
        let tap = open_tap(&cfg.tap)?;
        let mac = cfg
            .mac
            .unwrap_or([0x52, 0x54, 0, 0x12, 0x34, 0x56 + index as u8]);
        Ok(Net::with_tap(tap, mac))
    }

    /// A device on an already-open, non-blocking descriptor (tests use a socketpair).
    pub fn with_tap(tap: File, mac: [u8; 6]) -> Self {
        Net {
            tap,
            mac,
            pending: None,
            buf: vec![0u8; HDR_LEN + MAX_FRAME],
            logged: 0,
            counters: NetCounters::default(),
        }
    }

    fn log(&mut self, what: &str) {
        self.logged = self.logged.saturating_add(1);
        if self.logged <= LOG_LIMIT {
            let more = if self.logged == LOG_LIMIT {
                " (further messages not logged)"
            } else {
                ""
            };
            eprintln!("segvmm: virtio-net: {what}{more}");
        }
    }

    /// The descriptors of `chain`; a chain that loops, or leaves the table, is an error.
    fn descriptors(
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<(u16, Vec<Descriptor>), QueueError> {
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.collect();
        if descs.last().is_none_or(|d| d.has_next()) {
            return Err(QueueError::BadChain { head });
        }
        Ok((head, descs))
    }

    /// Gathers one TX chain into `buf`; its length, or why it is dropped.
    fn gather(&mut self, descs: &[Descriptor], mem: &GuestMemoryMmap) -> Result<usize, String> {
        let mut len = 0usize;
        for d in descs {
            if d.is_write_only() {
                return Err("TX descriptor is device-writable".into());
            }
            let n = d.len() as usize;
            if len + n > self.buf.len() {
                return Err(format!("TX frame longer than {MAX_FRAME} bytes"));
            }
            mem.read_slice(&mut self.buf[len..len + n], d.addr())
                .map_err(|_| "TX buffer outside guest RAM".to_string())?;
            len += n;
        }
        if len < HDR_LEN {
            return Err(format!(
                "TX chain of {len} bytes is shorter than the header"
            ));
        }
        Ok(len)
    }

    /// Sends every available TX chain; whether any was used.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let mut used = false;
        loop {
            let chain = queue.iter(mem).map_err(QueueError::Ring)?.next();
            let Some(chain) = chain else {
                return Ok(used);
            };
            let (head, descs) = Self::descriptors(chain)?;
            match self.gather(&descs, mem) {
                Ok(len) => match self.tap.write(&self.buf[..len]) {
                    Ok(_) => self.counters.tx_frames += 1,
                    Err(e) => {
                        self.counters.dropped += 1;
                        if e.kind() != std::io::ErrorKind::WouldBlock {
                            self.log(&format!("TAP write: {e}"));
                        }
                    }
                },
                Err(why) => {
                    self.counters.dropped += 1;
                    self.log(&format!("{why} (head {head}); dropped"));
                }
            }
            queue.add_used(mem, head, 0).map_err(QueueError::Used)?;
            used = true;
        }
    }

    /// Reads one frame from the TAP into `buf` (unless one waits already); its length, or
    /// `None` when the TAP is empty.
    fn next_frame(&mut self) -> Option<usize> {
        if let Some(n) = self.pending {
            return Some(n);
        }
        loop {
            match self.tap.read(&mut self.buf) {
                Ok(n) if n >= HDR_LEN => {
                    // num_buffers: always one without VIRTIO_NET_F_MRG_RXBUF (the TAP
                    // leaves those two bytes of its 12-byte header untouched).
                    self.buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                    self.pending = Some(n);
                    return Some(n);
                }
                Ok(0) => return None,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        self.log(&format!("TAP read: {e}"));
                    }
                    return None;
                }
            }
        }
    }

    /// Scatters the pending frame (`len` bytes of `buf`) into one RX chain; the bytes
    /// written, or why the frame is dropped.
    fn scatter(
        &self,
        len: usize,
        descs: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Result<u32, String> {
        let cap: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
        for d in descs {
            if !d.is_write_only() {
                return Err("RX descriptor is driver-only".into());
            }
            if !mem.check_range(d.addr(), d.len() as usize, Permissions::Write) {
                return Err("RX buffer outside guest RAM".into());
            }
        }
        if cap < len as u64 {
            return Err(format!(
                "RX chain of {cap} bytes is shorter than a {len}-byte frame"
            ));
        }
        let mut off = 0usize;
        for d in descs {
            let n = (len - off).min(d.len() as usize);
            mem.write_slice(&self.buf[off..off + n], d.addr())
                .map_err(|_| "RX buffer outside guest RAM".to_string())?;
            off += n;
            if off == len {
                break;
            }
        }
        Ok(len as u32)
    }

    /// Moves frames from the TAP into the guest's receive buffers; whether any was used.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(len) = self.next_frame() {
            let chain = queue.iter(mem).map_err(QueueError::Ring)?.next();
            let Some(chain) = chain else {
                return Ok(used);
            };
            self.pending = None;
            let (head, descs) = Self::descriptors(chain)?;
            let written = match self.scatter(len, &descs, mem) {
                Ok(n) => {
                    self.counters.rx_frames += 1;
                    n
                }
                Err(why) => {
                    self.counters.dropped += 1;
                    self.log(&format!("{why} (head {head}); frame dropped"));
                    0
                }
            };
            queue
                .add_used(mem, head, written)
                .map_err(QueueError::Used)?;
            used = true;
        }
        Ok(used)
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        // Transmit offloads: the guest hands over partially checksummed TCP segments of up
        // to 64 KiB and the host's TAP checksums and segments them (the header passes
        // through as it is). Receive offloads stay off (the TAP checksums and segments
        // what it gives the guest).
        (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_HOST_TSO6)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio_net_config: mac[6] (status and the rest are not offered).
        data.fill(0);
        let start = (offset as usize).min(self.mac.len());
        let src = &self.mac[start..];
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        match index {
            RXQ => self.receive(queue, mem),
            TXQ => self.transmit(queue, mem),
            _ => Ok(false),
        }
    }

    fn host_fds(&self) -> Vec<HostFd> {
        vec![HostFd {
            fd: self.tap.as_raw_fd(),
            events: EventSet::IN | EventSet::EDGE_TRIGGERED,
        }]
    }

    fn host_event(
        &mut self,
        _fd: RawFd,
        _events: EventSet,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<u32, QueueError> {
        let Some(rx) = queues.get_mut(RXQ) else {
            return Ok(0);
        };
        if !rx.ready() {
            return Ok(0);
        }
        Ok(if self.receive(rx, mem)? { 1 << RXQ } else { 0 })
    }

    fn reset(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_arguments_parse_and_bad_ones_are_refused() {
        let c: NetConfig = "tap=tap0,mac=52:54:00:aa:bb:0c".parse().unwrap();
        assert_eq!(c.tap, "tap0");
        assert_eq!(c.mac, Some([0x52, 0x54, 0, 0xaa, 0xbb, 0x0c]));
        assert_eq!("tap=t".parse::<NetConfig>().unwrap().mac, None);
        assert_eq!(
            "mac=52:54:00:aa:bb:0c".parse::<NetConfig>(),
            Err(NetConfigError::NoTap)
        );
        assert!(matches!(
            "tap=0123456789abcdef".parse::<NetConfig>(),
            Err(NetConfigError::BadName(_))
        ));
        assert!(matches!(
            "tap=a/b".parse::<NetConfig>(),
            Err(NetConfigError::BadName(_))
        ));
        assert!(matches!(
            "tap=a,mac=1:2:3".parse::<NetConfig>(),
            Err(NetConfigError::BadMac(_))
        ));
        assert!(matches!(
            "tap=a,x=1".parse::<NetConfig>(),
            Err(NetConfigError::UnknownOption(_))
        ));
        assert!(matches!(
            open_tap("0123456789abcdefg"),
            Err(Error::NameTooLong(_))
        ));
    }
}
