//! Boot MSRs, set on every vCPU with KVM_SET_MSRS as Firecracker's `arch/x86_64/msr.rs`
//! (`create_boot_msr_entries`) and Cloud Hypervisor's `boot_msr_entries` do: the syscall
//! entry MSRs cleared, the TSC at 0, fast strings enabled, and MTRRs on with write-back as
//! the default type when CPUID reports MTRRs. Only MSRs that KVM lists in
//! KVM_GET_MSR_INDEX_LIST are written, so the same code runs on hosts whose KVM (kvm_pvm)
//! implements fewer of them; [`boot_entries`] returns what was left out.

use std::sync::OnceLock;

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast-string operations (`rep movs/stos`) enabled.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRR_DEF_TYPE: MTRRs enabled (bit 11), default type write-back (6).
pub const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
/// STAR (syscall/sysret selectors).
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR (64-bit syscall entry).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR (compat-mode syscall entry).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SFMASK (RFLAGS bits cleared on syscall).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE (swapgs).
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Why the boot MSRs could not be set.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_MSR_INDEX_LIST failed.
    #[error("KVM_GET_MSR_INDEX_LIST: {0}")]
    IndexList(#[source] kvm_ioctls::Error),
    /// Opening /dev/kvm for the index list failed.
    #[error("opening /dev/kvm for KVM_GET_MSR_INDEX_LIST: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The MSR list did not fit a `kvm_msrs`.
    #[error("building the kvm_msrs list of {count} entries: {source:?}")]
    Fam {
        /// Entries.
        count: usize,
        /// Why.
        source: vmm_sys_util::fam::Error,
    },
    /// KVM_SET_MSRS failed.
    #[error("KVM_SET_MSRS: {0}")]
    Set(#[source] kvm_ioctls::Error),
    /// KVM_SET_MSRS stopped at an MSR it refused.
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs: MSR {refused:#x} refused")]
    Incomplete {
        /// MSRs set.
        set: usize,
        /// MSRs given.
        wanted: usize,
        /// The first one not set.
        refused: u32,
    },
}

/// The MSRs KVM supports (KVM_GET_MSR_INDEX_LIST), read once per process.
pub fn supported() -> Result<&'static [u32], Error> {
    static LIST: OnceLock<Vec<u32>> = OnceLock::new();
    if let Some(l) = LIST.get() {
        return Ok(l);
    }
    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    let list = kvm.get_msr_index_list().map_err(Error::IndexList)?;
    Ok(LIST.get_or_init(|| list.as_slice().to_vec()))
}

/// Whether `cpuid` reports MTRRs (leaf 1, EDX bit 12).
pub fn has_mtrr(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 1 && e.edx & (1 << 12) != 0)
}

/// The boot MSR list (index, value) for a vCPU whose CPUID is `cpuid`, split into those
/// in `supported` (to set) and those not (left out).
pub fn boot_entries(cpuid: &CpuId, supported: &[u32]) -> (Vec<(u32, u64)>, Vec<u32>) {
    let mut all = vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ];
    if has_mtrr(cpuid) {
        all.push((MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB));
    }
    let (set, skip): (Vec<_>, Vec<_>) = all.into_iter().partition(|(i, _)| supported.contains(i));
    (set, skip.into_iter().map(|(i, _)| i).collect())
}

/// Sets the boot MSRs KVM supports on `vcpu`; returns the indices left out.
pub fn set_boot_msrs(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<Vec<u32>, Error> {
    let (set, skipped) = boot_entries(cpuid, supported()?);
    let entries: Vec<kvm_msr_entry> = set
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|source| Error::Fam {
        count: entries.len(),
        source,
    })?;
    let n = vcpu.set_msrs(&msrs).map_err(Error::Set)?;
    if n != entries.len() {
        return Err(Error::Incomplete {
            set: n,
            wanted: entries.len(),
            refused: entries.get(n).map_or(0, |e| e.index),
        });
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn cpuid(edx1: u32) -> CpuId {
        CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            edx: edx1,
            ..Default::default()
        }])
        .unwrap()
    }

    #[test]
    fn only_listed_msrs_are_set_and_mtrr_follows_cpuid() {
        let every: Vec<u32> = (0..0x1000).chain(0xc000_0080..0xc000_0110).collect();
        let (set, skip) = boot_entries(&cpuid(1 << 12), &every);
        assert_eq!(set.len(), 11);
        assert!(skip.is_empty());
        assert!(set.contains(&(MSR_MTRR_DEF_TYPE, 0x806)));
        assert!(set.contains(&(MSR_IA32_MISC_ENABLE, 1)));
        let (set, _) = boot_entries(&cpuid(0), &every);
        assert!(
            !set.iter().any(|e| e.0 == MSR_MTRR_DEF_TYPE),
            "no MTRR in CPUID"
        );
        let (set, skip) = boot_entries(&cpuid(1 << 12), &[MSR_STAR, MSR_LSTAR]);
        assert_eq!(set, [(MSR_STAR, 0), (MSR_LSTAR, 0)]);
        assert_eq!(skip.len(), 9);
        assert!(skip.contains(&MSR_IA32_TSC));
    }
}
