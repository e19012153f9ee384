//! The CPUID a vCPU sees: KVM's supported set, with topology filled in per vCPU and, on
//! hosts whose KVM cannot execute some instructions in guest ring 0, those features
//! removed so a guest does not pick them.

use kvm_bindings::CpuId;

/// Features (leaf, register, bit) that kvm_pvm's instruction emulator cannot run in guest
/// ring 0. Removing them from CPUID is right, although on kvm_pvm the guest may still see
/// host CPUID; the kernel command line (`clearcpuid=`, `noxsave`) covers that case.
pub const PVM_HIDDEN: &[(u32, char, u32, &str)] = &[
    (1, 'c', 13, "cx16"),
    (1, 'c', 23, "popcnt"),
    (1, 'c', 26, "xsave"),
    (1, 'c', 27, "osxsave"),
    (1, 'c', 28, "avx"),
    (7, 'b', 20, "smap"),
    (7, 'b', 5, "avx2"),
];

/// Adjusts `cpuid` for vCPU `id` of `count`, removing `hide` features.
pub fn filter(cpuid: &mut CpuId, id: u8, count: u8, hide: &[(u32, char, u32, &str)]) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // Initial APIC id, logical processor count, HTT when more than one.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                if count > 1 {
                    e.edx |= 1 << 28;
                }
                e.ecx |= 1 << 31; // hypervisor present
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
        for &(leaf, reg, bit, _) in hide {
            if e.function == leaf && (leaf != 7 || e.index == 0) {
                let r = match reg {
                    'a' => &mut e.eax,
                    'b' => &mut e.ebx,
                    'c' => &mut e.ecx,
                    _ => &mut e.edx,
                };
                *r &= !(1 << bit);
            }
        }
    }
}
