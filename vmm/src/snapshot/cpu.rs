//! Saving and restoring one vCPU's state (on its own thread, while it is paused) and the
//! VM-wide state (PIC master and slave, IOAPIC, PIT, KVM clock).
//!
//! The vCPU order follows Firecracker's: on save, MP state first, then registers, FPU and
//! XSAVE, XCRs, debug registers, LAPIC, MSRs (TSC among them) and pending events last; on
//! restore, MP state, registers, FPU/XSAVE, XCRs, debug registers, LAPIC, MSRs, events.
//! State KVM will not give on a host (some of it on kvm_pvm) is recorded by name in the
//! snapshot and left out of the restore.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::Error;

/// Most MSRs read in one KVM_GET_MSRS call.
const MSR_CHUNK: usize = 64;

/// The legacy FPU area (KVM_GET_FPU), kept beside XSAVE where XSAVE is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FpuState {
    /// ST0-7.
    pub fpr: [[u8; 16]; 8],
    /// Control, status, tag words, last opcode.
    pub fcw_fsw_ftwx_op: [u16; 4],
    /// Last instruction and data pointers.
    pub last_ip_dp: [u64; 2],
    /// XMM0-15.
    pub xmm: [[u8; 16]; 16],
    /// MXCSR.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw_fsw_ftwx_op: [f.fcw, f.fsw, u16::from(f.ftwx), f.last_opcode],
            last_ip_dp: [f.last_ip, f.last_dp],
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(s: &FpuState) -> Self {
        kvm_fpu {
            fpr: s.fpr,
            fcw: s.fcw_fsw_ftwx_op[0],
            fsw: s.fcw_fsw_ftwx_op[1],
            ftwx: s.fcw_fsw_ftwx_op[2] as u8,
            last_opcode: s.fcw_fsw_ftwx_op[3],
            last_ip: s.last_ip_dp[0],
            last_dp: s.last_ip_dp[1],
            xmm: s.xmm,
            mxcsr: s.mxcsr,
            ..Default::default()
        }
    }
}

/// One vCPU's state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct VcpuSnapshot {
    /// MP state (runnable, halted, waiting for SIPI).
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers, EFER, APIC base, pending interrupt bitmap.
    pub sregs: kvm_sregs,
    /// The legacy FPU area.
    pub fpu: FpuState,
    /// The XSAVE area (None where KVM refused it).
    pub xsave: Option<kvm_xsave>,
    /// XCR0 and friends (None where KVM refused them).
    pub xcrs: Option<kvm_xcrs>,
    /// DR0-3, DR6, DR7 (None where refused).
    pub debugregs: Option<kvm_debugregs>,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR of KVM_GET_MSR_INDEX_LIST that KVM let us read, the TSC among them.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
    /// The TSC frequency, kHz (None where refused).
    pub tsc_khz: Option<u32>,
    /// What KVM refused on this vCPU.
    pub unsupported: Vec<String>,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// Saves vCPU `fd`'s state. `msr_index` is KVM_GET_MSR_INDEX_LIST; MSRs KVM will not
/// read are skipped and named in `unsupported`. Call on the vCPU's own thread, paused,
/// after any pending I/O was completed (see [`complete_pending_io`]).
pub fn save_vcpu(fd: &VcpuFd, msr_index: &[u32]) -> Result<VcpuSnapshot, Error> {
    let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let fpu = FpuState::from(&fd.get_fpu().map_err(kvm("KVM_GET_FPU"))?);
    let xsave = fd.get_xsave();
    let xcrs = fd.get_xcrs();
    let debugregs = fd.get_debug_regs();
    let lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz();
    let (msrs, refused) = read_msrs(fd, msr_index)?;
    let mut unsupported = Vec::new();
    if !refused.is_empty() {
        unsupported.push(format!("MSRs {refused:x?} (KVM_GET_MSRS refused them)"));
    }
    let events = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
    let (xsave, xsave_err) = match xsave {
        Ok(x) => (Some(x), Ok(())),
        Err(e) => (None, Err(e)),
    };
    let s = VcpuSnapshot {
        xsave,
        xcrs: xcrs.as_ref().ok().copied(),
        debugregs: debugregs.as_ref().ok().copied(),
        tsc_khz: tsc_khz.as_ref().ok().copied(),
        mp_state,
        regs,
        sregs,
        fpu,
        lapic,
        msrs,
        events,
        unsupported: Vec::new(),
    };
    for (what, r) in [
        ("KVM_GET_XSAVE", xsave_err),
        ("KVM_GET_XCRS", xcrs.map(drop)),
        ("KVM_GET_DEBUGREGS", debugregs.map(drop)),
        ("KVM_GET_TSC_KHZ", tsc_khz.map(drop)),
    ] {
        if let Err(e) = r {
            unsupported.push(format!("{what} ({e})"));
        }
    }
    Ok(VcpuSnapshot { unsupported, ..s })
}

