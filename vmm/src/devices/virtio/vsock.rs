//! virtio-vsock in Firecracker's hybrid style (`--vsock cid=N,uds=PATH`): queues rx (0),
//! tx (1) and event (2); stream sockets only; the host end of every connection is a Unix
//! socket.
//!
//! * A host program connects to PATH and writes `CONNECT <port>\n`; the device asks the
//!   guest (REQUEST to `<port>`) and, once a guest listener accepts (RESPONSE), answers
//!   `OK <hostport>\n`; bytes then flow both ways.
//! * A guest connection to host port P is connected to the Unix socket `PATH_P`; none
//!   there, and the guest gets RST.
//!
//! Everything runs on the VM's event loop (queue notifications wake it through
//! [`super::VirtioDevice::notify_on_event_loop`]), where connect and accept are allowed:
//! each wake-up serves the whole device (accept, handshakes, the TX queue, then the RX
//! queue from control packets and readable connections). Flow control is virtio's
//! credit scheme: the device sends a connection's data only while the guest's advertised
//! buffer (`buf_alloc - (tx_cnt - fwd_cnt)`) has room, and advertises its own
//! [`BUF_ALLOC`] with the bytes it has forwarded to the host socket; a guest that sends
//! past its credit is reset. The packet header is laid out here (44 bytes, little-endian)
//! rather than with the `virtio-vsock` crate, which would pull a second `virtio-queue`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;

use super::{HostFd, QueueError, VirtioDevice};

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Bytes of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The receive buffer the device advertises per connection.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Largest payload moved in one packet.
const MAX_PKT: usize = 64 << 10;
const RXQ: usize = 0;
const TXQ: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 16];
/// Host-initiated connections get host ports from here up (as Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
const LOG_LIMIT: u32 = 16;

const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flags: the sender will receive no more, will send no more.
const SHUT_RCV: u32 = 1;
const SHUT_SEND: u32 = 2;

/// `--vsock cid=N,uds=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (3 or more).
    pub cid: u64,
    /// The Unix socket host programs connect to (must not exist); guest connections to
    /// port P go to `PATH_P`.
    pub uds: PathBuf,
}

/// A `--vsock` argument that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockConfigError {
    /// A CID below 3 or not a number.
    #[error("--vsock: cid '{0}' must be a number from 3 to 4294967294")]
    BadCid(String),
    /// cid= or uds= missing.
    #[error("--vsock: cid=N and uds=PATH are both required")]
    Missing,
    /// Something else.
    #[error("--vsock: unknown option '{0}' (cid=N,uds=PATH)")]
    UnknownOption(String),
}

impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut cid, mut uds) = (None, None);
        for opt in s.split(',') {
            if let Some(c) = opt.strip_prefix("cid=") {
                let n = c
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| (3..u64::from(u32::MAX)).contains(&n));
                cid = Some(n.ok_or_else(|| VsockConfigError::BadCid(c.into()))?);
            } else if let Some(p) = opt.strip_prefix("uds=").filter(|p| !p.is_empty()) {
                uds = Some(PathBuf::from(p));
            } else {
                return Err(VsockConfigError::UnknownOption(opt.into()));
            }
        }
        match (cid, uds) {
            (Some(cid), Some(uds)) => Ok(VsockConfig { cid, uds }),
            _ => Err(VsockConfigError::Missing),
        }
    }
}

/// Errors setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket path is taken.
    #[error("--vsock uds={}: the path exists (remove it or choose another)", .0.display())]
    Exists(PathBuf),
    /// bind(2) or listen(2) failed.
    #[error("--vsock uds={}: cannot listen: {source}", path.display())]
    Listen {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn parse(b: &[u8]) -> Option<Hdr> {
        let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
        Some(Hdr {
            src_cid: u64_at(0)?,
            dst_cid: u64_at(8)?,
            src_port: u32_at(16)?,
            dst_port: u32_at(20)?,
            len: u32_at(24)?,
            kind: u16_at(28)?,
            op: u16_at(30)?,
            flags: u32_at(32)?,
            buf_alloc: u32_at(36)?,
            fwd_cnt: u32_at(40)?,
        })
    }

    fn bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// One stream connection.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    /// The host side's port.
    local: u32,
    /// The guest side's port.
    peer: u32,
    /// Waiting for the guest's RESPONSE (host-initiated).
    connecting: bool,
    /// The host end hit EOF (SHUTDOWN with SEND was sent to the guest).
    host_eof: bool,
    /// The guest will send no more (its SHUTDOWN with SEND; the host socket is shut for
    /// writing).
    guest_eof: bool,
    /// The guest will receive no more.
    guest_no_rx: bool,
    /// The guest's buffer and what it has consumed of ours.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    /// Payload bytes from the guest written to the host socket.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_told: u32,
    /// Guest data the host socket has not taken yet.
    to_host: Vec<u8>,
    /// Host data read before the connection was up (after the CONNECT line).
    to_guest: Vec<u8>,
}

