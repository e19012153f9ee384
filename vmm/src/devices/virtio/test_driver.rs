//! The driver's side of a virtio-mmio transport for the device unit tests (net, vsock,
//! balloon): register access, feature negotiation, split rings of [`QSIZE`] entries for
//! queue `q` in the page at `0x1000 * (q + 1)` (see [`layout`]), offering chains and
//! reading the used ring, all in a GuestMemoryMmap that stands for guest RAM.

use virtio_bindings::virtio_mmio::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::MmioTransport;
use crate::devices::BusDevice;

/// Entries of every test queue.
pub const QSIZE: u16 = 16;

/// A split descriptor as the driver writes it.
pub fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// Queue `q`'s descriptor table, available ring and used ring.
pub fn layout(q: u16) -> (u64, u64, u64) {
    let d = 0x1000 + 0x1000 * u64::from(q);
    let a = d + 16 * u64::from(QSIZE);
    let u = (a + 8 + 2 * u64::from(QSIZE) + 3) & !3;
    (d, a, u)
}

/// Writes register `reg`.
pub fn w(t: &MmioTransport, reg: u32, v: u32) {
    t.write_at(u64::from(reg), &v.to_le_bytes());
}

/// Reads register `reg`.
pub fn r(t: &MmioTransport, reg: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(reg), &mut b);
    u32::from_le_bytes(b)
}

/// ACKNOWLEDGE, DRIVER, `features` (low word) + VERSION_1, FEATURES_OK (checked kept).
pub fn negotiate(t: &MmioTransport, features: u32) {
    w(t, VIRTIO_MMIO_STATUS, 1);
    w(t, VIRTIO_MMIO_STATUS, 3);
    w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    w(t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    w(t, VIRTIO_MMIO_DRIVER_FEATURES, features);
    w(t, VIRTIO_MMIO_STATUS, 0b1011);
    assert_eq!(r(t, VIRTIO_MMIO_STATUS), 0b1011, "FEATURES_OK kept");
}

/// Queues `0..n` on zeroed rings at [`layout`], each made ready.
pub fn setup_queues(t: &MmioTransport, mem: &GuestMemoryMmap, n: u16) {
    for q in 0..n {
        let (d, a, u) = layout(q);
        mem.write_slice(&[0u8; 0x1000], GuestAddress(d)).unwrap();
        w(t, VIRTIO_MMIO_QUEUE_SEL, u32::from(q));
        w(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
        for (addr, lo, hi) in [
            (d, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH),
            (a, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_AVAIL_HIGH),
            (u, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_QUEUE_USED_HIGH),
        ] {
            w(t, lo, addr as u32);
            w(t, hi, (addr >> 32) as u32);
        }
        w(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
}

/// DRIVER_OK (checked kept).
pub fn driver_ok(t: &MmioTransport) {
    w(t, VIRTIO_MMIO_STATUS, 0b1111);
    assert_eq!(r(t, VIRTIO_MMIO_STATUS), 0b1111);
}

/// Puts `descs` at table index `head` of queue `q` and makes `head` available (no notify).
pub fn offer(mem: &GuestMemoryMmap, q: u16, head: u16, descs: &[RawDescriptor]) {
    let (d, a, _) = layout(q);
    for (i, x) in descs.iter().enumerate() {
        let at = d + 16 * (u64::from(head) + i as u64);
        mem.write_obj(*x, GuestAddress(at)).unwrap();
    }
    let idx: u16 = mem.read_obj(GuestAddress(a + 2)).unwrap();
    let e = GuestAddress(a + 4 + 2 * u64::from(idx % QSIZE));
    mem.write_obj(head, e).unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(a + 2))
        .unwrap();
}

/// The device's used index of queue `q`.
pub fn used_idx(mem: &GuestMemoryMmap, q: u16) -> u16 {
    mem.read_obj(GuestAddress(layout(q).2 + 2)).unwrap()
}

/// The used element `n` of queue `q`: head and length.
pub fn used(mem: &GuestMemoryMmap, q: u16, n: u16) -> (u32, u32) {
    let e = layout(q).2 + 4 + 8 * u64::from(n % QSIZE);
    let head = mem.read_obj(GuestAddress(e)).unwrap();
    (head, mem.read_obj(GuestAddress(e + 4)).unwrap())
}
