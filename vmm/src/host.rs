//! What the host offers: which KVM module serves `/dev/kvm`, whether it does two-dimensional
//! paging (EPT/NPT) or shadows guest page tables, the KVM capabilities this VMM relies on,
//! the hugetlb pools and the transparent-huge-page mode.
//!
//! Everything is read from sysfs/procfs and from `/dev/kvm` itself; nothing is assumed.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kvm_ioctls::Kvm;
use serde::Serialize;

/// Errors while inspecting the host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM loaded and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The MMU mode asked for is not what this host's KVM gives.
    #[error("{0}")]
    ModeUnavailable(String),
}

/// How the host's KVM translates guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MmuMode {
    /// Two-dimensional paging in hardware (Intel EPT, AMD NPT).
    Tdp,
    /// KVM shadows the guest's page tables.
    Shadow,
}

impl std::fmt::Display for MmuMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MmuMode::Tdp => "tdp",
            MmuMode::Shadow => "shadow",
        })
    }
}

/// The MMU mode a user asks for with `--mmu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MmuRequest {
    /// Whatever the host gives.
    Auto,
    /// Shadow paging.
    Shadow,
    /// Two-dimensional paging (EPT/NPT).
    Tdp,
}

impl segment_mmu::named::Named for MmuRequest {
    const ALL: &'static [Self] = &[MmuRequest::Auto, MmuRequest::Shadow, MmuRequest::Tdp];
    fn name(self) -> &'static str {
        match self {
            MmuRequest::Auto => "auto",
            MmuRequest::Shadow => "shadow",
            MmuRequest::Tdp => "tdp",
        }
    }
    fn help(self) -> &'static str {
        match self {
            MmuRequest::Auto => "Whatever the host gives",
            MmuRequest::Shadow => "Shadow paging",
            MmuRequest::Tdp => "Two-dimensional paging (EPT/NPT)",
        }
    }
}

/// One hugetlb pool (`/sys/kernel/mm/hugepages/hugepages-<size>kB`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HugePool {
    /// Page size in bytes.
    pub page_size: u64,
    /// Pages in the pool.
    pub total: u64,
    /// Pages not in use.
    pub free: u64,
}

/// The host facts the product reports and decides on.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    /// KVM API version (12 on every Linux since 2.6.22).
    pub kvm_api_version: i32,
    /// The module serving `/dev/kvm`: kvm_intel, kvm_amd, kvm_pvm, ...
    pub kvm_module: String,
    /// Paging mode of that module.
    pub mmu_mode: MmuMode,
    /// Why we believe `mmu_mode` (which parameter or module told us).
    pub mmu_mode_source: String,
    /// Capabilities this VMM uses, and whether the host has them.
    pub capabilities: BTreeMap<String, bool>,
    /// Hugetlb pools by page size.
    pub hugepage_pools: Vec<HugePool>,
    /// Transparent huge pages mode (`always`, `madvise`, `never`).
    pub thp_mode: String,
    /// Whether the host CPU (as KVM reports it to guests) offers 1 GiB pages (pdpe1gb).
    pub guest_1g_pages: bool,
    /// TSC frequency KVM gives guests, in kHz, when known.
    pub tsc_khz: Option<u32>,
    /// Workarounds this host needs (see README): non-empty on kvm_pvm.
    pub workarounds: Vec<String>,
}

