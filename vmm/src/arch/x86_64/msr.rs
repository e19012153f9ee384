//! Boot MSRs, set on every vCPU with KVM_SET_MSRS as Firecracker's `arch/x86_64/msr.rs`
//! (`create_boot_msr_entries`) and Cloud Hypervisor's `boot_msr_entries` do: the syscall
//! entry MSRs cleared, the TSC at 0, fast strings enabled, and MTRRs on with write-back as
//! the default type when CPUID reports MTRRs. Only MSRs that KVM lists in
//! KVM_GET_MSR_INDEX_LIST are written, so the same code runs on hosts whose KVM (kvm_pvm)
//! implements fewer of them; [`boot_entries`] returns what was left out. The one
//! exception is IA32_MTRR_DEF_TYPE: KVM never lists MTRR MSRs there (it handles them
//! apart, and QEMU saves them apart too) yet accepts them when the vCPU's CPUID has MTRR,
//! so it is tried on its own and left out, not failed, where KVM refuses it.

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

/// The boot MSRs for a vCPU whose CPUID is `cpuid`, sorted by how they are set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootMsrs {
    /// Listed by KVM: set together, all must succeed.
    pub listed: Vec<(u32, u64)>,
    /// Not listed but architectural for this CPUID (MTRR_DEF_TYPE): tried one by one.
    pub tried: Vec<(u32, u64)>,
    /// Not listed: left out.
    pub skipped: Vec<u32>,
}

/// The boot MSR list (index, value) for a vCPU whose CPUID is `cpuid`, sorted against
/// the MSRs KVM lists (`supported`).
pub fn boot_entries(cpuid: &CpuId, supported: &[u32]) -> BootMsrs {
    let all = [
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
    let mut out = BootMsrs::default();
    for (index, value) in all {
        if supported.contains(&index) {
            out.listed.push((index, value));
        } else {
            out.skipped.push(index);
        }
    }
    if has_mtrr(cpuid) {
        let e = (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB);
        if supported.contains(&e.0) {
            out.listed.push(e);
        } else {
            out.tried.push(e);
        }
    }
    out
}

/// KVM_SET_MSRS of `entries`; returns how many KVM set (it stops at the first refused).
fn set(vcpu: &VcpuFd, entries: &[(u32, u64)]) -> Result<usize, Error> {
    let raw: Vec<kvm_msr_entry> = entries
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&raw).map_err(|source| Error::Fam {
        count: raw.len(),
        source,
    })?;
    vcpu.set_msrs(&msrs).map_err(Error::Set)
}

/// Sets the boot MSRs on `vcpu`; returns the indices left out (not listed by KVM, or
/// tried and refused).
pub fn set_boot_msrs(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<Vec<u32>, Error> {
    let BootMsrs {
        listed,
        tried,
        mut skipped,
    } = boot_entries(cpuid, supported()?);
    let n = set(vcpu, &listed)?;
    if n != listed.len() {
        return Err(Error::Incomplete {
            set: n,
            wanted: listed.len(),
            refused: listed.get(n).map_or(0, |e| e.0),
        });
    }
    // Not tried for now: with MTRR_DEF_TYPE = WB set on kvm_pvm the stock kernel hung
    // after "smpboot: Total of 2 processors" (3.6 G shadow PTE writes in 2700 s); with it
    // left out (the only change) it reached "Run /init" in 145 s. Left out, as KVM does
    // not list it.
    skipped.extend(tried.iter().map(|e| e.0));
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
        let b = boot_entries(&cpuid(1 << 12), &every);
        assert_eq!(b.listed.len(), 11);
        assert!(b.skipped.is_empty() && b.tried.is_empty());
        assert!(b.listed.contains(&(MSR_MTRR_DEF_TYPE, 0x806)));
        assert!(b.listed.contains(&(MSR_IA32_MISC_ENABLE, 1)));
        let b = boot_entries(&cpuid(0), &every);
        assert_eq!(b.listed.len(), 10, "no MTRR in CPUID: no MTRR_DEF_TYPE");
        assert!(b.tried.is_empty());
        // What KVM (upstream and kvm_pvm) lists: everything but the MTRR MSR.
        let kvm: Vec<u32> = every
            .iter()
            .copied()
            .filter(|&i| i != MSR_MTRR_DEF_TYPE)
            .collect();
        let b = boot_entries(&cpuid(1 << 12), &kvm);
        assert_eq!(b.listed.len(), 10);
        assert_eq!(b.tried, [(MSR_MTRR_DEF_TYPE, 0x806)]);
        let b = boot_entries(&cpuid(0), &[MSR_STAR, MSR_LSTAR]);
        assert_eq!(b.listed, [(MSR_STAR, 0), (MSR_LSTAR, 0)]);
        assert_eq!(b.skipped.len(), 8);
        assert!(b.skipped.contains(&MSR_IA32_TSC));
    }

    /// On this host's KVM (when there is one): the listed MSRs read back as set.
    #[test]
    fn boot_msrs_read_back_on_this_host() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        let star = kvm_msr_entry {
            index: MSR_STAR,
            data: 0x1234,
            ..Default::default()
        };
        vcpu.set_msrs(&Msrs::from_entries(&[star]).unwrap())
            .unwrap();
        let skipped = set_boot_msrs(&vcpu, &cpuid).unwrap();
        eprintln!("boot MSRs left out on this host: {skipped:x?}");
        let b = boot_entries(&cpuid, supported().unwrap());
        if has_mtrr(&cpuid) && !skipped.contains(&MSR_MTRR_DEF_TYPE) {
            let e = kvm_msr_entry {
                index: MSR_MTRR_DEF_TYPE,
                ..Default::default()
            };
            let mut m = Msrs::from_entries(&[e]).unwrap();
            assert_eq!(vcpu.get_msrs(&mut m).unwrap(), 1);
            assert_eq!(m.as_slice()[0].data, MTRR_ENABLE_WB, "MTRR_DEF_TYPE");
            eprintln!("MTRR_DEF_TYPE set and read back");
        }
        let mut back = Msrs::from_entries(
            &b.listed
                .iter()
                .map(|&(index, _)| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(vcpu.get_msrs(&mut back).unwrap(), b.listed.len());
        for (e, &(index, want)) in back.as_slice().iter().zip(&b.listed) {
            if index == MSR_IA32_TSC {
                continue; // it runs on
            }
            assert_eq!((e.index, e.data), (index, want), "MSR {index:#x}");
        }
    }
}
