//! Intel MultiProcessor Specification 1.4 tables, as `#[repr(C)]` structs: how a kernel
//! without ACPI (the small kernel) finds the vCPUs' local APICs, the I/O APIC and the ISA
//! interrupt routing. The floating pointer comes first at [`MPTABLE`], the configuration
//! table right after it, then its entries: one processor per vCPU, the ISA bus, the I/O
//! APIC, one I/O interrupt per I/O APIC pin (ISA IRQ n -> pin n) and LINT0 ExtINT /
//! LINT1 NMI to every local APIC ([`super::interrupts`] programs the same).

use zerocopy::{Immutable, IntoBytes};

use super::layout::MPTABLE;
use super::{checksum, IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Processor entry: enabled.
const CPU_ENABLED: u8 = 1;
/// Processor entry: the bootstrap processor.
const CPU_BSP: u8 = 2;
/// CPU signature given for every processor: family 6.
const CPU_SIGNATURE: u32 = 0x600;
/// CPU feature flags given: FPU, APIC.
const CPU_FEATURES: u32 = 0x201;
/// Interrupt types (MP spec table 4-8).
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Destination "every local APIC".
const ALL_LAPICS: u8 = 0xff;

/// Why the MP table could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// APIC ids are one byte and the I/O APIC takes the id after the last vCPU.
    #[error("MP table: {0} vCPUs do not fit (at most 254: APIC ids are 8-bit and the I/O APIC needs one)")]
    TooManyCpus(usize),
}

/// MP floating pointer structure (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, Immutable)]
pub struct MpfIntel {
    /// "_MP_".
    pub signature: [u8; 4],
    /// Address of the configuration table.
    pub physptr: u32,
    /// Length in 16-byte units (1).
    pub length: u8,
    /// Spec revision (4 = 1.4).
    pub specification: u8,
    /// Makes the 16 bytes sum to 0.
    pub checksum: u8,
    /// Feature bytes (0: a configuration table is present).
    pub feature: [u8; 5],
}

/// MP configuration table header (44 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, Immutable)]
pub struct MpcTable {
    /// "PCMP".
    pub signature: [u8; 4],
    /// Bytes of header and entries.
    pub length: u16,
    /// Spec revision.
    pub spec: u8,
    /// Makes header and entries sum to 0.
    pub checksum: u8,
    /// OEM id.
    pub oem: [u8; 8],
    /// Product id.
    pub productid: [u8; 12],
    /// OEM table (none).
    pub oemptr: u32,
    /// OEM table size.
    pub oemsize: u16,
    /// Entries.
    pub oemcount: u16,
    /// Local APIC address.
    pub lapic: u32,
    /// Reserved.
    pub reserved: u32,
}

/// Processor entry (20 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, Immutable)]
pub struct MpcCpu {
    /// 0.
    pub type_: u8,
    /// Local APIC id.
    pub apicid: u8,
    /// Local APIC version.
    pub apicver: u8,
    /// Enabled, BSP.
    pub cpuflag: u8,
    /// CPUID signature.
    pub cpufeature: u32,
    /// CPUID feature flags.
    pub featureflag: u32,
    /// Reserved.
    pub reserved: [u32; 2],
}

/// Bus entry (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, Immutable)]
pub struct MpcBus {
    /// 1.
    pub type_: u8,
    /// Bus id.
    pub busid: u8,
    /// "ISA   ".
    pub bustype: [u8; 6],
}

/// I/O APIC entry (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, Immutable)]
pub struct MpcIoapic {
    /// 2.
    pub type_: u8,
    /// I/O APIC id.
    pub apicid: u8,
    /// Version.
    pub apicver: u8,
    /// 1: enabled.
    pub flags: u8,
    /// MMIO address.
    pub apicaddr: u32,
}

/// I/O interrupt (type 3) or local interrupt (type 4) assignment entry (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, Immutable)]
pub struct MpcIntsrc {
    /// 3 (I/O) or 4 (local).
    pub type_: u8,
    /// INT, NMI, SMI, ExtINT.
    pub irqtype: u8,
    /// Polarity and trigger (0: conforming to the bus).
    pub irqflag: u16,
    /// Source bus.
    pub srcbus: u8,
    /// Source bus IRQ.
    pub srcbusirq: u8,
    /// Destination I/O APIC id, or local APIC id (0xff: all).
    pub dstapic: u8,
    /// Destination pin (I/O APIC INTIN or LINTn).
    pub dstirq: u8,
}

/// Appends `v`'s bytes.
fn put<T: IntoBytes + Immutable>(out: &mut Vec<u8>, v: &T) {
    out.extend_from_slice(v.as_bytes());
}