impl Conn {
    fn new(stream: UnixStream, local: u32, peer: u32, connecting: bool) -> Self {
        Conn {
            stream,
            local,
            peer,
            connecting,
            host_eof: false,
            guest_eof: false,
            guest_no_rx: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_told: 0,
            to_host: Vec::new(),
            to_guest: Vec::new(),
        }
    }

    /// Room left in the guest's receive buffer.
    fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Writes what the host socket takes of `to_host`; false when the socket is gone.
    fn flush(&mut self) -> bool {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return e.kind() == ErrorKind::WouldBlock,
            }
        }
        true
    }
}

/// A host connection that has not finished its `CONNECT <port>` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    handshakes: Vec<Handshake>,
    conns: Vec<Conn>,
    /// Control packets for the guest (RESPONSE, RST, SHUTDOWN, CREDIT_UPDATE, REQUEST).
    control: VecDeque<Hdr>,
    /// Sockets no longer watched, closed at [`VirtioDevice::reap`].
    retired: Vec<UnixStream>,
    next_local: u32,
    buf: Vec<u8>,
    logged: u32,
}

impl Vsock {
    /// Listens on `cfg.uds`, which must not exist.
    pub fn open(cfg: &VsockConfig) -> Result<Self, Error> {
        if cfg.uds.symlink_metadata().is_ok() {
            return Err(Error::Exists(cfg.uds.clone()));
        }
        let listen = |source| Error::Listen {
            path: cfg.uds.clone(),
            source,
        };
        let listener = UnixListener::bind(&cfg.uds).map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;
        Ok(Vsock {
            cid: cfg.cid,
            uds: cfg.uds.clone(),
            listener,
            handshakes: Vec::new(),
            conns: Vec::new(),
            control: VecDeque::new(),
            retired: Vec::new(),
            next_local: FIRST_LOCAL_PORT,
            buf: vec![0u8; HDR_LEN + MAX_PKT],
            logged: 0,
        })
    }

    fn log(&mut self, what: &str) {
        self.logged = self.logged.saturating_add(1);
        if self.logged <= LOG_LIMIT {
            eprintln!("segvmm: virtio-vsock: {what}");
        }
    }

    /// A header from the host to the guest for `c`.
    fn hdr_for(&self, c: &Conn, op: u16, flags: u32, len: u32) -> Hdr {
        Hdr {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: c.local,
            dst_port: c.peer,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
        }
    }

    /// An RST answering `h` (a packet from the guest).
    fn rst_for(&self, h: &Hdr) -> Hdr {
        Hdr {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            kind: TYPE_STREAM,
            op: OP_RST,
            ..Hdr::default()
        }
    }

    /// Queues a control packet for connection `i`.
    fn control_for(&mut self, i: usize, op: u16, flags: u32) {
        let h = self.hdr_for(&self.conns[i], op, flags, 0);
        self.conns[i].fwd_told = h.fwd_cnt;
        self.control.push_back(h);
    }

    /// Drops connection `i` (its socket is closed once no longer watched).
    fn close(&mut self, i: usize) {
        let c = self.conns.swap_remove(i);
        self.retired.push(c.stream);
    }

