//! virtio-balloon without a guest: the tests play the driver through the transport's
//! registers and split rings in a GuestMemoryMmap, and check residency with mincore.

use std::sync::Arc;

use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::mmio::CONFIG_OFFSET;
use crate::devices::virtio::test_driver::{self as drv, layout as ring, QSIZE};
use crate::devices::virtio::{CountingInterrupt, GuestMemoryView};
use crate::devices::BusDevice;

/// Guest RAM: 8 MiB at 0 and 4 MiB at 16 MiB (a hole between).
const LOW: u64 = 8 << 20;
const HIGH: u64 = 16 << 20;
const HIGH_LEN: u64 = 4 << 20;
/// Where the driver's PFN arrays and stats buffer live.
const BUF: u64 = 0x10_0000;

struct Rig {
    mem: Arc<GuestMemoryMmap>,
    t: Arc<MmioTransport>,
    h: BalloonHandle,
    irq: Arc<CountingInterrupt>,
    /// Next free descriptor slot per queue and the driver's available index per queue.
    next: [u16; 4],
}

fn rig_with(cfg: &BalloonConfig, features: u64) -> Rig {
    let mem = Arc::new(
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), LOW as usize),
            (GuestAddress(HIGH), HIGH_LEN as usize),
        ])
        .unwrap(),
    );
    let irq = Arc::new(CountingInterrupt::default());
    let m: Arc<dyn GuestMemoryView> = mem.clone();
    let (t, h) = Balloon::new(cfg).into_transport(m, irq.clone()).unwrap();
    let r = Rig {
        mem,
        t,
        h,
        irq,
        next: [0; 4],
    };
    r.setup(features);
    r.driver_ok();
    r
}

fn rig() -> Rig {
    let f = (1 << VIRTIO_BALLOON_F_STATS_VQ) | (1 << VIRTIO_BALLOON_F_REPORTING);
    rig_with(&BalloonConfig::default(), f)
}

impl Rig {
    fn w(&self, reg: u32, v: u32) {
        drv::w(&self.t, reg, v);
    }

    fn r(&self, reg: u32) -> u32 {
        drv::r(&self.t, reg)
    }

    fn config(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(CONFIG_OFFSET + off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Negotiates `features` (+ VERSION_1) and sets up every queue.
    fn setup(&self, features: u64) {
        assert_eq!(self.r(VIRTIO_MMIO_DEVICE_ID), 5);
        drv::negotiate(&self.t, features as u32);
        let n = 2 + (features.count_ones() as u16).min(2);
        drv::setup_queues(&self.t, &self.mem, n);
    }

    fn driver_ok(&self) {
        drv::driver_ok(&self.t);
    }

    /// Makes one chain of `descs` (addr, len, writable) available on queue `q`, notifies.
    fn submit(&mut self, q: u16, descs: &[(u64, u32, bool)]) {
        let (d, a, _) = ring(q);
        let head = self.next[q as usize];
        for (i, &(addr, len, wr)) in descs.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == descs.len();
            let flags = if wr { VRING_DESC_F_WRITE } else { 0 } | if last { 0 } else { 1 };
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, idx + 1));
            self.mem
                .write_obj(raw, GuestAddress(d + 16 * u64::from(idx)))
                .unwrap();
        }
        self.next[q as usize] += descs.len() as u16;
        let avail_idx: u16 = self.mem.read_obj(GuestAddress(a + 2)).unwrap();
        let slot = a + 4 + 2 * u64::from(avail_idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.mem
            .write_obj(avail_idx.wrapping_add(1), GuestAddress(a + 2))
            .unwrap();
        self.w(VIRTIO_MMIO_QUEUE_NOTIFY, u32::from(q));
    }

    fn used_idx(&self, q: u16) -> u16 {
        drv::used_idx(&self.mem, q)
    }

    /// Inflates (queue 0) or deflates (queue 1) these PFNs, one buffer.
    fn pfns(&mut self, q: u16, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
        self.submit(q, &[(BUF, bytes.len() as u32, false)]);
    }

    /// Host pointer of `gpa`.
    fn hva(&self, gpa: u64) -> *mut u8 {
        self.mem.get_host_address(GuestAddress(gpa)).unwrap()
    }