/// The configuration table's entries for `cpus` vCPUs and the I/O APIC `ioapic_id`.
fn entries(cpus: u8, ioapic_id: u8) -> (Vec<u8>, u16) {
    let mut b = Vec::new();
    for cpu in 0..cpus {
        let bsp = if cpu == 0 { CPU_BSP } else { 0 };
        put(
            &mut b,
            &MpcCpu {
                type_: 0,
                apicid: cpu,
                apicver: APIC_VERSION,
                cpuflag: CPU_ENABLED | bsp,
                cpufeature: CPU_SIGNATURE,
                featureflag: CPU_FEATURES,
                reserved: [0; 2],
            },
        );
    }
    put(
        &mut b,
        &MpcBus {
            type_: 1,
            busid: 0,
            bustype: *b"ISA   ",
        },
    );
    put(
        &mut b,
        &MpcIoapic {
            type_: 2,
            apicid: ioapic_id,
            apicver: IOAPIC_VERSION,
            flags: 1,
            apicaddr: IOAPIC_ADDR,
        },
    );
    let intsrc = |type_, irqtype, irq, dstapic, dstirq| MpcIntsrc {
        type_,
        irqtype,
        irqflag: 0,
        srcbus: 0,
        srcbusirq: irq,
        dstapic,
        dstirq,
    };
    for irq in 0..IOAPIC_PINS {
        put(&mut b, &intsrc(3, INT_TYPE_INT, irq, ioapic_id, irq));
    }
    put(&mut b, &intsrc(4, INT_TYPE_EXTINT, 0, ALL_LAPICS, 0));
    put(&mut b, &intsrc(4, INT_TYPE_NMI, 0, ALL_LAPICS, 1));
    let count = u16::from(cpus) + 2 + u16::from(IOAPIC_PINS) + 2;
    (b, count)
}

/// Builds the MP floating pointer and configuration table for `cpus` vCPUs, to be written
/// at [`MPTABLE`].
pub fn build(cpus: usize) -> Result<Vec<u8>, Error> {
    let n = u8::try_from(cpus)
        .ok()
        .filter(|&n| n < 255)
        .ok_or(Error::TooManyCpus(cpus))?;
    let (body, count) = entries(n, n + 1);
    let header_len = std::mem::size_of::<MpcTable>();
    let mut table = MpcTable {
        signature: *b"PCMP",
        length: (header_len + body.len()) as u16,
        spec: 4,
        checksum: 0,
        oem: *b"SEGVMM  ",
        productid: *b"000000000000",
        oemcount: count,
        lapic: LAPIC_ADDR,
        ..Default::default()
    };
    let mut t = table.as_bytes().to_vec();
    t.extend_from_slice(&body);
    table.checksum = checksum(&t);
    t[..header_len].copy_from_slice(table.as_bytes());
    let mut mpf = MpfIntel {
        signature: *b"_MP_",
        physptr: (MPTABLE + std::mem::size_of::<MpfIntel>() as u64) as u32,
        length: 1,
        specification: 4,
        ..Default::default()
    };
    mpf.checksum = checksum(mpf.as_bytes());
    let mut out = mpf.as_bytes().to_vec();
    out.extend_from_slice(&t);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    #[test]
    fn sizes_are_the_specs() {
        use std::mem::size_of;
        assert_eq!(size_of::<MpfIntel>(), 16);
        assert_eq!(size_of::<MpcTable>(), 44);
        assert_eq!(size_of::<MpcCpu>(), 20);
        assert_eq!(size_of::<MpcBus>(), 8);
        assert_eq!(size_of::<MpcIoapic>(), 8);
        assert_eq!(size_of::<MpcIntsrc>(), 8);
    }

    #[test]
    fn checksums_counts_and_fields() {
        for cpus in [1usize, 2, 4] {
            let b = build(cpus).unwrap();
            assert_eq!(&b[..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(b[4..8].try_into().unwrap());
            assert_eq!(u64::from(ptr), MPTABLE + 16);
            assert_eq!((b[8], b[9]), (1, 4));
            let t = &b[16..];
            assert_eq!(&t[..4], b"PCMP");
            assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
            assert_eq!(sum(t), 0, "configuration table checksum");
            assert_eq!(
                u16::from_le_bytes([t[34], t[35]]) as usize,
                cpus + 1 + 1 + 24 + 2
            );
            assert_eq!(
                u32::from_le_bytes(t[36..40].try_into().unwrap()),
                LAPIC_ADDR
            );
            // Processor entries: APIC id = index, only the first is the BSP.
            for cpu in 0..cpus {
                let e = &t[44 + 20 * cpu..];
                assert_eq!(
                    (e[0], e[1], e[3]),
                    (0, cpu as u8, if cpu == 0 { 3 } else { 1 })
                );
            }
            let io = &t[44 + 20 * cpus + 8..];
            assert_eq!(
                (io[0], io[1]),
                (2, cpus as u8 + 1),
                "I/O APIC id after the vCPUs"
            );
            assert_eq!(
                u32::from_le_bytes(io[4..8].try_into().unwrap()),
                IOAPIC_ADDR
            );
            let last = &t[t.len() - 8..];
            assert_eq!(last, [4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1], "LINT1 NMI");
        }
        assert_eq!(build(255).unwrap_err(), Error::TooManyCpus(255));
    }
}
