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
//! The DSDT holds just those two devices (98 bytes of AML): every instruction of the
//! guest's ring 0 is emulated on the kvm_pvm host, so every AML op costs boot time.
//!
//! The tables sit in the BIOS area at [`ACPI_TABLES`] (0xE0000), inside the range the
//! e820 map reports reserved, where Linux also scans for the RSDP; the RSDP's address is
//! passed in `boot_params.acpi_rsdp_addr` (boot protocol 2.14+) and in the PVH start_info.

use super::layout::ACPI_TABLES;

/// The local APICs' MMIO base (architectural default).
const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The I/O APIC's MMIO base (KVM's in-kernel I/O APIC).
const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// OEM id in every header.
const OEM_ID: &[u8; 6] = b"SEGVMM";
/// OEM table id in every header.
const OEM_TABLE_ID: &[u8; 8] = b"SEGVMMAC";
/// Creator id in every header.
const CREATOR_ID: &[u8; 4] = b"SGVM";

/// Size of a system description table header.
pub const HEADER_LEN: usize = 36;
/// Size of an ACPI 2.0+ RSDP.
pub const RSDP_LEN: usize = 36;
/// Size of an ACPI 6.x FADT (revision 6).
pub const FADT_LEN: usize = 276;
/// FADT flag: hardware-reduced ACPI (no fixed hardware, no SCI).
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// FADT flags: power and sleep buttons are control-method devices (i.e. absent here).
const FADT_PWR_BUTTON: u32 = 1 << 4;
const FADT_SLP_BUTTON: u32 = 1 << 5;
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

/// The byte that makes `b` sum to zero (mod 256).
fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)))
}

/// A system description table: the 36-byte header (length and checksum filled in by
/// [`finish`]) followed by `body`.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER_LEN + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&0u32.to_le_bytes()); // length, below
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    finish(&mut t);
    t
}

/// Writes the length and the checksum of a finished table.
fn finish(t: &mut [u8]) {
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t[9] = 0;
    t[9] = checksum(t);
}

/// AML encoding: a package length (ACPI 6.5 §20.2.4) for `body` bytes that follow it;
/// the length counts its own bytes.
fn pkg_length(body: usize) -> Vec<u8> {
    let total = body + 1;
    if total < 0x40 {
        return vec![total as u8];
    }
    // Two to four bytes: low nibble in the lead byte, then whole bytes.
    let mut n = 2;
    while body + n >= 1 << (4 + 8 * (n - 1)) {
        n += 1;
    }
    let total = body + n;
    let mut v = vec![(((n - 1) as u8) << 6) | (total & 0xf) as u8];
    for i in 0..n - 1 {
        v.push((total >> (4 + 8 * i)) as u8);
    }
    v
}

/// AML `Name(seg, data)`.
fn aml_name(seg: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08];
    v.extend_from_slice(seg);
    v.extend_from_slice(data);
    v
}

/// AML `Device(seg) { body }`.
fn aml_device(seg: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x5b, 0x82];
    v.extend(pkg_length(4 + body.len()));
    v.extend_from_slice(seg);
    v.extend_from_slice(body);
    v
}

/// AML `Scope(\seg) { body }`.
fn aml_root_scope(seg: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x10];
    v.extend(pkg_length(5 + body.len()));
    v.push(b'\\');
    v.extend_from_slice(seg);
    v.extend_from_slice(body);
    v
}

/// AML `EisaId("PNPxxxx")` as a DWord constant: three letters of five bits, then four
/// hex digits, stored big-endian.
fn aml_eisa_id(id: &[u8; 7]) -> Vec<u8> {
    let l = |c: u8| u16::from(c - 0x40) & 0x1f;
    let letters = (l(id[0]) << 10) | (l(id[1]) << 5) | l(id[2]);
    let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    let mut v = vec![0x0c];
    v.extend_from_slice(&letters.to_be_bytes());
    v.push((hex(id[3]) << 4) | hex(id[4]));
    v.push((hex(id[5]) << 4) | hex(id[6]));
    v
}

