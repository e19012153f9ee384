//! Initial registers: general, segment and control registers for each boot protocol's
//! entry, and the FPU/SSE control words (docs/vmm.md compares them with Firecracker's
//! and Cloud Hypervisor's).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::gdt::{self, BOOT_CS32, BOOT_CS64, BOOT_DS, BOOT_GDT};
use super::layout::{BOOT_STACK, GDT, IDT, PML4, PVH_INFO, ZERO_PAGE};

/// How the first vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit long mode, paging on (identity map), `rsi` = zero page (Linux 64-bit boot protocol).
    Linux64 {
        /// First instruction.
        rip: u64,
    },
    /// 32-bit protected mode, paging off, `rbx` = start_info (PVH boot protocol).
    Pvh {
        /// First instruction.
        rip: u64,
    },
}

/// CR0 bits.
pub const CR0_PE: u64 = 1;
/// Extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// Paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the always-one bit 1 (interrupts off).
pub const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word after FNINIT: all exceptions masked, 64-bit precision.
pub const FCW_DEFAULT: u16 = 0x37f;
/// MXCSR after reset: all SSE exceptions masked, round to nearest.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// Initial register state of a vCPU.
#[derive(Debug, Clone, Copy)]
pub struct VcpuInit {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
}

impl VcpuInit {
    /// The state a boot protocol expects at the first instruction; `base` is the vCPU's
    /// current sregs (KVM_GET_SREGS), of which the APIC base and the rest are kept.
    pub fn for_entry(entry: Entry, base: kvm_sregs) -> Self {
        let mut sregs = base;
        let mut regs = kvm_regs {
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        };
        sregs.gdt.base = GDT;
        sregs.gdt.limit = (8 * BOOT_GDT.len() - 1) as u16;
        sregs.idt.base = IDT;
        sregs.idt.limit = 7;
        // TR must be a usable busy TSS for VM entry; nothing switches stacks through it.
        sregs.tr = gdt::segment(gdt::tss_descriptor(0, 0xfff).0, 0);
        sregs.ldt.unusable = 1;
        let data = gdt::segment_of(&BOOT_GDT, BOOT_DS);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        match entry {
            Entry::Linux64 { rip } => {
                sregs.cs = gdt::segment_of(&BOOT_GDT, BOOT_CS64);
                sregs.cr3 = PML4;
                sregs.cr4 = CR4_PAE;
                sregs.cr0 = CR0_PG | CR0_ET | CR0_PE;
                sregs.efer = EFER_LME | EFER_LMA;
                regs.rip = rip;
                regs.rsp = BOOT_STACK;
                regs.rbp = BOOT_STACK;
                regs.rsi = ZERO_PAGE;
            }
            Entry::Pvh { rip } => {
                sregs.cs = gdt::segment_of(&BOOT_GDT, BOOT_CS32);
                sregs.cr0 = CR0_ET | CR0_PE;
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rip = rip;
                regs.rbx = PVH_INFO;
            }
        }
        VcpuInit { regs, sregs }
    }
}

/// The FPU state every vCPU starts with (as after FNINIT; MXCSR as after reset).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FCW_DEFAULT,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux64_entry_state() {
        let i = VcpuInit::for_entry(Entry::Linux64 { rip: 0x100_0000 }, kvm_sregs::default());
        assert_eq!(
            (i.regs.rip, i.regs.rsi, i.regs.rflags),
            (0x100_0000, ZERO_PAGE, 2)
        );
        assert_eq!(
            (i.sregs.cs.selector, i.sregs.cs.l, i.sregs.cs.db),
            (0x8, 1, 0)
        );
        assert_eq!((i.sregs.ss.selector, i.sregs.ss.type_), (0x10, 3));
        assert_eq!(i.sregs.cr0, 0x8000_0011);
        assert_eq!(
            (i.sregs.cr3, i.sregs.cr4, i.sregs.efer),
            (PML4, 0x20, 0x500)
        );
        assert_eq!(
            (i.sregs.tr.type_, i.sregs.tr.s, i.sregs.tr.present),
            (11, 0, 1)
        );
        assert_eq!(i.sregs.gdt.limit, 31);
    }

    #[test]
    fn pvh_entry_state() {
        let i = VcpuInit::for_entry(Entry::Pvh { rip: 0x10_0200 }, kvm_sregs::default());
        assert_eq!((i.regs.rip, i.regs.rbx), (0x10_0200, PVH_INFO));
        assert_eq!(
            (i.sregs.cs.selector, i.sregs.cs.l, i.sregs.cs.db),
            (0x18, 0, 1)
        );
        assert_eq!((i.sregs.cr0, i.sregs.cr4, i.sregs.efer), (0x11, 0, 0));
        assert_eq!(i.sregs.cs.limit, 0xffff_ffff, "flat 4 GiB in 32-bit mode");
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }
}
