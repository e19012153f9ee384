//! virtio-net without a guest: the test plays the driver on two split rings in a
//! GuestMemoryMmap and the host side of the TAP through a SOCK_SEQPACKET socketpair (one
//! message per frame, as a TAP); one test opens a real TAP in a network namespace of its
//! own.

use std::fs::File;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::sync::Arc;

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::mmio::MmioTransport;
use super::net::{self, Net, HDR_LEN};
use super::test_driver::{self as drv, desc};
use super::{CountingInterrupt, GuestMemoryView};
use crate::devices::BusDevice;

const RAM: u64 = 4 << 20;
const TXBUF: u64 = 0x10_0000;
const RXBUF: u64 = 0x20_0000;

struct Rig {
    mem: Arc<GuestMemoryMmap>,
    t: MmioTransport,
    irq: Arc<CountingInterrupt>,
    host: File,
    tap_fd: i32,
}

fn socketpair() -> (File, File) {
    let mut fds = [0i32; 2];
    let kind = libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair writes two descriptors into the 2-int array it is given.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0);
    // SAFETY: both descriptors were just created and are owned by nothing else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

fn rig() -> Rig {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
    let (dev_end, host) = socketpair();
    let tap_fd = dev_end.as_raw_fd();
    let dev = Net::with_tap(dev_end, [0x52, 0x54, 0, 1, 2, 3]);
    let irq = Arc::new(CountingInterrupt::default());
    let m: Arc<dyn GuestMemoryView> = mem.clone();
    let t = MmioTransport::new(Box::new(dev), m, irq.clone()).unwrap();
    let r = Rig {
        mem,
        t,
        irq,
        host,
        tap_fd,
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

    fn setup(&self) {
        drv::negotiate(&self.t, 1 << 5); // VIRTIO_NET_F_MAC
        drv::setup_queues(&self.t, &self.mem, 2);
        drv::driver_ok(&self.t);
    }

    fn used_idx(&self, q: u16) -> u16 {
        drv::used_idx(&self.mem, q)
    }

    /// Puts `descs` at table index `slot * 4` of queue `q` and makes it available (no
    /// notify).
    fn offer(&self, q: u16, slot: u16, descs: &[RawDescriptor]) {
        drv::offer(&self.mem, q, slot * 4, descs);
    }

    /// The used element `n` of queue `q`: head and length.
    fn used(&self, q: u16, n: u16) -> (u32, u32) {
        drv::used(&self.mem, q, n)
    }

    fn needs_reset(&self) -> bool {
        self.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    fn host_recv(&self) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut b = vec![0u8; 70_000];
        let n = (&self.host).read(&mut b).ok()?;
        b.truncate(n);
        Some(b)
    }

    fn host_send(&self, frame: &[u8]) {
        use std::io::Write;
        let mut m = vec![0u8; HDR_LEN];
        m.extend_from_slice(frame);
        assert_eq!((&self.host).write(&m).unwrap(), m.len());
    }
}

fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

#[test]
fn identifies_as_net_with_its_mac() {
    let r = rig();
    assert_eq!(r.r(VIRTIO_MMIO_DEVICE_ID), 1);
    let mut mac = [0u8; 6];
    r.t.read(0x100, &mut mac);
    assert_eq!(mac, [0x52, 0x54, 0, 1, 2, 3]);
    // MAC, CSUM, HOST_TSO4, HOST_TSO6: transmit offloads only.
    assert_eq!(
        r.r(VIRTIO_MMIO_DEVICE_FEATURES),
        (1 << 5) | 1 | (1 << 11) | (1 << 12)
    );
}

#[test]
fn tx_gathers_header_and_frame_into_one_tap_write() {
    let r = rig();
    let f = frame(1000, 1);
    r.mem
        .write_slice(&[0u8; HDR_LEN], GuestAddress(TXBUF))
        .unwrap();
    r.mem.write_slice(&f, GuestAddress(TXBUF + 0x100)).unwrap();
    r.offer(
        1,
        0,
        &[
            desc(TXBUF, HDR_LEN as u32, VRING_DESC_F_NEXT, 1),
            desc(TXBUF + 0x100, 1000, 0, 0),
        ],
    );
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(r.used_idx(1), 1);
    assert_eq!(r.irq.count(), 1);
    let got = r.host_recv().unwrap();
    assert_eq!(got.len(), HDR_LEN + 1000);
    assert_eq!(&got[HDR_LEN..], &f[..]);
}

#[test]
fn rx_waits_for_buffers_and_fills_them_in_order() {
    let r = rig();
    let (f1, f2) = (frame(60, 3), frame(1500, 9));
    r.host_send(&f1);
    r.host_send(&f2);
    // The TAP is readable but the guest has no buffers yet: nothing is used.
    r.t.host_event(r.tap_fd, EventSet::IN);
    assert_eq!(r.used_idx(0), 0);
    // One buffer, then its notify: the first frame.
    r.offer(0, 0, &[desc(RXBUF, 2048, VRING_DESC_F_WRITE, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(0), 1);
    assert_eq!(r.used(0, 0), (0, (HDR_LEN + 60) as u32));
    let mut got = vec![0u8; HDR_LEN + 60];
    r.mem.read_slice(&mut got, GuestAddress(RXBUF)).unwrap();
    assert_eq!(&got[10..12], &[1, 0], "num_buffers = 1");
    assert_eq!(&got[HDR_LEN..], &f1[..]);
    // A buffer in two pieces (header, then the rest): the second frame.
    r.offer(
        0,
        1,
        &[
            desc(
                RXBUF + 0x1000,
                HDR_LEN as u32,
                VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                5,
            ),
            desc(RXBUF + 0x2000, 2048, VRING_DESC_F_WRITE, 0),
        ],
    );
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(0), 2);
    assert_eq!(r.used(0, 1), (4, (HDR_LEN + 1500) as u32));
    let mut got = vec![0u8; 1500];
    r.mem
        .read_slice(&mut got, GuestAddress(RXBUF + 0x2000))
        .unwrap();
    assert_eq!(got, f2);
    // Buffers waiting, then a frame: the event loop's readiness delivers it.
    r.offer(0, 2, &[desc(RXBUF + 0x4000, 2048, VRING_DESC_F_WRITE, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(0), 2);
    let irqs = r.irq.count();
    r.host_send(&f1);
    r.t.host_event(r.tap_fd, EventSet::IN);
    assert_eq!(r.used_idx(0), 3);
    assert_eq!(r.irq.count(), irqs + 1);
    assert!(!r.needs_reset());
}

#[test]
fn bad_chains_are_dropped_or_need_a_reset_and_the_vmm_goes_on() {
    let r = rig();
    // Too short for the header, outside guest RAM, device-writable: dropped and used.
    r.offer(1, 0, &[desc(TXBUF, 4, 0, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    r.offer(1, 1, &[desc(RAM - 8, 64, 0, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    r.offer(1, 2, &[desc(TXBUF, 64, VRING_DESC_F_WRITE, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    // Longer than the largest frame.
    r.offer(
        1,
        3,
        &[
            desc(TXBUF, 65_536, VRING_DESC_F_NEXT, 13),
            desc(TXBUF, 65_536, 0, 0),
        ],
    );
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(r.used_idx(1), 4);
    assert!(r.host_recv().is_none(), "nothing reached the TAP");
    assert!(!r.needs_reset());
    // An RX buffer too small for the frame, and one that is driver-only: dropped.
    r.host_send(&frame(100, 0));
    r.offer(0, 0, &[desc(RXBUF, 20, VRING_DESC_F_WRITE, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(r.used(0, 0), (0, 0));
    r.host_send(&frame(100, 0));
    r.offer(0, 1, &[desc(RXBUF, 2048, 0, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(r.used(0, 1), (4, 0));
    assert!(!r.needs_reset());
    // A chain that loops: the device needs a reset; after one it works again.
    r.offer(1, 3, &[desc(TXBUF, 64, VRING_DESC_F_NEXT, 12)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert!(r.needs_reset());
    r.w(VIRTIO_MMIO_STATUS, 0);
    r.setup();
    r.host_send(&frame(60, 1));
    r.offer(0, 0, &[desc(RXBUF, 2048, VRING_DESC_F_WRITE, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(r.used(0, 0), (0, (HDR_LEN + 60) as u32));
}

#[test]
fn host_events_before_driver_ok_are_left_for_later() {
    let r = rig();
    r.w(VIRTIO_MMIO_STATUS, 0);
    r.host_send(&frame(60, 1));
    r.t.host_event(r.tap_fd, EventSet::IN);
    assert_eq!(r.irq.count(), 0);
    r.setup();
    r.offer(0, 0, &[desc(RXBUF, 2048, VRING_DESC_F_WRITE, 0)]);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(r.used_idx(0), 1);
}

#[test]
fn a_real_tap_opens_in_a_fresh_network_namespace() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: no /dev/net/tun");
        return;
    }
    // unshare(CLONE_NEWNET) moves only the calling thread: a thread of its own.
    let r = std::thread::spawn(|| {
        // SAFETY: unshare takes a flag word and touches no memory of this process.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        let tap = net::open_tap("segtap0").map_err(|e| e.to_string())?;
        let lo = net::open_tap("lo").map(|_| ()).map_err(|e| e.to_string());
        drop(tap);
        Ok(lo)
    })
    .join()
    .unwrap();
    match r {
        Ok(lo) => {
            let e = lo.expect_err("lo is not a TAP");
            assert!(e.contains("--net tap=lo: TUNSETIFF"), "{e}");
        }
        Err(e) if e.contains("unshare") => eprintln!("skipped: {e}"),
        Err(e) => panic!("{e}"),
    }
}
