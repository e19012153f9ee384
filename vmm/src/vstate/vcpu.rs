//! vCPU set-up: CPUID, boot MSRs, FPU, local APIC (LINT0 ExtINT, LINT1 NMI) and, on the
//! boot vCPU, the entry registers. What each holds is built in [`crate::arch::x86_64`].

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;

pub use crate::arch::x86_64::regs::VcpuInit;
use crate::arch::x86_64::{interrupts, msr, regs};

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
    /// The boot MSRs could not be set.
    #[error("vCPU {id}: boot MSRs: {source}")]
    Msr {
        /// vCPU.
        id: u8,
        /// Why.
        #[source]
        source: msr::Error,
    },
}

/// Programs CPUID, the boot MSRs, FPU, LAPIC (LINT0 ExtINT, LINT1 NMI) and, when given,
/// the registers (Firecracker's order: CPUID first, since KVM checks MSRs against it).
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    cpuid: &CpuId,
    init: Option<&VcpuInit>,
) -> Result<(), Error> {
    let e = |what| move |source| Error::Kvm { id, what, source };
    vcpu.set_cpuid2(cpuid).map_err(e("KVM_SET_CPUID2"))?;
    msr::set_boot_msrs(vcpu, cpuid).map_err(|source| Error::Msr { id, source })?;
    vcpu.set_fpu(&regs::boot_fpu()).map_err(e("KVM_SET_FPU"))?;
    interrupts::set_lint(vcpu).map_err(|(what, source)| Error::Kvm { id, what, source })?;
    if let Some(init) = init {
        vcpu.set_sregs(&init.sregs).map_err(e("KVM_SET_SREGS"))?;
        vcpu.set_regs(&init.regs).map_err(e("KVM_SET_REGS"))?;
    }
    Ok(())
}

pub use super::vcpu_thread::{VcpuState, VcpuStop};