/// Reads every MSR in `index`, in chunks; one KVM refuses (KVM_GET_MSRS stops at it) is
/// dropped and the rest read again. Returns the values and the refused indices.
fn read_msrs(fd: &VcpuFd, index: &[u32]) -> Result<(Vec<kvm_msr_entry>, Vec<u32>), Error> {
    let mut out = Vec::with_capacity(index.len());
    let mut refused = Vec::new();
    let mut todo: Vec<u32> = index.to_vec();
    while !todo.is_empty() {
        let n = todo.len().min(MSR_CHUNK);
        let entries: Vec<kvm_msr_entry> = todo[..n]
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::Msr {
            index: todo[0],
            set: 0,
            total: n,
        })?;
        let got = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..got.min(n)]);
        if got < n {
            refused.push(todo[got]);
            todo.drain(..=got);
        } else {
            todo.drain(..n);
        }
    }
    Ok((out, refused))
}

/// Completes an exit's pending I/O (the data of a PIO/MMIO read is consumed by KVM on the
/// next KVM_RUN): one KVM_RUN with `immediate_exit` set, which completes it and returns
/// EINTR without running guest code. Done before saving, as Firecracker does.
pub fn complete_pending_io(fd: &mut VcpuFd) {
    fd.set_kvm_immediate_exit(1);
    let _ = fd.run();
    fd.set_kvm_immediate_exit(0);
}

/// Loads `s` into vCPU `fd` (whose CPUID is already set); before it first runs.
pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuSnapshot) -> Result<(), Error> {
    fd.set_mp_state(s.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_sregs(&s.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    fd.set_regs(&s.regs).map_err(kvm("KVM_SET_REGS"))?;
    fd.set_fpu(&kvm_fpu::from(&s.fpu))
        .map_err(kvm("KVM_SET_FPU"))?;
    if let Some(x) = &s.xsave {
        // SAFETY: `x` is a whole kvm_xsave of the legacy 4 KiB size, which is what
        // KVM_SET_XSAVE reads; it was produced by KVM_GET_XSAVE on the same kind of host.
        unsafe { fd.set_xsave(x) }.map_err(kvm("KVM_SET_XSAVE"))?;
    }
    if let Some(x) = &s.xcrs {
        fd.set_xcrs(x).map_err(kvm("KVM_SET_XCRS"))?;
    }
    if let Some(d) = &s.debugregs {
        fd.set_debug_regs(d).map_err(kvm("KVM_SET_DEBUGREGS"))?;
    }
    if let Some(khz) = s.tsc_khz {
        // A host that cannot scale the TSC refuses any frequency but its own; the guest
        // then sees this host's TSC rate, as a migration without scaling would.
        let _ = fd.set_tsc_khz(khz);
    }
    fd.set_lapic(&s.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    set_msrs(fd, &s.msrs)?;
    fd.set_vcpu_events(&s.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn set_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), Error> {
    for chunk in entries.chunks(MSR_CHUNK) {
        let first = chunk.first().map_or(0, |e| e.index);
        let msrs = Msrs::from_entries(chunk).map_err(|_| Error::Msr {
            index: first,
            set: 0,
            total: chunk.len(),
        })?;
        let set = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if set < chunk.len() {
            return Err(Error::Msr {
                index: chunk[set].index,
                set,
                total: chunk.len(),
            });
        }
    }
    Ok(())
}

/// VM-wide state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// The KVM clock.
    pub clock: kvm_clock_data,
}

fn chip(vm: &VmFd, id: u32) -> Result<kvm_irqchip, Error> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(c)
}

/// Saves the VM-wide state (every vCPU paused).
pub fn save_vm(vm: &VmFd) -> Result<VmState, Error> {
    Ok(VmState {
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
    })
}

/// Loads the VM-wide state (the irqchip and PIT exist; before any vCPU runs).
pub fn restore_vm(vm: &VmFd, s: &VmState) -> Result<(), Error> {
    for (c, id) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        let mut c = *c;
        c.chip_id = id;
        vm.set_irqchip(&c).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&s.pit).map_err(kvm("KVM_SET_PIT2"))?;
    // Only the clock value is set: the flags KVM_GET_CLOCK reports (stable TSC, realtime)
    // are not inputs.
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
    Ok(())
}