/// A legacy ISA device: `_HID`, `_UID` 0 and a `_CRS` with one 16-bit-decoded I/O range
/// and one edge-triggered, active-high IRQ.
fn aml_isa_device(seg: &[u8; 4], hid: &[u8; 7], port: u16, ports: u8, irq: u8) -> Vec<u8> {
    let mut crs = vec![0x47, 0x01]; // I/O port descriptor, 16-bit decode
    crs.extend_from_slice(&port.to_le_bytes()); // minimum
    crs.extend_from_slice(&port.to_le_bytes()); // maximum
    crs.extend_from_slice(&[0x01, ports]); // alignment, length
    crs.push(0x22); // IRQ descriptor without flags byte: edge, active high
    crs.extend_from_slice(&(1u16 << irq).to_le_bytes());
    crs.extend_from_slice(&[0x79, 0x00]); // end tag, checksum 0 (ignored)
    let mut buf = vec![0x0a, crs.len() as u8]; // BufferSize: ByteConst
    buf.extend_from_slice(&crs);
    let mut buffer = vec![0x11];
    buffer.extend(pkg_length(buf.len()));
    buffer.extend_from_slice(&buf);
    let mut body = aml_name(b"_HID", &aml_eisa_id(hid));
    body.extend(aml_name(b"_UID", &[0x00]));
    body.extend(aml_name(b"_CRS", &buffer));
    aml_device(seg, &body)
}

/// The DSDT: `\_SB` with COM1 and the CMOS RTC, so that the guest maps their interrupts
/// (see the module documentation).
fn dsdt() -> Vec<u8> {
    let mut sb = aml_isa_device(b"COM1", b"PNP0501", 0x3f8, 8, 4);
    sb.extend(aml_isa_device(b"RTC_", b"PNP0B00", 0x70, 2, 8));
    sdt(b"DSDT", 2, &aml_root_scope(b"_SB_", &sb))
}

/// A revision-6 FADT for a hardware-reduced platform pointing at the DSDT.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = vec![0u8; FADT_LEN - HEADER_LEN];
    let at = |off: usize| off - HEADER_LEN;
    // DSDT (32-bit), offset 40; X_DSDT (64-bit), offset 140: both, equal.
    b[at(40)..at(44)].copy_from_slice(&(dsdt_addr as u32).to_le_bytes());
    b[at(109)..at(111)]
        .copy_from_slice(&(IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_PRESENT).to_le_bytes());
    b[at(112)..at(116)]
        .copy_from_slice(&(FADT_HW_REDUCED_ACPI | FADT_PWR_BUTTON | FADT_SLP_BUTTON).to_le_bytes());
    b[at(131)] = 5; // FADT minor version: ACPI 6.5
    b[at(140)..at(148)].copy_from_slice(&dsdt_addr.to_le_bytes());
    sdt(b"FACP", 6, &b)
}

