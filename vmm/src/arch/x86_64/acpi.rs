//! ACPI tables (RSDP → XSDT → FADT + MADT, FADT → DSDT), the way Firecracker and Cloud
//! Hypervisor describe a firmware-less x86 guest: a *hardware-reduced* platform (no PM
//! timer, no SCI, no fixed power-management blocks to emulate) whose MADT lists one local
//! APIC per vCPU and the I/O APIC.
//!
//! Why: kernels built without `X86_MPPARSE` (the stock Debian cloud kernel) cannot read
//! the MP table ([`super::mptable`]) and fall back to one CPU; they find their CPUs only
//! in the MADT. Kernels without ACPI (the small kernel) ignore these tables and keep using
//! the MP table, which is still written.
//!
//! Interrupt routing: a hardware-reduced Linux installs no legacy PIC, so it has no
//! legacy IRQ numbers 0-15: the I/O APIC's pins get dynamically numbered Linux IRQs
//! (from 24 up), and a driver that requests "IRQ 4" or "IRQ 8" by its ISA number gets
//! -EINVAL (measured: `rtc_cmos: probe of rtc_cmos failed with error -22` with an empty
//! DSDT). Devices therefore have to be described in the DSDT with their interrupt as a
//! resource, which the kernel maps through the I/O APIC (GSI *n* = pin *n*, KVM's default
//! routing, the same as the MP table's): COM1 (`PNP0501`, ports 0x3F8-0x3FF, IRQ 4) and
//! the CMOS RTC (`PNP0B00`, ports 0x70-0x71, IRQ 8), as Firecracker and Cloud Hypervisor
//! describe theirs. Interrupt source overrides would not help (they name pins, not
//! Linux IRQ numbers) and are not given; nor is IRQ0 → GSI2: the hardware-reduced kernel
//! times with the local APIC (TSC deadline) and never uses the PIT.
//!
//! Each virtio-mmio device is a `LNRO0005` device (the ACPI ID Linux's virtio_mmio driver
//! matches, as Cloud Hypervisor and QEMU's microvm describe theirs) with its 4 KiB window
//! as a `Memory32Fixed` and its GSI as an edge-triggered interrupt. A kernel with ACPI
//! finds them there; one without (the small kernel) reads the same windows from
//! `virtio_mmio.device=` on its command line, which segvmm also writes. A kernel that
//! has both sees each window twice: the second registration fails to claim the region
//! (one kernel log line) and the device works once.
//!
//! The DSDT holds just these devices: every instruction of the guest's ring 0 is
//! emulated on the kvm_pvm host, so every AML op costs boot time.
//!
//! The tables sit in the BIOS area at [`ACPI_TABLES`] (0xE0000), inside the range the
//! e820 map reports reserved, where Linux also scans for the RSDP; the RSDP's address is
//! passed in `boot_params.acpi_rsdp_addr` (boot protocol 2.14+) and in the PVH start_info.
//!
//! Every table is built with the `acpi_tables` crate (as Cloud Hypervisor builds its
//! tables), which also computes the checksums.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};

use super::layout::ACPI_TABLES;
use super::{IOAPIC_ADDR, LAPIC_ADDR};

/// OEM id in every header.
const OEM_ID: [u8; 6] = *b"SEGVMM";
/// OEM table id in every header.
const OEM_TABLE_ID: [u8; 8] = *b"SEGVMMAC";
/// OEM revision in every header.
const OEM_REVISION: u32 = 1;

/// Size of a system description table header.
pub const HEADER_LEN: usize = 36;
/// FADT IA-PC boot architecture flags: no VGA, MSI not supported (no PCI devices).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_PRESENT: u16 = 1 << 3;

/// Why the tables could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The MADT's APIC ids are one byte and the I/O APIC takes the id after the last vCPU.
    #[error("ACPI MADT: {0} vCPUs do not fit (at most 254: APIC ids are 8-bit and the I/O APIC needs one)")]
    TooManyCpus(usize),
}