    /// Resident 4 KiB pages in `[gpa, gpa + len)` (mincore).
    fn resident(&self, gpa: u64, len: u64) -> usize {
        let n = (len / PAGE) as usize;
        let mut v = vec![0u8; n];
        // SAFETY: mincore reads the page tables of a range this test mapped (inside one
        // region of the GuestMemoryMmap) and writes `n` bytes into `v`.
        let r = unsafe { libc::mincore(self.hva(gpa).cast(), len as usize, v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
        v.iter().filter(|&&b| b & 1 != 0).count()
    }

    /// Touches every page of `[gpa, gpa + len)` with a non-zero byte.
    fn touch(&self, gpa: u64, len: u64) {
        for p in (gpa..gpa + len).step_by(PAGE as usize) {
            self.mem.write_obj(0xa5u8, GuestAddress(p)).unwrap();
        }
    }
}

#[test]
fn inflate_gives_pages_back_and_deflate_counts_them() {
    let mut r = rig();
    let (gpa, len) = (0x40_0000u64, 64 * PAGE);
    r.touch(gpa, len);
    r.touch(HIGH, 4 * PAGE);
    assert_eq!(r.resident(gpa, len), 64);
    // Out of order, with a repeat and pages in both regions.
    let mut pfns: Vec<u32> = (0..64).rev().map(|i| ((gpa >> 12) + i) as u32).collect();
    pfns.push((gpa >> 12) as u32);
    pfns.extend((0..4).map(|i| ((HIGH >> 12) + i) as u32));
    r.pfns(0, &pfns);
    assert_eq!(r.used_idx(0), 1, "buffer returned");
    assert!(!r.t.needs_reset());
    assert_eq!(r.resident(gpa, len), 0, "inflated pages left the host");
    assert_eq!(r.resident(HIGH, 4 * PAGE), 0);
    assert_eq!(
        r.mem.read_obj::<u8>(GuestAddress(gpa)).unwrap(),
        0,
        "zero on refault"
    );
    r.pfns(1, &[(gpa >> 12) as u32, (gpa >> 12) as u32 + 1]);
    assert_eq!(r.used_idx(1), 1);
    let rep = r.h.report();
    assert_eq!(rep.counters.inflated_pages, 68);
    assert_eq!(rep.counters.deflated_pages, 2);
    assert_eq!(rep.counters.inflate_bytes_returned, 68 * PAGE);
    assert_eq!(rep.returned_bytes, 68 * PAGE);
    assert_eq!(rep.counters.madvise_calls, 2, "runs coalesced per region");
    assert!(r.irq.count() >= 2);
}

#[test]
fn a_pfn_outside_guest_ram_fails_the_device_and_releases_nothing() {
    for bad in [
        (LOW >> 12) as u32,
        ((HIGH + HIGH_LEN) >> 12) as u32,
        u32::MAX,
    ] {
        let mut r = rig();
        r.touch(0x40_0000, PAGE);
        r.pfns(0, &[0x400, bad]);
        assert!(r.t.needs_reset(), "PFN {bad:#x}");
        assert_eq!(
            r.resident(0x40_0000, PAGE),
            1,
            "nothing of the buffer released"
        );
        assert_eq!(r.h.report().counters.bad_requests, 1);
        assert_eq!(r.h.report().counters.inflated_pages, 0);
    }
}

#[test]
fn short_or_writable_or_outside_buffers_fail_the_device() {
    let cases: [&[(u64, u32, bool)]; 4] = [
        &[(BUF, 6, false)],       // not whole PFNs
        &[(BUF, 8, true)],        // device-writable PFN array
        &[(LOW - 4, 8, false)],   // array runs off guest RAM
        &[(BUF, 1 << 20, false)], // longer than any driver sends
    ];
    for c in cases {
        let mut r = rig();
        r.touch(0x40_0000, PAGE);
        r.mem.write_obj(0x400u32, GuestAddress(BUF)).unwrap();
        r.submit(0, c);
        assert!(r.t.needs_reset(), "{c:?}");
        assert_eq!(r.resident(0x40_0000, PAGE), 1);
    }
}

#[test]
fn free_page_reports_are_released_and_bad_ranges_refused() {
    let mut r = rig();
    let (gpa, len) = (0x20_0000u64, 2u64 << 20);
    r.touch(gpa, len);
    r.touch(HIGH, 1 << 20);
    // Linux adds reports as device-writable buffers; queue 3 with stats negotiated.
    r.submit(3, &[(gpa, len as u32, true), (HIGH, 1 << 20, true)]);
    assert!(!r.t.needs_reset());
    assert_eq!(r.used_idx(3), 1);
    assert_eq!(r.resident(gpa, len), 0);
    assert_eq!(r.resident(HIGH, 1 << 20), 0);
    let rep = r.h.report();
    assert_eq!(rep.counters.reports, 1);
    assert_eq!(rep.counters.reported_bytes_returned, len + (1 << 20));
    for bad in [
        (gpa + 8, PAGE as u32),
        (gpa, 100),
        (LOW - PAGE, 2 * PAGE as u32),
    ] {
        let mut r = rig();
        r.touch(LOW - PAGE, PAGE);
        r.submit(3, &[(bad.0, bad.1, true)]);
        assert!(r.t.needs_reset(), "{bad:?}");
        assert_eq!(r.resident(LOW - PAGE, PAGE), 1);
    }
}

#[test]
fn reporting_is_queue_2_without_statistics() {
    let cfg = BalloonConfig {
        stats: None,
        ..BalloonConfig::default()
    };
    let mut r = rig_with(&cfg, 1 << VIRTIO_BALLOON_F_REPORTING);
    r.touch(0x20_0000, PAGE);
    r.submit(2, &[(0x20_0000, PAGE as u32, true)]);
    assert!(!r.t.needs_reset());
    assert_eq!(r.resident(0x20_0000, PAGE), 0);
    assert_eq!(r.h.report().counters.reports, 1);
}

#[test]
fn statistics_are_kept_and_handed_back_when_due() {
    let mut r = rig();
    let mut buf = Vec::new();
    for (tag, v) in [(4u16, 100u64 << 20), (5, 256 << 20), (99, 7)] {
        buf.extend(tag.to_le_bytes());
        buf.extend(v.to_le_bytes());
    }
    r.mem.write_slice(&buf, GuestAddress(BUF + 0x1000)).unwrap();
    r.submit(2, &[(BUF + 0x1000, buf.len() as u32, false)]);
    assert_eq!(r.used_idx(2), 0, "the buffer is kept");
    let s = r.h.report().stats.unwrap();
    assert_eq!(s.values["free_memory"], 100 << 20);
    assert_eq!(s.values["total_memory"], 256 << 20);
    assert_eq!(s.values["tag_99"], 7);
    let before = r.irq.count();
    r.h.request_stats();
    assert_eq!(r.used_idx(2), 1, "handed back for a refill");
    assert!(r.irq.count() > before);
    assert!(!r.t.needs_reset());
}

#[test]
fn a_new_target_raises_a_config_interrupt_and_the_driver_writes_actual() {
    let r = rig();
    assert_eq!(r.config(0), 0);
    r.h.set_target(2 << 20).unwrap();
    assert_eq!(r.config(0), 512, "num_pages");
    assert_eq!(
        r.r(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(r.irq.count(), 1);
    r.t.write_at(CONFIG_OFFSET + 4, &512u32.to_le_bytes());
    assert_eq!(r.config(4), 512);
    assert_eq!(r.h.report().actual_bytes, 2 << 20);
    assert!(
        r.h.set_target(LOW + HIGH_LEN + PAGE).is_err(),
        "more than RAM"
    );
}

#[test]
fn contiguity_counts_resident_runs_with_holes() {
    let r = rig();
    r.touch(0, LOW);
    r.touch(HIGH, HIGH_LEN);
    let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let before = contiguity(&r.mem, &pagemap).unwrap();
    assert_eq!(before.resident_bytes, LOW + HIGH_LEN);
    let mut r = r;
    r.pfns(0, &[0x300, 0x302]);
    let rep = r.h.report();
    let (b, a) = (
        rep.contiguity_before.unwrap(),
        rep.contiguity_after.unwrap(),
    );
    assert_eq!(a.resident_bytes, b.resident_bytes - 2 * PAGE);
    assert!(a.runs >= 2 && a.runs <= b.runs + 2, "{b:?} -> {a:?}");
}

#[test]
fn balloon_options_parse_and_bad_ones_are_refused() {
    let c: BalloonConfig = "".parse().unwrap();
    assert_eq!(c, BalloonConfig::default());
    let c: BalloonConfig = "size=64M,stats=off,reporting=off".parse().unwrap();
    assert_eq!(c.size, 64 << 20);
    assert_eq!(c.stats, None);
    assert!(!c.reporting);
    let c: BalloonConfig = "stats=250ms".parse().unwrap();
    assert_eq!(c.stats, Some(std::time::Duration::from_millis(250)));
    for bad in [
        "size=x",
        "size=-1M",
        "speed=1",
        "reporting=maybe",
        "stats=-1s",
        "size=17T",
    ] {
        assert!(bad.parse::<BalloonConfig>().is_err(), "{bad}");
    }
}

/// Linux kicks the statistics queue before DRIVER_OK: kept, served at DRIVER_OK; a kick
/// before the queue is ready still fails the device.
#[test]
fn a_stats_kick_before_driver_ok_is_served_at_driver_ok() {
    let mut r = rig();
    r.w(VIRTIO_MMIO_STATUS, 0);
    r.next = [0; 4];
    r.setup((1 << VIRTIO_BALLOON_F_STATS_VQ) | (1 << VIRTIO_BALLOON_F_REPORTING));
    let stat = [4u8, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    r.mem.write_slice(&stat, GuestAddress(BUF)).unwrap();
    r.submit(2, &[(BUF, 10, false)]);
    assert!(!r.t.needs_reset());
    assert!(
        r.h.report().stats.is_none(),
        "not consumed before DRIVER_OK"
    );
    r.driver_ok();
    assert_eq!(r.h.report().stats.unwrap().values["free_memory"], 1);
    r.w(VIRTIO_MMIO_STATUS, 0);
    r.w(VIRTIO_MMIO_STATUS, 1);
    r.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert!(r.t.needs_reset(), "notify before FEATURES_OK");
}
