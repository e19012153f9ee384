//! x86-64: the state a guest finds at its first instruction.
//!
//! - [`gdt`]: descriptor encoding, the boot GDT and the `kvm_segment`s read off it;
//! - [`paging`]: identity page tables for 64-bit entry;
//! - [`regs`]: general/segment/control registers per entry protocol, and the FPU;
//! - [`cpuid`]: the CPUID each vCPU sees;
//! - [`msr`]: the boot MSRs (`KVM_SET_MSRS`), limited to those KVM lists;
//! - [`interrupts`]: local APIC LINT0/LINT1;
//! - [`mptable`] and [`acpi`]: how the guest finds its CPUs, I/O APIC and legacy devices.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;

/// The local APICs' MMIO base (architectural default).
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The I/O APIC's MMIO base (KVM's in-kernel I/O APIC).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Pins of KVM's in-kernel I/O APIC (GSI n = pin n).
pub const IOAPIC_PINS: u8 = 24;

/// The byte that makes `bytes` sum to zero (mod 256): the checksum of the MP floating
/// pointer and configuration table, and of every ACPI table (the `acpi_tables` crate
/// computes those itself; the tests check them with this function).
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &x| a.wrapping_add(x)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_makes_the_sum_zero() {
        let mut b = vec![1u8, 2, 250, 77];
        let c = super::checksum(&b);
        b.push(c);
        assert_eq!(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
        assert_eq!(super::checksum(&[]), 0);
    }
}