/// The bytes of an ACPI object.
fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// A legacy ISA device: `_HID`, `_UID` 0 and a `_CRS` with one 16-bit-decoded I/O range
/// and one edge-triggered, active-high interrupt (GSI = ISA IRQ).
fn isa_device(name: &str, hid: &str, port: u16, ports: u8, irq: u32) -> Vec<u8> {
    let io = aml::IO::new(port, port, 1, ports);
    let int = aml::Interrupt::new(true, true, false, false, irq);
    let crs = aml::ResourceTemplate::new(vec![&io, &int]);
    let hid = aml::EISAName::new(hid);
    let hid = aml::Name::new("_HID".into(), &hid);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);
    bytes(&aml::Device::new(name.into(), vec![&hid, &uid, &crs]))
}

/// A virtio-mmio window the guest should find in the DSDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmio {
    /// Guest-physical base of the register window.
    pub base: u32,
    /// Its size in bytes.
    pub size: u32,
    /// Its GSI (IOAPIC pin), edge-triggered.
    pub gsi: u32,
}

/// Device `VR<index>` (hex digits): `_HID` "LNRO0005", `_UID` index, `_CRS` with the
/// window (read-write `Memory32Fixed`) and its edge-triggered, active-high interrupt.
fn virtio_device(index: usize, d: &VirtioMmio) -> Vec<u8> {
    let mem = aml::Memory32Fixed::new(true, d.base, d.size);
    let int = aml::Interrupt::new(true, true, false, false, d.gsi);
    let crs = aml::ResourceTemplate::new(vec![&mem, &int]);
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &index);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let name = format!("VR{index:02X}");
    bytes(&aml::Device::new(
        name.as_str().into(),
        vec![&hid, &uid, &crs],
    ))
}

/// The DSDT: `\_SB` with COM1, the CMOS RTC and the virtio-mmio devices, so that the
/// guest maps their interrupts (see the module documentation).
fn dsdt(virtio: &[VirtioMmio]) -> Vec<u8> {
    let com1 = isa_device("COM1", "PNP0501", 0x3f8, 8, 4);
    let rtc = isa_device("RTC_", "PNP0B00", 0x70, 2, 8);
    let vdevs: Vec<Vec<u8>> = virtio
        .iter()
        .enumerate()
        .map(|(i, d)| virtio_device(i, d))
        .collect();
    let raw: Vec<RawAml> = [&com1, &rtc]
        .into_iter()
        .chain(vdevs.iter())
        .map(|b| RawAml(b))
        .collect();
    let children: Vec<&dyn Aml> = raw.iter().map(|r| r as &dyn Aml).collect();
    let sb = aml::Scope::new("\\_SB_".into(), children);
    let mut t = Sdt::new(
        *b"DSDT",
        HEADER_LEN as u32,
        2,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.append_slice(&bytes(&sb));
    t.as_slice().to_vec()
}

/// Already-encoded AML.
struct RawAml<'a>(&'a [u8]);

impl Aml for RawAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.0);
    }
}

/// A revision-6 FADT for a hardware-reduced platform pointing at the DSDT (X_DSDT).
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_PRESENT).into();
    bytes(&b.finalize())
}

/// The MADT: one enabled local APIC per vCPU (ACPI processor id = APIC id = index), the
/// I/O APIC (id `cpus + 1`, GSI base 0, the same id the MP table gives it); flags 0: no
/// dual 8259 (hardware-reduced).
fn madt(cpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(cpus + 1, IOAPIC_ADDR, 0));
    bytes(&m)
}

/// The XSDT listing `tables` by 64-bit address.
fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut x = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &t in tables {
        x.add_entry(t);
    }
    bytes(&x)
}

/// Rounds up to 16 bytes, the alignment every table here is placed at.
fn align16(x: usize) -> usize {
    (x + 15) & !15
}

/// The tables, laid out as they go into guest memory at [`ACPI_TABLES`].
#[derive(Debug, Clone)]
pub struct Tables {
    /// Guest-physical address of the first byte (the RSDP).
    pub base: u64,
    /// The bytes, RSDP first.
    pub bytes: Vec<u8>,
}

impl Tables {
    /// Guest-physical address of the RSDP (for `boot_params.acpi_rsdp_addr`).
    pub fn rsdp_addr(&self) -> u64 {
        self.base
    }
}