    fn find(&self, local: u32, peer: u32) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.local == local && c.peer == peer)
    }

    /// Accepts host connections until none wait.
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.handshakes.push(Handshake {
                            stream,
                            line: Vec::new(),
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        self.log(&format!("accept: {e}"));
                    }
                    return;
                }
            }
        }
    }

    /// Reads `CONNECT <port>\n` lines; a complete one asks the guest for the connection.
    fn handshakes(&mut self) {
        let mut i = 0;
        while i < self.handshakes.len() {
            match read_line(&mut self.handshakes[i]) {
                LineState::More => i += 1,
                LineState::Bad => {
                    let h = self.handshakes.swap_remove(i);
                    self.retired.push(h.stream);
                }
                LineState::Port(port, rest) => {
                    let h = self.handshakes.swap_remove(i);
                    let local = self.next_local;
                    self.next_local = self.next_local.wrapping_add(1).max(FIRST_LOCAL_PORT);
                    let mut c = Conn::new(h.stream, local, port, true);
                    c.to_guest = rest;
                    self.conns.push(c);
                    self.control_for(self.conns.len() - 1, OP_REQUEST, 0);
                }
            }
        }
    }

    /// A guest REQUEST to host port `h.dst_port`: connect to `PATH_<port>`.
    fn guest_connect(&mut self, h: &Hdr) {
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let stream =
            UnixStream::connect(Path::new(&path)).and_then(|s| s.set_nonblocking(true).map(|()| s));
        match stream {
            Ok(s) => {
                let mut c = Conn::new(s, h.dst_port, h.src_port, false);
                c.peer_buf_alloc = h.buf_alloc;
                c.peer_fwd_cnt = h.fwd_cnt;
                self.conns.push(c);
                self.control_for(self.conns.len() - 1, OP_RESPONSE, 0);
            }
            Err(_) => self.control.push_back(self.rst_for(h)),
        }
    }

    /// One packet from the guest (`payload` after the header).
    fn guest_packet(&mut self, h: &Hdr, payload: &[u8]) {
        if h.op == OP_RST && self.find(h.dst_port, h.src_port).is_none() {
            return;
        }
        if h.src_cid != self.cid || h.dst_cid != HOST_CID || h.kind != TYPE_STREAM {
            return self.control.push_back(self.rst_for(h));
        }
        let Some(i) = self.find(h.dst_port, h.src_port) else {
            if h.op == OP_REQUEST {
                self.guest_connect(h);
            } else {
                self.control.push_back(self.rst_for(h));
            }
            return;
        };
        let c = &mut self.conns[i];
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            OP_RESPONSE if c.connecting => {
                c.connecting = false;
                let ok = format!("OK {}\n", c.local);
                if c.stream.write_all(ok.as_bytes()).is_err() {
                    self.control_for(i, OP_RST, 0);
                    self.close(i);
                }
            }
            OP_RW if !c.connecting => self.guest_data(i, payload),
            OP_CREDIT_REQUEST => self.control_for(i, OP_CREDIT_UPDATE, 0),
            OP_CREDIT_UPDATE => {}
            OP_SHUTDOWN => self.guest_shutdown(i, h.flags),
            OP_RST => self.close(i),
            _ => {
                self.control_for(i, OP_RST, 0);
                self.close(i);
            }
        }
    }

    /// The guest's SHUTDOWN: a half-close shuts the host socket for writing (or stops
    /// sending to the guest); once neither side sends, RST ends the connection.
    fn guest_shutdown(&mut self, i: usize, flags: u32) {
        let c = &mut self.conns[i];
        c.guest_no_rx |= flags & SHUT_RCV != 0;
        if flags & SHUT_SEND != 0 && !c.guest_eof {
            c.guest_eof = true;
            c.flush();
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.guest_eof && (c.host_eof || c.guest_no_rx) {
            self.control_for(i, OP_RST, 0);
            self.close(i);
        }
    }

    /// Guest data for connection `i`, within the credit it was given.
    fn guest_data(&mut self, i: usize, payload: &[u8]) {
        let c = &mut self.conns[i];
        if c.to_host.len() + payload.len() > BUF_ALLOC as usize {
            self.log("guest sent past its credit; connection reset");
            self.control_for(i, OP_RST, 0);
            return self.close(i);
        }
        c.to_host.extend_from_slice(payload);
        if !c.flush() {
            self.control_for(i, OP_RST, 0);
            return self.close(i);
        }
        let c = &self.conns[i];
        if c.fwd_cnt.wrapping_sub(c.fwd_told) >= BUF_ALLOC / 4 {
            self.control_for(i, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Serves every available TX chain; whether any was used.
    fn transmit(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let mut used = false;
        loop {
            let chain = q.iter(mem).map_err(QueueError::Ring)?.next();
            let Some(chain) = chain else {
                return Ok(used);
            };
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            if descs.last().is_none_or(|d| d.has_next()) {
                return Err(QueueError::BadChain { head });
            }
            match gather(&descs, mem, &mut self.buf) {
                Ok(n) => match Hdr::parse(&self.buf[..n]) {
                    Some(h) if h.len as usize <= n - HDR_LEN => {
                        let payload = self.buf[HDR_LEN..HDR_LEN + h.len as usize].to_vec();
                        self.guest_packet(&h, &payload);
                    }
                    _ => self.log(&format!("TX packet at head {head} is truncated; dropped")),
                },
                Err(why) => self.log(&format!("{why} (head {head}); dropped")),
            }
            q.add_used(mem, head, 0).map_err(QueueError::Used)?;
            used = true;
        }
    }

    /// The next packet for the guest into `buf` (at most `room` payload bytes): control
    /// packets first, then data of connections the guest has credit for. Its length.
    fn next_rx(&mut self, room: usize) -> Option<usize> {
        if let Some(h) = self.control.pop_front() {
            self.buf[..HDR_LEN].copy_from_slice(&h.bytes());
            return Some(HDR_LEN);
        }
        let mut i = 0;
        while i < self.conns.len() {
            match self.read_conn(i, room) {
                Some(n) => return Some(n),
                None => i += 1,
            }
        }
        None
    }

    /// Host data of connection `i` for the guest, as an RW packet in `buf`; on EOF a
    /// SHUTDOWN is queued (returned at once); `None` when there is nothing to send.
    fn read_conn(&mut self, i: usize, room: usize) -> Option<usize> {
        let c = &mut self.conns[i];
        if c.connecting || c.host_eof || c.guest_no_rx {
            return None;
        }
        let max = room.min(c.credit() as usize).min(MAX_PKT);
        if max == 0 {
            return None;
        }
        let n = if !c.to_guest.is_empty() {
            let n = c.to_guest.len().min(max);
            self.buf[HDR_LEN..HDR_LEN + n].copy_from_slice(&c.to_guest[..n]);
            c.to_guest.drain(..n);
            n
        } else {
            match c.stream.read(&mut self.buf[HDR_LEN..HDR_LEN + max]) {
                Ok(0) => {
                    c.host_eof = true;
                    let op = if c.guest_eof { OP_RST } else { OP_SHUTDOWN };
                    let h = self.hdr_for(&self.conns[i], op, SHUT_SEND, 0);
                    if op == OP_RST {
                        self.close(i);
                    }
                    self.buf[..HDR_LEN].copy_from_slice(&h.bytes());
                    return Some(HDR_LEN);
                }
                Ok(n) => n,
                Err(_) => return None,
            }
        };
        let h = self.hdr_for(&self.conns[i], OP_RW, 0, n as u32);
        let c = &mut self.conns[i];
        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
        c.fwd_told = h.fwd_cnt;
        self.buf[..HDR_LEN].copy_from_slice(&h.bytes());
        Some(HDR_LEN + n)
    }

    /// Fills RX chains while there is something to send; whether any was used.
    fn receive(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let mut used = false;
        loop {
            let chain = q.iter(mem).map_err(QueueError::Ring)?.next();
            let Some(chain) = chain else {
                return Ok(used);
            };
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            if descs.last().is_none_or(|d| d.has_next()) {
                return Err(QueueError::BadChain { head });
            }
            let cap = match rx_capacity(&descs, mem) {
                Ok(c) => c,
                Err(why) => {
                    self.log(&format!("{why} (head {head}); buffer returned empty"));
                    q.add_used(mem, head, 0).map_err(QueueError::Used)?;
                    used = true;
                    continue;
                }
            };
            let Some(n) = self.next_rx(cap - HDR_LEN) else {
                q.go_to_previous_position();
                return Ok(used);
            };
            scatter(&self.buf[..n], &descs, mem)
                .map_err(|what| QueueError::BadRequest { head, what })?;
            q.add_used(mem, head, n as u32).map_err(QueueError::Used)?;
            used = true;
        }
    }
}

/// What a handshake line holds so far.
enum LineState {
    More,
    Bad,
    /// The port, and bytes read past the newline.
    Port(u32, Vec<u8>),
}

fn read_line(h: &mut Handshake) -> LineState {
    let mut b = [0u8; 64];
    loop {
        if let Some(nl) = h.line.iter().position(|&c| c == b'\n') {
            let rest = h.line.split_off(nl + 1);
            let line = String::from_utf8_lossy(&h.line[..nl]).into_owned();
            let port = line
                .trim_end()
                .strip_prefix("CONNECT ")
                .and_then(|p| p.parse().ok());
            return port.map_or(LineState::Bad, |p| LineState::Port(p, rest));
        }
        if h.line.len() > MAX_LINE {
            return LineState::Bad;
        }
        match h.stream.read(&mut b) {
            Ok(0) => return LineState::Bad,
            Ok(n) => h.line.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return LineState::More,
            Err(_) => return LineState::Bad,
        }
    }
}

/// Gathers a TX chain into `buf`; its length.
fn gather(
    descs: &[Descriptor],
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> Result<usize, &'static str> {
    let mut n = 0usize;
    for d in descs {
        let l = d.len() as usize;
        if d.is_write_only() {
            return Err("TX descriptor is device-writable");
        }
        if n + l > buf.len() {
            return Err("TX packet larger than 64 KiB");
        }
        mem.read_slice(&mut buf[n..n + l], d.addr())
            .map_err(|_| "TX buffer outside guest RAM")?;
        n += l;
    }
    if n < HDR_LEN {
        return Err("TX chain shorter than the header");
    }
    Ok(n)
}

/// The bytes an RX chain holds (all device-writable, in guest RAM, room for a header).
fn rx_capacity(descs: &[Descriptor], mem: &GuestMemoryMmap) -> Result<usize, &'static str> {
    let mut cap = 0usize;
    for d in descs {
        if !d.is_write_only() {
            return Err("RX descriptor is driver-only");
        }
        if !mem.check_range(d.addr(), d.len() as usize, Permissions::Write) {
            return Err("RX buffer outside guest RAM");
        }
        cap += d.len() as usize;
    }
    if cap <= HDR_LEN {
        return Err("RX chain has no room past the header");
    }
    Ok(cap)
}

fn scatter(data: &[u8], descs: &[Descriptor], mem: &GuestMemoryMmap) -> Result<(), &'static str> {
    let mut off = 0;
    for d in descs {
        if off == data.len() {
            break;
        }
        let n = (data.len() - off).min(d.len() as usize);
        mem.write_slice(&data[off..off + n], d.addr())
            .map_err(|_| "RX buffer outside guest RAM")?;
        off += n;
    }
    Ok(())
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // The listener's path was made by this device (it did not exist before).
        let _ = std::fs::remove_file(&self.uds);
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.cid.to_le_bytes();
        data.fill(0);
        let start = (offset as usize).min(cfg.len());
        let n = (cfg.len() - start).min(data.len());
        data[..n].copy_from_slice(&cfg[start..start + n]);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        _queue: &mut Queue,
        _mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        // Served on the event loop (notify_on_event_loop).
        Ok(false)
    }

    fn notify_on_event_loop(&self) -> bool {
        true
    }

    fn host_fds(&self) -> Vec<HostFd> {
        let ev = EventSet::IN | EventSet::EDGE_TRIGGERED;
        let out = ev | EventSet::OUT;
        let mut v = vec![HostFd {
            fd: self.listener.as_raw_fd(),
            events: ev,
        }];
        v.extend(self.handshakes.iter().map(|h| HostFd {
            fd: h.stream.as_raw_fd(),
            events: ev,
        }));
        v.extend(self.conns.iter().map(|c| HostFd {
            fd: c.stream.as_raw_fd(),
            events: if c.to_host.is_empty() { ev } else { out },
        }));
        v
    }

    fn host_event(
        &mut self,
        _fd: RawFd,
        _events: EventSet,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<u32, QueueError> {
        self.accept();
        self.handshakes();
        let mut i = 0;
        while i < self.conns.len() {
            if self.conns[i].flush() {
                i += 1;
            } else {
                self.control_for(i, OP_RST, 0);
                self.close(i);
            }
        }
        let mut mask = 0;
        if let Some(tx) = queues.get_mut(TXQ).filter(|q| q.ready()) {
            mask |= u32::from(self.transmit(tx, mem)?) << TXQ;
        }
        if let Some(rx) = queues.get_mut(RXQ).filter(|q| q.ready()) {
            mask |= u32::from(self.receive(rx, mem)?) << RXQ;
        }
        Ok(mask)
    }

    fn reap(&mut self) {
        self.retired.clear();
    }

    fn reset(&mut self) {
        // The guest's sockets are gone: so are the connections.
        self.retired.extend(self.conns.drain(..).map(|c| c.stream));
        self.control.clear();
    }
}
