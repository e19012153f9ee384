//! virtio-vsock without a guest: the test plays the guest driver (packets on the rx and
//! tx rings in a GuestMemoryMmap) and host programs (Unix sockets); each
//! `MmioTransport::host_event` call stands for one wake-up of the event loop.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::mmio::MmioTransport;
use super::test_driver::{self as drv, desc, layout, QSIZE};
use super::vsock::{self, Vsock, VsockConfig, HDR_LEN};
use super::{CountingInterrupt, GuestMemoryView};
use crate::devices::BusDevice;

const RAM: u64 = 4 << 20;
const TXBUF: u64 = 0x10_0000;
const RXBUF: u64 = 0x20_0000;
const CID: u64 = 3;
const RXLEN: u32 = 4096;

struct Rig {
    mem: Arc<GuestMemoryMmap>,
    t: MmioTransport,
    dir: tempfile::TempDir,
    rx_seen: u16,
    tx_slot: u16,
}

/// A packet header as the guest writes it.
#[allow(clippy::too_many_arguments)]
fn hdr(src_port: u32, dst_port: u32, op: u16, len: u32, buf_alloc: u32, fwd_cnt: u32) -> Vec<u8> {
    let mut b = vec![0u8; HDR_LEN];
    b[0..8].copy_from_slice(&CID.to_le_bytes());
    b[8..16].copy_from_slice(&2u64.to_le_bytes());
    b[16..20].copy_from_slice(&src_port.to_le_bytes());
    b[20..24].copy_from_slice(&dst_port.to_le_bytes());
    b[24..28].copy_from_slice(&len.to_le_bytes());
    b[28..30].copy_from_slice(&1u16.to_le_bytes());
    b[30..32].copy_from_slice(&op.to_le_bytes());
    b[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
    b[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
    b
}

fn with_flags(mut h: Vec<u8>, flags: u32) -> Vec<u8> {
    h[32..36].copy_from_slice(&flags.to_le_bytes());
    h
}

/// A received packet: (src_port, dst_port, op, flags, payload).
type Pkt = (u32, u32, u16, u32, Vec<u8>);

fn rig() -> Rig {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = VsockConfig {
        cid: CID,
        uds: dir.path().join("v.sock"),
    };
    let dev = Vsock::open(&cfg).unwrap();
    assert!(matches!(Vsock::open(&cfg), Err(vsock::Error::Exists(_))));
    let irq = Arc::new(CountingInterrupt::default());
    let m: Arc<dyn GuestMemoryView> = mem.clone();
    let t = MmioTransport::new(Box::new(dev), m, irq).unwrap();
    let mut r = Rig {
        mem,
        t,
        dir,
        rx_seen: 0,
        tx_slot: 0,
    };
    r.setup();
    r
}

impl Rig {
    fn w(&self, reg: u32, v: u32) {
        drv::w(&self.t, reg, v);
    }

    fn r(&self, reg: u32) -> u32 {
        drv::r(&self.t, reg)
    }

    fn setup(&mut self) {
        drv::negotiate(&self.t, 0);
        drv::setup_queues(&self.t, &self.mem, 3);
        drv::driver_ok(&self.t);
        // Every RX descriptor a 4 KiB buffer, all offered.
        for i in 0..QSIZE {
            self.offer(
                0,
                i,
                &[desc(
                    RXBUF + 0x1000 * u64::from(i),
                    RXLEN,
                    VRING_DESC_F_WRITE,
                    0,
                )],
            );
        }
        self.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        self.tick();
    }

    /// One wake-up of the event loop (and, as HostEvents does, closing what the device
    /// dropped).
    fn tick(&self) {
        self.t.host_event(-1, EventSet::IN);
        self.t.reap();
    }

    fn offer(&self, q: u16, head: u16, descs: &[RawDescriptor]) {
        drv::offer(&self.mem, q, head, descs);
    }

    /// The guest sends one packet (header and payload in one descriptor).
    fn send(&mut self, pkt: &[u8]) {
        let slot = self.tx_slot % QSIZE;
        self.tx_slot += 1;
        let at = TXBUF + 0x1_0000 * u64::from(slot % 4);
        self.mem.write_slice(pkt, GuestAddress(at)).unwrap();
        self.offer(1, slot, &[desc(at, pkt.len() as u32, 0, 0)]);
        self.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        self.tick();
    }

    /// Packets the device put in the RX queue since the last call (buffers re-offered).
    fn recv(&mut self) -> Vec<Pkt> {
        let (_, _, u) = layout(0);
        let idx: u16 = self.mem.read_obj(GuestAddress(u + 2)).unwrap();
        let mut out = Vec::new();
        while self.rx_seen != idx {
            let e = u + 4 + 8 * u64::from(self.rx_seen % QSIZE);
            let head: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
            let at = RXBUF + 0x1000 * u64::from(head);
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
            let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            let plen = u32_at(24) as usize;
            assert_eq!(len as usize, HDR_LEN + plen);
            let op = u16::from_le_bytes([b[30], b[31]]);
            out.push((
                u32_at(16),
                u32_at(20),
                op,
                u32_at(32),
                b[HDR_LEN..].to_vec(),
            ));
            self.offer(0, head as u16, &[desc(at, RXLEN, VRING_DESC_F_WRITE, 0)]);
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        if !out.is_empty() {
            self.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            self.tick();
        }
        out
    }
}

fn read_some(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

const REQUEST: u16 = 1;
const RESPONSE: u16 = 2;
const RST: u16 = 3;
const SHUTDOWN: u16 = 4;
const RW: u16 = 5;
const CREDIT_UPDATE: u16 = 6;

#[test]
fn a_host_program_reaches_a_guest_listener_with_connect() {
    let mut r = rig();
    assert_eq!(r.r(VIRTIO_MMIO_DEVICE_ID), 19);
    let mut cid = [0u8; 8];
    r.t.read(0x100, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let mut host = UnixStream::connect(r.dir.path().join("v.sock")).unwrap();
    host.write_all(b"CONNECT 1234\nhello").unwrap();
    r.tick();
    let p = r.recv();
    assert_eq!(p.len(), 1);
    let (local, port, op, _, _) = p[0].clone();
    assert_eq!((port, op), (1234, REQUEST));
    assert!(local >= 1 << 30);
    // The guest listener accepts.
    r.send(&hdr(1234, local, RESPONSE, 0, 64 << 10, 0));
    assert_eq!(read_some(&mut host, 14), format!("OK {local}\n").as_bytes());
    // Bytes sent before the OK, then after it, reach the guest.
    let p = r.recv();
    assert_eq!(p, vec![(local, 1234, RW, 0, b"hello".to_vec())]);
    host.write_all(b" world").unwrap();
    r.tick();
    assert_eq!(r.recv(), vec![(local, 1234, RW, 0, b" world".to_vec())]);
    // And back.
    let mut pkt = hdr(1234, local, RW, 4, 64 << 10, 11);
    pkt.extend_from_slice(b"pong");
    r.send(&pkt);
    assert_eq!(read_some(&mut host, 4), b"pong");
    // The host half-closes: the guest is told it will get no more, and can still send.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    r.tick();
    assert_eq!(r.recv(), vec![(local, 1234, SHUTDOWN, 2, vec![])]);
    let mut pkt = hdr(1234, local, RW, 3, 64 << 10, 11);
    pkt.extend_from_slice(b"bye");
    r.send(&pkt);
    assert_eq!(read_some(&mut host, 3), b"bye");
    // The guest closes too: RST, and the host sees EOF.
    r.send(&with_flags(hdr(1234, local, SHUTDOWN, 0, 0, 0), 3));
    assert_eq!(r.recv(), vec![(local, 1234, RST, 0, vec![])]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(r.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn guest_connections_go_to_path_port_and_respect_credit() {
    let mut r = rig();
    let l = UnixListener::bind(r.dir.path().join("v.sock_5000")).unwrap();
    // Nobody at port 6000: RST.
    r.send(&hdr(77, 6000, REQUEST, 0, 3, 0));
    assert_eq!(r.recv(), vec![(6000, 77, RST, 0, vec![])]);
    // Port 5000: RESPONSE; the guest's buffer is 3 bytes.
    r.send(&hdr(77, 5000, REQUEST, 0, 3, 0));
    assert_eq!(r.recv(), vec![(5000, 77, RESPONSE, 0, vec![])]);
    let (mut host, _) = l.accept().unwrap();
    host.write_all(b"abcdef").unwrap();
    r.tick();
    assert_eq!(r.recv(), vec![(5000, 77, RW, 0, b"abc".to_vec())]);
    r.tick();
    assert!(r.recv().is_empty(), "no credit left");
    r.send(&hdr(77, 5000, CREDIT_UPDATE, 0, 3, 3));
    assert_eq!(r.recv(), vec![(5000, 77, RW, 0, b"def".to_vec())]);
    // A guest packet for no connection gets RST; a truncated one is dropped.
    r.send(&hdr(78, 5000, RW, 0, 3, 0));
    assert_eq!(r.recv(), vec![(5000, 78, RST, 0, vec![])]);
    r.send(&hdr(77, 5000, RW, 100, 3, 0));
    assert!(r.recv().is_empty());
    // The guest shuts down: the host sees EOF, the guest gets RST.
    r.send(&with_flags(hdr(77, 5000, SHUTDOWN, 0, 3, 6), 3));
    assert_eq!(r.recv(), vec![(5000, 77, RST, 0, vec![])]);
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn bad_handshakes_and_bad_chains_leave_the_vmm_running() {
    let mut r = rig();
    let mut host = UnixStream::connect(r.dir.path().join("v.sock")).unwrap();
    host.write_all(b"HELLO\n").unwrap();
    r.tick();
    assert!(r.recv().is_empty());
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    host.read_to_end(&mut b).unwrap();
    assert!(b.is_empty(), "closed without an answer");
    // A TX chain shorter than the header, one outside guest RAM: dropped.
    r.send(&[0u8; 10]);
    r.offer(1, 9, &[desc(RAM - 8, 64, 0, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    r.tick();
    assert_eq!(r.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    // A looping chain: DEVICE_NEEDS_RESET.
    r.offer(1, 10, &[desc(TXBUF, 64, VRING_DESC_F_NEXT, 10)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    r.tick();
    assert_ne!(r.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}