/// Builds RSDP, XSDT, FADT, MADT and DSDT for `cpus` vCPUs and the `virtio` windows,
/// placed at [`ACPI_TABLES`].
pub fn build(cpus: usize, virtio: &[VirtioMmio]) -> Result<Tables, Error> {
    let n = u8::try_from(cpus)
        .ok()
        .filter(|&n| n < 255)
        .ok_or(Error::TooManyCpus(cpus))?;
    let base = ACPI_TABLES;
    let xsdt_off = align16(Rsdp::len());
    // XSDT with two entries: header + 16 bytes.
    let fadt_off = align16(xsdt_off + HEADER_LEN + 16);
    let madt_off = align16(fadt_off + FADT::len());
    let madt = madt(n);
    let dsdt_off = align16(madt_off + madt.len());
    let dsdt = dsdt(virtio);
    let addr = |off: usize| base + off as u64;
    let xsdt = xsdt(&[addr(fadt_off), addr(madt_off)]);
    let fadt = fadt(addr(dsdt_off));
    let rsdp = bytes(&Rsdp::new(OEM_ID, addr(xsdt_off)));
    let mut out = vec![0u8; dsdt_off + dsdt.len()];
    for (off, t) in [
        (0, &rsdp),
        (xsdt_off, &xsdt),
        (fadt_off, &fadt),
        (madt_off, &madt),
        (dsdt_off, &dsdt),
    ] {
        out[off..off + t.len()].copy_from_slice(t);
    }
    Ok(Tables { base, bytes: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero when `b` sums to zero, i.e. its checksum byte is right.
    fn sum(b: &[u8]) -> u8 {
        crate::arch::x86_64::checksum(b)
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    /// The table at guest address `a`, checked: its length field and checksum.
    fn table<'a>(t: &'a Tables, a: u64, sig: &[u8; 4]) -> &'a [u8] {
        let off = (a - t.base) as usize;
        assert_eq!(&t.bytes[off..off + 4], sig);
        let len = u32_at(&t.bytes, off + 4) as usize;
        let tab = &t.bytes[off..off + len];
        assert_eq!(sum(tab), 0, "{} checksum", String::from_utf8_lossy(sig));
        tab
    }

    #[test]
    fn rsdp_xsdt_fadt_dsdt_chain() {
        let t = build(2, &[]).unwrap();
        let r = &t.bytes[..Rsdp::len()];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(r), 0, "extended checksum");
        assert_eq!(r[15], 2, "revision");
        assert_eq!(u32_at(r, 20) as usize, Rsdp::len());
        let x = table(&t, u64_at(r, 24), b"XSDT");
        assert_eq!(x.len(), HEADER_LEN + 16, "two entries");
        let f = table(&t, u64_at(x, HEADER_LEN), b"FACP");
        assert_eq!(f.len(), FADT::len());
        assert_eq!(f[8], 6, "FADT revision");
        assert_ne!(u32_at(f, 112) & Flags::HwReducedAcpi as u32, 0);
        assert_eq!(
            u16::from_le_bytes([f[109], f[110]]),
            0b1100,
            "no VGA, no MSI"
        );
        let dsdt = u64_at(f, 140);
        assert_eq!(u32_at(f, 40), 0, "only X_DSDT is given");
        let d = table(&t, dsdt, b"DSDT");
        assert!(d.len() > HEADER_LEN);
        table(&t, u64_at(x, HEADER_LEN + 8), b"APIC");
        // Inside the BIOS area Linux scans for the RSDP, 16-byte aligned.
        assert_eq!(t.rsdp_addr() % 16, 0);
        assert!(t.rsdp_addr() >= 0xe_0000 && t.base + t.bytes.len() as u64 <= 0x10_0000);
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        for cpus in [1usize, 2, 4, 64, 254] {
            let t = build(cpus, &[]).unwrap();
            let x = table(&t, u64_at(&t.bytes, 24), b"XSDT");
            let m = table(&t, u64_at(x, HEADER_LEN + 8), b"APIC");
            assert_eq!(u32_at(m, HEADER_LEN), LAPIC_ADDR);
            let (mut lapics, mut ioapics) = (Vec::new(), 0);
            let mut off = HEADER_LEN + 8;
            while off < m.len() {
                let (kind, len) = (m[off], m[off + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(u32_at(m, off + 4), 1, "enabled");
                        lapics.push(m[off + 3]);
                    }
                    1 => {
                        assert_eq!(len, 12);
                        assert_eq!(
                            m[off + 2] as usize,
                            cpus + 1,
                            "I/O APIC id as in the MP table"
                        );
                        assert_eq!(u32_at(m, off + 4), IOAPIC_ADDR);
                        assert_eq!(u32_at(m, off + 8), 0, "GSI base");
                        ioapics += 1;
                    }
                    k => panic!("unexpected MADT entry type {k}"),
                }
                off += len;
            }
            assert_eq!(off, m.len(), "entries fill the table exactly");
            assert_eq!(lapics, (0..cpus as u8).collect::<Vec<_>>());
            assert_eq!(ioapics, 1);
        }
    }

    #[test]
    fn dsdt_has_com1_and_rtc_with_their_resources() {
        let d = dsdt(&[]);
        assert_eq!(sum(&d), 0);
        assert_eq!(u32_at(&d, 4) as usize, d.len());
        let find = |pat: &[u8]| d.windows(pat.len()).position(|w| w == pat);
        let com1 = find(b"COM1").unwrap();
        let rtc = find(b"RTC_").unwrap();
        assert!(find(b"\\_SB_").unwrap() < com1 && com1 < rtc);
        // EisaId("PNP0501") and ("PNP0B00") as DWord constants.
        assert!(find(&[0x0c, 0x41, 0xd0, 0x05, 0x01]).unwrap() > com1);
        assert!(find(&[0x0c, 0x41, 0xd0, 0x0b, 0x00]).unwrap() > rtc);
        // I/O port descriptors (16-bit decode, min = max, alignment 1, length).
        assert!(find(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]).is_some());
        assert!(find(&[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02]).is_some());
        // Extended interrupt descriptors: consumer, edge, active high, one GSI: 4 and 8.
        assert!(find(&[0x89, 0x06, 0x00, 0x03, 0x01, 4, 0, 0, 0]).is_some());
        assert!(find(&[0x89, 0x06, 0x00, 0x03, 0x01, 8, 0, 0, 0]).is_some());
    }

    #[test]
    fn dsdt_lists_each_virtio_window_with_its_interrupt() {
        let v = [
            VirtioMmio {
                base: 0xd000_1000,
                size: 0x1000,
                gsi: 5,
            },
            VirtioMmio {
                base: 0xd000_2000,
                size: 0x1000,
                gsi: 6,
            },
        ];
        let t = build(1, &v).unwrap();
        let x = table(&t, u64_at(&t.bytes, 24), b"XSDT");
        let fadt = table(&t, u64_at(x, HEADER_LEN), b"FACP");
        let d = table(&t, u64_at(fadt, 140), b"DSDT");
        let find = |pat: &[u8]| d.windows(pat.len()).position(|w| w == pat);
        let count = |pat: &[u8]| d.windows(pat.len()).filter(|w| *w == pat).count();
        let (vr0, vr1) = (find(b"VR00").unwrap(), find(b"VR01").unwrap());
        assert!(find(b"RTC_").unwrap() < vr0 && vr0 < vr1);
        // _HID as a string, once per device.
        assert_eq!(count(b"\x0dLNRO0005\x00"), 2);
        // Memory32Fixed: read-write, base, length 4 KiB.
        let mem = |base: u32| {
            let mut m = vec![0x86, 0x09, 0x00, 0x01];
            m.extend_from_slice(&base.to_le_bytes());
            m.extend_from_slice(&0x1000u32.to_le_bytes());
            m
        };
        assert!(find(&mem(0xd000_1000)).unwrap() > vr0);
        assert!(find(&mem(0xd000_2000)).unwrap() > vr1);
        // Their interrupts: consumer, edge, active high, GSI 5 and 6.
        assert!(find(&[0x89, 0x06, 0x00, 0x03, 0x01, 5, 0, 0, 0]).unwrap() > vr0);
        assert!(find(&[0x89, 0x06, 0x00, 0x03, 0x01, 6, 0, 0, 0]).unwrap() > vr1);
        // Without virtio devices the DSDT has none.
        assert_eq!(dsdt(&[]).windows(8).filter(|w| w == b"LNRO0005").count(), 0);
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert_eq!(build(255, &[]).unwrap_err(), Error::TooManyCpus(255));
        assert_eq!(build(1000, &[]).unwrap_err(), Error::TooManyCpus(1000));
    }
}