/// The capabilities the VMM relies on, by name.
const CAPS: &[(&str, u32)] = &[
    ("KVM_CAP_IRQCHIP", kvm_bindings::KVM_CAP_IRQCHIP),
    ("KVM_CAP_PIT2", kvm_bindings::KVM_CAP_PIT2),
    ("KVM_CAP_IRQFD", kvm_bindings::KVM_CAP_IRQFD),
    ("KVM_CAP_USER_MEMORY", kvm_bindings::KVM_CAP_USER_MEMORY),
    ("KVM_CAP_EXT_CPUID", kvm_bindings::KVM_CAP_EXT_CPUID),
    ("KVM_CAP_TSC_CONTROL", kvm_bindings::KVM_CAP_TSC_CONTROL),
    ("KVM_CAP_GET_TSC_KHZ", kvm_bindings::KVM_CAP_GET_TSC_KHZ),
    ("KVM_CAP_VCPU_EVENTS", kvm_bindings::KVM_CAP_VCPU_EVENTS),
    ("KVM_CAP_SYNC_REGS", kvm_bindings::KVM_CAP_SYNC_REGS),
    (
        "KVM_CAP_IMMEDIATE_EXIT",
        kvm_bindings::KVM_CAP_IMMEDIATE_EXIT,
    ),
    (
        "KVM_CAP_BINARY_STATS_FD",
        kvm_bindings::KVM_CAP_BINARY_STATS_FD,
    ),
    (
        "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
        kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    ),
    (
        "KVM_CAP_DIRTY_LOG_RING",
        kvm_bindings::KVM_CAP_DIRTY_LOG_RING,
    ),
    (
        "KVM_CAP_EXCEPTION_PAYLOAD",
        kvm_bindings::KVM_CAP_EXCEPTION_PAYLOAD,
    ),
    ("KVM_CAP_XSAVE", kvm_bindings::KVM_CAP_XSAVE),
];

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Which module serves /dev/kvm and how it pages: decided from sysfs module parameters.
pub fn kvm_module_and_mode() -> (String, MmuMode, String) {
    let sys = Path::new("/sys/module");
    if sys.join("kvm_pvm").exists() {
        return (
            "kvm_pvm".into(),
            MmuMode::Shadow,
            "kvm_pvm (software KVM without VMX/SVM) always shadows guest page tables".into(),
        );
    }
    for (module, param) in [("kvm_intel", "ept"), ("kvm_amd", "npt")] {
        if sys.join(module).exists() {
            let p = sys.join(module).join("parameters").join(param);
            let v = read_trim(&p).unwrap_or_default();
            let on = matches!(v.as_str(), "Y" | "y" | "1");
            let mode = if on { MmuMode::Tdp } else { MmuMode::Shadow };
            return (module.into(), mode, format!("{} = {v}", p.display()));
        }
    }
    (
        "unknown".into(),
        MmuMode::Shadow,
        "no kvm_intel/kvm_amd/kvm_pvm module found in /sys/module; assuming shadow".into(),
    )
}

/// Reads the hugetlb pools.
pub fn hugepage_pools() -> Vec<HugePool> {
    let mut pools = Vec::new();
    let Ok(dir) = fs::read_dir("/sys/kernel/mm/hugepages") else {
        return pools;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(kb) = name
            .strip_prefix("hugepages-")
            .and_then(|s| s.strip_suffix("kB"))
        else {
            continue;
        };
        let Ok(kb) = kb.parse::<u64>() else { continue };
        let num = |f: &str| {
            read_trim(e.path().join(f))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        pools.push(HugePool {
            page_size: kb * 1024,
            total: num("nr_hugepages"),
            free: num("free_hugepages"),
        });
    }
    pools.sort_by_key(|p| p.page_size);
    pools
}

/// The THP mode: the bracketed word of `/sys/kernel/mm/transparent_hugepage/enabled`.
pub fn thp_mode() -> String {
    read_trim("/sys/kernel/mm/transparent_hugepage/enabled")
        .and_then(|s| {
            s.split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(['[', ']']).to_string())
        })
        .unwrap_or_else(|| "unavailable".into())
}

/// Collects everything. Opens /dev/kvm.
pub fn probe() -> Result<HostInfo, Error> {
    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    let (kvm_module, mmu_mode, mmu_mode_source) = kvm_module_and_mode();
    let capabilities = CAPS
        .iter()
        .map(|(n, c)| (n.to_string(), kvm.check_extension_raw(u64::from(*c)) > 0))
        .collect();
    let guest_1g_pages = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map(|c| {
            c.as_slice()
                .iter()
                .any(|e| e.function == 0x8000_0001 && e.edx & (1 << 26) != 0)
        })
        .unwrap_or(false);
    let tsc_khz = tsc_khz(&kvm);
    let mut workarounds = Vec::new();
    if kvm_module == "kvm_pvm" {
        workarounds = crate::vstate::emulate::pvm_workaround_list();
    }
    Ok(HostInfo {
        kvm_api_version: kvm.get_api_version(),
        kvm_module,
        mmu_mode,
        mmu_mode_source,
        capabilities,
        hugepage_pools: hugepage_pools(),
        thp_mode: thp_mode(),
        guest_1g_pages,
        tsc_khz,
        workarounds,
    })
}

/// The TSC frequency KVM gives a guest, read from a throwaway vCPU.
fn tsc_khz(kvm: &Kvm) -> Option<u32> {
    let vm = kvm.create_vm().ok()?;
    let vcpu = vm.create_vcpu(0).ok()?;
    vcpu.get_tsc_khz().ok()
}