/// The MADT: one enabled local APIC per vCPU (ACPI processor id = APIC id = index), the
/// I/O APIC (id `cpus + 1`, GSI base 0, the same id the MP table gives it).
fn madt(cpus: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // flags: no dual 8259 (hardware-reduced)
    for cpu in 0..cpus {
        // type 0 (processor local APIC), length 8, processor id, APIC id, flags: enabled.
        b.extend_from_slice(&[0, 8, cpu, cpu]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    // type 1 (I/O APIC), length 12, id, reserved, address, GSI base.
    b.extend_from_slice(&[1, 12, cpus.wrapping_add(1), 0]);
    b.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    sdt(b"APIC", 6, &b)
}

/// The XSDT listing `tables` by 64-bit address.
fn xsdt(tables: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = tables.iter().flat_map(|a| a.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

/// An ACPI 2.0 RSDP pointing at the XSDT (no RSDT).
fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_LEN);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum over the first 20 bytes, below
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // RSDT address: none
    r.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum, below
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
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

/// Builds RSDP, XSDT, FADT, MADT and DSDT for `cpus` vCPUs, placed at [`ACPI_TABLES`].
pub fn build(cpus: usize) -> Result<Tables, Error> {
    let n = u8::try_from(cpus)
        .ok()
        .filter(|&n| n < 255)
        .ok_or(Error::TooManyCpus(cpus))?;
    let base = ACPI_TABLES;
    let xsdt_off = align16(RSDP_LEN);
    // XSDT with two entries: header + 16 bytes.
    let fadt_off = align16(xsdt_off + HEADER_LEN + 16);
    let madt_off = align16(fadt_off + FADT_LEN);
    let madt = madt(n);
    let dsdt_off = align16(madt_off + madt.len());
    let dsdt = dsdt();
    let addr = |off: usize| base + off as u64;
    let xsdt = xsdt(&[addr(fadt_off), addr(madt_off)]);
    let fadt = fadt(addr(dsdt_off));
    let mut bytes = vec![0u8; dsdt_off + dsdt.len()];
    for (off, t) in [
        (0, &rsdp(addr(xsdt_off))),
        (xsdt_off, &xsdt),
        (fadt_off, &fadt),
        (madt_off, &madt),
        (dsdt_off, &dsdt),
    ] {
        bytes[off..off + t.len()].copy_from_slice(t);
    }
    Ok(Tables { base, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
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
        let t = build(2).unwrap();
        let r = &t.bytes[..RSDP_LEN];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(r), 0, "extended checksum");
        assert_eq!(r[15], 2, "revision");
        assert_eq!(u32_at(r, 20) as usize, RSDP_LEN);
        let x = table(&t, u64_at(r, 24), b"XSDT");
        assert_eq!(x.len(), HEADER_LEN + 16, "two entries");
        let f = table(&t, u64_at(x, HEADER_LEN), b"FACP");
        assert_eq!(f.len(), FADT_LEN);
        assert_eq!(f[8], 6, "FADT revision");
        assert_ne!(u32_at(f, 112) & FADT_HW_REDUCED_ACPI, 0);
        let dsdt = u64_at(f, 140);
        assert_eq!(u64::from(u32_at(f, 40)), dsdt, "DSDT and X_DSDT agree");
        assert!(table(&t, dsdt, b"DSDT").len() > HEADER_LEN);
        table(&t, u64_at(x, HEADER_LEN + 8), b"APIC");
        // Inside the BIOS area Linux scans for the RSDP, 16-byte aligned.
        assert_eq!(t.rsdp_addr() % 16, 0);
        assert!(t.rsdp_addr() >= 0xe_0000 && t.base + t.bytes.len() as u64 <= 0x10_0000);
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        for cpus in [1usize, 2, 4, 64, 254] {
            let t = build(cpus).unwrap();
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
    fn aml_encodings() {
        assert_eq!(pkg_length(0x3e), [0x3f]);
        assert_eq!(pkg_length(0x3f), [0x41, 0x04], "0x41 bytes: two-byte form");
        assert_eq!(pkg_length(0xffd), [0x4f, 0xff]);
        assert_eq!(
            pkg_length(0xffe),
            [0x81, 0x00, 0x01],
            "0x1001 bytes: three-byte form"
        );
        // The well-known DWord values of these ids.
        assert_eq!(aml_eisa_id(b"PNP0501")[1..], 0x0105_d041u32.to_le_bytes());
        assert_eq!(aml_eisa_id(b"PNP0B00")[1..], 0x000b_d041u32.to_le_bytes());
        let d = aml_isa_device(b"COM1", b"PNP0501", 0x3f8, 8, 4);
        assert_eq!(&d[..2], [0x5b, 0x82]);
        assert_eq!(
            d[2] as usize,
            d.len() - 2,
            "one-byte package length covers the rest"
        );
        let crs = d.windows(4).position(|w| w == b"_CRS").unwrap();
        assert_eq!(
            d[crs + 4..],
            [
                0x11, 0x10, 0x0a, 0x0d, 0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10,
                0x00, 0x79, 0x00
            ]
        );
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert_eq!(build(255).unwrap_err(), Error::TooManyCpus(255));
        assert_eq!(build(1000).unwrap_err(), Error::TooManyCpus(1000));
    }
}
