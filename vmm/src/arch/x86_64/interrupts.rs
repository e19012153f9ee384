//! Local APIC set-up: LINT0 as ExtINT (the PIC's output, as on a PC) and LINT1 as NMI,
//! the wiring Firecracker's and Cloud Hypervisor's `set_lint` program and the MP table
//! ([`super::mptable`]) describes.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

/// LVT LINT0 register offset in the APIC page.
pub const APIC_LVT0: usize = 0x350;
/// LVT LINT1 register offset.
pub const APIC_LVT1: usize = 0x360;
/// Delivery mode ExtINT.
pub const APIC_MODE_EXTINT: u32 = 0x7;
/// Delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0x4;

/// A 32-bit APIC register of `lapic`.
pub fn get_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = |i: usize| lapic.regs.get(off + i).map_or(0, |&c| c as u8);
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

/// Sets a 32-bit APIC register of `lapic` (out-of-range offsets are ignored).
pub fn set_reg(lapic: &mut kvm_lapic_state, off: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        if let Some(r) = lapic.regs.get_mut(off + i) {
            *r = *byte as _;
        }
    }
}

/// `lvt` with its delivery mode (bits 8-10) replaced by `mode`.
pub fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// LINT0 ExtINT, LINT1 NMI in `lapic`.
pub fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    let lint0 = with_delivery_mode(get_reg(lapic, APIC_LVT0), APIC_MODE_EXTINT);
    set_reg(lapic, APIC_LVT0, lint0);
    let lint1 = with_delivery_mode(get_reg(lapic, APIC_LVT1), APIC_MODE_NMI);
    set_reg(lapic, APIC_LVT1, lint1);
}

/// Reads the vCPU's local APIC, sets LINT0/LINT1 and writes it back.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), (&'static str, kvm_ioctls::Error)> {
    let mut lapic = vcpu.get_lapic().map_err(|e| ("KVM_GET_LAPIC", e))?;
    set_lint_modes(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(|e| ("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes_keep_the_other_bits() {
        let mut l = kvm_lapic_state::default();
        set_reg(&mut l, APIC_LVT0, 0x1_0000 | 0x400); // masked, NMI
        set_lint_modes(&mut l);
        assert_eq!(get_reg(&l, APIC_LVT0), 0x1_0700, "ExtINT, still masked");
        assert_eq!(get_reg(&l, APIC_LVT1), 0x400, "NMI");
        set_reg(&mut l, 1022, 0xffff_ffff);
        assert_eq!(get_reg(&l, 1022), 0xffff, "clipped at the page end");
    }
}