/// Checks that the host can give `req`, and says how to get it when it cannot.
pub fn check_mode(info: &HostInfo, req: MmuRequest) -> Result<MmuMode, Error> {
    let fix = |want: MmuMode| -> String {
        match (info.kvm_module.as_str(), want) {
            ("kvm_intel", MmuMode::Shadow) => "reload kvm_intel with ept=0 (modprobe -r kvm_intel && modprobe kvm_intel ept=0)".into(),
            ("kvm_intel", MmuMode::Tdp) => "reload kvm_intel with ept=1 on a CPU with EPT".into(),
            ("kvm_amd", MmuMode::Shadow) => "reload kvm_amd with npt=0 (modprobe -r kvm_amd && modprobe kvm_amd npt=0)".into(),
            ("kvm_amd", MmuMode::Tdp) => "reload kvm_amd with npt=1 on a CPU with NPT".into(),
            (m, MmuMode::Tdp) => format!("{m} has no two-dimensional paging; run on a host with VMX+EPT or SVM+NPT (kvm_intel/kvm_amd)"),
            (m, MmuMode::Shadow) => format!("{m} cannot be switched to shadow paging"),
        }
    };
    match req {
        MmuRequest::Auto => Ok(info.mmu_mode),
        MmuRequest::Shadow if info.mmu_mode == MmuMode::Shadow => Ok(MmuMode::Shadow),
        MmuRequest::Tdp if info.mmu_mode == MmuMode::Tdp => Ok(MmuMode::Tdp),
        MmuRequest::Shadow => Err(Error::ModeUnavailable(format!(
            "--mmu shadow: this host's KVM ({}) uses two-dimensional paging; to get shadow paging, {}",
            info.kvm_module,
            fix(MmuMode::Shadow)
        ))),
        MmuRequest::Tdp => Err(Error::ModeUnavailable(format!(
            "--mmu tdp: this host's KVM ({}) shadows guest page tables ({}); to get EPT/NPT, {}",
            info.kvm_module,
            info.mmu_mode_source,
            fix(MmuMode::Tdp)
        ))),
    }
}

/// Checks `req` against this host's KVM without building a VM: every run path that does
/// not go through `VmBuilder` (the measurement guest) calls it first, so `--mmu tdp` on a
/// shadow-paging host (kvm_pvm, kvm_amd npt=0, kvm_intel ept=0) is refused everywhere.
pub fn require_mode(req: MmuRequest) -> Result<MmuMode, Error> {
    if req == MmuRequest::Auto {
        return Ok(kvm_module_and_mode().1);
    }
    check_mode(&probe()?, req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(module: &str, mode: MmuMode) -> HostInfo {
        HostInfo {
            kvm_api_version: 12,
            kvm_module: module.into(),
            mmu_mode: mode,
            mmu_mode_source: "test".into(),
            capabilities: BTreeMap::new(),
            hugepage_pools: vec![],
            thp_mode: "madvise".into(),
            guest_1g_pages: false,
            tsc_khz: None,
            workarounds: vec![],
        }
    }

    #[test]
    fn mode_checks() {
        let pvm = info("kvm_pvm", MmuMode::Shadow);
        assert_eq!(check_mode(&pvm, MmuRequest::Auto).unwrap(), MmuMode::Shadow);
        assert_eq!(
            check_mode(&pvm, MmuRequest::Shadow).unwrap(),
            MmuMode::Shadow
        );
        let e = check_mode(&pvm, MmuRequest::Tdp).unwrap_err().to_string();
        assert!(e.contains("kvm_pvm") && e.contains("EPT"), "{e}");
        let intel = info("kvm_intel", MmuMode::Tdp);
        let e = check_mode(&intel, MmuRequest::Shadow)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ept=0"), "{e}");
        let amd_shadow = info("kvm_amd", MmuMode::Shadow);
        let e = check_mode(&amd_shadow, MmuRequest::Tdp)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kvm_amd") && e.contains("npt=1"), "{e}");
        assert_eq!(
            check_mode(&amd_shadow, MmuRequest::Shadow).unwrap(),
            MmuMode::Shadow
        );
        let amd_npt = info("kvm_amd", MmuMode::Tdp);
        assert_eq!(check_mode(&amd_npt, MmuRequest::Tdp).unwrap(), MmuMode::Tdp);
        let e = check_mode(&amd_npt, MmuRequest::Shadow)
            .unwrap_err()
            .to_string();
        assert!(e.contains("npt=0"), "{e}");
    }

    #[test]
    fn thp_mode_is_one_word() {
        let m = thp_mode();
        assert!(!m.contains('[') && !m.contains(' '), "{m}");
    }
}
