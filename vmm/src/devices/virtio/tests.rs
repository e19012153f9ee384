//! virtio-mmio and virtio-blk without a guest: the tests play the driver, writing the
//! transport's registers and split rings (virtio-queue's descriptor types) in a
//! GuestMemoryMmap.

use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::{self, Block, DiskConfig, DiskConfigError};
use super::mmio::{MmioTransport, CONFIG_OFFSET, MAGIC};
use super::{CountingInterrupt, GuestMemoryView};
use crate::devices::BusDevice;

const RAM: u64 = 4 << 20;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x10_1000;
const STATUS: u64 = 0x10_8000;
const QSIZE: u16 = 16;
/// The image: 64 sectors, sector `s` filled with byte `s`.
const SECTORS: u64 = 64;

struct Rig {
    mem: Arc<GuestMemoryMmap>,
    t: MmioTransport,
    irq: Arc<CountingInterrupt>,
    img: tempfile::NamedTempFile,
    /// Where the current rings live (a new place after each reset, as a driver would).
    ring: u64,
}

fn image() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..SECTORS * 512).map(|i| (i / 512) as u8).collect();
    std::fs::write(f.path(), bytes).unwrap();
    f
}

fn rig_with(read_only: bool) -> Rig {
    rig_opts(read_only, true)
}

/// A rig whose disk offers VIRTIO_RING_F_EVENT_IDX or not (`event_idx=`).
fn rig_opts(read_only: bool, event_idx: bool) -> Rig {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
    let img = image();
    let cfg = DiskConfig {
        path: img.path().into(),
        read_only,
        id: Some("disk-0".into()),
        event_idx,
    };
    let dev = Block::open(&cfg).unwrap();
    assert_eq!(dev.sectors(), SECTORS);
    let irq = Arc::new(CountingInterrupt::default());
    let m: Arc<dyn GuestMemoryView> = mem.clone();
    let t = MmioTransport::new(Box::new(dev), m, irq.clone()).unwrap();
    Rig {
        mem,
        t,
        irq,
        img,
        ring: 0x1000,
    }
}

