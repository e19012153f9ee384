//! vCPU set-up (registers for each entry mode, CPUID, FPU, local APIC) and the run loop.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;

use crate::boot::layout::{BOOT_STACK, GDT, IDT, PML4, PVH_INFO, ZERO_PAGE};
use crate::boot::Entry;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("vCPU {id}: {what}: {source}")]
    Kvm {
        /// vCPU.
        id: u8,
        /// Step.
        what: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Initial register state of a vCPU.
#[derive(Debug, Clone, Copy)]
pub struct VcpuInit {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
}

fn seg(selector: u16, type_: u8, l: u8, db: u8, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl VcpuInit {
    /// The state a boot protocol expects at the first instruction.
    pub fn for_entry(entry: Entry, base: kvm_sregs) -> Self {
        let mut sregs = base;
        let mut regs = kvm_regs {
            rflags: 2,
            ..Default::default()
        };
        sregs.gdt.base = GDT;
        sregs.gdt.limit = 4 * 8 - 1;
        sregs.idt.base = IDT;
        sregs.idt.limit = 7;
        let mut tr = seg(0, 11, 0, 0, 0);
        tr.s = 0;
        tr.limit = 0xfff;
        tr.g = 0;
        sregs.tr = tr;
        sregs.ldt.unusable = 1;
        match entry {
            Entry::Linux64 { rip } => {
                sregs.cs = seg(0x8, 11, 1, 0, 0);
                let data = seg(0x10, 3, 0, 1, 0);
                (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
                sregs.cr3 = PML4;
                sregs.cr4 = 1 << 5; // PAE
                sregs.cr0 = 0x8000_0011; // PG | ET | PE
                sregs.efer = (1 << 8) | (1 << 10); // LME | LMA
                regs.rip = rip;
                regs.rsp = BOOT_STACK;
                regs.rbp = BOOT_STACK;
                regs.rsi = ZERO_PAGE;
            }
            Entry::Pvh { rip } => {
                sregs.cs = seg(0x18, 11, 0, 1, 0);
                let data = seg(0x10, 3, 0, 1, 0);
                (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
                sregs.cr0 = 0x11; // PE | ET
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rip = rip;
                regs.rbx = PVH_INFO;
            }
        }
        VcpuInit { regs, sregs }
    }
}

/// Programs CPUID, FPU, LAPIC (LINT0 ExtINT, LINT1 NMI) and registers.
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    cpuid: &CpuId,
    init: Option<&VcpuInit>,
) -> Result<(), Error> {
    let e = |what| move |source| Error::Kvm { id, what, source };
    vcpu.set_cpuid2(cpuid).map_err(e("KVM_SET_CPUID2"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(e("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(e("KVM_GET_LAPIC"))?;
    let set = |l: &mut kvm_bindings::kvm_lapic_state, off: usize, mode: u32| {
        let mut v = u32::from_le_bytes([
            l.regs[off] as u8,
            l.regs[off + 1] as u8,
            l.regs[off + 2] as u8,
            l.regs[off + 3] as u8,
        ]);
        v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            l.regs[off + i] = *b as _;
        }
    };
    set(&mut lapic, 0x350, 0x7); // LINT0: ExtINT
    set(&mut lapic, 0x360, 0x4); // LINT1: NMI
    vcpu.set_lapic(&lapic).map_err(e("KVM_SET_LAPIC"))?;
    if let Some(init) = init {
        vcpu.set_sregs(&init.sregs).map_err(e("KVM_SET_SREGS"))?;
        vcpu.set_regs(&init.regs).map_err(e("KVM_SET_REGS"))?;
    }
    Ok(())
}

pub use super::vcpu_thread::{VcpuState, VcpuStop};
