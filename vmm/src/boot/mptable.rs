//! Intel MultiProcessor Specification 1.4 tables: how a kernel without ACPI finds the
//! vCPUs' local APICs, the I/O APIC and the ISA interrupt routing.

use super::layout::MPTABLE;

const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IRQS: u8 = 24;

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)))
}

/// Builds the MP floating pointer and configuration table for `cpus` vCPUs, to be written at
/// [`MPTABLE`]. Returns the bytes.
pub fn build(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus + 1;
    let mut t = Vec::new();
    // Configuration table header, filled in at the end.
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&[0, 0, 4, 0]); // length (later), spec rev 1.4, checksum (later)
    t.extend_from_slice(b"SEGVMM  ");
    t.extend_from_slice(b"000000000000");
    t.extend_from_slice(&0u32.to_le_bytes()); // oem table
    t.extend_from_slice(&0u16.to_le_bytes()); // oem size
    t.extend_from_slice(&0u16.to_le_bytes()); // entry count (later)
    t.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    let mut entries = 0u16;
    for cpu in 0..cpus {
        let flags = 1 | if cpu == 0 { 2 } else { 0 }; // enabled, BSP
        t.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        t.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        t.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        t.extend_from_slice(&[0u8; 8]);
        entries += 1;
    }
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(b"ISA   ");
    entries += 1;
    t.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entries += 1;
    for irq in 0..IRQS {
        // type 3 (I/O interrupt), INT, conforming polarity/trigger, bus 0, irq -> ioapic pin irq.
        t.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        entries += 1;
    }
    // Local interrupts: LINT0 = ExtINT, LINT1 = NMI, to every local APIC.
    t.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    t.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    entries += 2;
    let len = t.len() as u16;
    t[4..6].copy_from_slice(&len.to_le_bytes());
    t[34..36].copy_from_slice(&entries.to_le_bytes());
    t[7] = checksum(&t);
    // Floating pointer, placed first; the table follows it.
    let table_addr = MPTABLE as u32 + 16;
    let mut f = Vec::with_capacity(16 + t.len());
    f.extend_from_slice(b"_MP_");
    f.extend_from_slice(&table_addr.to_le_bytes());
    f.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    f[10] = checksum(&f[..16]);
    f.extend_from_slice(&t);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let b = build(4);
        assert_eq!(&b[..4], b"_MP_");
        assert_eq!(b[..16].iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
        let t = &b[16..];
        assert_eq!(&t[..4], b"PCMP");
        let len = u16::from_le_bytes([t[4], t[5]]) as usize;
        assert_eq!(len, t.len());
        assert_eq!(t.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
        assert_eq!(u16::from_le_bytes([t[34], t[35]]), 4 + 1 + 1 + 24 + 2);
    }
}