fn rig() -> Rig {
    let mut r = rig_with(false);
    r.setup();
    r
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

impl Rig {
    fn w(&self, reg: u32, v: u32) {
        self.t.write_at(u64::from(reg), &v.to_le_bytes());
    }

    fn r(&self, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(u64::from(reg), &mut b);
        u32::from_le_bytes(b)
    }

    /// The split rings at `self.ring`: the descriptor table, the available ring, the used
    /// ring (aligned to 4). Laid out here rather than with virtio-queue's MockSplitQueue:
    /// in 0.18 its used ring starts inside the available ring (`AvailRing::end` adds the
    /// entry count as bytes), so a full available ring would overwrite used entries.
    fn layout(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        let avail = self.ring + 16 * u64::from(QSIZE);
        let used = (avail + 8 + 2 * u64::from(QSIZE) + 3) & !3;
        (
            GuestAddress(self.ring),
            GuestAddress(avail),
            GuestAddress(used),
        )
    }

    /// The driver's initialisation, up to FEATURES_OK.
    fn negotiate(&self) {
        self.negotiate_features(1 << VIRTIO_BLK_F_FLUSH);
        assert_eq!(self.r(VIRTIO_MMIO_STATUS), 0b1011, "FEATURES_OK kept");
    }

    /// The initialisation up to FEATURES_OK with feature bits `low` (0..31) accepted.
    fn negotiate_features(&self, low: u32) {
        self.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.w(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.w(VIRTIO_MMIO_DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1 (bit 32)
        self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.w(VIRTIO_MMIO_DRIVER_FEATURES, low);
        self.w(VIRTIO_MMIO_STATUS, 0b1011);
    }

    /// Queue 0 on the mock rings.
    fn program_queue(&self, size: u32) {
        let (d, a, u) = self.layout();
        if self.ring < RAM {
            // The driver zeroes its rings (indices and flags) before handing them over.
            let zero = vec![0u8; (u.0 + 8 + 8 * u64::from(QSIZE) - d.0) as usize];
            self.mem.write_slice(&zero, d).unwrap();
        }
        self.w(VIRTIO_MMIO_QUEUE_SEL, 0);
        self.w(VIRTIO_MMIO_QUEUE_NUM, size);
        let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
        for (addr, lo, hi) in [
            (d, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH),
            (a, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_AVAIL_HIGH),
            (u, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_QUEUE_USED_HIGH),
        ] {
            let (l, h) = split(addr);
            self.w(lo, l);
            self.w(hi, h);
        }
        self.w(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    fn setup(&mut self) {
        self.negotiate();
        self.start();
    }

    /// Set-up with VIRTIO_RING_F_EVENT_IDX accepted too.
    fn setup_event_idx(&mut self) {
        self.negotiate_features((1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_RING_F_EVENT_IDX));
        assert_eq!(self.r(VIRTIO_MMIO_STATUS), 0b1011, "FEATURES_OK kept");
        self.start();
    }

    /// Queue 0 programmed, then DRIVER_OK.
    fn start(&mut self) {
        self.program_queue(u32::from(QSIZE));
        self.w(VIRTIO_MMIO_STATUS, 0b1111);
        assert_eq!(self.r(VIRTIO_MMIO_STATUS), 0b1111);
    }

    /// Reset by the driver, then set up again on fresh rings.
    fn reset_and_setup(&mut self) {
        self.w(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(self.r(VIRTIO_MMIO_STATUS), 0);
        self.ring += 0x1000;
        self.setup();
    }

    fn needs_reset(&self) -> bool {
        self.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Submits `descs` as one chain at table index 0 (the driver's side of the ring),
    /// notifies queue 0; the status byte and the used length, or `None` when nothing was
    /// used.
    fn submit(&self, descs: &[RawDescriptor]) -> Option<(u8, u32)> {
        let used_idx = self.offer(descs);
        self.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        self.served(used_idx)
    }

    /// Offers `descs` as one chain at table index 0 without notifying; the used index
    /// before.
    fn offer(&self, descs: &[RawDescriptor]) -> u16 {
        let (d, a, _) = self.layout();
        for (i, x) in descs.iter().enumerate() {
            self.mem
                .write_obj(*x, GuestAddress(d.0 + 16 * i as u64))
                .unwrap();
        }
        let avail_idx: u16 = self.mem.read_obj(GuestAddress(a.0 + 2)).unwrap();
        let slot = GuestAddress(a.0 + 4 + 2 * u64::from(avail_idx % QSIZE));
        self.mem.write_obj(0u16, slot).unwrap();
        self.mem
            .write_obj(avail_idx.wrapping_add(1), GuestAddress(a.0 + 2))
            .unwrap();
        self.used_idx()
    }

    /// The status byte and used length of the chain used after index `used_idx`, or
    /// `None` when nothing was used.
    fn served(&self, used_idx: u16) -> Option<(u8, u32)> {
        let (_, _, u) = self.layout();
        if self.used_idx() == used_idx {
            return None;
        }
        let elem = u.0 + 4 + 8 * u64::from(used_idx % QSIZE);
        let head: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
        assert_eq!(head, 0);
        let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        Some((status, len))
    }

    /// The driver's used_event (after the available ring's entries).
    fn set_used_event(&self, v: u16) {
        let (_, a, _) = self.layout();
        let at = GuestAddress(a.0 + 4 + 2 * u64::from(QSIZE));
        self.mem.write_obj(v, at).unwrap();
    }

    /// The device's avail_event (after the used ring's entries).
    fn avail_event(&self) -> u16 {
        let (_, _, u) = self.layout();
        let at = GuestAddress(u.0 + 4 + 8 * u64::from(QSIZE));
        self.mem.read_obj(at).unwrap()
    }

    /// The used ring's flags (VRING_USED_F_NO_NOTIFY).
    fn used_flags(&self) -> u16 {
        let (_, _, u) = self.layout();
        self.mem.read_obj(u).unwrap()
    }

    fn used_idx(&self) -> u16 {
        let (_, _, u) = self.layout();
        self.mem.read_obj(GuestAddress(u.0 + 2)).unwrap()
    }

    /// A request: header, data buffers, status.
    fn request(
        &self,
        kind: u32,
        sector: u64,
        data: &[(u64, u32)],
        write: bool,
    ) -> Option<(u8, u32)> {
        self.header(kind, sector);
        let n = data.len() as u16;
        let mut descs = vec![desc(HDR, 16, VRING_DESC_F_NEXT, 1)];
        let dflag = if write { VRING_DESC_F_WRITE } else { 0 };
        for (i, &(a, l)) in data.iter().enumerate() {
            descs.push(desc(a, l, dflag | VRING_DESC_F_NEXT, i as u16 + 2));
        }
        descs.push(desc(STATUS, 1, VRING_DESC_F_WRITE, 0));
        assert_eq!(descs.len(), usize::from(n) + 2);
        self.submit(&descs)
    }

    fn read(&self, sector: u64, len: u32) -> Option<(u8, u32)> {
        self.request(VIRTIO_BLK_T_IN, sector, &[(DATA, len)], true)
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn registers_identify_a_modern_block_device() {
    let r = rig_with(false);
    assert_eq!(r.r(VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
    assert_eq!(r.r(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(r.r(VIRTIO_MMIO_DEVICE_ID), 2);
    assert_eq!(r.r(VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(block::QUEUE_SIZE));
    r.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r.r(VIRTIO_MMIO_DEVICE_FEATURES) & 1, 1, "VERSION_1");
    r.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = r.r(VIRTIO_MMIO_DEVICE_FEATURES);
    assert_ne!(low & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(low & (1 << VIRTIO_BLK_F_RO), 0);
    // Capacity in config space, read in two halves and whole.
    let mut cap = [0u8; 8];
    r.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut b = [0u8; 4];
    r.t.read(0x104, &mut b);
    assert_eq!(b, [0; 4]);
    // Registers are 32-bit aligned only; a queue that does not exist reads 0.
    let mut w = [0xaau8; 2];
    r.t.read(0, &mut w);
    assert_eq!(w, [0, 0]);
    r.w(VIRTIO_MMIO_QUEUE_SEL, 3);
    assert_eq!(r.r(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
}

#[test]
fn status_follows_the_initialisation_sequence() {
    let mut r = rig_with(false);
    // DRIVER before ACKNOWLEDGE, DRIVER_OK before FEATURES_OK: ignored.
    r.w(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(r.r(VIRTIO_MMIO_STATUS), 0);
    r.w(VIRTIO_MMIO_STATUS, 0b0011);
    r.w(VIRTIO_MMIO_STATUS, 0b0111);
    assert_eq!(r.r(VIRTIO_MMIO_STATUS), 0b0011);
    // Queue registers before FEATURES_OK are ignored.
    r.w(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(r.r(VIRTIO_MMIO_QUEUE_READY), 0);
    // Without VERSION_1 (a legacy driver), FEATURES_OK is refused.
    r.w(VIRTIO_MMIO_DRIVER_FEATURES, 1 << VIRTIO_BLK_F_FLUSH);
    r.w(VIRTIO_MMIO_STATUS, 0b1011);
    assert_eq!(r.r(VIRTIO_MMIO_STATUS), 0b0011);
    // Features not offered are refused too.
    r.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    r.w(VIRTIO_MMIO_DRIVER_FEATURES, 1 | 2);
    r.w(VIRTIO_MMIO_STATUS, 0b1011);
    assert_eq!(r.r(VIRTIO_MMIO_STATUS), 0b0011);
    // Reset clears everything; then the whole sequence works.
    r.w(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(r.r(VIRTIO_MMIO_STATUS), 0);
    r.setup();
    assert_eq!(r.r(VIRTIO_MMIO_QUEUE_READY), 1);
    // Clearing a bit without a reset is ignored.
    r.w(VIRTIO_MMIO_STATUS, 0b0111);
    assert_eq!(r.r(VIRTIO_MMIO_STATUS), 0b1111);
    // Queue registers after DRIVER_OK are ignored.
    r.w(VIRTIO_MMIO_QUEUE_NUM, 8);
    assert!(!r.needs_reset());
}

#[test]
fn read_write_flush_and_get_id_round_trip() {
    let r = rig();
    // Read sectors 3..5 (two buffers).
    let got = r.request(
        VIRTIO_BLK_T_IN,
        3,
        &[(DATA, 512), (DATA + 0x1000, 512)],
        true,
    );
    assert_eq!(got, Some((OK, 1025)));
    let mut b = [0u8; 512];
    r.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert!(b.iter().all(|&x| x == 3));
    r.mem
        .read_slice(&mut b, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert!(b.iter().all(|&x| x == 4));
    assert_eq!(r.irq.count(), 1);
    assert_eq!(r.r(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    r.w(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(r.r(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // Write 1 KiB of 0x5a at sector 10, read it back through the device and the file.
    r.mem
        .write_slice(&[0x5a; 1024], GuestAddress(DATA))
        .unwrap();
    let got = r.request(VIRTIO_BLK_T_OUT, 10, &[(DATA, 1024)], false);
    assert_eq!(got, Some((OK, 1)));
    r.mem.write_slice(&[0; 1024], GuestAddress(DATA)).unwrap();
    assert_eq!(r.read(10, 1024), Some((OK, 1025)));
    let mut k = [0u8; 1024];
    r.mem.read_slice(&mut k, GuestAddress(DATA)).unwrap();
    assert!(k.iter().all(|&x| x == 0x5a));
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, &[], false), Some((OK, 1)));
    let file = std::fs::read(r.img.path()).unwrap();
    assert!(file[10 * 512..12 * 512].iter().all(|&x| x == 0x5a));
    assert!(file[12 * 512..13 * 512].iter().all(|&x| x == 12));
    // GET_ID: the serial, zero-padded to 20 bytes.
    let got = r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20)], true);
    assert_eq!(got, Some((OK, 21)));
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..6], b"disk-0");
    assert!(id[6..].iter().all(|&x| x == 0));
    // The last sector is readable; unknown requests are unsupported.
    assert_eq!(r.read(SECTORS - 1, 512), Some((OK, 513)));
    let got = r.request(99, 0, &[], false);
    assert_eq!(got, Some((VIRTIO_BLK_S_UNSUPP as u8, 1)));
    assert!(!r.needs_reset());
}

#[test]
fn bad_requests_get_an_io_error_and_the_device_keeps_working() {
    let r = rig();
    let outside = RAM + 0x1000;
    for (what, got) in [
        ("length not a multiple of 512", r.read(0, 100)),
        ("past the end", r.read(SECTORS - 1, 1024)),
        ("sector overflow", r.read(u64::MAX, 512)),
        (
            "data outside guest RAM",
            r.request(VIRTIO_BLK_T_IN, 0, &[(outside, 512)], true),
        ),
        (
            "data straddling the end of RAM",
            r.request(VIRTIO_BLK_T_IN, 0, &[(RAM - 256, 512)], true),
        ),
        (
            "IN into a driver-only buffer",
            r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512)], false),
        ),
        (
            "OUT from outside RAM",
            r.request(VIRTIO_BLK_T_OUT, 0, &[(outside, 512)], false),
        ),
    ] {
        assert_eq!(got, Some((IOERR, 1)), "{what}");
    }
    assert!(!r.needs_reset());
    assert_eq!(r.read(5, 512), Some((OK, 513)));
    let file = std::fs::read(r.img.path()).unwrap();
    assert!(file[..512].iter().all(|&x| x == 0), "nothing written");
}

/// Writes `segs` (sector, count, flags) as discard/write-zeroes segments at DATA.
fn segments(r: &Rig, segs: &[(u64, u32, u32)]) -> u32 {
    let mut b = Vec::new();
    for &(sector, n, flags) in segs {
        b.extend_from_slice(&sector.to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
    }
    r.mem.write_slice(&b, GuestAddress(DATA)).unwrap();
    b.len() as u32
}

#[test]
fn discard_and_write_zeroes_punch_holes_that_read_as_zeros() {
    let r = rig();
    let features = |sel| {
        r.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
        r.r(VIRTIO_MMIO_DEVICE_FEATURES)
    };
    let f = features(0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    let cfg = |off: u64| {
        let mut b = [0u8; 4];
        r.t.read(CONFIG_OFFSET + off, &mut b);
        u32::from_le_bytes(b)
    };
    assert!(cfg(36) > 0 && cfg(40) > 0 && cfg(44) == 8, "discard limits");
    assert!(cfg(48) > 0 && cfg(52) > 0, "write-zeroes limits");
    // Discard sectors 8..16 and zero 20..22 (UNMAP) and 30..31 in one request.
    let n = segments(&r, &[(8, 8, 0)]);
    let got = r.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, n)], false);
    assert_eq!(got, Some((OK, 1)));
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    let n = segments(&r, &[(20, 2, unmap), (30, 1, 0)]);
    let got = r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, n)], false);
    assert_eq!(got, Some((OK, 1)));
    let file = std::fs::read(r.img.path()).unwrap();
    assert_eq!(file.len() as u64, SECTORS * 512, "size kept");
    let sector = |s: usize| &file[s * 512..(s + 1) * 512];
    for s in (8..16).chain(20..22).chain(30..31) {
        assert!(sector(s).iter().all(|&x| x == 0), "sector {s} zeroed");
    }
    for s in [7, 16, 19, 22, 29, 31] {
        assert!(sector(s).iter().all(|&x| x == s as u8), "sector {s} kept");
    }
    assert!(!r.needs_reset());
}

#[test]
fn bad_discard_segments_get_an_error_status() {
    let r = rig();
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    let unsupp = VIRTIO_BLK_S_UNSUPP as u8;
    for (kind, segs, want) in [
        (VIRTIO_BLK_T_DISCARD, vec![(60, 8, 0)], IOERR),
        (VIRTIO_BLK_T_DISCARD, vec![(u64::MAX, 2, 0)], IOERR),
        (VIRTIO_BLK_T_DISCARD, vec![(0, 1, unmap)], unsupp),
        (VIRTIO_BLK_T_WRITE_ZEROES, vec![(0, 1, 2)], unsupp),
        (VIRTIO_BLK_T_DISCARD, vec![(0, 1, 0); 17], IOERR),
    ] {
        let n = segments(&r, &segs);
        let got = r.request(kind, 0, &[(DATA, n)], false);
        assert_eq!(got, Some((want, 1)), "{kind} {segs:?}");
    }
    // A partial segment, a device-writable segment buffer, one outside guest RAM.
    segments(&r, &[(0, 1, 0)]);
    let partial = r.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 12)], false);
    let writable = r.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16)], true);
    let outside = r.request(VIRTIO_BLK_T_DISCARD, 0, &[(RAM - 8, 16)], false);
    for got in [partial, writable, outside] {
        assert_eq!(got, Some((IOERR, 1)));
    }
    // Nothing was touched, and the device still serves.
    let file = std::fs::read(r.img.path()).unwrap();
    assert!(file[..512].iter().all(|&x| x == 0));
    assert!(file[512..1024].iter().all(|&x| x == 1));
    assert_eq!(r.read(1, 512), Some((OK, 513)));
    assert!(!r.needs_reset());
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let mut r = rig_with(true);
    r.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let f = r.r(VIRTIO_MMIO_DEVICE_FEATURES);
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let rw = (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
    assert_eq!(f & rw, 0, "no discard on a read-only disk");
    r.setup();
    r.mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    let got = r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512)], false);
    assert_eq!(got, Some((IOERR, 1)));
    let n = segments(&r, &[(0, 1, 0)]);
    let got = r.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, n)], false);
    assert_eq!(got, Some((IOERR, 1)));
    assert_eq!(r.read(1, 512), Some((OK, 513)));
    let file = std::fs::read(r.img.path()).unwrap();
    assert!(file[..512].iter().all(|&x| x == 0));
}

/// Each case breaks the queue so that no status can answer: DEVICE_NEEDS_RESET, no used
/// entry, and the device serves again after a reset.
#[test]
fn malformed_chains_need_a_reset_and_the_device_recovers() {
    let mut r = rig();
    let status = desc(STATUS, 1, VRING_DESC_F_WRITE, 0);
    let cases: Vec<(&str, Vec<RawDescriptor>)> = vec![
        (
            "a loop",
            vec![
                desc(HDR, 16, VRING_DESC_F_NEXT, 1),
                desc(DATA, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
            ],
        ),
        (
            "next past the table",
            vec![desc(HDR, 16, VRING_DESC_F_NEXT, QSIZE + 3)],
        ),
        (
            "header outside guest RAM",
            vec![desc(RAM + 0x1000, 16, VRING_DESC_F_NEXT, 1), status],
        ),
        ("no status", vec![desc(HDR, 16, 0, 0)]),
        (
            "status outside guest RAM",
            vec![
                desc(HDR, 16, VRING_DESC_F_NEXT, 1),
                desc(RAM, 1, VRING_DESC_F_WRITE, 0),
            ],
        ),
        (
            "short header",
            vec![desc(HDR, 8, VRING_DESC_F_NEXT, 1), status],
        ),
    ];
    for (what, descs) in cases {
        r.header(VIRTIO_BLK_T_IN, 0);
        let irqs = r.irq.count();
        assert_eq!(r.submit(&descs), None, "{what}");
        assert!(r.needs_reset(), "{what}");
        assert_eq!(r.irq.count(), irqs + 1, "{what}: config interrupt");
        assert_ne!(
            r.r(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
            0
        );
        // Further notifies are ignored until the reset.
        r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        r.reset_and_setup();
        assert!(!r.needs_reset());
        assert_eq!(r.read(7, 512), Some((OK, 513)), "after {what}");
    }
}

#[test]
fn a_chain_longer_than_the_queue_needs_a_reset() {
    let mut r = rig();
    // Every descriptor of the table chained to the next, the last back to the first.
    let n = QSIZE;
    let descs: Vec<_> = (0..n)
        .map(|i| desc(HDR, 16, VRING_DESC_F_NEXT, (i + 1) % n))
        .collect();
    assert_eq!(r.submit(&descs), None);
    assert!(r.needs_reset());
    r.reset_and_setup();
    assert_eq!(r.read(0, 512), Some((OK, 513)));
}

#[test]
fn bad_queue_set_up_needs_a_reset() {
    let mut r = rig_with(false);
    // A size that is not a power of two.
    r.negotiate();
    r.program_queue(3);
    assert!(r.needs_reset());
    r.reset_and_setup();
    assert!(!r.needs_reset());
    // A size larger than the maximum.
    r.w(VIRTIO_MMIO_STATUS, 0);
    r.negotiate();
    r.program_queue(512);
    assert!(r.needs_reset());
    // A misaligned descriptor table.
    r.w(VIRTIO_MMIO_STATUS, 0);
    r.negotiate();
    r.w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1001);
    assert!(r.needs_reset());
    // Rings outside guest RAM: refused at DRIVER_OK.
    r.w(VIRTIO_MMIO_STATUS, 0);
    r.ring = RAM + 0x1000;
    r.negotiate();
    r.program_queue(u32::from(QSIZE));
    r.w(VIRTIO_MMIO_STATUS, 0b1111);
    assert!(r.needs_reset());
    r.ring = 0x1000;
    r.reset_and_setup();
    assert_eq!(r.read(1, 512), Some((OK, 513)));
}

#[test]
fn notify_before_driver_ok_or_of_a_missing_queue_needs_a_reset() {
    let mut r = rig_with(false);
    r.negotiate();
    r.program_queue(u32::from(QSIZE));
    r.header(VIRTIO_BLK_T_IN, 0);
    let descs = [
        desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ];
    assert_eq!(r.submit(&descs), None);
    assert!(r.needs_reset());
    assert_eq!(r.irq.count(), 0, "no interrupt before DRIVER_OK");
    r.reset_and_setup();
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert!(r.needs_reset());
    r.reset_and_setup();
    assert_eq!(r.read(2, 512), Some((OK, 513)));
}

#[test]
fn disk_config_parses_path_ro_and_id() {
    let c: DiskConfig = "a.img,ro,id=root".parse().unwrap();
    assert_eq!(
        c,
        DiskConfig {
            path: "a.img".into(),
            read_only: true,
            id: Some("root".into()),
            event_idx: true,
        }
    );
    let c: DiskConfig = "/x/b.img".parse().unwrap();
    assert!(!c.read_only && c.id.is_none() && c.event_idx);
    let c: DiskConfig = "b.img,event_idx=off,ro".parse().unwrap();
    assert!(c.read_only && !c.event_idx);
    let c: DiskConfig = "b.img,event_idx=off,event_idx=on".parse().unwrap();
    assert!(c.event_idx);
    let e = |s: &str| s.parse::<DiskConfig>().unwrap_err();
    assert_eq!(e(""), DiskConfigError::EmptyPath);
    assert_eq!(e(",ro"), DiskConfigError::EmptyPath);
    assert_eq!(e("a,rw"), DiskConfigError::UnknownOption("rw".into()));
    assert_eq!(e("a,event_idx=1"), DiskConfigError::BadEventIdx("1".into()));
    assert_eq!(
        e("a,event_idx"),
        DiskConfigError::UnknownOption("event_idx".into())
    );
    assert!(matches!(e("a,id="), DiskConfigError::BadId(_)));
    assert!(matches!(
        e("a,id=123456789012345678901"),
        DiskConfigError::BadId(_)
    ));
}

#[test]
fn images_are_locked_exclusively_or_shared_when_read_only() {
    let img = image();
    let cfg = |read_only| DiskConfig {
        path: img.path().into(),
        read_only,
        id: None,
        event_idx: true,
    };
    let a = Block::open(&cfg(false)).unwrap();
    assert!(matches!(
        Block::open(&cfg(false)),
        Err(block::Error::Locked { .. })
    ));
    assert!(matches!(
        Block::open(&cfg(true)),
        Err(block::Error::Locked { .. })
    ));
    drop(a);
    let r1 = Block::open(&cfg(true)).unwrap();
    let _r2 = Block::open(&cfg(true)).unwrap();
    assert!(matches!(
        Block::open(&cfg(false)),
        Err(block::Error::Locked { .. })
    ));
    drop((r1, _r2));
    let missing = DiskConfig {
        path: "/nonexistent/disk.img".into(),
        read_only: true,
        id: None,
        event_idx: true,
    };
    let e = Block::open(&missing).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--disk /nonexistent/disk.img: cannot open"),
        "{e}"
    );
}

#[test]
fn a_guest_cannot_flood_the_log_or_break_the_device_with_bad_writes() {
    let mut r = rig_with(false);
    // Thousands of ignored writes (outside set-up, misaligned, odd widths): no panic, the
    // state is untouched, and the device still works.
    for i in 0..5000u64 {
        r.w(VIRTIO_MMIO_QUEUE_NUM, 8);
        r.t.write_at(0x71 + (i % 3), &[1, 2]);
        r.t.write_at(0x70, &[0xff]);
    }
    assert_eq!(r.r(VIRTIO_MMIO_STATUS), 0);
    r.setup();
    assert_eq!(r.read(0, 512), Some((OK, 513)));
}

/// A transport like `r.t` on the same (read-only, shared-lock) image and memory, as a
/// snapshot restore builds it: nothing programmed.
fn fresh_transport(r: &Rig) -> MmioTransport {
    let cfg = DiskConfig {
        path: r.img.path().into(),
        read_only: true,
        id: Some("disk-0".into()),
        event_idx: true,
    };
    let m: Arc<dyn GuestMemoryView> = r.mem.clone();
    MmioTransport::new(Box::new(Block::open(&cfg).unwrap()), m, r.irq.clone()).unwrap()
}

#[test]
fn saved_transport_state_restored_into_a_new_transport_serves_on() {
    let mut r = rig_with(true);
    r.setup();
    assert_eq!(r.read(3, 512), Some((OK, 513)));
    assert_eq!(r.read(4, 512), Some((OK, 513)));
    r.w(VIRTIO_MMIO_QUEUE_SEL, 0);
    let saved = r.t.save_state();
    assert_eq!(saved.status, 0b1111);
    assert_eq!(
        saved.device_type,
        virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK
    );
    assert_eq!(saved.driver_features, (1 << 32) | (1 << VIRTIO_BLK_F_FLUSH));
    let q = &saved.queues[0];
    assert_eq!(
        (q.size, q.ready, q.next_avail, q.next_used),
        (QSIZE, true, 2, 2)
    );
    let (d, a, u) = r.layout();
    assert_eq!((q.desc_table, q.avail_ring, q.used_ring), (d.0, a.0, u.0));
    // Through the state file's JSON and back.
    let text = serde_json::to_string(&saved).unwrap();
    let back: super::mmio::TransportSnapshot = serde_json::from_str(&text).unwrap();
    assert_eq!(back, saved);

    // Unrestored, the new transport knows no driver: a notify needs a reset.
    r.t = fresh_transport(&r);
    assert_eq!(r.read(5, 512), None);
    assert!(r.needs_reset());
    // Restored, it serves the next request where the old one stopped.
    r.t = fresh_transport(&r);
    r.t.restore_state(&back).unwrap();
    assert_eq!(r.r(VIRTIO_MMIO_STATUS), 0b1111);
    assert_eq!(r.read(5, 512), Some((OK, 513)));
    // The request the unrestored transport left in the ring is served too.
    assert_eq!(r.used_idx(), 4);
    let mut b = [0u8; 512];
    r.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert!(b.iter().all(|&x| x == 5));
    assert!(!r.needs_reset());
    assert_eq!(r.t.save_state().queues[0].next_used, 4);
}

#[test]
fn saved_transport_state_that_does_not_fit_is_refused() {
    let mut r = rig_with(true);
    r.setup();
    let good = r.t.save_state();
    let t = fresh_transport(&r);
    let mut s = good.clone();
    s.device_type = 1;
    assert!(t
        .restore_state(&s)
        .unwrap_err()
        .to_string()
        .contains("device type 1"));
    let mut s = good.clone();
    s.queues[0].max_size = 8;
    assert!(t.restore_state(&s).is_err());
    let mut s = good.clone();
    s.queues.push(s.queues[0].clone());
    assert!(t
        .restore_state(&s)
        .unwrap_err()
        .to_string()
        .contains("2 saved queues"));
    let mut s = good.clone();
    s.queues[0].size = 3; // not a power of two
    assert!(t.restore_state(&s).is_err());
    // Nothing was taken: the transport is still unprogrammed.
    assert_eq!(t.status(), 0);
    t.restore_state(&good).unwrap();
    assert_eq!(t.status(), 0b1111);
}

/// A read of sector `s` (header, 512 bytes, status), offered but not notified.
fn offer_read(r: &Rig, s: u64) -> u16 {
    r.header(VIRTIO_BLK_T_IN, s);
    r.offer(&[
        desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        desc(DATA, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
        desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ])
}

/// One eventfd for queue 0 given to the transport, as the VM builder does after
/// registering it with KVM_IOEVENTFD; signalling it stands for the guest's notify.
fn with_notify_fd(
    r: &Rig,
) -> (
    std::os::unix::io::RawFd,
    Arc<vmm_sys_util::eventfd::EventFd>,
) {
    use std::os::unix::io::AsRawFd;
    let e = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let fd = e.as_raw_fd();
    let kvm_side = Arc::new(e.try_clone().unwrap());
    assert!(!r.t.notifies_by_eventfd());
    assert!(r.t.set_notify_fds(vec![e]));
    assert!(r.t.notifies_by_eventfd());
    assert!(!r.t.set_notify_fds(Vec::new()), "set once");
    (fd, kvm_side)
}

#[test]
fn an_ioeventfd_notify_is_served_when_the_event_loop_sees_it() {
    use vmm_sys_util::epoll::EventSet;
    let r = rig();
    let (fd, kvm) = with_notify_fd(&r);
    assert!(r
        .t
        .host_fds()
        .iter()
        .any(|h| h.fd == fd && h.events == EventSet::IN));
    let before = offer_read(&r, 3);
    kvm.write(1).unwrap();
    assert_eq!(r.served(before), None, "not served before the loop runs");
    r.t.host_event(fd, EventSet::IN);
    assert_eq!(r.served(before), Some((OK, 513)));
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(), 3);
    assert_eq!(r.irq.count(), 1);
    assert_eq!(r.r(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    // Woken again with nothing signalled (already read): nothing happens.
    let used = r.used_idx();
    let again = offer_read(&r, 4);
    r.t.host_event(fd, EventSet::IN);
    assert_eq!(r.used_idx(), used);
    // A notify through the bus (an exit) still serves the queue.
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(r.served(again), Some((OK, 513)));
    assert!(!r.needs_reset());
}

#[test]
fn a_pending_ioeventfd_notify_is_served_before_a_status_write() {
    let mut r = rig_with(false);
    let (_, kvm) = with_notify_fd(&r);
    // Notified before DRIVER_OK, still pending when DRIVER_OK is written: failed as a
    // notify written through the bus then would be.
    r.negotiate();
    r.program_queue(u32::from(QSIZE));
    let before = offer_read(&r, 1);
    kvm.write(1).unwrap();
    r.w(VIRTIO_MMIO_STATUS, 0b1111);
    assert!(r.needs_reset());
    assert_eq!(r.served(before), None);
    // Notified, then reset before the loop ran: served first, not lost or failed late.
    r.reset_and_setup();
    let before = offer_read(&r, 2);
    kvm.write(1).unwrap();
    r.w(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(r.served(before), Some((OK, 513)));
    r.ring += 0x1000;
    r.setup();
    // Pending at a snapshot: served by serve_pending_notifies.
    let before = offer_read(&r, 5);
    kvm.write(1).unwrap();
    r.t.serve_pending_notifies();
    assert_eq!(r.served(before), Some((OK, 513)));
    assert!(!r.needs_reset());
}

#[test]
fn with_event_idx_an_interrupt_is_raised_only_when_used_event_says_so() {
    let mut r = rig_opts(false, true);
    r.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_ne!(
        r.r(VIRTIO_MMIO_DEVICE_FEATURES) & (1 << VIRTIO_RING_F_EVENT_IDX),
        0,
        "offered by default"
    );
    r.setup_event_idx();
    // The driver wants an interrupt once the used index passes 2 (the third request).
    r.set_used_event(2);
    let mut irqs = Vec::new();
    for i in 0..4u16 {
        assert_eq!(r.read(u64::from(i), 512), Some((OK, 513)));
        irqs.push(r.irq.count());
        // The device asks for a kick at the next request (avail_event = next avail).
        assert_eq!(r.avail_event(), i + 1, "avail_event after request {i}");
        assert_eq!(r.used_flags(), 0, "no NO_NOTIFY flag with EVENT_IDX");
    }
    assert_eq!(irqs, [0, 0, 1, 1]);
    // A used_event already passed: no interrupt; one just ahead: one.
    r.set_used_event(1);
    assert_eq!(r.read(5, 512), Some((OK, 513)));
    assert_eq!(r.irq.count(), 1);
    r.set_used_event(5);
    assert_eq!(r.read(6, 512), Some((OK, 513)));
    assert_eq!(r.irq.count(), 2);
    assert!(!r.needs_reset());
}

#[test]
fn without_event_idx_every_completion_interrupts() {
    // Offered but not accepted by the driver, and not offered at all (event_idx=off).
    for offered in [true, false] {
        let mut r = rig_opts(false, offered);
        r.setup();
        r.set_used_event(2);
        for i in 0..4u32 {
            assert_eq!(r.read(u64::from(i), 512), Some((OK, 513)));
            assert_eq!(r.irq.count(), i + 1, "offered {offered}, request {i}");
            assert_eq!(r.avail_event(), 0, "avail_event is the driver's to ignore");
            assert_eq!(r.used_flags(), 0, "NO_NOTIFY cleared once idle");
        }
    }
}

#[test]
fn event_idx_off_removes_the_feature_bit() {
    let r = rig_opts(false, false);
    r.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = r.r(VIRTIO_MMIO_DEVICE_FEATURES);
    assert_eq!(low & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    assert_ne!(low & (1 << VIRTIO_BLK_F_FLUSH), 0);
    // A driver that accepts it anyway is refused FEATURES_OK.
    r.negotiate_features((1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_RING_F_EVENT_IDX));
    assert_eq!(r.r(VIRTIO_MMIO_STATUS), 0b0011);
}

#[test]
fn event_idx_survives_snapshot_and_restore() {
    let mut r = rig_opts(true, true);
    r.setup_event_idx();
    r.set_used_event(3);
    assert_eq!(r.read(1, 512), Some((OK, 513)));
    let saved = r.t.save_state();
    assert!(saved.queues[0].event_idx_enabled);
    assert_ne!(saved.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    let text = serde_json::to_string(&saved).unwrap();
    let back: super::mmio::TransportSnapshot = serde_json::from_str(&text).unwrap();
    r.t = fresh_transport(&r);
    r.t.restore_state(&back).unwrap();
    assert!(r.t.save_state().queues[0].event_idx_enabled);
    // used_event 3 is honoured after the restore: requests 2 and 3 quiet, 4 interrupts.
    let before = r.irq.count();
    assert_eq!(r.read(2, 512), Some((OK, 513)));
    assert_eq!(r.read(3, 512), Some((OK, 513)));
    assert_eq!(r.irq.count(), before);
    assert_eq!(r.avail_event(), 3);
    assert_eq!(r.read(4, 512), Some((OK, 513)));
    assert_eq!(r.irq.count(), before + 1);
    // A reset turns it off again until the driver accepts it anew.
    r.reset_and_setup();
    assert!(!r.t.save_state().queues[0].event_idx_enabled);
}
